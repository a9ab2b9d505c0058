//! HTTP arriving at the workload (inbound): from peer proxies over HTTP/2, or from plain
//! clients over HTTP/1.1 or HTTP/2. Each request is handed to the application on
//! `127.0.0.1:<port>` in the protocol the application speaks (HTTP/1.1 unless its port is
//! declared HTTP/2 or gRPC, or the request is gRPC), with `x-forwarded-for` extended by the
//! caller's address.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use crate::metrics::Listener;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::HeaderValue;
use hyper::{Request, Response, StatusCode};

use super::{Body, headers, policy, reply};
use crate::inputs::Inputs;
use crate::route::Target;
use crate::state::Protocol;

/// Serves HTTP on an inbound connection headed for `dst` (the workload's address and port).
pub async fn serve_inbound<I>(
    conn: I,
    peer: SocketAddr,
    dst: SocketAddr,
    inputs: Arc<Inputs>,
    app: Protocol,
    drain: crate::drain::Watch,
    tls: PeerTls,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let PeerTls {
        identity: peer_identity,
        sni,
    } = tls;
    // What the app is told about the caller is the same for every request of the connection:
    // made once, each request shares its bytes.
    let client_cert = peer_identity
        .as_deref()
        .map(|peer| forwarded_client_cert(&inputs, peer));
    let peer_ip = HeaderValue::from_str(&peer.ip().to_string()).ok();
    let caller = Arc::new((client_cert, peer_ip, peer_identity, sni));
    let served = inputs.clone();
    let svc = move |req: Request<Incoming>| {
        let inputs = inputs.clone();
        let caller = caller.clone();
        // Boxed: over HTTP/2 hyper spawns a task per request, and the task's future (this one
        // inside) is copied several times on the way; a box is copied as one pointer.
        Box::pin(async move {
            let mut req = super::guard::into_proxy_body(req);
            let (client_cert, peer_ip, identity, sni) = caller.as_ref();
            // What a calling sidecar says of its workload is taken only over mTLS, and never
            // passed to the app.
            let meta = req
                .headers_mut()
                .remove(&crate::metrics::PEER_HEADER)
                .filter(|_| identity.is_some());
            match client_cert {
                Some(Some(v)) => {
                    req.headers_mut()
                        .insert(headers::X_FORWARDED_CLIENT_CERT.clone(), v.clone());
                }
                // A plaintext caller cannot speak for anyone's identity (and what a caller
                // sent is never passed on as if the proxy had said it).
                _ => {
                    req.headers_mut().remove(&headers::X_FORWARDED_CLIENT_CERT);
                }
            }
            append_forwarded_for(&mut req, peer_ip.as_ref());
            let caller = Caller {
                addr: peer,
                identity: identity.as_deref(),
                sni: sni.as_deref(),
                meta: meta.as_ref().and_then(|v| v.to_str().ok()).unwrap_or(""),
            };
            Ok::<_, Infallible>(inbound_request(req, caller, dst, &inputs, app).await)
        })
    };
    super::serve_until_drained(conn, svc, drain, Listener::Inbound, peer, &served).await;
}

/// What a caller's mesh mTLS proved (nothing for plaintext).
#[derive(Default)]
pub struct PeerTls {
    /// The SPIFFE id of its certificate.
    pub identity: Option<String>,
    /// The server name it asked for.
    pub sni: Option<String>,
}

/// Who called: their address and, over mTLS, the identity they proved.
struct Caller<'a> {
    addr: SocketAddr,
    identity: Option<&'a str>,
    /// The TLS server name it sent.
    sni: Option<&'a str>,
    /// What its sidecar said of its workload (`x-mesh-peer`, over mTLS only).
    meta: &'a str,
}

