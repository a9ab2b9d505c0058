//! HTTP through the proxy: each request on a captured connection is routed on its own
//! (VirtualService semantics), sent to an endpoint over pooled upstream connections, and
//! answered with Envoy's status codes and response flags when something fails.

mod h1pool;
mod h2pool;
pub mod headers;
mod inbound;
pub mod route;

pub use inbound::serve_inbound;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body as _, Incoming};

use hyper::{Request, Response, StatusCode, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

use crate::Inputs;
use crate::outbound::{Target, choose_weighted, endpoint_in, to_destination};
use crate::state::{OutboundPolicy, Port, Protocol, Service, State, proto};
use crate::tls::connect::{MeshConnector, MtlsClient, Originations};

/// The body type the proxy moves around.
pub type Body = BoxBody<Bytes, BoxError>;

/// What a body's error may be: hyper's, h2's, or ours.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// `body` as the proxy's body type.
pub fn boxed<B>(body: B) -> Body
where
    B: hyper::body::Body<Data = Bytes> + Send + Sync + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed()
}

/// One pool of upstream connections.
type Upstream = Client<MeshConnector, Body>;

/// A pool of HTTP/1.1 (keep-alive) connections and one of HTTP/2 connections, and for mesh
/// mTLS one such pair per identity the peers must prove: a connection verified for one
/// identity is never reused once the destination must prove another (pilot moved the address
/// to another workload, or the workload's identity changed).
pub struct Clients {
    h1: Client<MeshConnector, Body>,
    h2: Client<MeshConnector, Body>,
    connectors: (MeshConnector, MeshConnector),
    by_identity: std::sync::RwLock<HashMap<(bool, Arc<str>), Upstream>>,
}

impl Clients {
    fn new(
        local: Option<std::net::IpAddr>,
        mtls: Option<Arc<MtlsClient>>,
        originations: &Originations,
    ) -> Self {
        let c1 = MeshConnector::new(local, mtls.clone(), originations.clone(), ALPN_HTTP1);
        let c2 = MeshConnector::new(
            local,
            mtls,
            originations.clone(),
            crate::tls::mtls::ALPN_MESH_H2,
        );
        Self {
            h1: Self::client(c1.clone(), false),
            h2: Self::client(c2.clone(), true),
            connectors: (c1, c2),
            by_identity: std::sync::RwLock::default(),
        }
    }

    fn client(connector: MeshConnector, h2: bool) -> Client<MeshConnector, Body> {
        let mut builder = Client::builder(TokioExecutor::new());
        builder
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(usize::MAX);
        if h2 {
            builder.http2_only(true);
        }
        builder.build(connector)
    }

    fn pick(&self, h2: bool) -> &Client<MeshConnector, Body> {
        if h2 { &self.h2 } else { &self.h1 }
    }

    /// The pool whose connections proved `identity` (mesh mTLS).
    fn pick_for(&self, h2: bool, identity: &Arc<str>) -> Client<MeshConnector, Body> {
        let key = (h2, identity.clone());
        let map = self.by_identity.read().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = map.get(&key) {
            return c.clone();
        }
        drop(map);
        let mut map = self.by_identity.write().unwrap_or_else(|e| e.into_inner());
        let identity = identity.clone();
        map.entry(key)
            .or_insert_with(|| {
                let base = if h2 {
                    &self.connectors.1
                } else {
                    &self.connectors.0
                };
                Self::client(base.clone().with_identity(identity), h2)
            })
            .clone()
    }
}

/// ALPN of HTTP/1.1 (kept for upgrades, e.g. WebSocket, between proxies).
pub const ALPN_HTTP1: &[u8] = b"http/1.1";

