//! Circuit breaking in-process on 127.0.0.1: DestinationRule `connectionPool` limits held per
//! cluster as Envoy holds them, overflow answered at once with 503 and flag UO. The limits are
//! the seed's (`inventory-circuit-breaker.yaml`: one connection, one pending request, one
//! request per connection), which reproduce Istio's circuit-breaking task: one client at a time
//! never overflows, two concurrent clients sometimes do.

#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use mesh_proxy::state::proto;
use mesh_proxy::testing;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};

const INVENTORY: &str = "inventory.default.svc.cluster.local";
const VIP: &str = "10.96.0.30:80";

/// The seed's connectionPool.
fn seed_pool() -> proto::ConnectionPool {
    proto::ConnectionPool {
        max_connections: 1,
        http1_max_pending_requests: 1,
        max_requests_per_connection: 1,
        ..Default::default()
    }
}

fn inventory(app: SocketAddr, pool: proto::ConnectionPool) -> proto::ProxyState {
    let mut svc = testing::service(INVENTORY, "10.96.0.30", 80, "http")
        .endpoint(app, &[("app", "inventory")])
        .build();
    svc.traffic_policy = Some(proto::TrafficPolicy {
        connection_pool: Some(pool),
        ..Default::default()
    });
    proto::ProxyState {
        services: vec![svc],
        ..Default::default()
    }
}

/// What `clients` keep-alive connections, each sending `each` requests one after another, got:
/// (200s, 503s whose body says overflow, anything else).
async fn burst(proxy: SocketAddr, clients: usize, each: usize) -> (usize, usize, Vec<String>) {
    let mut tasks = Vec::new();
    for _ in 0..clients {
        tasks.push(tokio::spawn(async move {
            let stream = TcpStream::connect(proxy).await.unwrap();
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .unwrap();
            tokio::spawn(conn);
            let mut got = Vec::new();
            for _ in 0..each {
                let req = Request::get("/")
                    .header("host", "inventory")
                    .body(Full::new(Bytes::new()))
                    .unwrap();
                let resp = sender.send_request(req).await.unwrap();
                let status = resp.status();
                let body = resp.into_body().collect().await.unwrap().to_bytes();
                got.push((status, String::from_utf8_lossy(&body).into_owned()));
            }
            got
        }));
    }
    let (mut ok, mut overflow, mut other) = (0, 0, Vec::new());
    for t in tasks {
        for (status, body) in t.await.unwrap() {
            if status == StatusCode::OK {
                ok += 1;
            } else if status == StatusCode::SERVICE_UNAVAILABLE
                && body.contains("reset reason: overflow")
            {
                overflow += 1;
            } else {
                other.push(format!("{status} {body}"));
            }
        }
    }
    (ok, overflow, other)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seed_limits_overflow_two_concurrent_clients_and_never_one() {
    let app = common::http_app().await;
    let (_tx, rx) = watch::channel(testing::compile(inventory(app, seed_pool())));
    let proxy = testing::start(rx, VIP, "10.0.0.1:1", None).await;
    let one = burst(proxy.bound.outbound, 1, 50).await;
    assert_eq!(one, (50, 0, vec![]), "one client at a time never overflows");
    let two = burst(proxy.bound.outbound, 2, 200).await;
    eprintln!("two clients: {two:?}");
    assert!(two.2.is_empty(), "only 200 and 503 overflow: {:?}", two.2);
    assert!(
        two.1 > 0,
        "two concurrent clients overflow sometimes: {two:?}"
    );
    assert!(two.0 > 0, "and some get through: {two:?}");
    // Counted as Envoy counts them, where Istio's task reads them.
    let stats = testing::admin_get(proxy.bound.admin, "/stats").await;
    let cluster = "cluster.outbound|80||inventory.default.svc.cluster.local";
    assert!(
        stats.contains(&format!(
            "{cluster}.upstream_rq_pending_overflow: {}\n",
            two.1
        )),
        "{stats}"
    );
    assert!(
        stats.contains(&format!(
            "{cluster}.circuit_breakers.default.remaining_pending: 1\n"
        )),
        "{stats}"
    );
    // And flagged UO in the request metrics.
    let metrics = testing::admin_get(proxy.bound.admin, "/stats/prometheus").await;
    let uo = metrics
        .lines()
        .find(|l| l.starts_with("istio_requests_total{") && l.contains("response_flags=\"UO\""))
        .unwrap_or_else(|| panic!("no UO series: {metrics}"));
    assert!(uo.contains("response_code=\"503\""), "{uo}");
    assert!(uo.ends_with(&format!(" {}", two.1)), "{uo}");
    // The pool's own counts are on the metrics page too, with Envoy's names.
    let pool = "{cluster_name=\"outbound|80||inventory.default.svc.cluster.local\"}";
    for line in [
        format!(
            "envoy_cluster_upstream_rq_pending_overflow_total{pool} {}",
            two.1
        ),
        format!("envoy_cluster_upstream_rq_pending_active{pool} 0"),
        format!("envoy_cluster_upstream_rq_active{pool} 0"),
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "no {line:?} in {metrics}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn between_sidecars_the_seed_limits_overflow_two_concurrent_clients_and_never_one() {
    // The mesh path: HTTP/2 over mTLS from A's sidecar to B's, a new connection (TCP, TLS and
    // HTTP/2 handshakes) for every request, as maxRequestsPerConnection 1 asks.
    let app = common::http_app().await;
    let pair = common::pair(
        app,
        proto::Protocol::Http,
        proto::PeerMode::Strict,
        common::SHIPPING,
        true,
    )
    .await;
    let mut state = common::a_state(
        pair.b_inbound,
        proto::Protocol::Http,
        common::SHIPPING,
        true,
    )
    .source
    .clone();
    state.services[0].traffic_policy = Some(proto::TrafficPolicy {
        connection_pool: Some(seed_pool()),
        ..Default::default()
    });
    pair.a_state.send(testing::compile(state)).unwrap();
    let one = burst(pair.a.bound.outbound, 1, 50).await;
    assert_eq!(one, (50, 0, vec![]), "one client at a time never overflows");
    let two = burst(pair.a.bound.outbound, 2, 200).await;
    eprintln!("two clients: {two:?}");
    assert!(two.2.is_empty(), "only 200 and 503 overflow: {:?}", two.2);
    assert!(
        two.1 > 0,
        "two concurrent clients overflow sometimes: {two:?}"
    );
    assert!(two.0 > 0, "and most get through: {two:?}");
}

/// An app that holds every request until told to answer; says how many it holds.
async fn holding_app() -> (SocketAddr, Arc<Notify>, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let release = Arc::new(Notify::new());
    let held = Arc::new(AtomicUsize::new(0));
    let (r, h) = (release.clone(), held.clone());
    tokio::spawn(async move {
        loop {
            let (c, _) = l.accept().await.unwrap();
            let (r, h) = (r.clone(), h.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |_req| {
                    let (r, h) = (r.clone(), h.clone());
                    async move {
                        let released = r.notified();
                        h.fetch_add(1, Ordering::SeqCst);
                        released.await;
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                            Bytes::from("done"),
                        )))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(c), svc)
                    .await;
            });
        }
    });
    (addr, release, held)
}