async fn inbound_request(
    mut req: Request<Body>,
    caller: Caller<'_>,
    dst: SocketAddr,
    inputs: &Arc<Inputs>,
    app: Protocol,
) -> Response<Body> {
    let peer = caller.addr;
    let started = tokio::time::Instant::now();
    let shape = super::Shape::of(&req);
    let grpc = shape.grpc;
    let state = inputs.state.borrow().clone();
    let span = super::start_span(
        &mut req,
        crate::telemetry::trace::Side::Server,
        &state,
        inputs,
        peer,
        dst,
    );
    // Only a logged request holds on to the logs.
    let mut entry = state.telemetry.server_entries().then(|| {
        let mut e = super::log_entry(&mut req, "inbound", peer, dst);
        e.requested_server_name = caller.sni.map(str::to_string);
        e.downstream_peer_principal = caller.identity.map(str::to_string);
        (e, state.telemetry.server_logs.clone())
    });
    let who = policy::Peer {
        addr: peer,
        identity: caller.identity,
        sni: caller.sni,
    };
    let admitted = match policy::admit(&mut req, &who, dst, inputs, &state).await {
        Ok(a) => a,
        Err((resp, _)) => {
            let entry = entry.map(|(mut e, logs)| {
                super::log_response(&mut e, &resp, "-", grpc);
                (e, logs)
            });
            return timed(resp, inputs, &caller, dst, "-", shape, started, entry, span);
        }
    };
    if let Err(limited) = rate_limit(&req, dst, inputs, &state) {
        let resp = limited_reply(&limited, grpc);
        let entry = entry.map(|(mut e, logs)| {
            super::log_response(&mut e, &resp, "RL", grpc);
            e.policy = Some(format!("rate limited by {}", limited.limit));
            (e, logs)
        });
        return timed(
            resp, inputs, &caller, dst, "RL", shape, started, entry, span,
        );
    }
    drop(state);
    headers::prepare_upstream(&mut req, peer);
    let upgrade = headers::is_upgrade(&req);
    let h2 =
        !upgrade && (headers::is_grpc(&req) || matches!(app, Protocol::Http2 | Protocol::Grpc));
    let target = Target {
        service: "inbound".into(),
        subset: String::new(),
        addr: SocketAddr::from(([127, 0, 0, 1], dst.port())),
        mesh: false,
        mtls: false,
        mtls_required: false,
        identity: crate::route::no_identity(),
        originate: None,
        limits: None,
        outlier: None,
    };
    // Plaintext HTTP/1.1 to the app takes the light pool; HTTP/2 and upgrades hyper-util's.
    let plain_h1 = !h2 && !upgrade;
    let (resp, flags) = match headers::upstream_request(&mut req, &target, h2, true, !plain_h1) {
        Err(e) => (
            reply(StatusCode::BAD_REQUEST, &format!("cannot forward: {e}")),
            "DPE",
        ),
        Ok(upstream) => match inputs
            .upstreams
            .send_to_app(upstream, target.addr, h2, plain_h1)
            .await
        {
            Ok(mut resp) => {
                if upgrade && resp.status() == StatusCode::SWITCHING_PROTOCOLS {
                    headers::splice_upgrade(&mut req, &mut resp);
                }
                (resp, "-")
            }
            Err(e) if e.connect => (
                reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "upstream connect error (is the application listening?)",
                ),
                "UF",
            ),
            Err(_) => (
                reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "upstream reset before response",
                ),
                "UC",
            ),
        },
    };
    if let Some((e, _)) = entry.as_mut() {
        super::log_response(e, &resp, flags, grpc);
        e.upstream_host = Some(target.addr.to_string());
        e.upstream_cluster = Some(format!("inbound|{}||", dst.port()));
        e.policy = admitted.log.clone().filter(|w| !w.is_empty());
    }
    let mut resp = timed(
        resp, inputs, &caller, dst, flags, shape, started, entry, span,
    );
    policy::mark(&mut resp, &admitted, inputs);
    resp
}

/// Counts the request against the workload's rate limits (none: nothing to do).
fn rate_limit(
    req: &Request<Body>,
    dst: SocketAddr,
    inputs: &Inputs,
    state: &crate::state::State,
) -> Result<(), crate::ratelimit::Limited> {
    if state.source.rate_limits.is_empty() {
        return Ok(());
    }
    let uri = req.uri();
    let facts = crate::route::http::RequestFacts {
        method: req.method().as_str(),
        path: uri.path(),
        query: uri.query().unwrap_or(""),
        authority: uri.authority().map_or("", |a| a.as_str()),
        scheme: uri.scheme_str().unwrap_or("http"),
        headers: req.headers(),
        port: dst.port(),
        claims: None,
    };
    inputs
        .rate_limits
        .admit(state, &facts, tokio::time::Instant::now())
}

