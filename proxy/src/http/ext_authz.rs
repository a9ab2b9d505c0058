//! External authorization for CUSTOM AuthorizationPolicies, as Envoy's ext_authz filter does
//! it: the request (or connection) is described to the provider named in the mesh
//! configuration, through the mesh (routes, balancing, mTLS to the authorizer's sidecar), and
//! its answer decides.
//!
//! - `envoyExtAuthzHttp`: a request with the original method and `pathPrefix` + path, the
//!   Host, `Content-Length: 0`, the headers `includeRequestHeadersInCheck` names and the fixed
//!   `includeAdditionalHeadersInCheck`. 200 allows (its headers named by
//!   `headersToUpstreamOnAllow` are set on the request, `headersToDownstreamOnAllow` on the
//!   response, and `x-envoy-auth-headers-to-remove` lists request headers to drop); any other
//!   status below 500 denies with that status, body and headers (all but Host, or those
//!   `headersToDownstreamOnDeny` names).
//! - `envoyExtAuthzGrpc`: `envoy.service.auth.v3.Authorization/Check` with the peers, the
//!   request's attributes and headers; status OK allows (with the `ok_response` header
//!   changes), anything else denies with the `denied_response` (403 when it has none).
//!
//! No answer within `timeout`, a failed connection, a 5xx or a gRPC error is a failed check:
//! `failOpen` allows, else the client gets `statusOnError` (403 by default).

use std::net::SocketAddr;
use std::sync::Arc;

use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Request, Response, StatusCode};
use mesh_api::proto::envoy::config::core::v3 as core;
use mesh_api::proto::envoy::service::auth::v3 as auth;
use prost::Message;

use super::{Body, full};
use crate::authz::external::{Authorizer, HttpSettings, Kind, any_matches};
use crate::inputs::Inputs;

/// The gRPC method checks call.
pub const CHECK_PATH: &str = "/envoy.service.auth.v3.Authorization/Check";
/// The header an HTTP authorizer lists request headers to drop in.
pub static HEADERS_TO_REMOVE: HeaderName =
    HeaderName::from_static("x-envoy-auth-headers-to-remove");

/// What is being checked.
pub struct Subject<'a> {
    /// The caller's address.
    pub source: SocketAddr,
    /// The SPIFFE id the caller proved.
    pub principal: Option<&'a str>,
    /// The workload address the caller reached.
    pub destination: SocketAddr,
    /// The TLS server name the caller sent.
    pub sni: Option<&'a str>,
    /// The request; `None` for a TCP connection.
    pub request: Option<&'a Request<Body>>,
}

/// An authorizer's verdict.
pub enum Verdict {
    /// Go on, with these header changes.
    Allow(Allowed),
    /// Answer this instead; the words say why, for the access log.
    Deny(Response<Body>, String),
}

/// Header changes an allowing authorizer asked for.
#[derive(Default)]
pub struct Allowed {
    /// Set on (or appended to) the request sent on.
    pub upstream: Vec<(HeaderName, HeaderValue, bool)>,
    /// Removed from the request sent on.
    pub remove: Vec<HeaderName>,
    /// Set on the response to the client.
    pub downstream: Vec<(HeaderName, HeaderValue)>,
    /// Why it was allowed, when the check failed open.
    pub failed_open: Option<String>,
}

impl Allowed {
    /// Applies the request header changes.
    pub fn apply(&self, headers: &mut HeaderMap) {
        for name in &self.remove {
            if name != header::HOST {
                headers.remove(name);
            }
        }
        for (name, value, append) in &self.upstream {
            if *append {
                headers.append(name.clone(), value.clone());
            } else {
                headers.insert(name.clone(), value.clone());
            }
        }
    }
}

enum Outcome {
    Allowed(Allowed),
    Denied(Response<Body>),
    Failed(String),
}

/// Asks `authorizer` about `subject`.
/// (Boxed: a `Send` future the request path can hold without naming its lifetimes.)
pub fn check<'a>(
    inputs: &'a Arc<Inputs>,
    authorizer: &'a Authorizer,
    subject: &'a Subject<'a>,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Verdict> + Send + 'a>> {
    Box::pin(check_now(inputs, authorizer, subject))
}

