//! The Gateway API's own rules (its CRD schemas and CEL validations): what the API server
//! would refuse, refused here with the field and the fix.

use std::collections::BTreeSet;

use super::Findings;
use super::checks;
use crate::gateway_api::{
    GRPCRouteSpec, GatewayClassSpec, GatewaySpec, HTTPBackendRef, HTTPHeaderMatch,
    HTTPPathModifier, HTTPRouteFilter, HTTPRouteSpec, ParentReference, ReferenceGrantSpec,
};

pub(crate) fn gateway_class(f: &mut Findings, spec: &GatewayClassSpec) {
    if spec.controller_name.is_empty() {
        f.error(
            "spec.controllerName",
            "Required value: name the controller, e.g. istio.io/gateway-controller",
        );
    }
}

pub(crate) fn gateway(f: &mut Findings, spec: &GatewaySpec) {
    if spec.gateway_class_name.is_empty() {
        f.error(
            "spec.gatewayClassName",
            "Required value: name a GatewayClass, e.g. istio",
        );
    }
    if spec.listeners.is_empty() {
        f.error("spec.listeners", "Required value: at least one listener");
    }
    if spec.listeners.len() > 64 {
        f.error("spec.listeners", "at most 64 listeners");
    }
    let mut names = BTreeSet::new();
    let mut combos = BTreeSet::new();
    for (i, l) in spec.listeners.iter().enumerate() {
        let at = format!("spec.listeners[{i}]");
        if l.name.is_empty() || !checks::is_dns1123_subdomain(&l.name) {
            f.error(
                format!("{at}.name"),
                format!(
                    "{:?} is not a valid listener name: lowercase letters, digits, '-' and '.'",
                    l.name
                ),
            );
        } else if !names.insert(l.name.as_str()) {
            f.error(
                format!("{at}.name"),
                format!(
                    "{:?} is used by another listener; names must be unique",
                    l.name
                ),
            );
        }
        if l.port == 0 {
            f.error(
                format!("{at}.port"),
                "Required value: a port from 1 to 65535",
            );
        }
        if l.protocol.is_empty() {
            f.error(
                format!("{at}.protocol"),
                "Required value: HTTP, HTTPS, TLS, TCP or UDP",
            );
        }
        if let Some(h) = &l.hostname {
            hostname(f, &format!("{at}.hostname"), h);
            if matches!(l.protocol.as_str(), "TCP" | "UDP") {
                f.error(
                    format!("{at}.hostname"),
                    "hostname must not be set when protocol is TCP or UDP",
                );
            }
        }
        let tls_protocol = matches!(l.protocol.as_str(), "HTTPS" | "TLS");
        match &l.tls {
            None if l.protocol == "HTTPS" => f.error(
                format!("{at}.tls"),
                "Required value: an HTTPS listener needs tls with certificateRefs",
            ),
            None if l.protocol == "TLS" => f.error(
                format!("{at}.tls"),
                "Required value: a TLS listener needs tls (mode Passthrough, or certificateRefs)",
            ),
            Some(_) if matches!(l.protocol.as_str(), "HTTP" | "TCP" | "UDP") => f.error(
                format!("{at}.tls"),
                format!("tls must not be set for protocol {}", l.protocol),
            ),
            Some(t) if tls_protocol => {
                let mode = t.mode.as_deref().unwrap_or("Terminate");
                match mode {
                    "Terminate" if t.certificate_refs.is_empty() && t.options.is_empty() => f
                        .error(
                            format!("{at}.tls.certificateRefs"),
                            "Required value: certificateRefs (or options) when mode is Terminate",
                        ),
                    "Terminate" | "Passthrough" => {}
                    other => f.error(
                        format!("{at}.tls.mode"),
                        format!("{other:?}: use Terminate or Passthrough"),
                    ),
                }
                if mode == "Passthrough" && l.protocol == "HTTPS" {
                    f.error(
                        format!("{at}.tls.mode"),
                        "Passthrough is for TLS listeners; an HTTPS listener terminates",
                    );
                }
            }
            _ => {}
        }
        if let Some(ns) = l
            .allowed_routes
            .as_ref()
            .and_then(|a| a.namespaces.as_ref())
        {
            match ns.from.as_deref().unwrap_or("Same") {
                "Same" | "All" => {}
                "Selector" if ns.selector.is_none() => f.error(
                    format!("{at}.allowedRoutes.namespaces.selector"),
                    "Required value: a selector when from is Selector",
                ),
                "Selector" => {}
                other => f.error(
                    format!("{at}.allowedRoutes.namespaces.from"),
                    format!("{other:?}: use Same, All or Selector"),
                ),
            }
        }
        let combo = (l.port, l.protocol.as_str(), l.hostname.as_deref());
        if !combos.insert(combo) {
            f.error(
                &at,
                "another listener has the same port, protocol and hostname; each combination must be unique",
            );
        }
    }
}

