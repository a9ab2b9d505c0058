//! Plaintext HTTP/1.1 upstream connections, pooled per destination address: the path most
//! requests take (to an app without a sidecar, and the inbound hand-over to the local app).
//! Lighter than hyper-util's pool, which mesh-bench's profiles showed costing about 5,000
//! instructions per request: an idle connection is one `SendRequest` on a per-address stack,
//! put back when its response body has ended; no boxed request future, no SipHash-keyed
//! checkout, no task to return a connection. mTLS, TLS origination, HTTP/2 and upgrades keep
//! using hyper-util's client.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body as _, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::SendRequest;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::time::Instant;

use super::breaker::{Breaker, ConnPermit, Overflow, Room};
use crate::body::{Body, BoxError, boxed};

/// How long an idle connection is kept (as hyper-util's pool was configured).
pub(crate) const IDLE_TIMEOUT: Duration = super::POOL_IDLE_TIMEOUT;
/// Idle connections kept per address; more are closed when they come back.
const MAX_IDLE_PER_ADDR: usize = 1024;

/// Why a request found no answer.
#[derive(Debug)]
pub enum SendError {
    /// No connection could be made (retryable; the request was not sent).
    Connect(std::io::Error),
    /// The connection failed or closed before the response.
    Request(BoxError),
    /// The cluster's circuit breaker refused the request (it was not sent).
    Overflow(Overflow),
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SendError::Connect(e) => write!(f, "{e}"),
            SendError::Request(e) => write!(f, "{e}"),
            SendError::Overflow(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for SendError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SendError::Connect(e) => Some(e),
            SendError::Request(e) => Some(&**e),
            SendError::Overflow(_) => None,
        }
    }
}

/// A connection and the requests it has carried.
struct Lease {
    sender: SendRequest<Body>,
    served: u32,
}

struct Idle {
    lease: Lease,
    since: Instant,
}

/// Pooled plaintext HTTP/1.1 connections, connecting from `local` when set.
pub struct H1Pool {
    local: Option<IpAddr>,
    idle: Mutex<HashMap<SocketAddr, Vec<Idle>, foldhash::fast::RandomState>>,
    /// The cluster's circuit breaker, for a pool of one cluster with limits.
    breaker: Option<Arc<Breaker>>,
    idle_timeout: Duration,
    connect_timeout: Duration,
}

impl H1Pool {
    /// An empty pool whose connections come from `local` (when set).
    pub fn new(local: Option<IpAddr>) -> Arc<Self> {
        Arc::new(Self {
            local,
            idle: Mutex::default(),
            breaker: None,
            idle_timeout: IDLE_TIMEOUT,
            connect_timeout: crate::tls::connect::CONNECT_TIMEOUT,
        })
    }

    /// An empty pool for the one cluster `breaker` limits.
    pub(crate) fn limited(breaker: Arc<Breaker>) -> Arc<Self> {
        Arc::new(Self {
            local: None,
            idle: Mutex::default(),
            idle_timeout: breaker.limits.idle_timeout.unwrap_or(IDLE_TIMEOUT),
            connect_timeout: breaker.limits.connect_timeout,
            breaker: Some(breaker),
        })
    }

    /// Sends `req` (origin-form URI) to `addr` on an idle connection, or a new one.
    pub async fn send(
        self: &Arc<Self>,
        addr: SocketAddr,
        req: Request<Body>,
    ) -> Result<Response<Body>, SendError> {
        let mut lease = match &self.breaker {
            None => self.checkout(addr).await?,
            // An idle connection needs no room: taken as without limits. Waiting for room is
            // boxed, as dialing is: a large future, which would otherwise be part of every
            // request's future, limited or not.
            Some(breaker) => {
                let idle = match self.pop_idle(addr) {
                    Some(mut lease) => lease.sender.ready().await.is_ok().then_some(lease),
                    None => None,
                };
                match idle {
                    Some(lease) => lease,
                    None => Box::pin(self.checkout_limited(breaker, addr)).await?,
                }
            }
        };
        let resp = lease
            .sender
            .send_request(req)
            .await
            .map_err(|e| SendError::Request(e.into()))?;
        lease.served += 1;
        let (parts, body) = resp.into_parts();
        let body = if body.is_end_stream() {
            self.put_back(addr, lease);
            boxed(body)
        } else {
            // Already of the proxy's error type: no extra layer.
            BodyExt::boxed(ReturnOnEnd {
                inner: body,
                back: Some((self.clone(), addr, lease)),
            })
        };
        Ok(Response::from_parts(parts, body))
    }

    async fn checkout(&self, addr: SocketAddr) -> Result<Lease, SendError> {
        while let Some(mut lease) = self.pop_idle(addr) {
            // Ready once the connection has finished with the previous exchange; an error means
            // the server closed it.
            if lease.sender.ready().await.is_ok() {
                return Ok(lease);
            }
        }
        // Boxed: connecting makes a large future, which would otherwise be part of (and
        // copied with) every request's future.
        Box::pin(self.dial(addr, None)).await
    }

