//! VirtualService semantics for one request: the first route whose matches (OR-ed; all fields
//! of one match AND-ed) accept the request wins.

use std::net::SocketAddr;

use hyper::{HeaderMap, Request};

use crate::state::{State, proto};
use proto::string_match::Kind;

/// The request facts routes can match on.
pub struct RequestFacts<'a> {
    /// Method.
    pub method: &'a str,
    /// Path without the query.
    pub path: &'a str,
    /// The query string, without `?`.
    pub query: &'a str,
    /// Authority (Host header or `:authority`).
    pub authority: &'a str,
    /// `http` or `https`.
    pub scheme: &'a str,
    /// Headers.
    pub headers: &'a HeaderMap,
    /// The port the workload addressed.
    pub port: u16,
    /// The claims of the request's verified JWT, where policies were applied before routing
    /// (gateways): what `@request.auth.claims.*` header matches read.
    pub claims: Option<&'a serde_json::Value>,
}

/// The header-match prefix Istio uses for JWT claims (`@request.auth.claims.groups`, nested
/// as `@request.auth.claims.a.b`).
pub const CLAIMS: &str = "@request.auth.claims.";

/// The values of claim `path` (dot-separated, nested) in `claims`: a string, each element of a
/// list, or a number or boolean written out.
fn claim_values(claims: &serde_json::Value, path: &str) -> Vec<String> {
    let mut at = claims;
    for part in path.split('.') {
        match at.get(part) {
            Some(v) => at = v,
            None => return Vec::new(),
        }
    }
    let one = |v: &serde_json::Value| match v {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        serde_json::Value::Bool(b) => Some(b.to_string()),
        _ => None,
    };
    match at {
        serde_json::Value::Array(items) => items.iter().filter_map(one).collect(),
        other => one(other).into_iter().collect(),
    }
}

/// Whether a claim match holds: some value of the claim matches (none without claims).
fn claim_matches(
    state: &State,
    claims: Option<&serde_json::Value>,
    path: &str,
    sm: &proto::StringMatch,
) -> bool {
    claims.is_some_and(|c| {
        claim_values(c, path)
            .iter()
            .any(|v| string_match(state, sm, v, false))
    })
}

/// Who sends the request (the proxy's own workload, for outbound).
#[derive(Default)]
pub struct SourceFacts<'a> {
    /// Workload labels.
    pub labels: Option<&'a std::collections::BTreeMap<String, String>>,
    /// Workload namespace.
    pub namespace: &'a str,
}

/// The first route that matches, if any.
pub fn find<'r>(
    state: &State,
    routes: &'r [proto::HttpRoute],
    req: &RequestFacts<'_>,
    src: &SourceFacts<'_>,
) -> Option<&'r proto::HttpRoute> {
    routes
        .iter()
        .find(|r| r.matches.is_empty() || r.matches.iter().any(|m| matches(state, m, req, src)))
}

/// The match of `route` that accepted the request (for prefix rewrites), if any.
pub fn matching<'r>(
    state: &State,
    route: &'r proto::HttpRoute,
    req: &RequestFacts<'_>,
    src: &SourceFacts<'_>,
) -> Option<&'r proto::HttpMatch> {
    route.matches.iter().find(|m| matches(state, m, req, src))
}

/// True when any of `matches` accepts the request (rate limits' matches).
pub fn any_matches(
    state: &State,
    matches: &[proto::HttpMatch],
    req: &RequestFacts<'_>,
    src: &SourceFacts<'_>,
) -> bool {
    matches.iter().any(|m| self::matches(state, m, req, src))
}

fn matches(
    state: &State,
    m: &proto::HttpMatch,
    req: &RequestFacts<'_>,
    src: &SourceFacts<'_>,
) -> bool {
    let field = |sm: &Option<proto::StringMatch>, value: &str, fold: bool| {
        sm.as_ref()
            .is_none_or(|sm| string_match(state, sm, value, fold))
    };
    if !field(&m.uri, req.path, m.ignore_uri_case)
        || !field(&m.method, req.method, false)
        || !field(&m.authority, req.authority, false)
        || !field(&m.scheme, req.scheme, false)
    {
        return false;
    }
    if m.port != 0 && m.port != u32::from(req.port) {
        return false;
    }
    for (name, sm) in &m.headers {
        if let Some(path) = name.strip_prefix(CLAIMS) {
            if !claim_matches(state, req.claims, path, sm) {
                return false;
            }
            continue;
        }
        match header(req.headers, name) {
            Some(v) if string_match(state, sm, &v, false) => {}
            _ => return false,
        }
    }
    for (name, sm) in &m.without_headers {
        if let Some(path) = name.strip_prefix(CLAIMS) {
            if claim_matches(state, req.claims, path, sm) {
                return false;
            }
            continue;
        }
        if let Some(v) = header(req.headers, name)
            && string_match(state, sm, &v, false)
        {
            return false;
        }
    }
    for (name, sm) in &m.query_params {
        match query_param(req.query, name) {
            Some(v) if string_match(state, sm, &v, false) => {}
            _ => return false,
        }
    }
    if !m.source_labels.is_empty() {
        let Some(labels) = src.labels else {
            return false;
        };
        if !m
            .source_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
        {
            return false;
        }
    }
    m.source_namespace.is_empty() || m.source_namespace == src.namespace
}

