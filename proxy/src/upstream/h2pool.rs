//! HTTP/2 upstream connections: one per destination, every request a stream on it. Carries
//! the traffic between sidecars (mesh mTLS, each connection proving the identity the
//! destination must have) and plaintext HTTP/2 to ports that speak it (gRPC, `http2`).
//!
//! Lighter than hyper-util's pool, which callgrind showed costing about 5,000 instructions per
//! request on the client sidecar: a lookup by address and identity and a clone of the
//! connection's sender, no boxed request future, no checkout racing a connect. And the `h2`
//! crate's client directly rather than hyper's wrapper of it: hyper hands each request to the
//! connection's task over a channel, spawns a task per request to await the response and
//! passes it back over a one-shot channel (about 6,000 instructions and two more task wake-ups
//! per request); here the request's own task opens the stream and awaits the response. A
//! request body is piped by a task of its own only when there is one.

use std::collections::HashMap;
use std::future::poll_fn;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use h2::client::SendRequest;
use h2::{RecvStream, SendStream};
use hyper::body::{Body as _, Frame, SizeHint};
use hyper::header::{self, HeaderMap, HeaderName};
use hyper::{Method, Request, Response};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;

use super::breaker::{Breaker, ConnPermit, Room};
use super::h1pool::SendError;
use crate::body::{Body, BoxError, boxed};
use crate::tls::connect::{MtlsClient, tcp_within};
use crate::tls::mtls::ALPN_MESH_H2;

/// A connection unused this long is closed (as hyper-util's pool was configured).
const IDLE_TIMEOUT: Duration = super::POOL_IDLE_TIMEOUT;

/// Flow-control windows and limits: hyper's defaults for its HTTP/2 client, kept as they were.
const STREAM_WINDOW: u32 = 2 * 1024 * 1024;
const CONN_WINDOW: u32 = 5 * 1024 * 1024;
const MAX_FRAME_SIZE: u32 = 16 * 1024;
const MAX_SEND_BUFFER: usize = 1024 * 1024;
const MAX_HEADER_LIST_SIZE: u32 = 16 * 1024;
const INITIAL_MAX_SEND_STREAMS: usize = 100;

/// One connection: plaintext (`identity` `None`) or mesh mTLS whose peer proved `identity`
/// (any mesh identity when empty).
struct Conn {
    identity: Option<Arc<str>>,
    sender: SendRequest<Bytes>,
    /// Set when the connection's task has ended.
    closed: Arc<AtomicBool>,
    used: Instant,
    /// Streams opened on it (counted for a circuit breaker's `maxRequestsPerConnection`).
    streams: u32,
}

impl Conn {
    fn is_closed(&self) -> bool {
        self.closed.load(Relaxed)
    }
}

/// Who is dialing which destination, so that concurrent first requests share one connection.
type Dialing = HashMap<(SocketAddr, Option<Arc<str>>), Arc<tokio::sync::Mutex<()>>>;

/// HTTP/2 connections by destination, dialed from `local` when set.
pub struct H2Pool {
    local: Option<IpAddr>,
    mtls: Option<Arc<MtlsClient>>,
    conns: Mutex<HashMap<SocketAddr, Vec<Conn>, foldhash::fast::RandomState>>,
    dialing: Mutex<Dialing>,
    /// The cluster's circuit breaker, for a pool of one cluster with limits.
    breaker: Option<Arc<Breaker>>,
    idle_timeout: Duration,
    connect_timeout: Duration,
}

impl H2Pool {
    /// An empty pool; mesh mTLS destinations need `mtls`.
    pub fn new(local: Option<IpAddr>, mtls: Option<Arc<MtlsClient>>) -> Self {
        Self {
            local,
            mtls,
            conns: Mutex::default(),
            dialing: Mutex::default(),
            breaker: None,
            idle_timeout: IDLE_TIMEOUT,
            connect_timeout: crate::tls::connect::CONNECT_TIMEOUT,
        }
    }

    /// An empty pool for the one cluster `breaker` limits.
    pub(crate) fn limited(mtls: Option<Arc<MtlsClient>>, breaker: Arc<Breaker>) -> Self {
        Self {
            local: None,
            mtls,
            conns: Mutex::default(),
            dialing: Mutex::default(),
            idle_timeout: breaker.limits.idle_timeout.unwrap_or(IDLE_TIMEOUT),
            connect_timeout: breaker.limits.connect_timeout,
            breaker: Some(breaker),
        }
    }