    /// As [`Self::checkout`], within the cluster's circuit breaker: a request with no idle
    /// connection is pending until one frees up or it may open one, and until that is open.
    async fn checkout_limited(
        &self,
        breaker: &Arc<Breaker>,
        addr: SocketAddr,
    ) -> Result<Lease, SendError> {
        loop {
            let room = breaker
                .room(addr, || self.pop_idle(addr))
                .await
                .map_err(SendError::Overflow)?;
            match room {
                Room::Ready(mut lease) => {
                    if lease.sender.ready().await.is_ok() {
                        return Ok(lease);
                    }
                }
                Room::Open(permit, _pending) => {
                    return Box::pin(self.dial(addr, Some(permit))).await;
                }
            }
        }
    }

    /// Closes the idle connections that have idled out.
    pub fn close_idle(&self) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        idle.retain(|_, stack| {
            stack.retain(|i| i.since.elapsed() <= self.idle_timeout);
            !stack.is_empty()
        });
    }

    /// An idle connection to `addr` that has not idled out (dropping one closes it).
    fn pop_idle(&self, addr: SocketAddr) -> Option<Lease> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let stack = idle.get_mut(&addr)?;
        while let Some(i) = stack.pop() {
            if i.since.elapsed() <= self.idle_timeout {
                return Some(i.lease);
            }
        }
        None
    }

    /// A new connection to `addr`; `permit` (a circuit breaker's count of it) is held until
    /// the connection closes.
    async fn dial(&self, addr: SocketAddr, permit: Option<ConnPermit>) -> Result<Lease, SendError> {
        let stream = crate::tls::connect::tcp_within(addr, self.local, self.connect_timeout)
            .await
            .map_err(SendError::Connect)?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| SendError::Request(e.into()))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!("upstream connection to {addr}: {e}");
            }
            drop(permit);
        });
        Ok(Lease { sender, served: 0 })
    }

    fn put_back(&self, addr: SocketAddr, lease: Lease) {
        if lease.sender.is_closed() {
            return;
        }
        if let Some(breaker) = &self.breaker {
            // A connection that has carried its share closes (dropped here); waiting requests
            // hear of it when its task ends and the breaker counts it gone.
            if breaker
                .limits
                .max_requests_per_connection
                .is_some_and(|max| lease.served >= max)
            {
                return;
            }
        }
        {
            let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
            let stack = idle.entry(addr).or_default();
            if stack.len() >= MAX_IDLE_PER_ADDR {
                return;
            }
            stack.push(Idle {
                lease,
                since: Instant::now(),
            });
        }
        if let Some(breaker) = &self.breaker {
            breaker.freed();
        }
    }

    /// Idle connections kept for `addr`.
    #[cfg(test)]
    fn idle_count(&self, addr: SocketAddr) -> usize {
        self.idle
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&addr)
            .map_or(0, Vec::len)
    }
}

/// A response body that puts its connection back in the pool once it has been read to the end
/// (a body dropped half-read takes its connection with it).
struct ReturnOnEnd {
    inner: Incoming,
    back: Option<(Arc<H1Pool>, SocketAddr, Lease)>,
}

impl ReturnOnEnd {
    fn give_back(&mut self) {
        if let Some((pool, addr, lease)) = self.back.take() {
            pool.put_back(addr, lease);
        }
    }
}

