//! HTTP through the proxy, per request: the server on each captured connection
//! (`serve_outbound` here, `serve_inbound` in `inbound.rs`), the outbound request's routing
//! decision (`outbound.rs`, over the routing layer in `crate::route`), forwarding with retries
//! (`forward.rs`) over the upstream pools (`crate::upstream`), and header semantics
//! (`headers.rs`). Failures are answered with Envoy's status codes and response flags.

pub mod ext_authz;
mod fault;
pub mod fetch;
mod forward;
pub mod guard;
pub mod headers;
mod inbound;
mod mirror;
mod outbound;
pub mod policy;
mod retry;

pub use retry::BODY_LIMIT as RETRY_BODY_LIMIT;

pub use crate::inputs::{HEADER_READ_TIMEOUT, IDLE_TIMEOUT, Limits, MAX_CONNECTIONS};
pub use inbound::{PeerTls, serve_inbound};

pub use crate::body::{Body, BoxError, boxed, full};
pub use crate::upstream::{ALPN_HTTP1, Clients, Upstreams};

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use hyper::{Request, Response, StatusCode, Uri};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

use crate::inputs::Inputs;
use crate::metrics::{Listener, Refusal};

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

/// Starts the access log entry of a request arriving from `remote` at `local`, giving the
/// request an `x-request-id` when it has none (so the log and the upstream see the same one).
pub(crate) fn log_entry(
    req: &mut Request<Body>,
    direction: &'static str,
    remote: SocketAddr,
    local: SocketAddr,
) -> crate::telemetry::Entry {
    use crate::telemetry::access_log::trace_id;
    ensure_request_id(req);
    let h = req.headers();
    let text = |name: &str| {
        h.get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let mut e = crate::telemetry::Entry::started(direction);
    e.method = Some(req.method().to_string());
    e.path = req.uri().path_and_query().map(|p| p.as_str().to_string());
    e.protocol = Some(match req.version() {
        hyper::Version::HTTP_2 => "HTTP/2",
        hyper::Version::HTTP_10 => "HTTP/1.0",
        _ => "HTTP/1.1",
    });
    e.authority = text("host").or_else(|| req.uri().authority().map(|a| a.to_string()));
    e.user_agent = text("user-agent");
    e.x_forwarded_for = text("x-forwarded-for");
    e.request_id = text("x-request-id");
    e.trace_id = trace_id(h);
    e.downstream_remote_address = Some(remote);
    e.downstream_local_address = Some(local);
    e
}

/// Gives `req` an `x-request-id` when it has none, as Envoy does, so logs, spans and the
/// upstream see the same one.
pub(crate) fn ensure_request_id(req: &mut Request<Body>) {
    if !req.headers().contains_key(&headers::X_REQUEST_ID)
        && let Ok(id) = hyper::header::HeaderValue::from_str(&headers::request_id())
    {
        req.headers_mut().insert(headers::X_REQUEST_ID.clone(), id);
    }
}

/// Starts `req`'s span on `side` when the state traces that side (writing the context the
/// next hop sees into its headers either way).
pub(crate) fn start_span(
    req: &mut Request<Body>,
    side: crate::telemetry::trace::Side,
    state: &crate::state::State,
    inputs: &crate::inputs::Inputs,
    remote: SocketAddr,
    local: SocketAddr,
) -> Option<crate::telemetry::trace::ActiveSpan> {
    let config = state.telemetry.traced(side)?;
    ensure_request_id(req);
    crate::telemetry::trace::start(config, inputs.tracers.get(), req, side, remote, local)
}

/// Fills in what a response says in its access log entry.
pub(crate) fn log_response(
    e: &mut crate::telemetry::Entry,
    resp: &Response<Body>,
    flags: &'static str,
    grpc: bool,
) {
    e.response_code = resp.status().as_u16();
    e.response_flags = flags;
    let denied = resp.extensions().get::<policy::DeniedBy>();
    e.response_code_details = match denied {
        Some(_) if resp.status() == StatusCode::UNAUTHORIZED => "jwt_authn_access_denied".into(),
        Some(_) => "rbac_access_denied_matched_policy".into(),
        None => crate::telemetry::access_log::details_of(
            flags,
            resp.extensions().get::<LocalReply>().is_some(),
        )
        .into(),
    };
    e.denied_by = denied.map(|d| d.0.to_string());
    if grpc {
        e.grpc_status = crate::metrics::grpc_status(resp.headers());
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
    // Kept: what the proxy decided and why, for the access log.
    *r.extensions_mut() = resp.into_parts().0.extensions;
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
    let inputs = ctx.inputs.clone();
    let svc = move |req| {
        let ctx = ctx.clone();
        async move { Ok::<_, Infallible>(outbound::request(req, &ctx).await) }
    };
    serve_until_drained(conn, svc, drain, Listener::Outbound, peer, &inputs).await;
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
    let inputs = ctx.inputs.clone();
    let svc = move |req| {
        let ctx = ctx.clone();
        async move { Ok::<_, Infallible>(outbound::request(req, &ctx).await) }
    };
    serve_until_drained(conn, svc, drain, Listener::Gateway, peer, &inputs).await;
}

/// The most an HTTP/1 request's line and headers may take: more is answered 431. Envoy's
/// `max_request_headers_kb` default is 60 KiB; hyper's read buffer bounds the head, and is
/// given 64 KiB (the whole buffer, of which the head is most).
pub const MAX_HEADER_BYTES: usize = 64 * 1024;

/// The most headers an HTTP/1 request may have: more is answered 431. Envoy's
/// `max_headers_count` default is 100, as is hyper's.
pub const MAX_HEADERS: usize = 100;

/// The most header bytes an HTTP/2 request may have (`SETTINGS_MAX_HEADER_LIST_SIZE`), as
/// Envoy's 60 KiB.
pub const MAX_H2_HEADER_LIST_BYTES: u32 = 60 * 1024;

/// Streams an HTTP/2 client may have open at once on one connection: more are refused
/// (REFUSED_STREAM). Envoy's default is 2^31-1; Istio's sidecars keep it; a sidecar's caller
/// that wants more parallelism opens another connection.
pub const MAX_H2_CONCURRENT_STREAMS: u32 = 1024;

/// Streams an HTTP/2 client may reset before the server accepted them, at once, before the
/// connection is closed with GOAWAY (the rapid-reset attack, CVE-2023-44487). hyper's default.
pub const MAX_H2_PENDING_RESETS: usize = 20;

/// Serves one HTTP connection; when a drain begins, asks the client to stop (Connection: close
/// on HTTP/1.1, GOAWAY on HTTP/2) and lets requests in flight finish. The limits above hold on
/// every connection the proxy serves, and `inputs.limits`' timers (`guard`).
pub(crate) async fn serve_until_drained<S, I>(
    conn: I,
    svc: S,
    mut drain: crate::drain::Watch,
    side: Listener,
    peer: SocketAddr,
    inputs: &Inputs,
) where
    guard::Tracked<S>: hyper::service::Service<
            Request<hyper::body::Incoming>,
            Response = Response<Body>,
            Error = Infallible,
        > + Send
        + 'static,
    <guard::Tracked<S> as hyper::service::Service<Request<hyper::body::Incoming>>>::Future:
        Send + 'static,
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let limits = inputs.limits;
    let tracker = Arc::new(guard::Tracker::default());
    let io = guard::Guarded::new(
        conn,
        tracker.clone(),
        limits,
        (inputs.metrics.clone(), side),
    );
    let svc = guard::Tracked::new(svc, tracker.clone());
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    // No hyper header read timeout: hyper's also times a kept-alive connection between
    // requests, and apps' pools keep theirs idle far longer; `guard` times a head from its
    // first byte instead.
    // MAX_HEADERS is hyper's own default, left unset: set, hyper parses into a heap array
    // per request instead of one on the stack (5% more instructions per request).
    builder.http1().max_buf_size(MAX_HEADER_BYTES);
    builder
        .http2()
        .max_header_list_size(MAX_H2_HEADER_LIST_BYTES)
        .max_concurrent_streams(MAX_H2_CONCURRENT_STREAMS)
        .max_pending_accept_reset_streams(MAX_H2_PENDING_RESETS);
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), svc);
    tokio::pin!(conn);
    let result = tokio::select! {
        biased;
        r = conn.as_mut() => r,
        () = drain.signaled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
        () = tracker.idle() => {
            inputs.metrics.refused().count(side, Refusal::IdleTimeout);
            tracing::debug!("{side} http connection from {peer}: idle for {:?}, closing", limits.idle_timeout);
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        if let Some(why) = refusal_of(e.as_ref()) {
            inputs.metrics.refused().count(side, why);
        }
        tracing::debug!("{side} http connection from {peer}: {e}");
    }
}

/// What a served connection's error says the proxy refused: a head that timed out (`guard`), or
/// an HTTP/2 client that broke the connection's limits (h2 closed it with GOAWAY).
fn refusal_of(e: &(dyn std::error::Error + 'static)) -> Option<Refusal> {
    let mut cause = Some(e);
    while let Some(c) = cause {
        if let Some(io) = c.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::TimedOut
        {
            return Some(Refusal::HeaderTimeout);
        }
        if let Some(h2) = c.downcast_ref::<h2::Error>()
            && h2.is_go_away()
            && h2.is_library()
        {
            return Some(Refusal::Http2Abuse);
        }
        cause = c.source();
    }
    None
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