    /// Sends `req` (absolute URI) to `addr`: over mesh mTLS when `identity` is set (the peer
    /// must prove it; any mesh identity when empty), else plaintext. A request the connection
    /// could not take (it was closing: GOAWAY, or gone) goes once more on a new connection;
    /// nothing of it was sent.
    pub async fn send(
        &self,
        addr: SocketAddr,
        identity: Option<&str>,
        req: Request<Body>,
    ) -> Result<Response<Body>, SendError> {
        if let Some(breaker) = &self.breaker {
            // Boxed: waiting for room makes a large future, which would otherwise be part of
            // (and copied with) every request's future, limited or not.
            return Box::pin(self.send_limited(breaker, addr, identity, req)).await;
        }
        let mut retried = false;
        let sender = loop {
            let sender = self.sender(addr, identity).await?;
            match sender.ready().await {
                Ok(ready) => break ready,
                Err(e) if !retried => {
                    tracing::debug!("upstream http/2 to {addr}: {e}; on a new connection");
                    self.forget(addr, identity);
                    retried = true;
                }
                Err(e) => return Err(SendError::Request(e.into())),
            }
        };
        exchange(sender, req).await
    }

    /// As [`Self::send`], within the cluster's circuit breaker: a request with no connection
    /// that can take another stream is pending until one can, or until the one it may open is
    /// open. A connection that has carried `maxRequestsPerConnection` streams takes no more and
    /// closes once they end.
    async fn send_limited(
        &self,
        breaker: &Arc<Breaker>,
        addr: SocketAddr,
        identity: Option<&str>,
        req: Request<Body>,
    ) -> Result<Response<Body>, SendError> {
        let mut retried = false;
        loop {
            let room = breaker
                .room(addr, || self.open(addr, identity))
                .await
                .map_err(SendError::Overflow)?;
            let sender = match room {
                Room::Ready(sender) => sender,
                Room::Open(permit, _pending) => {
                    let key = identity.map(Arc::<str>::from);
                    Box::pin(self.dial(addr, key, Some(permit))).await?
                }
            };
            match sender.ready().await {
                Ok(ready) => return exchange(ready, req).await,
                Err(e) if !retried => {
                    tracing::debug!("upstream http/2 to {addr}: {e}; on a new connection");
                    self.forget(addr, identity);
                    retried = true;
                }
                Err(e) => return Err(SendError::Request(e.into())),
            }
        }
    }

    /// The open connection to `addr` proving `identity`, if any (a closed or long-idle one is
    /// dropped), counting the stream the caller opens on it: one that reaches a circuit
    /// breaker's `maxRequestsPerConnection` leaves the pool.
    fn open(&self, addr: SocketAddr, identity: Option<&str>) -> Option<SendRequest<Bytes>> {
        let mut conns = self.conns.lock().unwrap_or_else(|e| e.into_inner());
        let list = conns.get_mut(&addr)?;
        let at = list
            .iter()
            .position(|c| c.identity.as_deref() == identity)?;
        let conn = &mut list[at];
        let now = Instant::now();
        if conn.is_closed() || now.duration_since(conn.used) > self.idle_timeout {
            list.swap_remove(at);
            return None;
        }
        conn.used = now;
        conn.streams = conn.streams.saturating_add(1);
        let sender = conn.sender.clone();
        if self.spent(conn.streams) {
            list.swap_remove(at);
        }
        Some(sender)
    }

    /// Closes the connections unused for the idle timeout (a connection goes once the
    /// streams still on it finish, as they hold their own handles).
    pub fn close_idle(&self) {
        let now = Instant::now();
        let mut conns = self.conns.lock().unwrap_or_else(|e| e.into_inner());
        conns.retain(|_, list| {
            list.retain(|c| !c.is_closed() && now.duration_since(c.used) <= self.idle_timeout);
            !list.is_empty()
        });
    }

    /// Whether a connection that carried `streams` may take no more.
    fn spent(&self, streams: u32) -> bool {
        self.breaker.as_ref().is_some_and(|b| {
            b.limits
                .max_requests_per_connection
                .is_some_and(|max| streams >= max)
        })
    }

    fn forget(&self, addr: SocketAddr, identity: Option<&str>) {
        let mut conns = self.conns.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(list) = conns.get_mut(&addr) {
            list.retain(|c| c.identity.as_deref() != identity);
        }
    }

