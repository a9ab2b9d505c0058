//! Requests the proxy makes itself, through its own outbound path (routes, balancing, mesh
//! mTLS to the destination's sidecar): how RequestAuthentication's `jwksUri` key sets are
//! fetched "through the mesh", with the same routing a request of the workload would get.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Weak};
use std::time::Duration;

use http_body_util::BodyExt;
use hyper::header::HeaderValue;
use hyper::{Request, StatusCode, Uri};

use super::{Conn, full};
use crate::authn::jwks::{Fetch, MAX_JWKS_BYTES};
use crate::inputs::Inputs;
use crate::state::State;

/// Fetches key sets through the proxy's outbound path.
pub struct MeshFetch {
    /// The proxy's inputs (weak: they own the cache that owns this).
    pub inputs: Weak<Inputs>,
}

impl Fetch for MeshFetch {
    fn fetch(
        &self,
        uri: &str,
        timeout: Duration,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<String, String>> + Send + '_>>
    {
        let uri = uri.to_string();
        Box::pin(async move {
            let inputs = self
                .inputs
                .upgrade()
                .ok_or_else(|| "the proxy is stopping".to_string())?;
            match tokio::time::timeout(timeout, get(&inputs, &uri)).await {
                Ok(r) => r,
                Err(_) => Err(format!("no answer within {timeout:?}")),
            }
        })
    }
}

/// Where in the mesh `host:port` is: a service's VIP (or first endpoint), or the address
/// itself when it is an IP.
fn destination(state: &State, host: &str, port: u16) -> Option<SocketAddr> {
    if let Ok(ip) = host.trim_matches(['[', ']']).parse::<IpAddr>() {
        return Some(SocketAddr::new(ip, port));
    }
    let ns = &state.source.namespace;
    let domain = if state.source.domain.is_empty() {
        "cluster.local"
    } else {
        &state.source.domain
    };
    let candidates = [
        host.to_string(),
        format!("{host}.{ns}.svc.{domain}"),
        format!("{host}.svc.{domain}"),
        format!("{host}.{domain}"),
    ];
    let svc = candidates.iter().find_map(|h| state.services.get(h))?;
    if let Some(vip) = svc
        .spec
        .addresses
        .iter()
        .find_map(|a| a.parse::<IpAddr>().ok())
    {
        return Some(SocketAddr::new(vip, port));
    }
    let p = svc.port(port)?;
    svc.endpoint_addr(0, p)
}

/// Sends `req` to `host:port` through the proxy's outbound path, as the workload's own request
/// would go: the response and its flags, or why there is no destination.
pub(super) async fn send(
    inputs: &Arc<Inputs>,
    host: &str,
    port: u16,
    mut req: Request<super::Body>,
) -> Result<(hyper::Response<super::Body>, &'static str), String> {
    let state = inputs.state.borrow().clone();
    let dst = destination(&state, host, port)
        .ok_or_else(|| format!("{host}:{port} is not a service of the mesh this proxy knows"))?;
    let ctx = Conn {
        inputs: inputs.clone(),
        peer: SocketAddr::from(([127, 0, 0, 1], 0)),
        dst,
    };
    let (resp, _, flags) = super::outbound::decide_and_send(&mut req, &ctx, &state).await;
    Ok((resp, flags))
}

async fn get(inputs: &Arc<Inputs>, uri: &str) -> Result<String, String> {
    let parsed: Uri = uri
        .parse()
        .map_err(|e| format!("{uri:?} is not a URL: {e}"))?;
    let https = parsed.scheme_str() == Some("https");
    if https {
        return Err("https key sets are not fetched yet: serve the key set over http inside the mesh (mesh mTLS protects it), or inline it with jwks".into());
    }
    let host = parsed
        .host()
        .ok_or_else(|| format!("{uri:?} has no host"))?
        .to_string();
    let port = parsed.port_u16().unwrap_or(80);
    let path = parsed
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    let authority = parsed
        .authority()
        .map_or_else(|| host.clone(), |a| a.as_str().to_string());
    let mut req = Request::new(full(""));
    *req.uri_mut() = path.parse().map_err(|e| format!("{uri:?}: {e}"))?;
    let headers = req.headers_mut();
    headers.insert(
        hyper::header::HOST,
        HeaderValue::from_str(&authority).map_err(|e| e.to_string())?,
    );
    headers.insert(
        hyper::header::ACCEPT,
        HeaderValue::from_static("application/json"),
    );
    let (resp, flags) = send(inputs, &host, port, req).await?;
    if resp.status() != StatusCode::OK {
        return Err(format!("GET {uri}: {} (flags {flags})", resp.status()));
    }
    // Read frame by frame so a key set larger than the limit is refused before it is whole.
    let mut body = resp.into_body();
    let mut bytes = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| format!("GET {uri}: {e}"))?;
        if let Some(data) = frame.data_ref() {
            if bytes.len() + data.len() > MAX_JWKS_BYTES {
                return Err(format!("GET {uri}: larger than {MAX_JWKS_BYTES} bytes"));
            }
            bytes.extend_from_slice(data);
        }
    }
    String::from_utf8(bytes).map_err(|_| format!("GET {uri}: the body is not UTF-8"))
}