async fn check_now(
    inputs: &Arc<Inputs>,
    authorizer: &Authorizer,
    subject: &Subject<'_>,
) -> Verdict {
    let outcome = if authorizer.host.is_empty() {
        Outcome::Failed("its service is not in the mesh registry".into())
    } else {
        match tokio::time::timeout(authorizer.timeout, ask(inputs, authorizer, subject)).await {
            Ok(o) => o,
            Err(_) => Outcome::Failed(format!("no answer within {:?}", authorizer.timeout)),
        }
    };
    let name = &authorizer.name;
    match outcome {
        Outcome::Allowed(a) => Verdict::Allow(a),
        Outcome::Denied(resp) => {
            let words = if subject.request.is_none() && matches!(authorizer.kind, Kind::Http(_)) {
                format!("authorizer {name:?} speaks HTTP and cannot check a TCP connection")
            } else {
                format!("authorizer {name:?} answered {}", resp.status().as_u16())
            };
            Verdict::Deny(resp, words)
        }
        Outcome::Failed(why) if authorizer.fail_open => {
            tracing::debug!(target: "authz", "authorizer {name:?} failed ({why}); failOpen allows");
            Verdict::Allow(Allowed {
                failed_open: Some(format!("authorizer {name:?} failed ({why}); failOpen")),
                ..Allowed::default()
            })
        }
        Outcome::Failed(why) => {
            tracing::debug!(target: "authz", "authorizer {name:?} failed: {why}");
            let mut resp = Response::new(full(""));
            *resp.status_mut() = authorizer.status_on_error;
            Verdict::Deny(
                resp,
                format!(
                    "authorizer {name:?} failed ({why}): statusOnError {}",
                    authorizer.status_on_error.as_u16()
                ),
            )
        }
    }
}

async fn ask(inputs: &Arc<Inputs>, authorizer: &Authorizer, subject: &Subject<'_>) -> Outcome {
    match &authorizer.kind {
        Kind::Http(settings) => match subject.request {
            Some(req) => http_check(inputs, authorizer, settings, req).await,
            None => Outcome::Denied(Response::new(full(""))),
        },
        Kind::Grpc => grpc_check(inputs, authorizer, subject).await,
    }
}

fn host_of(req: &Request<Body>) -> &str {
    req.uri()
        .authority()
        .map(|a| a.as_str())
        .or_else(|| {
            req.headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
        })
        .unwrap_or("")
}

async fn http_check(
    inputs: &Arc<Inputs>,
    a: &Authorizer,
    s: &HttpSettings,
    req: &Request<Body>,
) -> Outcome {
    let path = format!(
        "{}{}",
        s.path_prefix,
        req.uri().path_and_query().map_or("/", |p| p.as_str())
    );
    let mut check = Request::new(full(""));
    *check.method_mut() = req.method().clone();
    match path.parse() {
        Ok(uri) => *check.uri_mut() = uri,
        Err(e) => return Outcome::Failed(format!("the check path {path:?}: {e}")),
    }
    let h = check.headers_mut();
    if let Ok(v) = HeaderValue::from_str(host_of(req)) {
        h.insert(header::HOST, v);
    }
    h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
    for (name, value) in req.headers() {
        if name != header::HOST
            && name != header::CONTENT_LENGTH
            && any_matches(&s.include, name.as_str())
        {
            h.append(name.clone(), value.clone());
        }
    }
    for (name, value) in &s.additional {
        h.insert(name.clone(), value.clone());
    }
    let (resp, flags) = match super::fetch::send(inputs, &a.host, a.port, check).await {
        Ok(r) => r,
        Err(e) => return Outcome::Failed(e),
    };
    let status = resp.status();
    if status.is_server_error() {
        return Outcome::Failed(format!("answered {status} (flags {flags})"));
    }
    let (parts, body) = resp.into_parts();
    if status == StatusCode::OK {
        let mut allowed = Allowed::default();
        for (name, value) in &parts.headers {
            if any_matches(&s.to_upstream_on_allow, name.as_str()) {
                allowed.upstream.push((name.clone(), value.clone(), false));
            }
            if any_matches(&s.to_downstream_on_allow, name.as_str()) {
                allowed.downstream.push((name.clone(), value.clone()));
            }
        }
        if let Some(list) = parts
            .headers
            .get(&HEADERS_TO_REMOVE)
            .and_then(|v| v.to_str().ok())
        {
            allowed.remove = list
                .split(',')
                .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
                .collect();
        }
        return Outcome::Allowed(allowed);
    }
    let body = match super::fetch::read_answer(body).await {
        Ok((b, _)) => b,
        Err(e) => return Outcome::Failed(e),
    };
    let mut denied = Response::new(full(body));
    *denied.status_mut() = status;
    // Envoy always passes these on when a list is given.
    const ALWAYS: [&str; 4] = ["path", "status", "www-authenticate", "location"];
    for (name, value) in &parts.headers {
        let hop = [
            header::HOST,
            header::CONTENT_LENGTH,
            header::TRANSFER_ENCODING,
            header::CONNECTION,
        ]
        .contains(name);
        let wanted = s.to_downstream_on_deny.is_empty()
            || any_matches(&s.to_downstream_on_deny, name.as_str())
            || ALWAYS.contains(&name.as_str());
        if !hop && wanted {
            denied.headers_mut().append(name.clone(), value.clone());
        }
    }
    Outcome::Denied(denied)
}

fn socket(addr: SocketAddr) -> Option<core::Address> {
    Some(core::Address {
        address: Some(core::address::Address::SocketAddress(core::SocketAddress {
            protocol: core::socket_address::Protocol::Tcp.into(),
            address: addr.ip().to_string(),
            port_specifier: Some(core::socket_address::PortSpecifier::PortValue(u32::from(
                addr.port(),
            ))),
        })),
    })
}