pub(crate) fn http_route(f: &mut Findings, spec: &HTTPRouteSpec) {
    parent_refs(f, &spec.parent_refs);
    for (i, h) in spec.hostnames.iter().enumerate() {
        hostname(f, &format!("spec.hostnames[{i}]"), h);
    }
    for (i, rule) in spec.rules.iter().enumerate() {
        let at = format!("spec.rules[{i}]");
        for (j, m) in rule.matches.iter().enumerate() {
            let mat = format!("{at}.matches[{j}]");
            if let Some(p) = &m.path {
                let value = p.value.as_deref().unwrap_or("/");
                match p.type_.as_deref().unwrap_or("PathPrefix") {
                    "Exact" | "PathPrefix" => {
                        if !value.starts_with('/') {
                            f.error(format!("{mat}.path.value"), "the path must start with '/'");
                        }
                        if value.contains("//") || value.contains("/./") || value.contains("/../") {
                            f.error(
                                format!("{mat}.path.value"),
                                "the path must not contain '//', '/./' or '/../'",
                            );
                        }
                    }
                    "RegularExpression" => {
                        checks::regex(f, &format!("{mat}.path.value"), value);
                    }
                    other => f.error(
                        format!("{mat}.path.type"),
                        format!("{other:?}: use Exact, PathPrefix or RegularExpression"),
                    ),
                }
            }
            header_matches(f, &format!("{mat}.headers"), &m.headers, true);
            header_matches(f, &format!("{mat}.queryParams"), &m.query_params, false);
            if let Some(method) = &m.method
                && !matches!(
                    method.as_str(),
                    "GET"
                        | "HEAD"
                        | "POST"
                        | "PUT"
                        | "DELETE"
                        | "CONNECT"
                        | "OPTIONS"
                        | "TRACE"
                        | "PATCH"
                )
            {
                f.error(
                    format!("{mat}.method"),
                    format!("{method:?} is not an HTTP method (GET, POST, PUT, ...)"),
                );
            }
        }
        let prefix_matched = rule.matches.is_empty()
            || rule.matches.iter().all(|m| {
                m.path
                    .as_ref()
                    .is_none_or(|p| p.type_.as_deref().unwrap_or("PathPrefix") == "PathPrefix")
            });
        filters(f, &format!("{at}.filters"), &rule.filters, prefix_matched);
        if rule.filters.iter().any(|x| x.type_ == "RequestRedirect")
            && !rule.backend_refs.is_empty()
        {
            f.error(
                format!("{at}.backendRefs"),
                "a rule with a RequestRedirect filter answers the request itself; remove its backendRefs",
            );
        }
        backend_refs(f, &at, &rule.backend_refs, prefix_matched);
        if let Some(t) = &rule.timeouts {
            let request = duration(f, &format!("{at}.timeouts.request"), t.request.as_deref());
            let backend = duration(
                f,
                &format!("{at}.timeouts.backendRequest"),
                t.backend_request.as_deref(),
            );
            if let (Some(r), Some(b)) = (request, backend)
                && !r.is_zero()
                && b > r
            {
                f.error(
                    format!("{at}.timeouts.backendRequest"),
                    "backendRequest must not be longer than request",
                );
            }
        }
        if let Some(r) = &rule.retry {
            for (k, code) in r.codes.iter().enumerate() {
                if !(400..=599).contains(code) {
                    f.error(
                        format!("{at}.retry.codes[{k}]"),
                        format!("{code} is not a 4xx or 5xx status"),
                    );
                }
            }
            duration(f, &format!("{at}.retry.backoff"), r.backoff.as_deref());
        }
    }
}

