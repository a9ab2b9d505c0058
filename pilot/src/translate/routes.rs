//! VirtualService → routes of one proxy: hosts completed in the VirtualService's namespace,
//! delegates merged into their root, matches on the calling workload (`sourceLabels`,
//! `sourceNamespace`, `gateways`) decided here, since pilot knows which workload the proxy
//! serves.

use std::collections::BTreeMap;

use mesh_api::common::StringMatch;
use mesh_api::networking::{
    Destination, HeaderOperations, HttpMatchRequest, HttpRedirect, HttpRoute,
    RedirectPortSelection, RouteDestination, VirtualService,
};
use mesh_api::proto::state::v1 as state;

use super::ProxyNode;
use crate::model::{Model, Selector, host, namespace_of};

/// Istio's retry attempts when a route does not say.
const DEFAULT_RETRIES: u32 = 2;

/// Parses a protobuf duration as Istio writes it (`1.5s`, `100ms`, `2m`, `1h`) to milliseconds.
pub fn duration_ms(text: &str) -> Option<u64> {
    let t = text.trim();
    let (number, scale) = if let Some(n) = t.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, 1000.0)
    } else if let Some(n) = t.strip_suffix('m') {
        (n, 60_000.0)
    } else if let Some(n) = t.strip_suffix('h') {
        (n, 3_600_000.0)
    } else {
        return None;
    };
    let value: f64 = number.parse().ok()?;
    (value >= 0.0).then(|| (value * scale).round() as u64)
}

pub(super) fn string_match(m: &StringMatch) -> state::StringMatch {
    use state::string_match::Kind;
    let kind = if let Some(e) = &m.exact {
        Some(Kind::Exact(e.clone()))
    } else if let Some(p) = &m.prefix {
        Some(Kind::Prefix(p.clone()))
    } else {
        m.regex.as_ref().map(|r| Kind::Regex(r.clone()))
    };
    state::StringMatch { kind }
}

pub(super) fn string_matches(
    map: &BTreeMap<String, StringMatch>,
    lower: bool,
) -> BTreeMap<String, state::StringMatch> {
    map.iter()
        .map(|(k, v)| {
            // A claim's name keeps its case; header names are case-insensitive.
            let key = if lower && !k.starts_with("@request.auth.claims.") {
                k.to_ascii_lowercase()
            } else {
                k.clone()
            };
            (key, string_match(v))
        })
        .collect()
}

fn header_ops(ops: Option<&HeaderOperations>) -> Option<state::HeaderOps> {
    let ops = ops?;
    Some(state::HeaderOps {
        set: ops.set.clone().into_iter().collect(),
        add: ops.add.clone().into_iter().collect(),
        remove: ops.remove.clone(),
    })
}

/// True when a match on `gateways`, `sourceLabels` and `sourceNamespace` can apply to traffic
/// from this sidecar (the same three fields in HTTP, TLS and TCP matches).
fn source_applies(
    gateways: &[String],
    source_labels: &BTreeMap<String, String>,
    source_namespace: &str,
    node: &ProxyNode,
) -> bool {
    let bound = if node.bound_gateway.is_empty() {
        gateways.is_empty() || gateways.iter().any(|g| g == "mesh")
    } else {
        // The VirtualService is bound to this Gateway already; a match narrows it further.
        gateways.is_empty() || gateways.contains(&node.bound_gateway)
    };
    bound
        && Selector::new(source_labels).matches(&node.labels)
        && (source_namespace.is_empty() || source_namespace == node.namespace)
}

/// True when an HTTP match can apply to traffic from this sidecar.
fn applies_to(m: &HttpMatchRequest, node: &ProxyNode) -> bool {
    source_applies(&m.gateways, &m.source_labels, &m.source_namespace, node)
}

fn http_match(m: &HttpMatchRequest) -> state::HttpMatch {
    state::HttpMatch {
        uri: m.uri.as_ref().map(string_match),
        method: m.method.as_ref().map(string_match),
        authority: m.authority.as_ref().map(string_match),
        scheme: m.scheme.as_ref().map(string_match),
        headers: string_matches(&m.headers, true),
        query_params: string_matches(&m.query_params, false),
        without_headers: string_matches(&m.without_headers, true),
        port: m.port.unwrap_or(0),
        // Decided by pilot for this proxy; nothing left for the proxy to check.
        source_labels: Default::default(),
        source_namespace: String::new(),
        ignore_uri_case: m.ignore_uri_case.unwrap_or(false),
    }
}