/// Pooled upstream connections shared by every request of the proxy: towards other services
/// (outbound, with mesh mTLS where asked), and towards the local application from 127.0.0.6
/// (inbound).
pub struct Upstreams {
    outbound: Clients,
    app: Clients,
    /// Plaintext HTTP/1.1 to destinations without a sidecar.
    outbound_h1: Arc<h1pool::H1Pool>,
    /// HTTP/2 to other sidecars (mesh mTLS) and to ports that speak it.
    outbound_h2: h2pool::H2Pool,
    /// Plaintext HTTP/1.1 to the local app, from 127.0.0.6.
    app_h1: Arc<h1pool::H1Pool>,
    mtls: Option<Arc<MtlsClient>>,
    originations: Originations,
}

impl Upstreams {
    /// Pools for a proxy; `mtls` carries the workload's identity when it has one.
    pub fn new(mtls: Option<Arc<MtlsClient>>) -> Self {
        let originations = Originations::default();
        Self {
            outbound: Clients::new(None, mtls.clone(), &originations),
            app: Clients::new(
                Some(crate::inbound::PASSTHROUGH_SOURCE.into()),
                None,
                &Originations::default(),
            ),
            outbound_h1: h1pool::H1Pool::new(None),
            outbound_h2: h2pool::H2Pool::new(None, mtls.clone()),
            app_h1: h1pool::H1Pool::new(Some(crate::inbound::PASSTHROUGH_SOURCE.into())),
            mtls,
            originations,
        }
    }

    /// Records that the proxy originates TLS to `addr` as `o` says.
    pub fn originate_to(
        &self,
        addr: std::net::SocketAddr,
        o: &Arc<crate::tls::originate::Originate>,
    ) {
        let mut map = self.originations.write().unwrap_or_else(|e| e.into_inner());
        if !map.get(&addr).is_some_and(|known| Arc::ptr_eq(known, o)) {
            map.insert(addr, o.clone());
        }
    }

    /// Mesh mTLS, when the proxy has an identity.
    pub fn mtls(&self) -> Option<&Arc<MtlsClient>> {
        self.mtls.as_ref()
    }

    /// Hands a request to the local app at `addr` (from 127.0.0.6): plaintext HTTP/1.1 on the
    /// light pool, the rest on hyper-util's client.
    pub(crate) async fn send_to_app(
        &self,
        req: Request<Body>,
        addr: SocketAddr,
        h2: bool,
        plain_h1: bool,
    ) -> Result<Response<Body>, Failure> {
        if plain_h1 {
            self.app_h1.send(addr, req).await.map_err(Failure::from)
        } else {
            self.app
                .pick(h2)
                .request(req)
                .await
                .map(|r| r.map(boxed))
                .map_err(Failure::from)
        }
    }
}

impl Default for Upstreams {
    fn default() -> Self {
        Self::new(None)
    }
}

/// A fixed response body.
pub fn full(body: impl Into<Bytes>) -> Body {
    Full::new(body.into())
        .map_err(|never| match never {})
        .boxed()
}

fn reply(status: StatusCode, body: &str) -> Response<Body> {
    let mut r = Response::new(full(format!("{body}\n")));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain"),
    );
    r
}

/// What a connection's requests share.
struct Conn {
    inputs: Arc<Inputs>,
    peer: SocketAddr,
    dst: SocketAddr,
}

