//! VirtualService rules.

use std::collections::BTreeSet;

use super::Findings;
use super::checks::{
    cidrs, duration, header_matches, header_name, host, is_dns1123_label, labels, one_of, opt_port,
    percent, regex, string_match,
};
use crate::common::Percent;
use crate::networking::{
    Destination, Headers, HttpRoute, HttpRouteDestination, RouteDestination, VirtualServiceSpec,
};

/// Retry conditions Envoy understands (besides HTTP status codes).
const RETRY_ON: [&str; 16] = [
    "5xx",
    "gateway-error",
    "reset",
    "reset-before-request",
    "connect-failure",
    "envoy-ratelimited",
    "retriable-4xx",
    "refused-stream",
    "retriable-status-codes",
    "retriable-headers",
    "http3-post-connect-failure",
    "cancelled",
    "deadline-exceeded",
    "internal",
    "resource-exhausted",
    "unavailable",
];

pub(crate) fn virtual_service(f: &mut Findings, spec: &VirtualServiceSpec) {
    let applies_to_mesh = spec.gateways.is_empty() || spec.gateways.iter().any(|g| g == "mesh");
    let delegate = spec.hosts.is_empty();
    if delegate && !spec.gateways.is_empty() {
        f.error(
            "spec.gateways",
            "a delegate VirtualService (one without hosts) must not set gateways",
        );
    }
    if delegate && (!spec.tls.is_empty() || !spec.tcp.is_empty()) {
        f.error(
            "spec.hosts",
            "Required value: a VirtualService with tls or tcp routes needs hosts",
        );
    }
    let mut seen = BTreeSet::new();
    for (i, h) in spec.hosts.iter().enumerate() {
        let at = format!("spec.hosts[{i}]");
        if !seen.insert(h.as_str()) {
            f.error(&at, format!("Duplicate value: {h:?}"));
        }
        host(f, &at, h);
        if h == "*" && applies_to_mesh {
            f.error(&at, "wildcard host * is not allowed for a VirtualService bound to the mesh; name the hosts, or bind it to gateways only");
        }
    }
    for (i, g) in spec.gateways.iter().enumerate() {
        gateway_ref(f, &format!("spec.gateways[{i}]"), g);
    }
    if spec.http.is_empty() && spec.tls.is_empty() && spec.tcp.is_empty() {
        f.error(
            "spec",
            "Required value: at least one of http, tls or tcp routes must be set",
        );
    }
    for (i, r) in spec.http.iter().enumerate() {
        http_route(f, &format!("spec.http[{i}]"), r, delegate);
    }
    for (i, r) in spec.tls.iter().enumerate() {
        let at = format!("spec.tls[{i}]");
        if r.matches.is_empty() {
            f.error(
                format!("{at}.match"),
                "Required value: a TLS route needs at least one match",
            );
        }
        for (j, m) in r.matches.iter().enumerate() {
            let mat = format!("{at}.match[{j}]");
            if m.sni_hosts.is_empty() {
                f.error(
                    format!("{mat}.sniHosts"),
                    "Required value: at least one SNI host",
                );
            }
            for (k, sni) in m.sni_hosts.iter().enumerate() {
                let sat = format!("{mat}.sniHosts[{k}]");
                host(f, &sat, sni);
                if !spec.hosts.iter().any(|h| host_matches(h, sni)) {
                    f.error(
                        &sat,
                        format!("SNI host {sni:?} does not match any host of the VirtualService"),
                    );
                }
            }
            cidrs(
                f,
                &format!("{mat}.destinationSubnets"),
                &m.destination_subnets,
            );
            opt_port(f, &format!("{mat}.port"), m.port);
            labels(f, &format!("{mat}.sourceLabels"), &m.source_labels);
            gateway_list(f, &format!("{mat}.gateways"), &m.gateways);
        }
        l4_routes(f, &at, &r.route);
    }
    for (i, r) in spec.tcp.iter().enumerate() {
        let at = format!("spec.tcp[{i}]");
        for (j, m) in r.matches.iter().enumerate() {
            let mat = format!("{at}.match[{j}]");
            cidrs(
                f,
                &format!("{mat}.destinationSubnets"),
                &m.destination_subnets,
            );
            if !m.source_subnet.is_empty() {
                cidrs(
                    f,
                    &format!("{mat}.sourceSubnet"),
                    std::slice::from_ref(&m.source_subnet),
                );
            }
            opt_port(f, &format!("{mat}.port"), m.port);
            labels(f, &format!("{mat}.sourceLabels"), &m.source_labels);
            gateway_list(f, &format!("{mat}.gateways"), &m.gateways);
        }
        l4_routes(f, &at, &r.route);
    }
}