/// A delegate's match narrowed by its root's: the delegate's fields win where set.
fn merge_match(root: &HttpMatchRequest, delegate: &HttpMatchRequest) -> HttpMatchRequest {
    let mut out = root.clone();
    let d = delegate.clone();
    out.uri = d.uri.or(out.uri);
    out.scheme = d.scheme.or(out.scheme);
    out.method = d.method.or(out.method);
    out.authority = d.authority.or(out.authority);
    out.port = d.port.or(out.port);
    out.ignore_uri_case = d.ignore_uri_case.or(out.ignore_uri_case);
    out.headers.extend(d.headers);
    out.query_params.extend(d.query_params);
    out.without_headers.extend(d.without_headers);
    out.source_labels.extend(d.source_labels);
    if !d.source_namespace.is_empty() {
        out.source_namespace = d.source_namespace;
    }
    out
}

fn destination(
    d: &Destination,
    weight: Option<i32>,
    vs_namespace: &str,
    domain: &str,
) -> state::WeightedDestination {
    state::WeightedDestination {
        host: host::fqdn(&d.host, vs_namespace, domain),
        subset: d.subset.clone(),
        port: d.port.as_ref().and_then(|p| p.number).unwrap_or(0),
        weight: weight.and_then(|w| u32::try_from(w).ok()).unwrap_or(0),
        request_headers: None,
        response_headers: None,
    }
}

/// Weights as the proxy reads them: a lone destination takes everything, and a list that
/// gives no weights at all is split evenly.
fn settle_weights(dests: &mut [state::WeightedDestination]) {
    if dests.len() == 1 {
        dests[0].weight = 100;
    } else if dests.iter().all(|d| d.weight == 0) {
        for d in dests.iter_mut() {
            d.weight = 1;
        }
    }
}

/// The HTTP routes of `vs` for `node`, with delegates resolved from `model`.
pub fn http_routes(model: &Model, vs: &VirtualService, node: &ProxyNode) -> Vec<state::HttpRoute> {
    let ns = namespace_of(&vs.metadata);
    let mut out = Vec::new();
    for route in &vs.spec.http {
        let applicable: Vec<&HttpMatchRequest> = route
            .matches
            .iter()
            .filter(|m| applies_to(m, node))
            .collect();
        if !route.matches.is_empty() && applicable.is_empty() {
            continue;
        }
        if let Some(delegate) = &route.delegate {
            let dns = if delegate.namespace.is_empty() {
                ns
            } else {
                &delegate.namespace
            };
            let Some(child) = model
                .virtual_service_index
                .delegate(dns, &delegate.name)
                .map(|i| &model.virtual_services[i])
            else {
                continue;
            };
            for croute in &child.spec.http {
                let merged: Vec<HttpMatchRequest> =
                    match (applicable.is_empty(), croute.matches.is_empty()) {
                        (true, _) => croute.matches.clone(),
                        (false, true) => applicable.iter().map(|m| (*m).clone()).collect(),
                        (false, false) => applicable
                            .iter()
                            .flat_map(|r| croute.matches.iter().map(|d| merge_match(r, d)))
                            .collect(),
                    };
                let mut c = croute.clone();
                c.matches = merged;
                if let Some(r) = one_route(
                    &c,
                    namespace_of(&child.metadata),
                    node,
                    &model.config.domain,
                ) {
                    out.push(r);
                }
            }
            continue;
        }
        let mut r = route.clone();
        r.matches = applicable.into_iter().cloned().collect();
        if let Some(r) = one_route(&r, ns, node, &model.config.domain) {
            out.push(r);
        }
    }
    out
}