/// The CheckRequest describing `subject`.
pub fn check_request(subject: &Subject<'_>, own_principal: &str) -> auth::CheckRequest {
    let request = subject.request.map(|req| {
        let mut headers = std::collections::HashMap::<String, String>::new();
        for (name, value) in req.headers() {
            let Ok(v) = value.to_str() else { continue };
            headers
                .entry(name.as_str().to_string())
                .and_modify(|e| {
                    e.push(',');
                    e.push_str(v);
                })
                .or_insert_with(|| v.to_string());
        }
        let host = host_of(req).to_string();
        headers
            .entry(":authority".into())
            .or_insert_with(|| host.clone());
        headers.insert(":method".into(), req.method().as_str().to_string());
        headers.insert(
            ":path".into(),
            req.uri()
                .path_and_query()
                .map_or("/", |p| p.as_str())
                .to_string(),
        );
        let size = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<i64>().ok())
            .unwrap_or(-1);
        auth::attribute_context::Request {
            time: Some(prost_types::Timestamp::from(std::time::SystemTime::now())),
            http: Some(auth::attribute_context::HttpRequest {
                id: req
                    .headers()
                    .get("x-request-id")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_string(),
                method: req.method().as_str().to_string(),
                path: req
                    .uri()
                    .path_and_query()
                    .map_or("/", |p| p.as_str())
                    .to_string(),
                host,
                scheme: "http".into(),
                size,
                protocol: match req.version() {
                    http::Version::HTTP_2 => "HTTP/2",
                    http::Version::HTTP_10 => "HTTP/1.0",
                    _ => "HTTP/1.1",
                }
                .into(),
                headers,
                ..Default::default()
            }),
        }
    });
    auth::CheckRequest {
        attributes: Some(auth::AttributeContext {
            source: Some(auth::attribute_context::Peer {
                address: socket(subject.source),
                principal: subject.principal.unwrap_or("").to_string(),
                ..Default::default()
            }),
            destination: Some(auth::attribute_context::Peer {
                address: socket(subject.destination),
                principal: own_principal.to_string(),
                ..Default::default()
            }),
            request,
            tls_session: subject.sni.map(|sni| auth::attribute_context::TlsSession {
                sni: sni.to_string(),
            }),
            ..Default::default()
        }),
    }
}

async fn grpc_check(inputs: &Arc<Inputs>, a: &Authorizer, subject: &Subject<'_>) -> Outcome {
    let principal = inputs.workload().principal.to_string();
    let message = check_request(subject, &principal).encode_to_vec();
    let payload = match super::fetch::grpc_call(inputs, &a.host, a.port, CHECK_PATH, message).await
    {
        Ok(p) => p,
        Err(e) => return Outcome::Failed(e),
    };
    let answer = match auth::CheckResponse::decode(payload) {
        Ok(a) => a,
        Err(e) => return Outcome::Failed(format!("the answer is not a CheckResponse: {e}")),
    };
    let ok = answer.status.as_ref().is_none_or(|s| s.code == 0);
    if ok {
        let mut allowed = Allowed::default();
        if let Some(auth::check_response::HttpResponse::OkResponse(r)) = &answer.http_response {
            for (name, value, append) in header_options(&r.headers) {
                allowed.upstream.push((name, value, append));
            }
            allowed.remove = r
                .headers_to_remove
                .iter()
                .filter_map(|n| HeaderName::from_bytes(n.as_bytes()).ok())
                .collect();
            allowed.downstream = header_options(&r.response_headers_to_add)
                .map(|(n, v, _)| (n, v))
                .collect();
        }
        return Outcome::Allowed(allowed);
    }
    let mut denied = Response::new(full(""));
    *denied.status_mut() = StatusCode::FORBIDDEN;
    if let Some(auth::check_response::HttpResponse::DeniedResponse(d)) = answer.http_response {
        if let Some(code) = d
            .status
            .and_then(|s| u16::try_from(s.code).ok())
            .and_then(|c| StatusCode::from_u16(c).ok())
            .filter(|c| c.as_u16() >= 200)
        {
            *denied.status_mut() = code;
        }
        for (name, value, _) in header_options(&d.headers) {
            denied.headers_mut().append(name, value);
        }
        *denied.body_mut() = full(d.body);
    }
    Outcome::Denied(denied)
}

/// Envoy's header options as (name, value, append).
fn header_options(
    options: &[core::HeaderValueOption],
) -> impl Iterator<Item = (HeaderName, HeaderValue, bool)> + '_ {
    options.iter().filter_map(|o| {
        let h = o.header.as_ref()?;
        let name = HeaderName::from_bytes(h.key.as_bytes()).ok()?;
        let raw = if h.raw_value.is_empty() {
            h.value.as_bytes()
        } else {
            &h.raw_value
        };
        let value = HeaderValue::from_bytes(raw).ok()?;
        // `append` defaults to false in ext_authz answers.
        let append = o.append.unwrap_or(false);
        Some((name, value, append))
    })
}
