//! Two proxies with identities on 127.0.0.1, shared by the tests that need them: A (order)
//! calls service `shipping`, whose one endpoint is B's inbound listener; B hands traffic to an
//! app. The CA is a test CA; every listener is on loopback.

#![allow(clippy::expect_used, clippy::unwrap_used, dead_code, missing_docs)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use mesh_ca::CaConfig;
use mesh_ca::testing::TestCa;
use mesh_proxy::metrics::Workload;
use mesh_proxy::socket::FixedDst;
use mesh_proxy::state::{State, proto};
use mesh_proxy::testing;
use mesh_proxy::{Proxy, Setup};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub mod raw_h2;

pub const ORDER: &str = "spiffe://cluster.local/ns/default/sa/order";
pub const SHIPPING: &str = "spiffe://cluster.local/ns/default/sa/shipping";

/// An HTTP app answering with the x-forwarded-client-cert it saw and the protocol version.
pub async fn http_app() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (c, _) = l.accept().await.unwrap();
            tokio::spawn(async move {
                let svc =
                    hyper::service::service_fn(|req: Request<hyper::body::Incoming>| async move {
                        if req.headers().contains_key("x-mesh-peer") {
                            let mut refused = Response::new(Full::new(Bytes::from(
                                "the app must never see x-mesh-peer",
                            )));
                            *refused.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
                            return Ok::<_, Infallible>(refused);
                        }
                        let xfcc = req
                            .headers()
                            .get("x-forwarded-client-cert")
                            .map(|v| v.to_str().unwrap().to_string())
                            .unwrap_or_else(|| "none".into());
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(format!(
                            "{:?} {xfcc}",
                            req.version()
                        )))))
                    });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(c), svc)
                    .await;
            });
        }
    });
    addr
}

/// Sends `ping` over a connection to `addr` (a pair's A, in front of [`tcp_app`]) and checks
/// the app's echo; the connection stays open for the caller.
pub async fn tcp_ping(addr: SocketAddr) -> TcpStream {
    let mut c = TcpStream::connect(addr).await.unwrap();
    c.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(std::time::Duration::from_secs(5), c.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf[..n], b"app:ping");
    c
}