fn one_route(
    route: &HttpRoute,
    ns: &str,
    node: &ProxyNode,
    domain: &str,
) -> Option<state::HttpRoute> {
    let matches: Vec<state::HttpMatch> = route
        .matches
        .iter()
        .filter(|m| applies_to(m, node))
        .map(http_match)
        .collect();
    if !route.matches.is_empty() && matches.is_empty() {
        return None;
    }
    let mut destinations: Vec<state::WeightedDestination> = route
        .route
        .iter()
        .map(|d| {
            let mut w = destination(&d.destination, d.weight, ns, domain);
            let headers = d.headers.as_ref();
            w.request_headers = header_ops(headers.and_then(|h| h.request.as_ref()));
            w.response_headers = header_ops(headers.and_then(|h| h.response.as_ref()));
            w
        })
        .collect();
    settle_weights(&mut destinations);
    let headers = route.headers.as_ref();
    Some(state::HttpRoute {
        name: route.name.clone(),
        matches,
        destinations,
        redirect: route.redirect.as_ref().map(|r| redirect(r, &route.matches)),
        direct_response: route
            .direct_response
            .as_ref()
            .map(|d| state::DirectResponse {
                status: d.status,
                body: d
                    .body
                    .as_ref()
                    .and_then(|b| b.string.clone())
                    .unwrap_or_default(),
            }),
        rewrite: route.rewrite.as_ref().map(|r| state::Rewrite {
            uri: r.uri.clone(),
            authority: r.authority.clone(),
            uri_regex: r
                .uri_regex_rewrite
                .as_ref()
                .map(|x| x.pattern.clone())
                .unwrap_or_default(),
            uri_regex_substitution: r
                .uri_regex_rewrite
                .as_ref()
                .map(|x| x.rewrite.clone())
                .unwrap_or_default(),
        }),
        request_headers: header_ops(headers.and_then(|h| h.request.as_ref())),
        response_headers: header_ops(headers.and_then(|h| h.response.as_ref())),
        cors: route.cors_policy.as_ref().map(|c| state::Cors {
            allow_origins: c
                .allow_origins
                .iter()
                .map(string_match)
                .chain(c.allow_origin.iter().map(|o| state::StringMatch {
                    kind: Some(state::string_match::Kind::Exact(o.clone())),
                }))
                .collect(),
            allow_methods: c.allow_methods.clone(),
            allow_headers: c.allow_headers.clone(),
            expose_headers: c.expose_headers.clone(),
            max_age_seconds: c
                .max_age
                .as_deref()
                .and_then(duration_ms)
                .map_or(0, |ms| ms / 1000),
            allow_credentials: c.allow_credentials.unwrap_or(false),
        }),
        timeout_ms: route.timeout.as_deref().and_then(duration_ms).unwrap_or(0),
        retries: route
            .retries
            .as_ref()
            .map_or(DEFAULT_RETRIES, |r| u32::try_from(r.attempts).unwrap_or(0)),
        fault: route.fault.as_ref().map(fault),
        retry: retry_policy(route.retries.as_ref()),
        mirrors: mirrors(route, ns, domain),
    })
}

/// A route's mirrors: `mirror` with `mirrorPercentage` (or the deprecated integer
/// `mirrorPercent`; 100% when neither is set, as in Istio), and each of `mirrors`.
fn mirrors(route: &HttpRoute, ns: &str, domain: &str) -> Vec<state::Mirror> {
    let one = |d: &mesh_api::networking::Destination, percent: f64| {
        let w = destination(d, None, ns, domain);
        state::Mirror {
            host: w.host,
            subset: w.subset,
            port: w.port,
            percent,
        }
    };
    let mut out = Vec::new();
    if let Some(d) = &route.mirror {
        let percent = route
            .mirror_percentage
            .as_ref()
            .map(|p| p.value)
            .or(route.mirror_percent.map(f64::from))
            .unwrap_or(100.0);
        out.push(one(d, percent));
    }
    for m in &route.mirrors {
        out.push(one(
            &m.destination,
            m.percentage.as_ref().map_or(100.0, |p| p.value),
        ));
    }
    out
}

/// Istio's retry conditions when a route does not say (or says only how many attempts).
const DEFAULT_RETRY_ON: [&str; 5] = [
    "connect-failure",
    "refused-stream",
    "unavailable",
    "cancelled",
    "retriable-status-codes",
];

/// A route's `retries` as Istio translates them: unset, two attempts on Istio's default
/// conditions and 503; `attempts: 0`, none; `retryOn` replaces the conditions, its numbers
/// becoming the retriable status codes.
fn retry_policy(r: Option<&mesh_api::networking::HttpRetry>) -> Option<state::RetryPolicy> {
    let mut out = state::RetryPolicy {
        attempts: DEFAULT_RETRIES,
        retry_on: DEFAULT_RETRY_ON.map(String::from).to_vec(),
        retriable_status_codes: vec![503],
        ..Default::default()
    };
    let Some(r) = r else { return Some(out) };
    out.attempts = u32::try_from(r.attempts).unwrap_or(0);
    if out.attempts == 0 {
        return None;
    }
    out.per_try_timeout_ms = r
        .per_try_timeout
        .as_deref()
        .and_then(duration_ms)
        .unwrap_or(0);
    out.backoff_base_ms = r.backoff.as_deref().and_then(duration_ms).unwrap_or(0);
    out.retry_remote_localities = r.retry_remote_localities.unwrap_or(false);
    if !r.retry_on.is_empty() {
        out.retry_on.clear();
        out.retriable_status_codes.clear();
        for cond in r
            .retry_on
            .split(',')
            .map(str::trim)
            .filter(|c| !c.is_empty())
        {
            match cond.parse::<u32>() {
                Ok(code) => out.retriable_status_codes.push(code),
                Err(_) => out.retry_on.push(cond.to_string()),
            }
        }
        let named = out.retry_on.iter().any(|c| c == "retriable-status-codes");
        if !out.retriable_status_codes.is_empty() && !named {
            out.retry_on.push("retriable-status-codes".into());
        }
    }
    Some(out)
}