pub(crate) fn grpc_route(f: &mut Findings, spec: &GRPCRouteSpec) {
    parent_refs(f, &spec.parent_refs);
    for (i, h) in spec.hostnames.iter().enumerate() {
        hostname(f, &format!("spec.hostnames[{i}]"), h);
    }
    for (i, rule) in spec.rules.iter().enumerate() {
        let at = format!("spec.rules[{i}]");
        for (j, m) in rule.matches.iter().enumerate() {
            let mat = format!("{at}.matches[{j}]");
            if let Some(method) = &m.method {
                let exact = match method.type_.as_deref().unwrap_or("Exact") {
                    "Exact" => true,
                    "RegularExpression" => false,
                    other => {
                        f.error(
                            format!("{mat}.method.type"),
                            format!("{other:?}: use Exact or RegularExpression"),
                        );
                        true
                    }
                };
                if method.service.is_none() && method.method.is_none() {
                    f.error(
                        format!("{mat}.method"),
                        "one or both of service and method must be set",
                    );
                }
                for (field, value) in [("service", &method.service), ("method", &method.method)] {
                    let Some(v) = value else { continue };
                    if exact && v.contains('/') {
                        f.error(
                            format!("{mat}.method.{field}"),
                            format!("{v:?} must not contain '/'"),
                        );
                    } else if !exact {
                        checks::regex(f, &format!("{mat}.method.{field}"), v);
                    }
                }
            }
            header_matches(f, &format!("{mat}.headers"), &m.headers, true);
        }
        filters(f, &format!("{at}.filters"), &rule.filters, false);
        for (k, x) in rule.filters.iter().enumerate() {
            if !matches!(
                x.type_.as_str(),
                "RequestHeaderModifier"
                    | "ResponseHeaderModifier"
                    | "RequestMirror"
                    | "ExtensionRef"
            ) {
                f.error(
                    format!("{at}.filters[{k}].type"),
                    format!(
                        "{:?} is not a GRPCRoute filter: use RequestHeaderModifier, ResponseHeaderModifier, RequestMirror or ExtensionRef",
                        x.type_
                    ),
                );
            }
        }
        backend_refs(f, &at, &rule.backend_refs, false);
    }
}

pub(crate) fn reference_grant(f: &mut Findings, spec: &ReferenceGrantSpec) {
    if spec.from.is_empty() {
        f.error("spec.from", "Required value: at least one from entry");
    }
    if spec.to.is_empty() {
        f.error("spec.to", "Required value: at least one to entry");
    }
    for (i, from) in spec.from.iter().enumerate() {
        if from.kind.is_empty() {
            f.error(format!("spec.from[{i}].kind"), "Required value: a kind");
        }
        if from.namespace.is_empty() {
            f.error(
                format!("spec.from[{i}].namespace"),
                "Required value: a namespace",
            );
        }
    }
    for (i, to) in spec.to.iter().enumerate() {
        if to.kind.is_empty() {
            f.error(format!("spec.to[{i}].kind"), "Required value: a kind");
        }
    }
}

fn parent_refs(f: &mut Findings, refs: &[ParentReference]) {
    if refs.len() > 32 {
        f.error("spec.parentRefs", "at most 32 parentRefs");
    }
    for (i, p) in refs.iter().enumerate() {
        if p.name.is_empty() {
            f.error(
                format!("spec.parentRefs[{i}].name"),
                "Required value: a name",
            );
        }
    }
}

/// A Gateway API hostname: a DNS name, optionally with a leading `*.`; no IP, no port.
fn hostname(f: &mut Findings, field: &str, h: &str) {
    let bare = h.strip_prefix("*.").unwrap_or(h);
    let ok = !bare.is_empty()
        && bare.parse::<std::net::IpAddr>().is_err()
        && checks::is_dns1123_subdomain(bare);
    if !ok {
        f.error(
            field,
            format!("{h:?} is not a hostname: a DNS name, optionally starting with '*.' (no IP, no port)"),
        );
    }
}

