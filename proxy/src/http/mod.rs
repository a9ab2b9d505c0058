//! HTTP through the proxy, per request: the server on each captured connection
//! (`serve_outbound` here, `serve_inbound` in `inbound.rs`), the outbound request's routing
//! decision (`outbound.rs`, over the routing layer in `crate::route`), forwarding with retries
//! (`forward.rs`) over the upstream pools (`crate::upstream`), and header semantics
//! (`headers.rs`). Failures are answered with Envoy's status codes and response flags.

pub mod ext_authz;
mod fault;
pub mod fetch;
mod forward;
pub mod headers;
mod inbound;
mod mirror;
mod outbound;
pub mod policy;
mod retry;

pub use inbound::{PeerTls, serve_inbound};

pub use crate::body::{Body, BoxError, boxed, full};
pub use crate::upstream::{ALPN_HTTP1, Clients, Upstreams};

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode, Uri};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

use crate::inputs::Inputs;

/// What the metrics need of a request, taken before it is sent on: whether it is gRPC, and
/// its body's declared size (Content-Length, or an HTTP/2 body's known length; a streamed body
/// that declares none counts what it declares at least, 0).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Shape {
    grpc: bool,
    bytes: u64,
}

impl Shape {
    fn of<B: hyper::body::Body>(req: &Request<B>) -> Self {
        let hint = req.body().size_hint();
        Shape {
            grpc: headers::is_grpc(req),
            bytes: hint.exact().unwrap_or_else(|| hint.lower()),
        }
    }
}

/// Marks an answer the proxy made itself (no route, no healthy upstream, ...), which a gRPC
/// caller gets in gRPC's terms.
#[derive(Clone, Copy, Debug)]
struct LocalReply;

fn reply(status: StatusCode, body: &str) -> Response<Body> {
    let mut r = Response::new(full(format!("{body}\n")));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain"),
    );
    r.extensions_mut().insert(LocalReply);
    r
}

/// The gRPC status an HTTP status stands for (gRPC's own mapping, which Envoy applies to its
/// local replies).
fn grpc_status_of(status: StatusCode) -> u16 {
    match status.as_u16() {
        400 => 13,
        401 => 16,
        403 => 7,
        404 => 12,
        429 | 502 | 503 | 504 => 14,
        _ => 2,
    }
}

/// An answer the proxy made itself, for a gRPC request: HTTP 200 with `grpc-status` and
/// `grpc-message` (trailers-only), as Envoy answers gRPC callers. Other answers pass as they are.
fn grpc_local_reply(resp: Response<Body>) -> Response<Body> {
    if resp.extensions().get::<LocalReply>().is_none()
        || resp.status().is_success()
        || resp.headers().contains_key("grpc-status")
    {
        return resp;
    }
    let code = grpc_status_of(resp.status());
    let message = resp.status().canonical_reason().unwrap_or("");
    let mut r = Response::new(full(""));
    let h = r.headers_mut();
    h.insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/grpc"),
    );
    h.insert("grpc-status", hyper::header::HeaderValue::from(code));
    if let Ok(v) = hyper::header::HeaderValue::from_str(message) {
        h.insert("grpc-message", v);
    }
    r
}

/// What a connection's requests share.
struct Conn {
    inputs: Arc<Inputs>,
    peer: SocketAddr,
    /// Where the connection was headed: the original destination (captured), or the
    /// gateway listener's own address.
    dst: SocketAddr,
    /// Accepted by a gateway listener: routed by Host through its virtual hosts.
    gateway: bool,
    /// The gateway terminated TLS on this connection (the request's scheme is https).
    https: bool,
}

/// Serves HTTP/1.1 or HTTP/2 (told apart by the preface) on a captured outbound connection.
pub async fn serve_outbound(
    conn: TcpStream,
    peer: SocketAddr,
    dst: SocketAddr,
    inputs: Arc<Inputs>,
    drain: crate::drain::Watch,
) {
    let ctx = Arc::new(Conn {
        inputs,
        peer,
        dst,
        gateway: false,
        https: false,
    });
    let svc = hyper::service::service_fn(move |req| {
        let ctx = ctx.clone();
        async move { Ok::<_, Infallible>(outbound::request(req, &ctx).await) }
    });
    serve_until_drained(conn, svc, drain, "outbound", peer).await;
}

/// Serves HTTP/1.1 or HTTP/2 on a connection a gateway listener (`local`) accepted: `conn`
/// is the TCP stream, or the TLS stream when the gateway terminated TLS (`https`).
pub async fn serve_gateway<I>(
    conn: I,
    peer: SocketAddr,
    local: SocketAddr,
    https: bool,
    inputs: Arc<Inputs>,
    drain: crate::drain::Watch,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let ctx = Arc::new(Conn {
        inputs,
        peer,
        dst: local,
        gateway: true,
        https,
    });
    let svc = hyper::service::service_fn(move |req| {
        let ctx = ctx.clone();
        async move { Ok::<_, Infallible>(outbound::request(req, &ctx).await) }
    });
    serve_until_drained(conn, svc, drain, "gateway", peer).await;
}

/// Serves one HTTP connection; when a drain begins, asks the client to stop (Connection: close
/// on HTTP/1.1, GOAWAY on HTTP/2) and lets requests in flight finish.
pub(crate) async fn serve_until_drained<S, I>(
    conn: I,
    svc: S,
    mut drain: crate::drain::Watch,
    side: &str,
    peer: SocketAddr,
) where
    S: hyper::service::Service<Request<Incoming>, Response = Response<Body>, Error = Infallible>
        + Send
        + 'static,
    S::Future: Send + 'static,
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(conn), svc);
    tokio::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        () = drain.signaled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        tracing::debug!("{side} http connection from {peer}: {e}");
    }
}
/// The request's URI with a new path and query.
pub fn with_path(uri: &Uri, path_and_query: &str) -> Option<Uri> {
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(path_and_query.parse().ok()?);
    Uri::from_parts(parts).ok()
}

#[cfg(test)]
mod local_reply_tests {
    use super::*;

    #[test]
    fn a_grpc_caller_gets_the_proxys_own_answers_in_grpc_terms() {
        let nr = grpc_local_reply(reply(StatusCode::NOT_FOUND, "no route matched"));
        assert_eq!(nr.status(), StatusCode::OK);
        assert_eq!(nr.headers()["grpc-status"], "12");
        assert_eq!(nr.headers()["content-type"], "application/grpc");
        let uh = grpc_local_reply(reply(
            StatusCode::SERVICE_UNAVAILABLE,
            "no healthy upstream",
        ));
        assert_eq!(uh.headers()["grpc-status"], "14");
        // An upstream's own answer passes as it is.
        let mut upstream = Response::new(full("x"));
        *upstream.status_mut() = StatusCode::NOT_FOUND;
        assert_eq!(grpc_local_reply(upstream).status(), StatusCode::NOT_FOUND);
    }
}