/// True when the VirtualService host `vs_host` covers `sni` (equal, or a wildcard suffix).
fn host_matches(vs_host: &str, sni: &str) -> bool {
    let suffix_of = |wild: &str, name: &str| {
        wild == "*"
            || wild
                .strip_prefix('*')
                .is_some_and(|suf| name.ends_with(suf))
    };
    vs_host == sni || suffix_of(vs_host, sni) || suffix_of(sni, vs_host)
}

/// A gateway reference: `mesh`, `name` or `namespace/name`.
pub(crate) fn gateway_ref(f: &mut Findings, at: &str, g: &str) {
    if g == "mesh" {
        return;
    }
    let (ns, name) = g.split_once('/').unwrap_or(("", g));
    let ns_ok = ns.is_empty() || is_dns1123_label(ns);
    let name_ok = name.split('.').all(is_dns1123_label);
    if !ns_ok || !name_ok {
        f.error(
            at,
            format!("{g:?} is not a gateway reference: use mesh, NAME or NAMESPACE/NAME"),
        );
    }
}

fn gateway_list(f: &mut Findings, at: &str, gateways: &[String]) {
    for (i, g) in gateways.iter().enumerate() {
        gateway_ref(f, &format!("{at}[{i}]"), g);
    }
}

fn http_route(f: &mut Findings, at: &str, r: &HttpRoute, in_delegate: bool) {
    let actions = [
        !r.route.is_empty(),
        r.redirect.is_some(),
        r.direct_response.is_some(),
        r.delegate.is_some(),
    ];
    one_of(
        f,
        at,
        &["route", "redirect", "directResponse", "delegate"],
        &actions,
        true,
    );
    if r.redirect.is_some() && r.rewrite.is_some() {
        f.error(at, "only one of redirect or rewrite may be set");
    }
    if in_delegate && r.delegate.is_some() {
        f.error(
            format!("{at}.delegate"),
            "a delegate VirtualService cannot delegate again",
        );
    }
    if let Some(d) = &r.delegate {
        if d.name.is_empty() {
            f.error(
                format!("{at}.delegate.name"),
                "Required value: name of the delegate VirtualService",
            );
        }
        if !d.namespace.is_empty() && !is_dns1123_label(&d.namespace) {
            f.error(
                format!("{at}.delegate.namespace"),
                format!("{:?} is not a namespace name", d.namespace),
            );
        }
    }
    for (i, m) in r.matches.iter().enumerate() {
        let mat = format!("{at}.match[{i}]");
        for (name, sm) in [
            ("uri", &m.uri),
            ("scheme", &m.scheme),
            ("method", &m.method),
            ("authority", &m.authority),
        ] {
            if let Some(sm) = sm {
                string_match(f, &format!("{mat}.{name}"), sm, false);
            }
        }
        header_matches(f, &format!("{mat}.headers"), &m.headers);
        header_matches(f, &format!("{mat}.withoutHeaders"), &m.without_headers);
        for (k, sm) in &m.query_params {
            string_match(f, &format!("{mat}.queryParams.{k}"), sm, true);
        }
        opt_port(f, &format!("{mat}.port"), m.port);
        labels(f, &format!("{mat}.sourceLabels"), &m.source_labels);
        gateway_list(f, &format!("{mat}.gateways"), &m.gateways);
        if !m.source_namespace.is_empty() && !is_dns1123_label(&m.source_namespace) {
            f.error(
                format!("{mat}.sourceNamespace"),
                format!("{:?} is not a namespace name", m.source_namespace),
            );
        }
    }
    http_destinations(f, at, &r.route);
    if let Some(rd) = &r.redirect {
        let rat = format!("{at}.redirect");
        if rd.uri.is_empty()
            && rd.authority.is_empty()
            && rd.port.is_none()
            && rd.derive_port.is_none()
            && rd.scheme.is_empty()
        {
            f.error(
                &rat,
                "a redirect must change at least one of uri, authority, port or scheme",
            );
        }
        if rd.port.is_some() && rd.derive_port.is_some() {
            f.error(&rat, "only one of port or derivePort may be set");
        }
        opt_port(f, &format!("{rat}.port"), rd.port);
        if let Some(code) = rd.redirect_code
            && ![301, 302, 303, 307, 308].contains(&code)
        {
            f.error(
                format!("{rat}.redirectCode"),
                format!("Unsupported value: {code}: use 301, 302, 303, 307 or 308"),
            );
        }
    }
    if let Some(dr) = &r.direct_response {
        let dat = format!("{at}.directResponse");
        if !(200..=599).contains(&dr.status) {
            f.error(
                format!("{dat}.status"),
                format!(
                    "Invalid value: {}: status must be between 200 and 599",
                    dr.status
                ),
            );
        }
        if let Some(b) = &dr.body
            && b.string.is_some() == b.bytes.is_some()
        {
            f.error(
                format!("{dat}.body"),
                "exactly one of string or bytes must be set",
            );
        }
    }
    if let Some(rw) = &r.rewrite {
        let wat = format!("{at}.rewrite");
        if !rw.uri.is_empty() && rw.uri_regex_rewrite.is_some() {
            f.error(&wat, "only one of uri or uriRegexRewrite may be set");
        }
        if rw.uri.is_empty() && rw.authority.is_empty() && rw.uri_regex_rewrite.is_none() {
            f.error(&wat, "a rewrite must set uri, authority or uriRegexRewrite");
        }
        if let Some(rr) = &rw.uri_regex_rewrite {
            regex(f, &format!("{wat}.uriRegexRewrite.match"), &rr.pattern);
        }
    }
    duration(f, &format!("{at}.timeout"), r.timeout.as_ref());
    if let Some(rt) = &r.retries {
        let tat = format!("{at}.retries");
        if rt.attempts < 0 {
            f.error(
                format!("{tat}.attempts"),
                "Invalid value: attempts cannot be negative",
            );
        }
        let configured = rt.per_try_timeout.is_some()
            || !rt.retry_on.is_empty()
            || rt.retry_remote_localities.is_some();
        if rt.attempts == 0 && configured {
            f.error(
                &tat,
                "retry settings are given but attempts is 0 (retries disabled): set attempts",
            );
        }
        duration(
            f,
            &format!("{tat}.perTryTimeout"),
            rt.per_try_timeout.as_ref(),
        );
        duration(f, &format!("{tat}.backoff"), rt.backoff.as_ref());
        for cond in rt
            .retry_on
            .split(',')
            .map(str::trim)
            .filter(|c| !c.is_empty())
        {
            if !RETRY_ON.contains(&cond) && cond.parse::<u16>().is_err() {
                f.error(
                    format!("{tat}.retryOn"),
                    format!(
                        "{cond:?} is not a retry condition: use {} or an HTTP status code",
                        RETRY_ON.join(", ")
                    ),
                );
            }
        }
    }
    if let Some(fault) = &r.fault {
        let fat = format!("{at}.fault");
        if fault.delay.is_none() && fault.abort.is_none() {
            f.error(&fat, "one of delay or abort must be set");
        }
        if let Some(d) = &fault.delay {
            let dat = format!("{fat}.delay");
            one_of(
                f,
                &dat,
                &["fixedDelay", "exponentialDelay"],
                &[d.fixed_delay.is_some(), d.exponential_delay.is_some()],
                true,
            );
            if d.exponential_delay.is_some() {
                f.error(
                    format!("{dat}.exponentialDelay"),
                    "exponentialDelay is not supported; use fixedDelay",
                );
            }
            duration(f, &format!("{dat}.fixedDelay"), d.fixed_delay.as_ref());
            opt_percent(f, &format!("{dat}.percentage.value"), d.percentage.as_ref());
            if d.percentage.is_none() && d.percent.is_none() {
                f.warning(
                    format!("{dat}.percentage"),
                    "not set: as in Istio, no request is delayed; set percentage.value (100 delays every request)",
                );
            }
            if let Some(p) = d.percent {
                percent(f, &format!("{dat}.percent"), f64::from(p));
            }
        }
        if let Some(a) = &fault.abort {
            let aat = format!("{fat}.abort");
            one_of(
                f,
                &aat,
                &["httpStatus", "grpcStatus", "http2Error"],
                &[
                    a.http_status.is_some(),
                    a.grpc_status.is_some(),
                    a.http2_error.is_some(),
                ],
                true,
            );
            if let Some(s) = a.http_status
                && !(200..=599).contains(&s)
            {
                f.error(
                    format!("{aat}.httpStatus"),
                    format!("Invalid value: {s}: must be between 200 and 599"),
                );
            }
            if let Some(code) = &a.grpc_status
                && crate::networking::grpc_code(code).is_none()
            {
                f.error(
                    format!("{aat}.grpcStatus"),
                    format!(
                        "Invalid value: {code:?}: not a gRPC status code; use one of {}",
                        crate::networking::GRPC_CODES.join(", ")
                    ),
                );
            }
            if a.http2_error.is_some() {
                f.error(
                    format!("{aat}.http2Error"),
                    "HTTP/2 abort fault injection is not supported; use httpStatus or grpcStatus",
                );
            }
            opt_percent(f, &format!("{aat}.percentage.value"), a.percentage.as_ref());
            if a.percentage.is_none() {
                f.warning(
                    format!("{aat}.percentage"),
                    "not set: as in Istio, no request is aborted; set percentage.value (100 aborts every request)",
                );
            }
        }
    }
    if r.mirror.is_some() && !r.mirrors.is_empty() {
        f.error(at, "only one of mirror or mirrors may be set");
    }
    if let Some(m) = &r.mirror {
        destination(f, &format!("{at}.mirror"), m);
    }
    for (i, m) in r.mirrors.iter().enumerate() {
        destination(f, &format!("{at}.mirrors[{i}].destination"), &m.destination);
        opt_percent(
            f,
            &format!("{at}.mirrors[{i}].percentage.value"),
            m.percentage.as_ref(),
        );
    }
    opt_percent(
        f,
        &format!("{at}.mirrorPercentage.value"),
        r.mirror_percentage.as_ref(),
    );
    if let Some(p) = r.mirror_percent {
        percent(f, &format!("{at}.mirrorPercent"), f64::from(p));
    }
    if let Some(c) = &r.cors_policy {
        let cat = format!("{at}.corsPolicy");
        for (i, o) in c.allow_origins.iter().enumerate() {
            string_match(f, &format!("{cat}.allowOrigins[{i}]"), o, false);
        }
        for (i, m) in c.allow_methods.iter().enumerate() {
            if m.is_empty() || !m.bytes().all(|b| b.is_ascii_uppercase()) {
                f.error(
                    format!("{cat}.allowMethods[{i}]"),
                    format!("{m:?} is not an HTTP method (GET, POST, ...)"),
                );
            }
        }
        for (field, list) in [
            ("allowHeaders", &c.allow_headers),
            ("exposeHeaders", &c.expose_headers),
        ] {
            for (i, h) in list.iter().enumerate() {
                if !header_name(h) {
                    f.error(
                        format!("{cat}.{field}[{i}]"),
                        format!("{h:?} is not a valid header name"),
                    );
                }
            }
        }
        duration(f, &format!("{cat}.maxAge"), c.max_age.as_ref());
    }
    if let Some(h) = &r.headers {
        headers(f, &format!("{at}.headers"), h);
    }
}