fn header_matches(f: &mut Findings, at: &str, list: &[HTTPHeaderMatch], headers: bool) {
    let mut seen = BTreeSet::new();
    for (k, h) in list.iter().enumerate() {
        let field = format!("{at}[{k}]");
        if h.name.is_empty() || headers && !checks::header_name(&h.name) {
            f.error(
                format!("{field}.name"),
                format!("{:?} is not a valid name", h.name),
            );
        }
        let key = if headers {
            h.name.to_ascii_lowercase()
        } else {
            h.name.clone()
        };
        if !seen.insert(key) {
            f.error(
                format!("{field}.name"),
                format!("{:?} is matched twice; each name may appear once", h.name),
            );
        }
        match h.type_.as_deref().unwrap_or("Exact") {
            "Exact" => {}
            "RegularExpression" => checks::regex(f, &format!("{field}.value"), &h.value),
            other => f.error(
                format!("{field}.type"),
                format!("{other:?}: use Exact or RegularExpression"),
            ),
        }
    }
}

fn filters(f: &mut Findings, at: &str, list: &[HTTPRouteFilter], prefix_matched: bool) {
    let mut redirect = false;
    let mut rewrite = false;
    for (k, x) in list.iter().enumerate() {
        let field = format!("{at}[{k}]");
        let (name, set) = match x.type_.as_str() {
            "RequestHeaderModifier" => {
                ("requestHeaderModifier", x.request_header_modifier.is_some())
            }
            "ResponseHeaderModifier" => (
                "responseHeaderModifier",
                x.response_header_modifier.is_some(),
            ),
            "RequestMirror" => ("requestMirror", x.request_mirror.is_some()),
            "RequestRedirect" => ("requestRedirect", x.request_redirect.is_some()),
            "URLRewrite" => ("urlRewrite", x.url_rewrite.is_some()),
            "CORS" => ("cors", x.cors.is_some()),
            "ExtensionRef" => ("extensionRef", x.extension_ref.is_some()),
            other => {
                f.error(
                    format!("{field}.type"),
                    format!("{other:?}: use RequestHeaderModifier, ResponseHeaderModifier, RequestMirror, RequestRedirect, URLRewrite, CORS or ExtensionRef"),
                );
                continue;
            }
        };
        let others = [
            x.request_header_modifier.is_some(),
            x.response_header_modifier.is_some(),
            x.request_mirror.is_some(),
            x.request_redirect.is_some(),
            x.url_rewrite.is_some(),
            x.cors.is_some(),
            x.extension_ref.is_some(),
        ]
        .iter()
        .filter(|s| **s)
        .count();
        if !set {
            f.error(
                format!("{field}.{name}"),
                format!("Required value: type {} needs {name}", x.type_),
            );
        } else if others > 1 {
            f.error(
                &field,
                format!("only {name} may be set for type {}", x.type_),
            );
        }
        redirect |= x.type_ == "RequestRedirect";
        rewrite |= x.type_ == "URLRewrite";
        for m in [&x.request_header_modifier, &x.response_header_modifier]
            .into_iter()
            .flatten()
        {
            let mut names = BTreeSet::new();
            for h in m.set.iter().chain(&m.add) {
                if !checks::header_name(&h.name) {
                    f.error(&field, format!("{:?} is not a valid header name", h.name));
                }
                if !names.insert(h.name.to_ascii_lowercase()) {
                    f.error(&field, format!("header {:?} is set or added twice", h.name));
                }
            }
        }
        if let Some(r) = &x.request_redirect {
            if let Some(code) = r.status_code
                && ![301, 302, 303, 307, 308].contains(&code)
            {
                f.error(
                    format!("{field}.requestRedirect.statusCode"),
                    format!("{code}: use 301, 302, 303, 307 or 308"),
                );
            }
            if let Some(s) = &r.scheme
                && !matches!(s.as_str(), "http" | "https")
            {
                f.error(
                    format!("{field}.requestRedirect.scheme"),
                    format!("{s:?}: use http or https"),
                );
            }
            if let Some(h) = &r.hostname {
                hostname(f, &format!("{field}.requestRedirect.hostname"), h);
            }
            path_modifier(
                f,
                &format!("{field}.requestRedirect.path"),
                r.path.as_ref(),
                prefix_matched,
            );
        }
        if let Some(r) = &x.url_rewrite {
            if let Some(h) = &r.hostname {
                hostname(f, &format!("{field}.urlRewrite.hostname"), h);
            }
            path_modifier(
                f,
                &format!("{field}.urlRewrite.path"),
                r.path.as_ref(),
                prefix_matched,
            );
        }
        if let Some(m) = &x.request_mirror {
            if m.percent.is_some() && m.fraction.is_some() {
                f.error(
                    format!("{field}.requestMirror"),
                    "set percent or fraction, not both",
                );
            }
            if m.percent.is_some_and(|p| p > 100) {
                f.error(
                    format!("{field}.requestMirror.percent"),
                    "a percentage from 0 to 100",
                );
            }
            if let Some(fr) = &m.fraction
                && (fr.denominator == Some(0) || fr.numerator > fr.denominator.unwrap_or(100))
            {
                f.error(
                    format!("{field}.requestMirror.fraction"),
                    "numerator must not exceed a non-zero denominator",
                );
            }
        }
    }
    if redirect && rewrite {
        f.error(
            at,
            "RequestRedirect and URLRewrite cannot be used together in one rule",
        );
    }
}

