//! Two proxies with identities, in-process on 127.0.0.1: HTTP and TCP between them ride mutual
//! TLS, the destination app learns the caller's identity, STRICT refuses plaintext, PERMISSIVE
//! takes both, and a destination proving the wrong identity is refused.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

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

const ORDER: &str = "spiffe://cluster.local/ns/default/sa/order";
const SHIPPING: &str = "spiffe://cluster.local/ns/default/sa/shipping";

/// An HTTP app answering with the x-forwarded-client-cert it saw and the protocol version.
async fn http_app() -> SocketAddr {
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

/// A TCP app echoing with a prefix.
async fn tcp_app() -> SocketAddr {
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

struct Pair {
    a: Proxy,
    /// A's state: `shipping`'s endpoint is B's inbound listener.
    a_state: watch::Sender<Arc<State>>,
    b: Proxy,
    b_state: watch::Sender<Arc<State>>,
    b_inbound: SocketAddr,
    app_port: u16,
    _ca: TestCa,
}

fn b_state(app_port: u16, protocol: proto::Protocol, mode: proto::PeerMode) -> Arc<State> {
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
fn a_state(
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
fn workload(name: &str, app: &str, version: &str) -> Workload {
    let labels = [("app", app), ("version", version)];
    Workload::from_labels(name, "default", "", |k| {
        labels.iter().find(|(l, _)| *l == k).map(|(_, v)| *v)
    })
}

/// Proxy A (order) calls service `shipping` whose endpoint is proxy B's inbound listener; B
/// hands traffic to `app`.
async fn pair(
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

async fn get(addr: SocketAddr) -> (StatusCode, String) {
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

#[tokio::test]
async fn http_between_proxies_rides_mtls_and_the_app_learns_the_caller() {
    let p = pair(
        http_app().await,
        proto::Protocol::Http,
        proto::PeerMode::Strict,
        SHIPPING,
        true,
    )
    .await;
    let (status, body) = get(p.a.bound.outbound).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, format!("HTTP/1.1 By={SHIPPING};URI={ORDER}"));
}

#[tokio::test]
async fn tcp_between_proxies_rides_mtls() {
    let p = pair(
        tcp_app().await,
        proto::Protocol::Tcp,
        proto::PeerMode::Strict,
        SHIPPING,
        true,
    )
    .await;
    let mut c = TcpStream::connect(p.a.bound.outbound).await.unwrap();
    c.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(5), c.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf[..n], b"app:ping");
}

#[tokio::test]
async fn strict_refuses_plaintext_and_permissive_takes_both() {
    let p = pair(
        http_app().await,
        proto::Protocol::Http,
        proto::PeerMode::Strict,
        SHIPPING,
        true,
    )
    .await;
    // A plain client straight to B's inbound: refused under STRICT.
    let mut plain = TcpStream::connect(p.b_inbound).await.unwrap();
    plain
        .write_all(b"GET / HTTP/1.1\r\nhost: shipping\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), plain.read_to_end(&mut buf))
        .await
        .unwrap();
    assert!(
        buf.is_empty(),
        "STRICT answered plaintext: {}",
        String::from_utf8_lossy(&buf)
    );

    p.b_state.send_replace(b_state(
        p.app_port,
        proto::Protocol::Http,
        proto::PeerMode::Permissive,
    ));
    let (status, body) = get(p.b_inbound).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body, "HTTP/1.1 none",
        "plaintext reaches the app, with no identity (a forged one is dropped)"
    );
    let (status, body) = get(p.a.bound.outbound).await;
    assert_eq!(
        (status, body.as_str()),
        (
            StatusCode::OK,
            format!("HTTP/1.1 By={SHIPPING};URI={ORDER}").as_str()
        ),
        "mTLS still works"
    );
}

#[tokio::test]
async fn a_destination_with_the_wrong_identity_is_refused() {
    let p = pair(
        http_app().await,
        proto::Protocol::Http,
        proto::PeerMode::Strict,
        "spiffe://cluster.local/ns/default/sa/payments",
        true,
    )
    .await;
    let (status, _) = get(p.a.bound.outbound).await;
    assert_eq!(
        status,
        StatusCode::SERVICE_UNAVAILABLE,
        "the handshake fails: the server is shipping, not payments"
    );
}

#[tokio::test]
async fn a_connection_is_not_reused_once_the_destination_must_prove_another_identity() {
    let p = pair(
        http_app().await,
        proto::Protocol::Http,
        proto::PeerMode::Strict,
        SHIPPING,
        true,
    )
    .await;
    let (status, _) = get(p.a.bound.outbound).await;
    assert_eq!(status, StatusCode::OK);
    // Pilot now says the endpoint must be payments: the open connection proved shipping, so
    // the next request needs a new handshake, which fails.
    p.a_state.send_replace(a_state(
        p.b_inbound,
        proto::Protocol::Http,
        "spiffe://cluster.local/ns/default/sa/payments",
        true,
    ));
    let (status, body) = get(p.a.bound.outbound).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    // And back: shipping again is served (the connection that proved it may be reused).
    p.a_state
        .send_replace(a_state(p.b_inbound, proto::Protocol::Http, SHIPPING, true));
    let (status, body) = get(p.a.bound.outbound).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test]
async fn auto_mtls_sends_plaintext_to_endpoints_without_a_sidecar() {
    // The endpoint is not marked as having a sidecar: auto mTLS sends plaintext, which a
    // PERMISSIVE destination takes and a STRICT one refuses.
    let p = pair(
        http_app().await,
        proto::Protocol::Http,
        proto::PeerMode::Permissive,
        SHIPPING,
        false,
    )
    .await;
    let (status, body) = get(p.a.bound.outbound).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "HTTP/1.1 none"));
    // (A mode change does not cut connections already accepted, so check STRICT on a new pair.)
    let strict = pair(
        http_app().await,
        proto::Protocol::Http,
        proto::PeerMode::Strict,
        SHIPPING,
        false,
    )
    .await;
    let (status, _) = get(strict.a.bound.outbound).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
}

/// The Prometheus text a proxy serves on its metrics port.
async fn scrape(proxy: &Proxy) -> String {
    let stream = TcpStream::connect(proxy.bound.metrics).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::builder()
        .uri("/stats/prometheus")
        .header("host", "metrics")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    String::from_utf8(
        resp.into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec(),
    )
    .unwrap()
}

/// The value of the one sample of `metric` whose labels include every one of `labels`.
fn sample(text: &str, metric: &str, labels: &[&str]) -> Option<u64> {
    text.lines()
        .filter(|l| l.starts_with(&format!("{metric}{{")))
        .find(|l| labels.iter().all(|want| l.contains(want)))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

/// Scrapes until `metric` with `labels` reaches `want` (a response's series is counted once
/// its body is sent, which may be just after the client read it), then asserts it; returns the
/// last text scraped.
async fn expect_sample(proxy: &Proxy, metric: &str, labels: &[&str], want: u64) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let text = scrape(proxy).await;
        let got = sample(&text, metric, labels);
        if got == Some(want) {
            return text;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{metric} {labels:?}: {got:?}, want {want}\n{text}"
        );
        tokio::task::yield_now().await;
    }
}

#[tokio::test]
async fn both_sidecars_count_requests_and_connections_in_istio_metrics() {
    let p = pair(
        http_app().await,
        proto::Protocol::Http,
        proto::PeerMode::Strict,
        SHIPPING,
        true,
    )
    .await;
    for _ in 0..3 {
        let (status, body) = get(p.a.bound.outbound).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    let source = [
        "reporter=\"source\"",
        "destination_service=\"shipping.default.svc.cluster.local\"",
        "destination_service_name=\"shipping\"",
        "destination_service_namespace=\"default\"",
        &format!("destination_principal=\"{SHIPPING}\""),
        &format!("source_principal=\"{ORDER}\""),
        "response_code=\"200\"",
        "response_flags=\"-\"",
        "connection_security_policy=\"mutual_tls\"",
    ];
    let source = [
        &source[..],
        &[
            "source_workload=\"order-v1\"",
            "source_app=\"order\"",
            // Said by B's sidecar in its responses.
            "destination_workload=\"shipping-v2\"",
            "destination_version=\"v2\"",
        ],
    ]
    .concat();
    expect_sample(&p.a, "istio_requests_total", &source, 3).await;
    expect_sample(
        &p.a,
        "istio_request_duration_milliseconds_count",
        &source,
        3,
    )
    .await;
    let destination = [
        "reporter=\"destination\"",
        &format!("source_principal=\"{ORDER}\""),
        "source_workload_namespace=\"default\"",
        // Said by A's sidecar in its requests.
        "source_workload=\"order-v1\"",
        "source_version=\"v1\"",
        "destination_workload=\"shipping-v2\"",
        &format!("destination_principal=\"{SHIPPING}\""),
        "response_code=\"200\"",
        "connection_security_policy=\"mutual_tls\"",
    ];
    let text = expect_sample(&p.b, "istio_requests_total", &destination, 3).await;
    assert!(
        !text.contains("reporter=\"source\""),
        "B made no calls: {text}"
    );
    assert!(
        !text.contains("forged"),
        "the app's x-mesh-peer was believed: {text}"
    );

    // A refused request is counted with its code and flag.
    p.a_state.send_replace(a_state(
        "127.0.0.1:1".parse().unwrap(),
        proto::Protocol::Http,
        SHIPPING,
        true,
    ));
    let (status, _) = get(p.a.bound.outbound).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let failed = [
        "reporter=\"source\"",
        "response_code=\"503\"",
        "response_flags=\"UF\"",
    ];
    expect_sample(&p.a, "istio_requests_total", &failed, 1).await;
}

#[tokio::test]
async fn tcp_connections_and_bytes_are_counted_on_both_sides() {
    let p = pair(
        tcp_app().await,
        proto::Protocol::Tcp,
        proto::PeerMode::Strict,
        SHIPPING,
        true,
    )
    .await;
    let mut c = TcpStream::connect(p.a.bound.outbound).await.unwrap();
    c.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(5), c.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf[..n], b"app:ping");
    let source = [
        "reporter=\"source\"",
        "request_protocol=\"tcp\"",
        "connection_security_policy=\"mutual_tls\"",
    ];
    expect_sample(&p.a, "istio_tcp_connections_opened_total", &source, 1).await;
    drop(c);
    // Closed when both directions are done; bytes as Istio counts them: the request's 4
    // received, the response's 8 sent.
    let text = expect_sample(&p.a, "istio_tcp_connections_closed_total", &source, 1).await;
    assert_eq!(
        sample(&text, "istio_tcp_received_bytes_total", &source),
        Some(4),
        "{text}"
    );
    assert_eq!(
        sample(&text, "istio_tcp_sent_bytes_total", &source),
        Some(8),
        "{text}"
    );
    let destination = [
        "reporter=\"destination\"",
        &format!("source_principal=\"{ORDER}\""),
    ];
    expect_sample(&p.b, "istio_tcp_connections_closed_total", &destination, 1).await;
    expect_sample(&p.b, "istio_tcp_received_bytes_total", &destination, 4).await;
}
