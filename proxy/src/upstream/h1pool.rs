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

use crate::body::{Body, BoxError, boxed};

/// How long an idle connection is kept (as hyper-util's pool was configured).
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Idle connections kept per address; more are closed when they come back.
const MAX_IDLE_PER_ADDR: usize = 1024;

/// Why a request found no answer.
#[derive(Debug)]
pub enum SendError {
    /// No connection could be made (retryable; the request was not sent).
    Connect(std::io::Error),
    /// The connection failed or closed before the response.
    Request(BoxError),
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SendError::Connect(e) => write!(f, "{e}"),
            SendError::Request(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for SendError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SendError::Connect(e) => Some(e),
            SendError::Request(e) => Some(&**e),
        }
    }
}

struct Idle {
    sender: SendRequest<Body>,
    since: Instant,
}

/// Pooled plaintext HTTP/1.1 connections, connecting from `local` when set.
pub struct H1Pool {
    local: Option<IpAddr>,
    idle: Mutex<HashMap<SocketAddr, Vec<Idle>, foldhash::fast::RandomState>>,
}

impl H1Pool {
    /// An empty pool whose connections come from `local` (when set).
    pub fn new(local: Option<IpAddr>) -> Arc<Self> {
        Arc::new(Self {
            local,
            idle: Mutex::default(),
        })
    }

    /// Sends `req` (origin-form URI) to `addr` on an idle connection, or a new one.
    pub async fn send(
        self: &Arc<Self>,
        addr: SocketAddr,
        req: Request<Body>,
    ) -> Result<Response<Body>, SendError> {
        let mut sender = self.checkout(addr).await?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| SendError::Request(e.into()))?;
        let (parts, body) = resp.into_parts();
        let body = if body.is_end_stream() {
            self.put_back(addr, sender);
            boxed(body)
        } else {
            // Already of the proxy's error type: no extra layer.
            BodyExt::boxed(ReturnOnEnd {
                inner: body,
                back: Some((self.clone(), addr, sender)),
            })
        };
        Ok(Response::from_parts(parts, body))
    }

    async fn checkout(&self, addr: SocketAddr) -> Result<SendRequest<Body>, SendError> {
        loop {
            let idle = self
                .idle
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get_mut(&addr)
                .and_then(Vec::pop);
            let Some(mut idle) = idle else { break };
            if idle.since.elapsed() > IDLE_TIMEOUT {
                continue; // dropping the sender closes the connection
            }
            // Ready once the connection has finished with the previous exchange; an error means
            // the server closed it.
            if idle.sender.ready().await.is_ok() {
                return Ok(idle.sender);
            }
        }
        // Boxed: connecting makes a large future, which would otherwise be part of (and
        // copied with) every request's future.
        Box::pin(self.dial(addr)).await
    }

    async fn dial(&self, addr: SocketAddr) -> Result<SendRequest<Body>, SendError> {
        let stream = crate::tls::connect::tcp(addr, self.local)
            .await
            .map_err(SendError::Connect)?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| SendError::Request(e.into()))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!("upstream connection to {addr}: {e}");
            }
        });
        Ok(sender)
    }

    fn put_back(&self, addr: SocketAddr, sender: SendRequest<Body>) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let stack = idle.entry(addr).or_default();
        if stack.len() < MAX_IDLE_PER_ADDR {
            stack.push(Idle {
                sender,
                since: Instant::now(),
            });
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
    back: Option<(Arc<H1Pool>, SocketAddr, SendRequest<Body>)>,
}

impl ReturnOnEnd {
    fn give_back(&mut self) {
        if let Some((pool, addr, sender)) = self.back.take() {
            pool.put_back(addr, sender);
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