async fn send(proxy: SocketAddr) -> (StatusCode, String) {
    testing::http1(proxy, hyper::Method::GET, "/", "inventory", b"").await
}

#[tokio::test]
async fn requests_over_http2_max_requests_are_refused_at_once() {
    let (app, release, held) = holding_app().await;
    let pool = proto::ConnectionPool {
        http2_max_requests: 2,
        ..Default::default()
    };
    let (_tx, rx) = watch::channel(testing::compile(inventory(app, pool)));
    let proxy = testing::start(rx, VIP, "10.0.0.1:1", None).await;
    let out = proxy.bound.outbound;
    let first = tokio::spawn(send(out));
    let second = tokio::spawn(send(out));
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while held.load(Ordering::SeqCst) < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the app never held two requests"
        );
        tokio::task::yield_now().await;
    }
    let (status, body) = send(out).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(body.contains("reset reason: overflow"), "{body}");
    assert!(
        body.contains("http2MaxRequests"),
        "the answer names the limit: {body}"
    );
    // Let the two held requests go, one at a time.
    while !(first.is_finished() && second.is_finished()) {
        release.notify_one();
        tokio::task::yield_now().await;
    }
    assert_eq!(first.await.unwrap().0, StatusCode::OK);
    assert_eq!(second.await.unwrap().0, StatusCode::OK);
    // Room again once they are done.
    let again = tokio::spawn(send(out));
    while !again.is_finished() {
        release.notify_one();
        tokio::task::yield_now().await;
    }
    assert_eq!(again.await.unwrap().0, StatusCode::OK);
    let stats = testing::admin_get(proxy.bound.admin, "/stats").await;
    assert!(stats.contains(".upstream_rq_overflow: 1\n"), "{stats}");
    assert!(stats.contains(".upstream_rq_active: 0\n"), "{stats}");
}

#[tokio::test]
async fn tcp_connections_over_max_connections_are_closed_at_once() {
    let echo = testing::named_tcp_echo("inventory").await;
    let mut svc = testing::service(INVENTORY, "10.96.0.30", 80, "tcp")
        .protocol(proto::Protocol::Tcp)
        .endpoint(echo, &[])
        .build();
    svc.traffic_policy = Some(proto::TrafficPolicy {
        connection_pool: Some(proto::ConnectionPool {
            max_connections: 1,
            ..Default::default()
        }),
        ..Default::default()
    });
    let (_tx, rx) = watch::channel(testing::compile(proto::ProxyState {
        services: vec![svc],
        ..Default::default()
    }));
    let proxy = testing::start(rx, VIP, "10.0.0.1:1", None).await;
    let mut held = TcpStream::connect(proxy.bound.outbound).await.unwrap();
    held.write_all(b"one").await.unwrap();
    let mut buf = [0u8; 64];
    let n = held.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("inventory"));
    // The second finds the only connection taken: closed without reaching the service.
    let mut refused = TcpStream::connect(proxy.bound.outbound).await.unwrap();
    let _ = refused.write_all(b"two").await;
    let n = refused.read(&mut buf).await.unwrap_or(0);
    assert_eq!(
        n,
        0,
        "closed, not served: {:?}",
        String::from_utf8_lossy(&buf[..n])
    );
    // Once the first is gone, there is room again.
    drop(held);
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let mut c = TcpStream::connect(proxy.bound.outbound).await.unwrap();
        let _ = c.write_all(b"three").await;
        if c.read(&mut buf).await.unwrap_or(0) > 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no room after the first connection closed"
        );
        tokio::task::yield_now().await;
    }
    let metrics = testing::admin_get(proxy.bound.admin, "/stats/prometheus").await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("istio_tcp_connections_closed_total{")
                && l.contains("response_flags=\"UO\"")),
        "{metrics}"
    );
}