/// Serves HTTP/1.1 or HTTP/2 (told apart by the preface) on a captured outbound connection.
pub async fn serve_outbound(
    conn: TcpStream,
    peer: SocketAddr,
    dst: SocketAddr,
    inputs: Arc<Inputs>,
    drain: crate::drain::Watch,
) {
    let ctx = Arc::new(Conn { inputs, peer, dst });
    let svc = hyper::service::service_fn(move |req| {
        let ctx = ctx.clone();
        async move { Ok::<_, Infallible>(outbound_request(req, &ctx).await) }
    });
    serve_until_drained(conn, svc, drain, "outbound", peer).await;
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

/// Routes and forwards one request.
async fn outbound_request(req: Request<Incoming>, ctx: &Conn) -> Response<Body> {
    let mut req = req.map(boxed);
    let state = ctx.inputs.state.borrow().clone();
    let started = tokio::time::Instant::now();
    // The access log line is built only when it is written (off in Istio's default profile).
    let logged = tracing::enabled!(target: "access", tracing::Level::INFO);
    let method = req.method().clone();
    let path = if logged {
        req.uri().path().to_string()
    } else {
        String::new()
    };
    let grpc = headers::is_grpc(&req);
    let (response, target, flags) = decide_and_send(&mut req, ctx, &state).await;
    let response = timed(
        response,
        &ctx.inputs,
        &state,
        target.as_ref(),
        flags,
        grpc,
        started,
    );
    if logged {
        let upstream = target
            .as_ref()
            .map_or_else(|| "-".to_string(), |t| t.addr.to_string());
        let service = target.as_ref().map_or("-", |t| &*t.service);
        tracing::info!(
            target: "access",
            "outbound http {} {method} {path} {} service={service} upstream={upstream} flags={flags} duration_ms={}",
            ctx.peer,
            response.status().as_u16(),
            started.elapsed().as_millis()
        );
    }
    response
}

/// Counts the request in its series once its response's body is sent (reporter `source`).
fn timed(
    mut response: Response<Body>,
    inputs: &Inputs,
    state: &State,
    target: Option<&Target>,
    flags: &'static str,
    grpc: bool,
    started: tokio::time::Instant,
) -> Response<Body> {
    use crate::metrics::{Key, Reporter, RequestProtocol, Timed, outbound_sides};
    // One series for every destination outside the registry, whatever its address.
    let passthrough = target.is_none_or(|t| &*t.service == crate::outbound::PASSTHROUGH);
    // A sidecar answering over mTLS says which workload it serves; the app never sees it.
    let mtls = target.is_some_and(|t| t.mtls);
    let meta = if mtls {
        response.headers_mut().remove(&crate::metrics::PEER_HEADER)
    } else {
        None
    };
    let meta = meta.as_ref().and_then(|v| v.to_str().ok()).unwrap_or("");
    let key = Key {
        reporter: Reporter::Source,
        peer: target.map_or(crate::metrics::UNKNOWN, |t| &*t.service),
        addr: target.filter(|_| !passthrough).map(|t| t.addr),
        meta,
        mtls: target.is_some_and(|t| t.mtls),
        protocol: RequestProtocol::of_http(grpc),
        code: response.status().as_u16(),
        flags,
    };
    let timer = inputs.metrics.time_request(&key, started, || match target {
        Some(t) => outbound_sides(inputs.workload(), state, t, meta),
        None => crate::metrics::Sides::unknown_destination(inputs.workload()),
    });
    response.map(|body| Timed::new(body, timer).boxed())
}

async fn decide_and_send(
    req: &mut Request<Body>,
    ctx: &Conn,
    state: &State,
) -> (Response<Body>, Option<Target>, &'static str) {
    let Some(svc) = state.service_for(ctx.dst) else {
        if state.outbound_policy == OutboundPolicy::RegistryOnly {
            return (
                reply(
                    StatusCode::BAD_GATEWAY,
                    "destination not in the mesh registry (REGISTRY_ONLY)",
                ),
                None,
                "NR",
            );
        }
        let mut target = Target::passthrough(ctx.dst);
        let (resp, flags) = forward(req, &mut target, false, 0, 0, ctx, state, None, None).await;
        return (resp, Some(target), flags);
    };
    let Some(port) = svc
        .port(ctx.dst.port())
        .or_else(|| svc.ports.iter().find(|p| p.target_port == ctx.dst.port()))
    else {
        return (
            reply(StatusCode::NOT_FOUND, "no such service port"),
            None,
            "NR",
        );
    };
    // Borrowed from copies that share the request's buffers (no per-request allocations):
    // the request itself is changed below.
    let uri = req.uri().clone();
    let host = req.headers().get(hyper::header::HOST).cloned();
    let authority = uri
        .authority()
        .map(|a| a.as_str())
        .or_else(|| host.as_ref().and_then(|h| h.to_str().ok()))
        .unwrap_or("");
    let method = req.method().clone();
    let facts = route::RequestFacts {
        method: method.as_str(),
        path: uri.path(),
        query: uri.query().unwrap_or(""),
        authority,
        scheme: uri.scheme_str().unwrap_or("http"),
        headers: req.headers(),
        port: port.port,
    };
    let src = route::SourceFacts {
        labels: Some(&state.source.workload_labels),
        namespace: &state.source.namespace,
    };
    let chosen = if svc.spec.http_routes.is_empty() {
        None
    } else {
        match route::find(state, &svc.spec.http_routes, &facts, &src) {
            Some(r) => Some((r, route::matching(state, r, &facts, &src).cloned())),
            None => return (reply(StatusCode::NOT_FOUND, "no route matched"), None, "NR"),
        }
    };
    let Some((route, matched)) = chosen else {
        let target = endpoint_in(
            svc,
            port,
            "",
            &ctx.inputs.loads,
            Some(&hash_key(req, ctx.peer)),
        );
        return send_to(req, target, svc, port, None, None, ctx, state).await;
    };
    if let Some(dr) = &route.direct_response {
        let status = StatusCode::from_u16(u16::try_from(dr.status).unwrap_or(500))
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut resp = Response::new(full(dr.body.clone()));
        *resp.status_mut() = status;
        headers::apply(resp.headers_mut(), route.response_headers.as_ref());
        return (resp, None, "DR");
    }
    if let Some(rd) = &route.redirect {
        return (headers::redirect(req, rd, authority), None, "-");
    }
    if let Some(cors) = &route.cors
        && let Some(preflight) = headers::cors_preflight(req, cors, state)
    {
        return (preflight, None, "-");
    }
    let dest = choose_weighted(&route.destinations, |d| d.weight);
    let target = {
        let key = hash_key(req, ctx.peer);
        match dest {
            Some(d) => to_destination(state, svc, port, d, &ctx.inputs.loads, Some(&key)),
            None => endpoint_in(svc, port, "", &ctx.inputs.loads, Some(&key)),
        }
    };
    if let Some(rw) = &route.rewrite {
        headers::rewrite(req, rw, matched.as_ref(), state);
    }
    headers::apply(req.headers_mut(), route.request_headers.as_ref());
    if let Some(d) = dest {
        headers::apply(req.headers_mut(), d.request_headers.as_ref());
    }
    // CORS answers need the request's Origin after the request's headers went upstream.
    let sent_headers = route.cors.as_ref().map(|_| req.headers().clone());
    let (mut resp, target, flags) =
        send_to(req, target, svc, port, Some(route), dest, ctx, state).await;
    if let Some(d) = dest {
        headers::apply(resp.headers_mut(), d.response_headers.as_ref());
    }
    headers::apply(resp.headers_mut(), route.response_headers.as_ref());
    if let (Some(cors), Some(sent)) = (&route.cors, &sent_headers) {
        headers::cors_response(&mut resp, sent, cors, state);
    }
    (resp, target, flags)
}

#[allow(clippy::too_many_arguments)]
async fn send_to(
    req: &mut Request<Body>,
    target: Option<Target>,
    svc: &Arc<Service>,
    port: &Port,
    route: Option<&proto::HttpRoute>,
    dest: Option<&proto::WeightedDestination>,
    ctx: &Conn,
    state: &State,
) -> (Response<Body>, Option<Target>, &'static str) {
    let Some(mut target) = target else {
        return (
            reply(StatusCode::SERVICE_UNAVAILABLE, "no healthy upstream"),
            None,
            "UH",
        );
    };
    // Between two sidecars HTTP rides HTTP/2 whatever the app speaks; the peer's inbound side
    // restores what the destination app expects. Upgrades (WebSocket) stay HTTP/1.1. To a
    // destination without a sidecar the port's protocol decides, not the client's: an `http`
    // port gets HTTP/1.1 even from an HTTP/2 client, as in Istio; gRPC always needs HTTP/2.
    let h2 = matches!(port.protocol, Protocol::Http2 | Protocol::Grpc)
        || headers::is_grpc(req)
        || (target.mesh && !headers::is_upgrade(req));
    let timeout_ms = route.map_or(0, |r| r.timeout_ms);
    let retries = route.map_or(0, |r| r.retries);
    let (resp, flags) = forward(
        req,
        &mut target,
        h2,
        timeout_ms,
        retries,
        ctx,
        state,
        Some(svc),
        dest.map(|d| (d, port)),
    )
    .await;
    (resp, Some(target), flags)
}

/// Sends the request to `target`, retrying bodiless requests on connect failures and 503s with
/// a new endpoint each time.
#[allow(clippy::too_many_arguments)]
async fn forward(
    req: &mut Request<Body>,
    target: &mut Target,
    h2: bool,
    timeout_ms: u64,
    retries: u32,
    ctx: &Conn,
    state: &State,
    svc: Option<&Arc<Service>>,
    dest: Option<(&proto::WeightedDestination, &Port)>,
) -> (Response<Body>, &'static str) {
    headers::prepare_upstream(req, ctx.peer);
    let bodiless = req.body().is_end_stream();
    let upgrade = headers::is_upgrade(req);
    let mut attempt = 0;
    loop {
        // Auto mTLS needs an identity of our own; without one, plaintext.
        if target.mtls && !target.mtls_required && ctx.inputs.upstreams.mtls().is_none() {
            target.mtls = false;
        }
        if let Some(o) = &target.originate {
            ctx.inputs.upstreams.originate_to(target.addr, o);
        }
        if target.mtls && ctx.inputs.upstreams.mtls().is_none() {
            return (
                reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "mTLS to this destination needs a workload certificate, and the proxy has none",
                ),
                "UF",
            );
        }
        // The last attempt hands the request's headers over instead of copying them.
        let last = attempt >= retries || !bodiless;
        let use_h2 = h2 && !upgrade;
        // Plaintext HTTP/1.1 (most traffic to apps without a sidecar) and HTTP/2 (between
        // sidecars, and to ports that speak it) take light pools of our own; TLS origination,
        // HTTP/1.1 over mTLS and upgrades take hyper-util's client.
        let plain_h1 = !use_h2 && !upgrade && !target.mtls && target.originate.is_none();
        let own_h2 = use_h2 && target.originate.is_none();
        let mut upstream_req = match headers::upstream_request(req, target, use_h2, last, !plain_h1)
        {
            Ok(r) => r,
            Err(e) => {
                return (
                    reply(StatusCode::BAD_REQUEST, &format!("cannot forward: {e}")),
                    "DPE",
                );
            }
        };
        if target.mtls {
            // Tells the peer sidecar which workload calls (for its metrics).
            upstream_req.headers_mut().insert(
                crate::metrics::PEER_HEADER.clone(),
                ctx.inputs.metrics.peer_header().clone(),
            );
        }
        let _active = ctx.inputs.loads.start(target.addr);
        let upstreams = &ctx.inputs.upstreams;
        let sent = async {
            if plain_h1 {
                upstreams
                    .outbound_h1
                    .send(target.addr, upstream_req)
                    .await
                    .map_err(Failure::from)
            } else if own_h2 {
                let identity = target.mtls.then_some(&*target.identity);
                upstreams
                    .outbound_h2
                    .send(target.addr, identity, upstream_req)
                    .await
                    .map_err(Failure::from)
            } else {
                let by_identity;
                let client = if target.mtls && target.originate.is_none() {
                    by_identity = upstreams.outbound.pick_for(use_h2, &target.identity);
                    &by_identity
                } else {
                    upstreams.outbound.pick(use_h2)
                };
                client
                    .request(upstream_req)
                    .await
                    .map(|r| r.map(boxed))
                    .map_err(Failure::from)
            }
        };
        let result = if timeout_ms > 0 {
            match tokio::time::timeout(Duration::from_millis(timeout_ms), sent).await {
                Ok(r) => r,
                Err(_) => {
                    return (
                        reply(StatusCode::GATEWAY_TIMEOUT, "upstream request timeout"),
                        "UT",
                    );
                }
            }
        } else {
            sent.await
        };
        let retryable = match &result {
            Err(e) => e.connect,
            Ok(r) => r.status() == StatusCode::SERVICE_UNAVAILABLE,
        };
        if retryable && bodiless && attempt < retries {
            attempt += 1;
            if let (Some(svc), Some((d, port))) = (svc, dest)
                && let Some(next) = to_destination(state, svc, port, d, &ctx.inputs.loads, None)
            {
                *target = next;
            }
            continue;
        }
        return match result {
            Ok(mut resp) => {
                if upgrade && resp.status() == StatusCode::SWITCHING_PROTOCOLS {
                    headers::splice_upgrade(req, &mut resp);
                }
                (resp, if attempt > 0 { "URX" } else { "-" })
            }
            Err(e) if e.connect => {
                // Say why, as Envoy does ("transport failure reason: ..."): a refused
                // connection and a peer proving the wrong identity call for different fixes.
                let why = error_causes(e.error.as_ref());
                tracing::warn!("upstream connect error to {}: {why}", target.addr);
                (
                    reply(
                        StatusCode::SERVICE_UNAVAILABLE,
                        &format!("upstream connect error: {why}"),
                    ),
                    "UF",
                )
            }
            Err(_) => (
                reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "upstream reset before response",
                ),
                "UC",
            ),
        };
    }
}

