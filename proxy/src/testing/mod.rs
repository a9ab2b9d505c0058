//! Test support (feature `test-util`, for this crate's tests and benches and for other crates'
//! tests): listeners on loopback, a proxy started with fixed original destinations, state
//! builders, echo backends, and workload certificates from a test CA. Shared here so tests do
//! not each carry their own copy.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

pub mod ext_authz;
pub mod fuzz;
pub mod jwt;
pub mod otlp;
pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use mesh_ca::Identity;
use mesh_ca::testing::TestCa;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::identity::{CertificateSource, IdentityError, SignFuture, Svid, request_svid};
use crate::socket::{FixedDst, OriginalDst};
use crate::state::{State, proto};
use crate::tls::mtls::Svids;
use crate::{Listeners, Proxy};

/// Runs `probe` until `done` holds for what it returns or `deadline` has passed (checking
/// every 10 ms), and returns its last answer: the caller asserts on it, so a condition that
/// never held fails with what was seen.
pub async fn poll_until<T, Fut>(
    deadline: Duration,
    mut probe: impl FnMut() -> Fut,
    done: impl Fn(&T) -> bool,
) -> T
where
    Fut: std::future::Future<Output = T>,
{
    let until = tokio::time::Instant::now() + deadline;
    loop {
        let got = probe().await;
        if done(&got) || tokio::time::Instant::now() >= until {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Every listener on 127.0.0.1 with a port the kernel picks.
pub fn loopback() -> Listeners {
    let any: SocketAddr = ([127, 0, 0, 1], 0).into();
    Listeners {
        outbound: any,
        inbound: any,
        admin: any,
        readiness: any,
        metrics: any,
    }
}

/// A resolver that says every connection was headed for `addr` (no capture rules needed).
pub fn fixed(addr: &str) -> Arc<dyn OriginalDst> {
    Arc::new(FixedDst(addr.parse().expect("IP:port")))
}

/// A state checked as the proxy would; panics with the proxy's reason when it does not check.
pub fn compile(state: proto::ProxyState) -> Arc<State> {
    Arc::new(State::compile(state).unwrap_or_else(|e| panic!("test state refused: {e}")))
}

/// A proxy on loopback serving the state on `rx`, whose captured outbound connections were
/// headed for `outbound_dst` and inbound ones for `inbound_dst`; mesh mTLS when `svids` are
/// given.
pub async fn start(
    rx: watch::Receiver<Arc<State>>,
    outbound_dst: &str,
    inbound_dst: &str,
    svids: Option<Svids>,
) -> Proxy {
    Proxy::start_with_identity(
        &loopback(),
        rx,
        true,
        fixed(outbound_dst),
        fixed(inbound_dst),
        svids,
    )
    .await
    .expect("the proxy binds loopback")
}

/// A service of `host` in `default` at `vip:port`, its port named `name` (its protocol by the
/// name's prefix, as Istio reads it).
pub fn service(host: &str, vip: &str, port: u16, name: &str) -> ServiceBuilder {
    ServiceBuilder(proto::Service {
        hostname: host.into(),
        namespace: "default".into(),
        addresses: vec![vip.into()],
        ports: vec![proto::ServicePort {
            port: u32::from(port),
            name: name.into(),
            ..Default::default()
        }],
        ..Default::default()
    })
}

fn label_map(labels: &[(&str, &str)]) -> std::collections::BTreeMap<String, String> {
    labels
        .iter()
        .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
        .collect()
}

/// Builds a `mesh.state.v1.Service` for a test.
#[derive(Clone, Debug)]
pub struct ServiceBuilder(pub proto::Service);

impl ServiceBuilder {
    /// Declares the port's protocol.
    pub fn protocol(mut self, protocol: proto::Protocol) -> Self {
        self.0.ports[0].protocol = protocol.into();
        self
    }

    /// An endpoint at `addr` (its port for the service's port), with `labels`.
    pub fn endpoint(mut self, addr: SocketAddr, labels: &[(&str, &str)]) -> Self {
        let port_name = self.0.ports[0].name.clone();
        self.0.endpoints.push(proto::Endpoint {
            address: addr.ip().to_string(),
            ports: [(port_name, u32::from(addr.port()))].into(),
            labels: label_map(labels),
            ..Default::default()
        });
        self
    }

    /// Places the last endpoint added at `locality` (`region/zone/subzone`).
    pub fn locality(mut self, locality: &str) -> Self {
        if let Some(e) = self.0.endpoints.last_mut() {
            e.locality = locality.into();
        }
        self
    }

    /// A subset of the endpoints carrying `labels`.
    pub fn subset(mut self, name: &str, labels: &[(&str, &str)]) -> Self {
        self.0.subsets.push(proto::Subset {
            name: name.into(),
            labels: label_map(labels),
            ..Default::default()
        });
        self
    }

    /// The service's load balancer.
    pub fn balancer(mut self, lb: proto::LoadBalancer) -> Self {
        self.0
            .traffic_policy
            .get_or_insert_with(Default::default)
            .set_load_balancer(lb);
        self
    }

    /// The service.
    pub fn build(self) -> proto::Service {
        self.0
    }
}

/// Sends one HTTP/1.1 request over a new connection to `addr` (`Host: host`); the answer's
/// status and body as text.
pub async fn http1(
    addr: SocketAddr,
    method: hyper::Method,
    path: &str,
    host: &str,
    body: &'static [u8],
) -> (hyper::StatusCode, String) {
    use http_body_util::BodyExt;
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", host)
        .body(http_body_util::Full::new(bytes::Bytes::from_static(body)))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    let status = resp.status();
    let text = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&text).into_owned())
}

/// GETs `path` from a proxy's admin listener at `addr`; the body (the answer must be 200).
pub async fn admin_get(addr: SocketAddr, path: &str) -> String {
    let (status, body) = http1(addr, hyper::Method::GET, path, "admin", b"").await;
    assert_eq!(status, hyper::StatusCode::OK, "{path}: {body}");
    body
}

/// A TCP server answering what it reads with `name <client ip> <what it read>`.
pub async fn named_tcp_echo(name: &'static str) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut c, peer)) = l.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                loop {
                    let n = match c.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    let reply = format!(
                        "{name} {} {}",
                        peer.ip(),
                        String::from_utf8_lossy(&buf[..n])
                    );
                    if c.write_all(reply.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// Signs with a test CA for one identity; can be told to fail, counts calls.
pub struct TestSource {
    pub ca: Arc<mesh_ca::Authority>,
    pub identity: Identity,
    pub ttl: Duration,
    pub calls: AtomicUsize,
    pub down: AtomicBool,
}

impl CertificateSource for TestSource {
    fn sign(&self, csr: String) -> SignFuture<'_> {
        Box::pin(async move {
            self.calls.fetch_add(1, Ordering::SeqCst);
            if self.down.load(Ordering::SeqCst) {
                return Err(IdentityError::Ca("unavailable".into()));
            }
            let signed = self
                .ca
                .sign(&csr, &self.identity, Some(self.ttl))
                .map_err(|e| IdentityError::Ca(e.to_string()))?;
            Ok((signed.chain, signed.roots))
        })
    }
}

/// A source for service account `sa` in namespace `default`.
pub fn source(ca: &TestCa, sa: &str, ttl: Duration) -> Arc<TestSource> {
    Arc::new(TestSource {
        ca: ca.authority.clone(),
        identity: Identity::new("cluster.local", "default", sa),
        ttl,
        calls: AtomicUsize::new(0),
        down: AtomicBool::new(false),
    })
}

/// A watch holding one fresh SVID for `sa` (the sender is kept alive for the test's life).
pub async fn svids(ca: &TestCa, sa: &str) -> watch::Receiver<Option<Arc<Svid>>> {
    let src = source(ca, sa, Duration::from_secs(3600));
    let svid = request_svid(src.as_ref(), &src.identity.uri())
        .await
        .unwrap();
    let (tx, rx) = watch::channel(Some(Arc::new(svid)));
    std::mem::forget(tx);
    rx
}