    async fn sender(
        &self,
        addr: SocketAddr,
        identity: Option<&str>,
    ) -> Result<SendRequest<Bytes>, SendError> {
        if let Some(s) = self.open(addr, identity) {
            return Ok(s);
        }
        let key = (addr, identity.map(Arc::<str>::from));
        let gate = self
            .dialing
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(key.clone())
            .or_default()
            .clone();
        let dialed = {
            let _turn = gate.lock().await;
            match self.open(addr, identity) {
                Some(s) => Ok(s),
                // Boxed: the TLS and HTTP/2 handshakes make a large future, which would
                // otherwise be part of (and copied with) every request's future.
                None => Box::pin(self.dial(addr, key.1.clone(), None)).await,
            }
        };
        self.dialing
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&key);
        dialed
    }

    /// A new connection to `addr`, whose first stream is the caller's; `permit` (a circuit
    /// breaker's count of it) is held until the connection closes.
    async fn dial(
        &self,
        addr: SocketAddr,
        identity: Option<Arc<str>>,
        permit: Option<ConnPermit>,
    ) -> Result<SendRequest<Bytes>, SendError> {
        let stream = tcp_within(addr, self.local, self.connect_timeout)
            .await
            .map_err(SendError::Connect)?;
        let (sender, closed) = match (&identity, &self.mtls) {
            (None, _) => start(addr, stream, permit).await?,
            (Some(id), Some(mtls)) => {
                let tls = mtls
                    .handshake(stream, addr, id, ALPN_MESH_H2)
                    .await
                    .map_err(SendError::Connect)?;
                start(addr, tls, permit).await?
            }
            (Some(_), None) => {
                return Err(SendError::Connect(std::io::Error::new(
                    std::io::ErrorKind::NotConnected,
                    "mesh mTLS needs a workload certificate, and the proxy has none",
                )));
            }
        };
        let now = Instant::now();
        {
            let mut conns = self.conns.lock().unwrap_or_else(|e| e.into_inner());
            // Connections that closed or idled out go when a new one comes.
            let idle_timeout = self.idle_timeout;
            conns.retain(|_, list| {
                list.retain(|c| !c.is_closed() && now.duration_since(c.used) <= idle_timeout);
                !list.is_empty()
            });
            if !self.spent(1) {
                conns.entry(addr).or_default().push(Conn {
                    identity,
                    sender: sender.clone(),
                    closed,
                    used: now,
                    streams: 1,
                });
            }
        }
        if let Some(breaker) = &self.breaker {
            // Requests waiting may share the new connection.
            breaker.freed();
        }
        Ok(sender)
    }
}

/// The HTTP/2 handshake on `io`, its connection driven by a task of its own; the flag is set
/// when that task ends.
async fn start<T>(
    addr: SocketAddr,
    io: T,
    permit: Option<ConnPermit>,
) -> Result<(SendRequest<Bytes>, Arc<AtomicBool>), SendError>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = h2::client::Builder::new()
        .initial_max_send_streams(INITIAL_MAX_SEND_STREAMS)
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONN_WINDOW)
        .max_frame_size(MAX_FRAME_SIZE)
        .max_header_list_size(MAX_HEADER_LIST_SIZE)
        .max_send_buffer_size(MAX_SEND_BUFFER)
        .enable_push(false)
        .handshake::<_, Bytes>(io)
        .await
        .map_err(|e| SendError::Connect(std::io::Error::other(e)))?;
    let closed = Arc::new(AtomicBool::new(false));
    let flag = closed.clone();
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!("upstream http/2 connection to {addr}: {e}");
        }
        flag.store(true, Relaxed);
        drop(permit);
    });
    Ok((sender, closed))
}

/// Headers HTTP/2 forbids (RFC 9113 §8.2.2); `te` is allowed only as `trailers`.
static CONNECTION_SPECIFIC: [HeaderName; 5] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Sends `req` as a new stream of a connection ready for one, and awaits the response's head.
async fn exchange(
    mut sender: SendRequest<Bytes>,
    req: Request<Body>,
) -> Result<Response<Body>, SendError> {
    let (mut head, body) = req.into_parts();
    strip_connection_specific(&mut head.headers);
    if let Some(len) = body.size_hint().exact()
        && (len != 0 || matches!(head.method, Method::POST | Method::PUT | Method::PATCH))
        && !head.headers.contains_key(header::CONTENT_LENGTH)
    {
        head.headers.insert(header::CONTENT_LENGTH, len.into());
    }
    let end = body.is_end_stream();
    let (response, stream) = sender
        .send_request(Request::from_parts(head, ()), end)
        .map_err(|e| SendError::Request(e.into()))?;
    if !end {
        tokio::spawn(pipe(body, stream));
    }
    let (parts, recv) = response
        .await
        .map_err(|e| SendError::Request(e.into()))?
        .into_parts();
    let len = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse().ok());
    Ok(Response::from_parts(
        parts,
        boxed(Received {
            recv,
            data_done: false,
            len,
        }),
    ))
}

