//! External authorizers (Istio's `extensionProviders` of kind `envoyExtAuthzHttp` and
//! `envoyExtAuthzGrpc`), compiled from what pilot sent: where the authorizer is, how long a
//! check may take, what happens when it cannot be had, and which headers travel each way.
//! The checks themselves are made by the HTTP layer (its `ext_authz` module), through the
//! mesh.

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, HeaderValue};
use mesh_api::mesh_config::{ExtensionProvider, timeout_of};
use mesh_api::proto::state::v1 as proto;

/// One external authorizer.
#[derive(Debug)]
pub struct Authorizer {
    /// Its name in the mesh configuration.
    pub name: String,
    /// The service host pilot resolved; empty when the registry has none (every check fails).
    pub host: String,
    /// The service port.
    pub port: u16,
    /// How long a check may take.
    pub timeout: Duration,
    /// Allow when the check fails (no answer, timeout, 5xx).
    pub fail_open: bool,
    /// The status sent when the check fails and `fail_open` is false.
    pub status_on_error: http::StatusCode,
    /// The protocol and its settings.
    pub kind: Kind,
}

/// The protocol an authorizer speaks.
#[derive(Debug)]
pub enum Kind {
    /// Envoy's ext_authz over plain HTTP: the request's headers sent as a request.
    Http(HttpSettings),
    /// Envoy's `envoy.service.auth.v3.Authorization/Check` over gRPC.
    Grpc,
}

/// `envoyExtAuthzHttp`'s settings.
#[derive(Debug, Default)]
pub struct HttpSettings {
    /// Put before the request's path.
    pub path_prefix: String,
    /// Request headers sent in the check besides Host, Method, Path and Content-Length.
    pub include: Vec<Pattern>,
    /// Fixed headers added to the check (over the request's of the same name).
    pub additional: Vec<(HeaderName, HeaderValue)>,
    /// Headers of an allowing answer set on the request sent on.
    pub to_upstream_on_allow: Vec<Pattern>,
    /// Headers of a denying answer sent to the client; empty: all but Host.
    pub to_downstream_on_deny: Vec<Pattern>,
    /// Headers of an allowing answer set on the response.
    pub to_downstream_on_allow: Vec<Pattern>,
}

/// A header name pattern of Istio's form: `abc` (exact), `abc*` (prefix), `*abc` (suffix),
/// compared without case.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Pattern {
    /// The whole name.
    Exact(String),
    /// The start of the name.
    Prefix(String),
    /// The end of the name.
    Suffix(String),
}

impl Pattern {
    /// Parses one pattern.
    pub fn parse(text: &str) -> Self {
        let lower = text.to_ascii_lowercase();
        if let Some(p) = lower.strip_suffix('*') {
            Pattern::Prefix(p.to_string())
        } else if let Some(s) = lower.strip_prefix('*') {
            Pattern::Suffix(s.to_string())
        } else {
            Pattern::Exact(lower)
        }
    }

    /// Whether `name` (lower case, as `http` keeps header names) matches.
    pub fn matches(&self, name: &str) -> bool {
        match self {
            Pattern::Exact(e) => name == e,
            Pattern::Prefix(p) => name.starts_with(p.as_str()),
            Pattern::Suffix(s) => name.ends_with(s.as_str()),
        }
    }
}

/// Whether any of `patterns` matches `name`.
pub fn any_matches(patterns: &[Pattern], name: &str) -> bool {
    patterns.iter().any(|p| p.matches(name))
}

fn patterns(list: &[String]) -> Vec<Pattern> {
    list.iter().map(|p| Pattern::parse(p)).collect()
}

fn status(text: &str) -> http::StatusCode {
    text.parse::<u16>()
        .ok()
        .and_then(|c| http::StatusCode::from_u16(c).ok())
        .unwrap_or(http::StatusCode::FORBIDDEN)
}