/// Envoy's answer to a request over a local rate limit: 429 `local_rate_limited`, or for gRPC
/// the status HTTP 429 maps to (14, UNAVAILABLE); `retry-after` says when a token is back.
fn limited_reply(limited: &crate::ratelimit::Limited, grpc: bool) -> Response<Body> {
    const BODY: &str = "local_rate_limited";
    let mut resp = if grpc {
        let mut r = Response::new(super::full(""));
        let h = r.headers_mut();
        h.insert(
            hyper::header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        h.insert("grpc-status", HeaderValue::from_static("14"));
        h.insert("grpc-message", HeaderValue::from_static(BODY));
        r
    } else {
        reply(StatusCode::TOO_MANY_REQUESTS, BODY)
    };
    let secs = limited.retry_after.as_secs_f64().ceil().max(1.0) as u64;
    resp.headers_mut()
        .insert(hyper::header::RETRY_AFTER, HeaderValue::from(secs));
    resp
}

/// Counts the request in its series once its response's body is sent (reporter
/// `destination`).
#[allow(clippy::too_many_arguments)]
fn timed(
    mut resp: Response<Body>,
    inputs: &Inputs,
    caller: &Caller<'_>,
    dst: SocketAddr,
    flags: &'static str,
    shape: super::Shape,
    started: tokio::time::Instant,
    log: Option<(crate::telemetry::Entry, Arc<[crate::telemetry::Log]>)>,
    span: Option<crate::telemetry::trace::ActiveSpan>,
) -> Response<Body> {
    use crate::metrics::{Key, PEER_HEADER, Reporter, RequestProtocol, Timed, inbound_sides};
    let grpc = shape.grpc;
    let metrics = &inputs.metrics;
    let identity = caller.identity.unwrap_or("");
    let key = Key {
        reporter: Reporter::Destination,
        peer: identity,
        addr: Some(dst),
        meta: caller.meta,
        mtls: caller.identity.is_some(),
        protocol: RequestProtocol::of_http(grpc),
        code: resp.status().as_u16(),
        flags,
        grpc_status: if grpc {
            crate::metrics::grpc_status(resp.headers())
        } else {
            None
        },
    };
    let describe = || {
        inbound_sides(
            inputs.workload(),
            &inputs.state.borrow(),
            dst,
            identity,
            caller.meta,
        )
    };
    // A gRPC answer's status usually comes in its trailers, after this.
    let timer = if grpc && key.grpc_status.is_none() {
        metrics.time_grpc_call(&key, started, describe)
    } else {
        metrics.time_request(&key, started, describe)
    };
    if caller.identity.is_some() {
        // Tells the calling sidecar which workload answered (for its metrics).
        resp.headers_mut()
            .insert(PEER_HEADER.clone(), metrics.peer_header().clone());
    }
    let mut timer = timer.request_bytes(shape.bytes);
    if let Some((e, logs)) = log {
        timer = timer.log(e, &logs);
    }
    let span = span.map(|mut s| {
        let cluster = format!("inbound|{}||", dst.port());
        s.respond(key.code, flags, Some(&cluster), key.grpc_status);
        s
    });
    timer = timer.trace(span);
    resp.map(|body| Timed::new(body, timer).boxed())
}

/// Tells the app who called, as Envoy does: `x-forwarded-client-cert: By=<own>;URI=<peer>`.
fn forwarded_client_cert(inputs: &Inputs, peer: &str) -> Option<HeaderValue> {
    let own = inputs
        .svids
        .as_ref()
        .and_then(|s| s.borrow().as_ref().map(|s| s.identity.clone()))
        .unwrap_or_default();
    HeaderValue::from_str(&format!("By={own};URI={peer}")).ok()
}

/// Appends the caller's address to `x-forwarded-for`, as Envoy does at the edge of a workload.
fn append_forwarded_for<B>(req: &mut Request<B>, peer_ip: Option<&HeaderValue>) {
    let Some(ip) = peer_ip else { return };
    let value = match req
        .headers()
        .get(&headers::X_FORWARDED_FOR)
        .and_then(|v| v.to_str().ok())
    {
        Some(existing) if !existing.is_empty() => {
            match HeaderValue::from_str(&format!("{existing}, {}", ip.to_str().unwrap_or(""))) {
                Ok(v) => v,
                Err(_) => return,
            }
        }
        _ => ip.clone(),
    };
    req.headers_mut()
        .insert(headers::X_FORWARDED_FOR.clone(), value);
}