/// A header's values joined by `,` (as a proxy sees repeated headers).
fn header(headers: &HeaderMap, name: &str) -> Option<String> {
    let mut values = headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .peekable();
    values.peek()?;
    Some(values.collect::<Vec<_>>().join(","))
}

/// The first value of query parameter `name` (percent-decoding is not applied, as Envoy).
fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then(|| v.to_string())
    })
}

/// Matches one value; a match with no kind means "present" (headers and query parameters).
pub fn string_match(state: &State, sm: &proto::StringMatch, value: &str, fold_case: bool) -> bool {
    match &sm.kind {
        None => true,
        Some(Kind::Exact(e)) if fold_case => value.eq_ignore_ascii_case(e),
        Some(Kind::Exact(e)) => value == e,
        Some(Kind::Prefix(p)) if fold_case => {
            value.len() >= p.len()
                && value.is_char_boundary(p.len())
                && value[..p.len()].eq_ignore_ascii_case(p)
        }
        Some(Kind::Prefix(p)) => value.starts_with(p.as_str()),
        Some(Kind::Regex(r)) => state.regex(r).is_some_and(|re| re.is_match(value)),
    }
}

/// The consistent-hash key of a request under a policy: a header, a cookie, the source IP or a
/// query parameter. A request without the key is load balanced as usual.
pub fn request_hash_key<B>(
    req: &Request<B>,
    peer: SocketAddr,
) -> impl Fn(&proto::ConsistentHash) -> Option<u64> + '_ {
    use super::hash_str;
    use proto::consistent_hash::Key;
    move |policy| {
        let value = match policy.key.as_ref()? {
            Key::HttpHeaderName(name) => {
                req.headers().get(name.as_str())?.to_str().ok()?.to_string()
            }
            Key::HttpCookie(name) => req
                .headers()
                .get_all(hyper::header::COOKIE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(';'))
                .find_map(|c| {
                    c.trim()
                        .strip_prefix(name.as_str())?
                        .strip_prefix('=')
                        .map(str::to_string)
                })?,
            Key::UseSourceIp(true) => peer.ip().to_string(),
            Key::UseSourceIp(false) => return None,
            Key::HttpQueryParameterName(name) => req.uri().query()?.split('&').find_map(|p| {
                p.strip_prefix(name.as_str())?
                    .strip_prefix('=')
                    .map(str::to_string)
            })?,
        };
        Some(hash_str(&value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    fn sm(kind: Kind) -> Option<proto::StringMatch> {
        Some(proto::StringMatch { kind: Some(kind) })
    }

    fn route(name: &str, m: proto::HttpMatch) -> proto::HttpRoute {
        proto::HttpRoute {
            name: name.into(),
            matches: vec![m],
            ..Default::default()
        }
    }

    fn state_with(routes: Vec<proto::HttpRoute>) -> State {
        State::compile(proto::ProxyState {
            services: vec![proto::Service {
                hostname: "r.default.svc.cluster.local".into(),
                http_routes: routes,
                ..Default::default()
            }],
            ..Default::default()
        })
        .unwrap()
    }

    fn facts<'a>(
        method: &'a str,
        path: &'a str,
        query: &'a str,
        headers: &'a HeaderMap,
    ) -> RequestFacts<'a> {
        RequestFacts {
            method,
            path,
            query,
            authority: "r",
            scheme: "http",
            headers,
            port: 80,
            claims: None,
        }
    }

    #[test]
    fn the_first_matching_route_wins_in_order() {
        let routes = vec![
            route(
                "exact",
                proto::HttpMatch {
                    uri: sm(Kind::Exact("/login".into())),
                    ..Default::default()
                },
            ),
            route(
                "prefix",
                proto::HttpMatch {
                    uri: sm(Kind::Prefix("/api/".into())),
                    ..Default::default()
                },
            ),
            route(
                "regex",
                proto::HttpMatch {
                    uri: sm(Kind::Regex("/v[0-9]+/.*".into())),
                    ..Default::default()
                },
            ),
            route(
                "post",
                proto::HttpMatch {
                    method: sm(Kind::Exact("POST".into())),
                    ..Default::default()
                },
            ),
            route(
                "jason",
                proto::HttpMatch {
                    headers: [(
                        "end-user".into(),
                        proto::StringMatch {
                            kind: Some(Kind::Exact("jason".into())),
                        },
                    )]
                    .into(),
                    ..Default::default()
                },
            ),
            route(
                "query",
                proto::HttpMatch {
                    query_params: [(
                        "debug".into(),
                        proto::StringMatch {
                            kind: Some(Kind::Exact("1".into())),
                        },
                    )]
                    .into(),
                    ..Default::default()
                },
            ),
            route(
                "present",
                proto::HttpMatch {
                    headers: [("x-canary".into(), proto::StringMatch { kind: None })].into(),
                    ..Default::default()
                },
            ),
            proto::HttpRoute {
                name: "default".into(),
                ..Default::default()
            },
        ];
        let state = state_with(routes.clone());
        let none = HeaderMap::new();
        let mut jason = HeaderMap::new();
        jason.insert("end-user", HeaderValue::from_static("jason"));
        let mut canary = HeaderMap::new();
        canary.insert("x-canary", HeaderValue::from_static(""));
        let src = SourceFacts::default();
        let table: [(&str, &str, &str, &HeaderMap, &str); 10] = [
            ("GET", "/login", "", &none, "exact"),
            ("GET", "/login/x", "", &none, "default"),
            ("GET", "/api/users", "", &none, "prefix"),
            ("GET", "/api", "", &none, "default"),
            ("GET", "/v2/items", "", &none, "regex"),
            ("GET", "/xv2/items", "", &none, "default"),
            ("POST", "/anything", "", &none, "post"),
            ("GET", "/", "", &jason, "jason"),
            ("GET", "/", "a=2&debug=1", &none, "query"),
            ("GET", "/", "", &canary, "present"),
        ];
        for (method, path, query, headers, want) in table {
            let got = find(&state, &routes, &facts(method, path, query, headers), &src)
                .map(|r| r.name.as_str());
            assert_eq!(got, Some(want), "{method} {path}?{query}");
        }
    }

    #[test]
    fn without_headers_ignore_case_port_and_source_labels() {
        let routes = vec![
            route(
                "not-test",
                proto::HttpMatch {
                    without_headers: [("x-test".into(), proto::StringMatch { kind: None })].into(),
                    uri: sm(Kind::Prefix("/a".into())),
                    ..Default::default()
                },
            ),
            route(
                "fold",
                proto::HttpMatch {
                    uri: sm(Kind::Prefix("/CaSe".into())),
                    ignore_uri_case: true,
                    ..Default::default()
                },
            ),
            route(
                "port",
                proto::HttpMatch {
                    port: 8080,
                    ..Default::default()
                },
            ),
            route(
                "labels",
                proto::HttpMatch {
                    source_labels: [("app".into(), "order".into())].into(),
                    ..Default::default()
                },
            ),
        ];
        let state = state_with(routes.clone());
        let none = HeaderMap::new();
        let mut test = HeaderMap::new();
        test.insert("x-test", HeaderValue::from_static("1"));
        let src = SourceFacts::default();
        assert_eq!(
            find(&state, &routes, &facts("GET", "/a", "", &none), &src).map(|r| r.name.as_str()),
            Some("not-test")
        );
        assert_eq!(
            find(&state, &routes, &facts("GET", "/a", "", &test), &src).map(|r| r.name.as_str()),
            None
        );
        assert_eq!(
            find(&state, &routes, &facts("GET", "/case/x", "", &none), &src)
                .map(|r| r.name.as_str()),
            Some("fold")
        );
        let mut on_8080 = facts("GET", "/z", "", &none);
        on_8080.port = 8080;
        assert_eq!(
            find(&state, &routes, &on_8080, &src).map(|r| r.name.as_str()),
            Some("port")
        );
        let labels: std::collections::BTreeMap<String, String> =
            [("app".to_string(), "order".to_string())].into();
        let order = SourceFacts {
            labels: Some(&labels),
            namespace: "default",
        };
        assert_eq!(
            find(&state, &routes, &facts("GET", "/z", "", &none), &order).map(|r| r.name.as_str()),
            Some("labels")
        );
    }

    #[test]
    fn a_bad_regex_refuses_the_state() {
        let routes = vec![route(
            "bad",
            proto::HttpMatch {
                uri: sm(Kind::Regex("(".into())),
                ..Default::default()
            },
        )];
        let err = State::compile(proto::ProxyState {
            services: vec![proto::Service {
                hostname: "r".into(),
                http_routes: routes,
                ..Default::default()
            }],
            ..Default::default()
        })
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("httpRoutes[0]: regex \"(\" does not compile"),
            "{err}"
        );
    }
}