impl hyper::body::Body for ReturnOnEnd {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => this.give_back(),
            Poll::Ready(Some(Ok(_))) if this.inner.is_end_stream() => this.give_back(),
            Poll::Ready(Some(Err(_))) => this.back = None,
            _ => {}
        }
        polled.map_err(Into::into)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http_body_util::BodyExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    /// A backend counting its connections; `/close` answers with `Connection: close`, `/big`
    /// with a 1 MiB body.
    async fn backend() -> (SocketAddr, Arc<AtomicUsize>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let count = Arc::new(AtomicUsize::new(0));
        let c = count.clone();
        tokio::spawn(async move {
            loop {
                let (mut conn, _) = l.accept().await.unwrap();
                c.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    loop {
                        let n = match conn.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        let head = String::from_utf8_lossy(&buf[..n]).to_string();
                        if head.starts_with("GET /close") {
                            let _ = conn
                                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok")
                                .await;
                            return;
                        }
                        let body = if head.starts_with("GET /big") {
                            vec![b'x'; 1 << 20]
                        } else {
                            b"ok".to_vec()
                        };
                        let answer =
                            format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", body.len());
                        if conn.write_all(answer.as_bytes()).await.is_err()
                            || conn.write_all(&body).await.is_err()
                        {
                            return;
                        }
                    }
                });
            }
        });
        (addr, count)
    }

    fn get(path: &str) -> Request<Body> {
        Request::get(path)
            .header("host", "backend")
            .body(crate::body::full(Bytes::new()))
            .unwrap()
    }

    async fn read_all(resp: Response<Body>) -> usize {
        resp.into_body().collect().await.unwrap().to_bytes().len()
    }

    #[tokio::test]
    async fn one_connection_serves_requests_one_after_another() {
        let (addr, count) = backend().await;
        let pool = H1Pool::new(None);
        for _ in 0..50 {
            let resp = pool.send(addr, get("/")).await.unwrap();
            assert_eq!(read_all(resp).await, 2);
        }
        assert_eq!(count.load(Ordering::Relaxed), 1);
        assert_eq!(pool.idle_count(addr), 1);
    }

    #[tokio::test]
    async fn a_connection_idle_past_the_timeout_is_not_reused() {
        let (addr, count) = backend().await;
        let pool = H1Pool::new(None);
        read_all(pool.send(addr, get("/")).await.unwrap()).await;
        // The pool reads tokio's clock: move it past the idle timeout without waiting.
        tokio::time::pause();
        tokio::time::advance(IDLE_TIMEOUT - Duration::from_secs(1)).await;
        tokio::time::resume();
        read_all(pool.send(addr, get("/")).await.unwrap()).await;
        assert_eq!(
            count.load(Ordering::Relaxed),
            1,
            "reused within the timeout"
        );
        tokio::time::pause();
        tokio::time::advance(IDLE_TIMEOUT + Duration::from_secs(1)).await;
        tokio::time::resume();
        read_all(pool.send(addr, get("/")).await.unwrap()).await;
        assert_eq!(
            count.load(Ordering::Relaxed),
            2,
            "a new connection after it"
        );
        assert_eq!(pool.idle_count(addr), 1);
    }

    #[tokio::test]
    async fn concurrent_requests_open_connections_and_keep_them() {
        let (addr, count) = backend().await;
        let pool = H1Pool::new(None);
        for _ in 0..3 {
            let answers = futures_join(&pool, addr, 8).await;
            assert!(answers.iter().all(|n| *n == 2));
        }
        assert!(
            count.load(Ordering::Relaxed) <= 8,
            "{} connections for 8 in flight",
            count.load(Ordering::Relaxed)
        );
    }

    async fn futures_join(pool: &Arc<H1Pool>, addr: SocketAddr, n: usize) -> Vec<usize> {
        let mut tasks = Vec::new();
        for _ in 0..n {
            let pool = pool.clone();
            tasks.push(tokio::spawn(async move {
                read_all(pool.send(addr, get("/")).await.unwrap()).await
            }));
        }
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.unwrap());
        }
        out
    }

    #[tokio::test]
    async fn a_body_dropped_half_read_takes_its_connection_along() {
        let (addr, count) = backend().await;
        let pool = H1Pool::new(None);
        let resp = pool.send(addr, get("/big")).await.unwrap();
        drop(resp);
        assert_eq!(pool.idle_count(addr), 0);
        let resp = pool.send(addr, get("/")).await.unwrap();
        assert_eq!(read_all(resp).await, 2);
        assert_eq!(count.load(Ordering::Relaxed), 2);
    }

    #[tokio::test]
    async fn a_connection_the_server_closed_is_not_reused() {
        let (addr, count) = backend().await;
        let pool = H1Pool::new(None);
        let resp = pool.send(addr, get("/close")).await.unwrap();
        assert_eq!(read_all(resp).await, 2);
        // The next request must not fail on the closed connection.
        let resp = pool.send(addr, get("/")).await.unwrap();
        assert_eq!(read_all(resp).await, 2);
        assert_eq!(count.load(Ordering::Relaxed), 2);
    }

    fn limited(max_connections: u32, per_connection: Option<u32>) -> Arc<H1Pool> {
        H1Pool::limited(Breaker::new(Arc::new(crate::state::PoolLimits {
            cluster: "outbound|80||backend".into(),
            max_connections,
            max_pending: 16,
            max_requests: u32::MAX,
            max_retries: u32::MAX,
            max_requests_per_connection: per_connection,
            connect_timeout: Duration::from_secs(5),
            idle_timeout: None,
        })))
    }

    #[tokio::test]
    async fn a_connection_closes_after_max_requests_per_connection() {
        let (addr, count) = backend().await;
        let pool = limited(u32::MAX, Some(2));
        for _ in 0..6 {
            assert_eq!(read_all(pool.send(addr, get("/")).await.unwrap()).await, 2);
        }
        assert_eq!(
            count.load(Ordering::Relaxed),
            3,
            "two requests per connection"
        );
    }

    #[tokio::test]
    async fn concurrent_requests_share_max_connections() {
        let (addr, count) = backend().await;
        let pool = limited(2, None);
        for _ in 0..3 {
            let answers = futures_join(&pool, addr, 8).await;
            assert!(answers.iter().all(|n| *n == 2));
        }
        assert_eq!(
            count.load(Ordering::Relaxed),
            2,
            "8 at a time over 2 connections"
        );
    }

    #[tokio::test]
    async fn a_refused_connection_is_a_connect_error() {
        let addr = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let pool = H1Pool::new(None);
        let err = pool.send(addr, get("/")).await.err().unwrap();
        assert!(matches!(err, SendError::Connect(_)), "{err}");
    }
}