fn strip_connection_specific(headers: &mut HeaderMap) {
    // One look at the names first: a request from the mesh rarely carries any of them.
    let found = headers
        .keys()
        .any(|name| CONNECTION_SPECIFIC.contains(name) || name == header::TE);
    if !found {
        return;
    }
    for name in &CONNECTION_SPECIFIC {
        headers.remove(name);
    }
    if headers.get(header::TE).is_some_and(|te| te != "trailers") {
        headers.remove(header::TE);
    }
}

/// Sends `body` on `stream` as the peer's flow control allows, then its trailers; a body that
/// fails resets the stream, and a stream the peer reset stops the sending.
async fn pipe(mut body: Body, mut stream: SendStream<Bytes>) {
    loop {
        let next = poll_fn(|cx| {
            if let Poll::Ready(reason) = stream.poll_reset(cx) {
                return Poll::Ready(Err(reason));
            }
            Pin::new(&mut body).poll_frame(cx).map(Ok)
        })
        .await;
        let frame = match next {
            // The peer reset the stream (it may have answered already): nothing more to send.
            Err(_) => return,
            Ok(None) => {
                let _ = stream.send_data(Bytes::new(), true);
                return;
            }
            Ok(Some(Err(e))) => {
                tracing::debug!("request body to an http/2 upstream failed: {e}");
                stream.send_reset(h2::Reason::INTERNAL_ERROR);
                return;
            }
            Ok(Some(Ok(frame))) => frame,
        };
        let data = match frame.into_data() {
            Ok(data) => data,
            Err(frame) => {
                if let Ok(trailers) = frame.into_trailers() {
                    let _ = stream.send_trailers(trailers);
                } else {
                    let _ = stream.send_data(Bytes::new(), true);
                }
                return;
            }
        };
        let end = body.is_end_stream();
        if !data.is_empty() {
            // Wait for some window; h2 buffers what goes beyond it and sends it as the peer
            // opens more.
            stream.reserve_capacity(1);
            let room = poll_fn(|cx| {
                loop {
                    match ready!(stream.poll_capacity(cx)) {
                        Some(Ok(0)) => continue,
                        other => return Poll::Ready(other),
                    }
                }
            })
            .await;
            if !matches!(room, Some(Ok(_))) {
                return;
            }
        }
        if stream.send_data(data, end).is_err() || end {
            return;
        }
    }
}

/// A response body arriving on an HTTP/2 stream: its data (the window given back as it is
/// read), then its trailers.
struct Received {
    recv: RecvStream,
    data_done: bool,
    /// What the response's `content-length` says is left to read.
    len: Option<u64>,
}

impl hyper::body::Body for Received {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if !this.data_done {
            match ready!(this.recv.poll_data(cx)) {
                Some(Ok(data)) => {
                    let _ = this.recv.flow_control().release_capacity(data.len());
                    // What `content-length` says is still to come.
                    this.len = this.len.map(|len| len.saturating_sub(data.len() as u64));
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Some(Err(e)) => return Poll::Ready(Some(Err(e.into()))),
                None => this.data_done = true,
            }
        }
        match ready!(this.recv.poll_trailers(cx)) {
            Ok(Some(trailers)) => Poll::Ready(Some(Ok(Frame::trailers(trailers)))),
            Ok(None) => Poll::Ready(None),
            Err(e) => Poll::Ready(Some(Err(e.into()))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.recv.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        match self.len {
            Some(len) if !self.data_done => SizeHint::with_exact(len),
            _ => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::convert::Infallible;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http_body_util::BodyExt;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use tokio::net::TcpListener;
    use tokio::sync::watch;

    use super::*;

    /// An h2c backend counting its connections; after `close` is set, each connection it
    /// serves is shut down gracefully (GOAWAY) once its first request is answered.
    async fn backend() -> (SocketAddr, Arc<AtomicUsize>, watch::Sender<bool>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let count = Arc::new(AtomicUsize::new(0));
        let (close_tx, close_rx) = watch::channel(false);
        let c = count.clone();
        tokio::spawn(async move {
            loop {
                let (conn, _) = l.accept().await.unwrap();
                c.fetch_add(1, Ordering::Relaxed);
                let mut close = close_rx.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(|_req| async {
                        Ok::<_, Infallible>(Response::new(crate::body::full("ok")))
                    });
                    let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(conn), svc);
                    tokio::pin!(conn);
                    tokio::select! {
                        _ = conn.as_mut() => {}
                        _ = async { close.wait_for(|c| *c).await.map(|_| ()) } => {
                            conn.as_mut().graceful_shutdown();
                            let _ = conn.await;
                        }
                    }
                });
            }
        });
        (addr, count, close_tx)
    }