fn opt_percent(f: &mut Findings, at: &str, p: Option<&Percent>) {
    if let Some(p) = p {
        percent(f, at, p.value);
    }
}

fn headers(f: &mut Findings, at: &str, h: &Headers) {
    for (side, ops) in [("request", &h.request), ("response", &h.response)] {
        let Some(ops) = ops else { continue };
        let names = ops
            .set
            .keys()
            .map(|k| ("set", k))
            .chain(ops.add.keys().map(|k| ("add", k)));
        for (op, name) in names.chain(ops.remove.iter().map(|k| ("remove", k))) {
            let hat = format!("{at}.{side}.{op}");
            if !header_name(name) {
                f.error(&hat, format!("{name:?} is not a valid header name (pseudo-headers such as :authority cannot be changed)"));
            }
        }
    }
}

pub(crate) fn destination(f: &mut Findings, at: &str, d: &Destination) {
    if d.host.is_empty() {
        f.error(format!("{at}.host"), "Required value: the destination host");
    } else if d.host == "*" {
        f.error(
            format!("{at}.host"),
            "a destination host cannot be \"*\": name the service",
        );
    } else {
        host(f, &format!("{at}.host"), &d.host);
    }
    if !d.subset.is_empty() && !is_dns1123_label(&d.subset) {
        f.error(
            format!("{at}.subset"),
            format!(
                "{:?} is not a valid subset name (lower-case letters, digits, '-')",
                d.subset
            ),
        );
    }
    if let Some(p) = &d.port {
        opt_port(f, &format!("{at}.port.number"), p.number);
    }
}

