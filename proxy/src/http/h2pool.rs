//! HTTP/2 upstream connections: one per destination, every request a stream on it. Carries
//! the traffic between sidecars (mesh mTLS, each connection proving the identity the
//! destination must have) and plaintext HTTP/2 to ports that speak it (gRPC, `http2`).
//! Lighter than hyper-util's pool, which callgrind showed costing about 5,000 instructions per
//! request on the client sidecar: a lookup by address and identity and a clone of the
//! connection's sender, no boxed request future, no checkout racing a connect.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use hyper::client::conn::http2::SendRequest;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};

use super::Body;
use super::h1pool::SendError;
use crate::tls::connect::{MtlsClient, tcp};
use crate::tls::mtls::ALPN_MESH_H2;

/// A connection unused this long is closed (as hyper-util's pool was configured).
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// One connection: plaintext (`identity` `None`) or mesh mTLS whose peer proved `identity`
/// (any mesh identity when empty).
struct Conn {
    identity: Option<Arc<str>>,
    sender: SendRequest<Body>,
    used: Instant,
}

/// Who is dialing which destination, so that concurrent first requests share one connection.
type Dialing = HashMap<(SocketAddr, Option<Arc<str>>), Arc<tokio::sync::Mutex<()>>>;

/// HTTP/2 connections by destination, dialed from `local` when set.
pub struct H2Pool {
    local: Option<IpAddr>,
    mtls: Option<Arc<MtlsClient>>,
    conns: Mutex<HashMap<SocketAddr, Vec<Conn>, foldhash::fast::RandomState>>,
    dialing: Mutex<Dialing>,
}

impl H2Pool {
    /// An empty pool; mesh mTLS destinations need `mtls`.
    pub fn new(local: Option<IpAddr>, mtls: Option<Arc<MtlsClient>>) -> Self {
        Self {
            local,
            mtls,
            conns: Mutex::default(),
            dialing: Mutex::default(),
        }
    }

    /// Sends `req` (absolute URI) to `addr`: over mesh mTLS when `identity` is set (the peer
    /// must prove it; any mesh identity when empty), else plaintext. A request the connection
    /// refused before sending (it was closing) goes once more on a new connection.
    pub async fn send(
        &self,
        addr: SocketAddr,
        identity: Option<&str>,
        req: Request<Body>,
    ) -> Result<Response<Body>, SendError> {
        let mut req = req;
        let mut retried = false;
        loop {
            let mut sender = self.sender(addr, identity).await?;
            match sender.try_send_request(req).await {
                Ok(resp) => return Ok(resp.map(BodyExt::boxed)),
                Err(mut e) => match e.take_message() {
                    Some(back) if !retried => {
                        tracing::debug!(
                            "upstream http/2 to {addr}: {}; on a new connection",
                            e.error()
                        );
                        self.forget(addr, identity);
                        req = back;
                        retried = true;
                    }
                    _ => return Err(SendError::Request(e.into_error())),
                },
            }
        }
    }

    /// The open connection to `addr` proving `identity`, if any (a closed or long-idle one is
    /// dropped).
    fn open(&self, addr: SocketAddr, identity: Option<&str>) -> Option<SendRequest<Body>> {
        let mut conns = self.conns.lock().unwrap_or_else(|e| e.into_inner());
        let list = conns.get_mut(&addr)?;
        let at = list
            .iter()
            .position(|c| c.identity.as_deref() == identity)?;
        let conn = &mut list[at];
        let now = Instant::now();
        if conn.sender.is_closed() || now.duration_since(conn.used) > IDLE_TIMEOUT {
            list.swap_remove(at);
            return None;
        }
        conn.used = now;
        Some(conn.sender.clone())
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
    ) -> Result<SendRequest<Body>, SendError> {
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
                None => Box::pin(self.dial(addr, key.1.clone())).await,
            }
        };
        self.dialing
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&key);
        dialed
    }

    async fn dial(
        &self,
        addr: SocketAddr,
        identity: Option<Arc<str>>,
    ) -> Result<SendRequest<Body>, SendError> {
        let stream = tcp(addr, self.local).await.map_err(SendError::Connect)?;
        let sender = match (&identity, &self.mtls) {
            (None, _) => start(addr, TokioIo::new(stream)).await?,
            (Some(id), Some(mtls)) => {
                let tls = mtls
                    .handshake(stream, addr, Some(id), ALPN_MESH_H2)
                    .await
                    .map_err(SendError::Connect)?;
                start(addr, TokioIo::new(tls)).await?
            }
            (Some(_), None) => {
                return Err(SendError::Connect(std::io::Error::new(
                    std::io::ErrorKind::NotConnected,
                    "mesh mTLS needs a workload certificate, and the proxy has none",
                )));
            }
        };
        let now = Instant::now();
        let mut conns = self.conns.lock().unwrap_or_else(|e| e.into_inner());
        // Connections that closed or idled out go when a new one comes.
        conns.retain(|_, list| {
            list.retain(|c| !c.sender.is_closed() && now.duration_since(c.used) <= IDLE_TIMEOUT);
            !list.is_empty()
        });
        conns.entry(addr).or_default().push(Conn {
            identity,
            sender: sender.clone(),
            used: now,
        });
        Ok(sender)
    }
}

/// The HTTP/2 handshake on `io`, its connection driven by a task of its own.
async fn start<T>(addr: SocketAddr, io: T) -> Result<SendRequest<Body>, SendError>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
        .await
        .map_err(|e| SendError::Connect(std::io::Error::other(e)))?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!("upstream http/2 connection to {addr}: {e}");
        }
    });
    Ok(sender)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::convert::Infallible;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use bytes::Bytes;
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
                        Ok::<_, Infallible>(Response::new(super::super::full("ok")))
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
            .body(super::super::full(Bytes::new()))
            .unwrap()
    }

    async fn text(resp: Response<Body>) -> String {
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8_lossy(&body).into_owned()
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