/// An upstream exchange that failed: before anything was sent (`connect`, retryable) or after.
pub(crate) struct Failure {
    connect: bool,
    error: Box<dyn std::error::Error + Send + Sync>,
}

impl From<h1pool::SendError> for Failure {
    fn from(e: h1pool::SendError) -> Self {
        Self {
            connect: matches!(e, h1pool::SendError::Connect(_)),
            error: Box::new(e),
        }
    }
}

impl From<hyper_util::client::legacy::Error> for Failure {
    fn from(e: hyper_util::client::legacy::Error) -> Self {
        Self {
            connect: e.is_connect(),
            error: Box::new(e),
        }
    }
}

/// The consistent-hash key of a request under a policy: a header, a cookie, the source IP or a
/// query parameter. A request without the key is load balanced as usual.
fn hash_key<B>(
    req: &Request<B>,
    peer: SocketAddr,
) -> impl Fn(&proto::ConsistentHash) -> Option<u64> + '_ {
    use crate::outbound::hash_str;
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

/// The declared protocol of the service port a connection to `dst` uses.
pub fn port_protocol(svc: &Service, dst: SocketAddr) -> Option<Protocol> {
    let port = svc
        .port(dst.port())
        .or_else(|| svc.ports.iter().find(|p| p.target_port == dst.port()))?;
    Some(port.protocol)
}

/// The request's URI with a new path and query.
pub fn with_path(uri: &Uri, path_and_query: &str) -> Option<Uri> {
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(path_and_query.parse().ok()?);
    Uri::from_parts(parts).ok()
}

/// An error's causes, innermost last, without the client's own wrapping words.
fn error_causes(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = Vec::new();
    let mut next = e.source();
    while let Some(cause) = next {
        let text = cause.to_string();
        if !parts.contains(&text) {
            parts.push(text);
        }
        next = cause.source();
    }
    if parts.is_empty() {
        e.to_string()
    } else {
        parts.join(": ")
    }
}