fn path_modifier(f: &mut Findings, field: &str, p: Option<&HTTPPathModifier>, prefix: bool) {
    let Some(p) = p else { return };
    match p.type_.as_str() {
        "ReplaceFullPath" if p.replace_full_path.is_none() => f.error(
            format!("{field}.replaceFullPath"),
            "Required value: replaceFullPath when type is ReplaceFullPath",
        ),
        "ReplacePrefixMatch" if p.replace_prefix_match.is_none() => f.error(
            format!("{field}.replacePrefixMatch"),
            "Required value: replacePrefixMatch when type is ReplacePrefixMatch",
        ),
        "ReplacePrefixMatch" if !prefix => f.error(
            format!("{field}.type"),
            "ReplacePrefixMatch needs every match of the rule to be a PathPrefix match",
        ),
        "ReplaceFullPath" | "ReplacePrefixMatch" => {}
        other => f.error(
            format!("{field}.type"),
            format!("{other:?}: use ReplaceFullPath or ReplacePrefixMatch"),
        ),
    }
}

fn backend_refs(f: &mut Findings, at: &str, refs: &[HTTPBackendRef], prefix_matched: bool) {
    for (k, b) in refs.iter().enumerate() {
        let field = format!("{at}.backendRefs[{k}]");
        if b.name.is_empty() {
            f.error(format!("{field}.name"), "Required value: a name");
        }
        let service = b.group.as_deref().unwrap_or("").is_empty()
            && b.kind.as_deref().unwrap_or("Service") == "Service";
        if service && b.port.is_none() {
            f.error(
                format!("{field}.port"),
                "Required value: the Service's port",
            );
        }
        if b.weight.is_some_and(|w| w > 1_000_000) {
            f.error(format!("{field}.weight"), "a weight from 0 to 1000000");
        }
        filters(f, &format!("{field}.filters"), &b.filters, prefix_matched);
    }
}

/// A Gateway API duration (`1h`, `10s`, `500ms`, up to four parts); its value when valid.
fn duration(f: &mut Findings, field: &str, value: Option<&str>) -> Option<std::time::Duration> {
    let v = value?;
    let mut rest = v;
    let mut parts = 0;
    let mut total = std::time::Duration::ZERO;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit_len = if rest[digits..].starts_with("ms") {
            2
        } else if rest[digits..].starts_with(['h', 'm', 's']) {
            1
        } else {
            0
        };
        if digits == 0 || digits > 5 || unit_len == 0 {
            parts = 5;
            break;
        }
        let n: u64 = rest[..digits].parse().unwrap_or(0);
        total += match &rest[digits..digits + unit_len] {
            "h" => std::time::Duration::from_secs(n * 3600),
            "m" => std::time::Duration::from_secs(n * 60),
            "s" => std::time::Duration::from_secs(n),
            _ => std::time::Duration::from_millis(n),
        };
        rest = &rest[digits + unit_len..];
        parts += 1;
    }
    if parts == 0 || parts > 4 {
        f.error(
            field,
            format!("{v:?} is not a Gateway API duration: up to four parts of 1-5 digits and h, m, s or ms (e.g. 10s, 1m30s, 500ms)"),
        );
        return None;
    }
    Some(total)
}

/// Parses a Gateway API duration already validated (`None` when it does not parse).
pub fn parse_gateway_duration(v: &str) -> Option<std::time::Duration> {
    let mut f = Findings::default();
    duration(&mut f, "", Some(v))
}