/// A TCP app echoing with a prefix.
pub async fn tcp_app() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut c, _) = l.accept().await.unwrap();
            tokio::spawn(async move {
                let mut buf = [0u8; 64];
                while let Ok(n) = c.read(&mut buf).await {
                    if n == 0 || c.write_all(&[b"app:", &buf[..n]].concat()).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

pub struct Pair {
    pub a: Proxy,
    /// A's state: `shipping`'s endpoint is B's inbound listener.
    pub a_state: watch::Sender<Arc<State>>,
    pub b: Proxy,
    pub b_state: watch::Sender<Arc<State>>,
    pub b_inbound: SocketAddr,
    pub app_port: u16,
    pub _ca: TestCa,
}

pub fn b_state(app_port: u16, protocol: proto::Protocol, mode: proto::PeerMode) -> Arc<State> {
    Arc::new(
        State::compile(proto::ProxyState {
            inbound_ports: vec![proto::WorkloadPort {
                port: u32::from(app_port),
                protocol: protocol.into(),
            }],
            peer_authentication: Some(proto::PeerAuthentication {
                mode: mode.into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .unwrap(),
    )
}

/// A's state: service `shipping` (10.96.0.60:80) whose one endpoint is `b_inbound`, which
/// must prove `expect`.
pub fn a_state(
    b_inbound: SocketAddr,
    protocol: proto::Protocol,
    expect: &str,
    mesh: bool,
) -> Arc<State> {
    let svc = proto::Service {
        hostname: "shipping.default.svc.cluster.local".into(),
        namespace: "default".into(),
        addresses: vec!["10.96.0.60".into()],
        ports: vec![proto::ServicePort {
            port: 80,
            name: "port".into(),
            protocol: protocol.into(),
            target_port: 0,
        }],
        endpoints: vec![proto::Endpoint {
            address: b_inbound.ip().to_string(),
            ports: [("port".to_string(), u32::from(b_inbound.port()))].into(),
            identity: expect.into(),
            mesh,
            ..Default::default()
        }],
        ..Default::default()
    };
    Arc::new(
        State::compile(proto::ProxyState {
            services: vec![svc],
            ..Default::default()
        })
        .unwrap(),
    )
}

/// A workload of namespace `default` as its sidecar's metrics name it.
pub fn workload(name: &str, app: &str, version: &str) -> Workload {
    let labels = [("app", app), ("version", version)];
    Workload::from_labels(name, "default", "", |k| {
        labels.iter().find(|(l, _)| *l == k).map(|(_, v)| *v)
    })
}

/// Proxy A (order) calls service `shipping` whose endpoint is proxy B's inbound listener; B
/// hands traffic to `app`.
pub async fn pair(
    app: SocketAddr,
    protocol: proto::Protocol,
    mode: proto::PeerMode,
    expect: &str,
    mesh: bool,
) -> Pair {
    let ca = TestCa::self_signed("mesh-mtls", CaConfig::default());
    let (b_tx, b_rx) = watch::channel(b_state(app.port(), protocol, mode));
    let b = Proxy::launch(
        &testing::loopback(),
        Setup {
            state: b_rx,
            has_state: true,
            outbound_dst: Arc::new(FixedDst("10.0.0.1:1".parse().unwrap())),
            inbound_dst: Arc::new(FixedDst(SocketAddr::from(([10, 0, 0, 9], app.port())))),
            svids: Some(testing::svids(&ca, "shipping").await),
            on_demand: None,
            workload: workload("shipping-v2", "shipping", "v2"),
            debug_authz: false,
            jwks_ca_pem: None,
            gateway: None,
            limits: Default::default(),
        },
    )
    .await
    .unwrap();
    let b_inbound = b.bound.inbound;
    let (a_tx, a_rx) = watch::channel(a_state(b_inbound, protocol, expect, mesh));
    let a = Proxy::launch(
        &testing::loopback(),
        Setup {
            state: a_rx,
            has_state: true,
            outbound_dst: Arc::new(FixedDst("10.96.0.60:80".parse().unwrap())),
            inbound_dst: Arc::new(FixedDst("10.0.0.1:1".parse().unwrap())),
            svids: Some(testing::svids(&ca, "order").await),
            on_demand: None,
            workload: workload("order-v1", "order", "v1"),
            debug_authz: false,
            jwks_ca_pem: None,
            gateway: None,
            limits: Default::default(),
        },
    )
    .await
    .unwrap();
    Pair {
        a,
        a_state: a_tx,
        b,
        b_state: b_tx,
        b_inbound,
        app_port: app.port(),
        _ca: ca,
    }
}

pub async fn get(addr: SocketAddr) -> (StatusCode, String) {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::builder()
        .uri("/")
        .header("host", "shipping")
        .header("x-forwarded-client-cert", "By=forged")
        // Sidecars' own header: an app's is never believed nor passed on.
        .header("x-mesh-peer", "workload=forged")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    let status = resp.status();
    assert!(
        !resp.headers().contains_key("x-mesh-peer"),
        "the calling app must never see x-mesh-peer"
    );
    (
        status,
        String::from_utf8_lossy(&resp.into_body().collect().await.unwrap().to_bytes()).into_owned(),
    )
}

/// `mesh_proxy_refused_total` of `listener` for `reason`, from the admin port at `admin`.
pub async fn refused(admin: SocketAddr, listener: &str, reason: &str) -> u64 {
    let page = testing::admin_get(admin, "/stats/prometheus").await;
    let series =
        format!("mesh_proxy_refused_total{{listener=\"{listener}\",reason=\"{reason}\"}} ");
    page.lines()
        .find_map(|l| l.strip_prefix(&series))
        .unwrap_or_else(|| panic!("no {series} in\n{page}"))
        .trim()
        .parse()
        .unwrap()
}