    fn get(addr: SocketAddr) -> Request<Body> {
        Request::get(format!("http://{addr}/"))
            .body(crate::body::full(Bytes::new()))
            .unwrap()
    }

    async fn text(resp: Response<Body>) -> String {
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8_lossy(&body).into_owned()
    }

    #[tokio::test]
    async fn bodies_larger_than_the_flow_control_windows_go_both_ways() {
        const UP: usize = 3 * 1024 * 1024;
        const DOWN: usize = 7 * 1024 * 1024;
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            let (conn, _) = l.accept().await.unwrap();
            let svc = hyper::service::service_fn(|req: Request<hyper::body::Incoming>| async {
                let got = req.into_body().collect().await.unwrap().to_bytes();
                let mut resp = Response::new(crate::body::full(vec![b'y'; DOWN]));
                resp.headers_mut()
                    .insert("x-got", got.len().to_string().parse().unwrap());
                Ok::<_, Infallible>(resp)
            });
            let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(conn), svc)
                .await;
        });
        // The request body arrives in pieces, with no length known in advance.
        let (mut tx, body) = http_body_util::channel::Channel::<Bytes, BoxError>::new(4);
        tokio::spawn(async move {
            for _ in 0..UP / (64 * 1024) {
                tx.send_data(Bytes::from(vec![b'x'; 64 * 1024]))
                    .await
                    .unwrap();
            }
        });
        let req = Request::post(format!("http://{addr}/"))
            .body(body.boxed())
            .unwrap();
        let pool = H2Pool::new(None, None);
        let resp = pool.send(addr, None, req).await.unwrap();
        assert_eq!(resp.headers()["x-got"], UP.to_string().as_str());
        assert_eq!(resp.body().size_hint().exact(), Some(DOWN as u64));
        let mut body = resp.into_body();
        let mut read = 0;
        while let Some(frame) = body.frame().await {
            let data = frame.unwrap().into_data().unwrap();
            assert!(data.iter().all(|b| *b == b'y'));
            read += data.len();
            // The size hint follows what is left.
            if !body.is_end_stream() {
                assert_eq!(body.size_hint().exact(), Some((DOWN - read) as u64));
            }
        }
        assert_eq!(read, DOWN);
    }

    #[tokio::test]
    async fn concurrent_first_requests_share_one_connection() {
        let (addr, count, _close) = backend().await;
        let pool = Arc::new(H2Pool::new(None, None));
        let mut tasks = Vec::new();
        for _ in 0..16 {
            let pool = pool.clone();
            tasks.push(tokio::spawn(async move {
                text(pool.send(addr, None, get(addr)).await.unwrap()).await
            }));
        }
        for t in tasks {
            assert_eq!(t.await.unwrap(), "ok");
        }
        for _ in 0..10 {
            assert_eq!(
                text(pool.send(addr, None, get(addr)).await.unwrap()).await,
                "ok"
            );
        }
        assert_eq!(count.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn a_connection_the_server_closed_is_replaced_without_failing_a_request() {
        let (addr, count, close) = backend().await;
        let pool = H2Pool::new(None, None);
        assert_eq!(
            text(pool.send(addr, None, get(addr)).await.unwrap()).await,
            "ok"
        );
        close.send_replace(true);
        // Until the GOAWAY has arrived a request may still go to the old connection; either way
        // none fails, and a new connection takes over.
        let deadline = Instant::now() + Duration::from_secs(5);
        while count.load(Ordering::Relaxed) < 2 {
            assert!(Instant::now() < deadline, "no new connection after GOAWAY");
            assert_eq!(
                text(pool.send(addr, None, get(addr)).await.unwrap()).await,
                "ok"
            );
        }
    }

    #[tokio::test]
    async fn a_refused_connection_is_a_connect_error() {
        let addr = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let pool = H2Pool::new(None, None);
        let err = pool.send(addr, None, get(addr)).await.err().unwrap();
        assert!(matches!(err, SendError::Connect(_)), "{err}");
    }

    #[tokio::test]
    async fn mesh_destinations_need_a_workload_certificate() {
        let (addr, _, _close) = backend().await;
        let pool = H2Pool::new(None, None);
        let err = pool.send(addr, Some(""), get(addr)).await.err().unwrap();
        assert!(err.to_string().contains("workload certificate"), "{err}");
    }
}
