//! Mirroring in-process on 127.0.0.1: VirtualService `mirror` copies each request to another
//! service with `-shadow` appended to its Host, body and all; the copy's answer is discarded,
//! and a slow or failing mirror never holds up or changes the primary request.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use mesh_proxy::state::proto;
use mesh_proxy::testing;
use tokio::net::TcpListener;
use tokio::sync::watch;

const RATINGS: &str = "ratings.default.svc.cluster.local";
const MIRROR: &str = "ratings-mirror.default.svc.cluster.local";
const VIP: &str = "10.96.0.60:80";

/// What an app saw: (Host, method, body length).
type Seen = Arc<Mutex<Vec<(String, String, usize)>>>;

/// An app answering `status` after `delay`, recording what it saw.
async fn app(status: StatusCode, delay: Duration) -> (SocketAddr, Seen) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let seen: Seen = Arc::default();
    let log = seen.clone();
    tokio::spawn(async move {
        loop {
            let (c, _) = l.accept().await.unwrap();
            let log = log.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    let log = log.clone();
                    async move {
                        let host = req
                            .headers()
                            .get("host")
                            .map(|h| h.to_str().unwrap().to_string())
                            .unwrap_or_default();
                        let method = req.method().to_string();
                        let len = req.into_body().collect().await.unwrap().to_bytes().len();
                        log.lock().unwrap().push((host, method, len));
                        tokio::time::sleep(delay).await;
                        let mut r = Response::new(Full::new(Bytes::from_static(b"primary")));
                        *r.status_mut() = status;
                        Ok::<_, Infallible>(r)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(c), svc)
                    .await;
            });
        }
    });
    (addr, seen)
}

fn state(primary: SocketAddr, mirror: SocketAddr) -> proto::ProxyState {
    let mut ratings = testing::service(RATINGS, "10.96.0.60", 80, "http")
        .endpoint(primary, &[("app", "ratings")])
        .build();
    ratings.http_routes = vec![proto::HttpRoute {
        destinations: vec![proto::WeightedDestination {
            host: RATINGS.into(),
            weight: 100,
            ..Default::default()
        }],
        mirrors: vec![proto::Mirror {
            host: MIRROR.into(),
            percent: 100.0,
            ..Default::default()
        }],
        ..Default::default()
    }];
    let shadow = testing::service(MIRROR, "10.96.0.61", 80, "http")
        .endpoint(mirror, &[("app", "ratings-mirror")])
        .build();
    proto::ProxyState {
        services: vec![ratings, shadow],
        ..Default::default()
    }
}

async fn send(proxy: SocketAddr, method: Method, body: &'static [u8]) -> (StatusCode, String) {
    testing::http1(proxy, method, "/ratings/1", "ratings:80", body).await
}

/// Waits (with a deadline) until `seen` holds `n` requests.
async fn until_seen(seen: &Seen, n: usize) -> Vec<(String, String, usize)> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let now = seen.lock().unwrap().clone();
        if now.len() >= n || tokio::time::Instant::now() > deadline {
            return now;
        }
        tokio::task::yield_now().await;
    }
}

#[tokio::test]
async fn every_request_is_copied_to_the_mirror_with_a_shadow_host() {
    let (primary, primary_seen) = app(StatusCode::OK, Duration::ZERO).await;
    let (mirror, mirror_seen) = app(StatusCode::OK, Duration::ZERO).await;
    let (_tx, rx) = watch::channel(testing::compile(state(primary, mirror)));
    let proxy = testing::start(rx, VIP, "10.0.0.1:1", None).await;
    for _ in 0..5 {
        assert_eq!(
            send(proxy.bound.outbound, Method::GET, b"").await.0,
            StatusCode::OK
        );
    }
    let (status, body) = send(proxy.bound.outbound, Method::POST, b"{\"stars\": 5}").await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "primary"));
    let copies = until_seen(&mirror_seen, 6).await;
    assert_eq!(copies.len(), 6, "{copies:?}");
    assert!(
        copies
            .iter()
            .all(|(host, _, _)| host == "ratings-shadow:80"),
        "{copies:?}"
    );
    assert!(
        copies.contains(&("ratings-shadow:80".into(), "POST".into(), 12)),
        "{copies:?}"
    );
    let primaries = primary_seen.lock().unwrap().clone();
    assert_eq!(primaries.len(), 6);
    assert!(
        primaries.iter().all(|(host, _, _)| host == "ratings:80"),
        "{primaries:?}"
    );
}

#[tokio::test]
async fn a_slow_or_failing_mirror_never_touches_the_primary() {
    let (primary, _) = app(StatusCode::OK, Duration::ZERO).await;
    // A mirror that takes 10 s and then fails.
    let (slow, slow_seen) = app(StatusCode::INTERNAL_SERVER_ERROR, Duration::from_secs(10)).await;
    let (tx, rx) = watch::channel(testing::compile(state(primary, slow)));
    let proxy = testing::start(rx, VIP, "10.0.0.1:1", None).await;
    let started = tokio::time::Instant::now();
    for _ in 0..5 {
        let (status, body) = send(proxy.bound.outbound, Method::GET, b"").await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "primary"));
    }
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the primary never waited"
    );
    assert_eq!(until_seen(&slow_seen, 5).await.len(), 5);
    // A mirror nobody listens on.
    let gone = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    tx.send(testing::compile(state(primary, gone))).unwrap();
    for _ in 0..5 {
        let (status, body) = send(proxy.bound.outbound, Method::GET, b"").await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "primary"));
    }
}