/// A route's `fault`. An unset share injects nothing, as in Istio (Envoy's fault filter reads
/// an absent percentage as 0); the deprecated integer `percent` of a delay still counts.
fn fault(f: &mesh_api::networking::HttpFaultInjection) -> state::FaultInjection {
    let mut out = state::FaultInjection::default();
    if let Some(d) = &f.delay {
        out.delay_ms = d.fixed_delay.as_deref().and_then(duration_ms).unwrap_or(0);
        out.delay_percent = d
            .percentage
            .as_ref()
            .map(|p| p.value)
            .or(d.percent.map(f64::from))
            .unwrap_or(0.0);
    }
    if let Some(a) = &f.abort {
        out.abort_http_status = a
            .http_status
            .and_then(|s| u32::try_from(s).ok())
            .unwrap_or(0);
        if let Some(code) = a
            .grpc_status
            .as_deref()
            .and_then(mesh_api::networking::grpc_code)
        {
            out.abort_grpc_status = code;
            out.has_abort_grpc = true;
        }
        out.abort_percent = a.percentage.as_ref().map_or(0.0, |p| p.value);
    }
    out
}

fn l4_destinations(
    route: &[RouteDestination],
    ns: &str,
    domain: &str,
) -> Vec<state::WeightedDestination> {
    let mut d: Vec<_> = route
        .iter()
        .map(|r| destination(&r.destination, r.weight, ns, domain))
        .collect();
    settle_weights(&mut d);
    d
}

/// The TCP routes of `vs` for `node`.
pub fn tcp_routes(model: &Model, vs: &VirtualService, node: &ProxyNode) -> Vec<state::TcpRoute> {
    let ns = namespace_of(&vs.metadata);
    let mut out = Vec::new();
    for route in &vs.spec.tcp {
        let dests = l4_destinations(&route.route, ns, &model.config.domain);
        let applicable: Vec<_> = route
            .matches
            .iter()
            .filter(|m| source_applies(&m.gateways, &m.source_labels, &m.source_namespace, node))
            .collect();
        if route.matches.is_empty() {
            out.push(state::TcpRoute {
                port: 0,
                destinations: dests,
            });
        } else {
            for m in applicable {
                out.push(state::TcpRoute {
                    port: m.port.unwrap_or(0),
                    destinations: dests.clone(),
                });
            }
        }
    }
    out
}

/// The TLS routes of `vs` for `node`.
pub fn tls_routes(model: &Model, vs: &VirtualService, node: &ProxyNode) -> Vec<state::TlsRoute> {
    let ns = namespace_of(&vs.metadata);
    let mut out = Vec::new();
    for route in &vs.spec.tls {
        let dests = l4_destinations(&route.route, ns, &model.config.domain);
        for m in route
            .matches
            .iter()
            .filter(|m| source_applies(&m.gateways, &m.source_labels, &m.source_namespace, node))
        {
            out.push(state::TlsRoute {
                sni_hosts: m.sni_hosts.clone(),
                port: m.port.unwrap_or(0),
                destinations: dests.clone(),
            });
        }
    }
    out
}

/// A redirect; a generated Gateway API prefix redirect (`%PREFIX()%rest`) becomes a regex on
/// the path that replaces the prefix the route matched.
fn redirect(r: &HttpRedirect, matches: &[HttpMatchRequest]) -> state::Redirect {
    use crate::model::gateway_api::{PREFIX_MARKER, prefix_rewrite};
    let mut out = state::Redirect {
        uri: r.uri.clone(),
        authority: r.authority.clone(),
        port: r.port.unwrap_or(0),
        scheme: r.scheme.clone(),
        code: r.redirect_code.unwrap_or(301),
        protocol_default_port: r.derive_port == Some(RedirectPortSelection::FromProtocolDefault),
        ..state::Redirect::default()
    };
    if let Some(rest) = r.uri.strip_prefix(PREFIX_MARKER) {
        let prefix = matches
            .iter()
            .filter_map(|m| m.uri.as_ref())
            .find_map(|u| u.exact.as_deref().or(u.prefix.as_deref()))
            .unwrap_or("/")
            .trim_end_matches('/');
        let re = prefix_rewrite(prefix, rest);
        out.uri = String::new();
        out.uri_regex = re.pattern;
        out.uri_regex_substitution = re.rewrite;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::duration_ms;

    #[test]
    fn durations() {
        assert_eq!(duration_ms("10s"), Some(10_000));
        assert_eq!(duration_ms("0.5s"), Some(500));
        assert_eq!(duration_ms("250ms"), Some(250));
        assert_eq!(duration_ms("2m"), Some(120_000));
        assert_eq!(duration_ms("1h"), Some(3_600_000));
        assert_eq!(duration_ms("ten"), None);
    }
}