fn http_destinations(f: &mut Findings, at: &str, route: &[HttpRouteDestination]) {
    for (i, d) in route.iter().enumerate() {
        destination(f, &format!("{at}.route[{i}].destination"), &d.destination);
        if let Some(h) = &d.headers {
            headers(f, &format!("{at}.route[{i}].headers"), h);
        }
    }
    weights(
        f,
        &format!("{at}.route"),
        route.iter().map(|d| d.weight).collect(),
    );
}

fn l4_routes(f: &mut Findings, at: &str, route: &[RouteDestination]) {
    if route.is_empty() {
        f.error(
            format!("{at}.route"),
            "Required value: at least one destination",
        );
    }
    for (i, d) in route.iter().enumerate() {
        destination(f, &format!("{at}.route[{i}].destination"), &d.destination);
    }
    weights(
        f,
        &format!("{at}.route"),
        route.iter().map(|d| d.weight).collect(),
    );
}

/// Weights: none negative; with several destinations they sum to 100.
fn weights(f: &mut Findings, at: &str, weights: Vec<Option<i32>>) {
    for (i, w) in weights.iter().enumerate() {
        if let Some(w) = w.filter(|w| *w < 0) {
            f.error(
                format!("{at}[{i}].weight"),
                format!("Invalid value: {w}: weight cannot be negative"),
            );
        }
    }
    if weights.len() > 1 {
        let sum: i64 = weights.iter().map(|w| i64::from(w.unwrap_or(0))).sum();
        if sum != 100 {
            let last = format!("{at}[{}].weight", weights.len() - 1);
            f.error(last, format!("weights sum to {sum}, must be 100"));
        }
    }
}