impl Authorizer {
    /// Compiles one provider pilot sent; `Err` names the field at fault.
    pub fn compile(p: &proto::ExtensionProvider) -> Result<Arc<Self>, (String, String)> {
        let spec: ExtensionProvider = serde_json::from_str(&p.spec_json).map_err(|e| {
            (
                "extensionProviders".to_string(),
                format!("cannot be read: {e}"),
            )
        })?;
        let port = |port: u32| {
            u16::try_from(port)
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| ("port".to_string(), format!("{port} is not a port")))
        };
        let authorizer = if let Some(h) = &spec.envoy_ext_authz_http {
            let mut include = patterns(&h.include_request_headers_in_check);
            include.extend(patterns(&h.include_headers_in_check));
            let mut additional = Vec::new();
            for (k, v) in &h.include_additional_headers_in_check {
                let name = HeaderName::from_bytes(k.as_bytes()).map_err(|_| {
                    (
                        format!("includeAdditionalHeadersInCheck.{k}"),
                        "is not a header name".to_string(),
                    )
                })?;
                let value = HeaderValue::from_str(v).map_err(|_| {
                    (
                        format!("includeAdditionalHeadersInCheck.{k}"),
                        "is not a header value".to_string(),
                    )
                })?;
                additional.push((name, value));
            }
            Authorizer {
                name: spec.name.clone(),
                host: p.host.clone(),
                port: port(h.port)?,
                timeout: timeout_of(h.timeout.as_deref()),
                fail_open: h.fail_open,
                status_on_error: status(&h.status_on_error),
                kind: Kind::Http(HttpSettings {
                    path_prefix: h.path_prefix.clone(),
                    include,
                    additional,
                    to_upstream_on_allow: patterns(&h.headers_to_upstream_on_allow),
                    to_downstream_on_deny: patterns(&h.headers_to_downstream_on_deny),
                    to_downstream_on_allow: patterns(&h.headers_to_downstream_on_allow),
                }),
            }
        } else if let Some(g) = &spec.envoy_ext_authz_grpc {
            Authorizer {
                name: spec.name.clone(),
                host: p.host.clone(),
                port: port(g.port)?,
                timeout: timeout_of(g.timeout.as_deref()),
                fail_open: g.fail_open,
                status_on_error: status(&g.status_on_error),
                kind: Kind::Grpc,
            }
        } else {
            return Err((
                "extensionProviders".into(),
                format!(
                    "provider {:?} is not envoyExtAuthzHttp or envoyExtAuthzGrpc",
                    spec.name
                ),
            ));
        };
        Ok(Arc::new(authorizer))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn patterns_are_exact_prefix_or_suffix_without_case() {
        assert!(Pattern::parse("X-Ext-Authz").matches("x-ext-authz"));
        assert!(!Pattern::parse("x-ext-authz").matches("x-ext-authz-more"));
        assert!(Pattern::parse("x-ext-*").matches("x-ext-authz-check-result"));
        assert!(Pattern::parse("*-result").matches("x-ext-authz-check-result"));
        assert!(!Pattern::parse("*-result").matches("x-ext-authz"));
    }

    #[test]
    fn compiles_istios_sample_providers() {
        let http = proto::ExtensionProvider {
            name: "sample-ext-authz-http".into(),
            spec_json: r#"{"name":"sample-ext-authz-http","envoyExtAuthzHttp":{"service":"ext-authz.foo.svc.cluster.local","port":8000,"includeRequestHeadersInCheck":["x-ext-authz"],"statusOnError":"503","timeout":"2s"}}"#.into(),
            host: "ext-authz.foo.svc.cluster.local".into(),
        };
        let a = Authorizer::compile(&http).unwrap();
        assert_eq!(a.port, 8000);
        assert_eq!(a.timeout, Duration::from_secs(2));
        assert_eq!(a.status_on_error, http::StatusCode::SERVICE_UNAVAILABLE);
        let Kind::Http(s) = &a.kind else { panic!() };
        assert_eq!(s.include, [Pattern::Exact("x-ext-authz".into())]);
        let grpc = proto::ExtensionProvider {
            name: "g".into(),
            spec_json: r#"{"name":"g","envoyExtAuthzGrpc":{"service":"ext-authz.foo.svc.cluster.local","port":9000}}"#.into(),
            host: String::new(),
        };
        let g = Authorizer::compile(&grpc).unwrap();
        assert!(matches!(g.kind, Kind::Grpc));
        assert_eq!(g.timeout, Duration::from_secs(600));
        assert_eq!(g.status_on_error, http::StatusCode::FORBIDDEN);
    }
}
