//! Retries and timeouts in-process on 127.0.0.1, as VirtualService `retries` and `timeout`
//! ask: Envoy's conditions, a new endpoint for each try, bodies sent again whole, no second
//! try of a POST the application may have processed, per-try timeouts within the route's
//! deadline, and the cluster's retry budget.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use mesh_proxy::state::proto;
use mesh_proxy::testing;
use tokio::net::TcpListener;
use tokio::sync::watch;

const HOST: &str = "ratings.default.svc.cluster.local";
const VIP: &str = "10.96.0.50:80";

/// How an app answers its `n`th request (from 0): a status and a delay.
type Script = fn(usize) -> (StatusCode, Duration);

/// An app answering as `script` says, with the length of the body it received; counts its
/// requests.
async fn app(script: Script) -> (SocketAddr, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    tokio::spawn(async move {
        loop {
            let (c, _) = l.accept().await.unwrap();
            let seen = seen.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    let n = seen.fetch_add(1, Ordering::SeqCst);
                    async move {
                        let len = req.into_body().collect().await.unwrap().to_bytes().len();
                        let (status, delay) = script(n);
                        tokio::time::sleep(delay).await;
                        let mut r = Response::new(Full::new(Bytes::from(len.to_string())));
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
    (addr, count)
}

fn state(
    eps: &[SocketAddr],
    retry: Option<proto::RetryPolicy>,
    timeout_ms: u64,
    budget: Option<proto::RetryBudget>,
) -> proto::ProxyState {
    let mut b =
        testing::service(HOST, "10.96.0.50", 80, "http").balancer(proto::LoadBalancer::RoundRobin);
    for e in eps {
        b = b.endpoint(*e, &[("app", "ratings")]);
    }
    let mut svc = b.build();
    svc.traffic_policy.as_mut().unwrap().retry_budget = budget;
    svc.http_routes = vec![proto::HttpRoute {
        destinations: vec![proto::WeightedDestination {
            host: HOST.into(),
            weight: 100,
            ..Default::default()
        }],
        timeout_ms,
        retries: retry.as_ref().map_or(0, |r| r.attempts),
        retry,
        ..Default::default()
    }];
    proto::ProxyState {
        services: vec![svc],
        ..Default::default()
    }
}

fn retry_on(attempts: u32, on: &[&str], per_try_timeout_ms: u64) -> Option<proto::RetryPolicy> {
    Some(proto::RetryPolicy {
        attempts,
        retry_on: on.iter().map(|s| (*s).to_string()).collect(),
        per_try_timeout_ms,
        backoff_base_ms: 1,
        ..Default::default()
    })
}

async fn send(proxy: SocketAddr, method: Method, body: &'static [u8]) -> (StatusCode, String) {
    testing::http1(proxy, method, "/", "ratings", body).await
}

async fn proxy_for(
    s: proto::ProxyState,
) -> (
    mesh_proxy::Proxy,
    watch::Sender<Arc<mesh_proxy::state::State>>,
) {
    let (tx, rx) = watch::channel(testing::compile(s));
    (testing::start(rx, VIP, "10.0.0.1:1", None).await, tx)
}

fn always(status: StatusCode) -> Script {
    match status {
        StatusCode::OK => |_| (StatusCode::OK, Duration::ZERO),
        _ => |_| (StatusCode::SERVICE_UNAVAILABLE, Duration::ZERO),
    }
}

#[tokio::test]
async fn a_5xx_is_tried_again_on_another_endpoint() {
    let (bad, bad_count) = app(always(StatusCode::SERVICE_UNAVAILABLE)).await;
    let (good, _) = app(always(StatusCode::OK)).await;
    let (proxy, _tx) = proxy_for(state(&[bad, good], retry_on(2, &["5xx"], 0), 0, None)).await;
    for _ in 0..10 {
        assert_eq!(
            send(proxy.bound.outbound, Method::GET, b"").await.0,
            StatusCode::OK
        );
    }
    assert!(
        bad_count.load(Ordering::SeqCst) >= 5,
        "round robin reached the bad endpoint"
    );
}

#[tokio::test]
async fn conditions_decide_and_a_post_that_may_have_been_processed_goes_once() {
    let (bad, count) = app(always(StatusCode::SERVICE_UNAVAILABLE)).await;
    let (proxy, tx) = proxy_for(state(&[bad], retry_on(2, &["5xx"], 0), 0, None)).await;
    let out = proxy.bound.outbound;
    assert_eq!(
        send(out, Method::GET, b"").await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(
        count.swap(0, Ordering::SeqCst),
        3,
        "a GET: the first try and two retries"
    );
    assert_eq!(
        send(out, Method::POST, b"order").await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(
        count.swap(0, Ordering::SeqCst),
        1,
        "a POST that reached the app goes once"
    );
    // connect-failure alone does not retry an answer.
    tx.send(testing::compile(state(
        &[bad],
        retry_on(2, &["connect-failure"], 0),
        0,
        None,
    )))
    .unwrap();
    assert_eq!(
        send(out, Method::GET, b"").await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(count.swap(0, Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_body_is_sent_again_whole() {
    let (flaky, count) = app(|n| match n {
        0 => (StatusCode::SERVICE_UNAVAILABLE, Duration::ZERO),
        _ => (StatusCode::OK, Duration::ZERO),
    })
    .await;
    let (proxy, _tx) = proxy_for(state(&[flaky], retry_on(1, &["5xx"], 0), 0, None)).await;
    let (status, body) = send(proxy.bound.outbound, Method::PUT, &[b'x'; 4096]).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "4096"));
    assert_eq!(count.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_body_larger_than_the_retry_buffer_goes_once_whole() {
    const OVER: usize = 64 * 1024 + 1;
    assert_eq!(
        OVER as u64,
        mesh_proxy::http::RETRY_BODY_LIMIT + 1,
        "the test's body is one byte over the buffer"
    );
    let (flaky, count) = app(|n| match n {
        0 | 1 => (StatusCode::SERVICE_UNAVAILABLE, Duration::ZERO),
        _ => (StatusCode::OK, Duration::ZERO),
    })
    .await;
    let (proxy, _tx) = proxy_for(state(&[flaky], retry_on(1, &["5xx"], 0), 0, None)).await;
    // Not kept for a retry: streamed through once, and the app's answer is the caller's.
    let (status, body) = send(proxy.bound.outbound, Method::PUT, &[b'x'; OVER]).await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, OVER.to_string().as_str())
    );
    assert_eq!(count.load(Ordering::SeqCst), 1);
    // At the limit, it is kept and sent again (the app's second 503, then its 200).
    let (status, body) = send(proxy.bound.outbound, Method::PUT, &[b'x'; OVER - 1]).await;
    assert_eq!((status, body), (StatusCode::OK, (OVER - 1).to_string()));
    assert_eq!(count.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn a_slow_try_is_cut_and_tried_again_and_the_route_timeout_bounds_all_tries() {
    // The first answer would take 10 s; the per-try timeout cuts it at 100 ms.
    let (slow_first, count) = app(|n| match n {
        0 => (StatusCode::OK, Duration::from_secs(10)),
        _ => (StatusCode::OK, Duration::ZERO),
    })
    .await;
    let (proxy, _tx) = proxy_for(state(&[slow_first], retry_on(2, &["reset"], 100), 0, None)).await;
    let started = tokio::time::Instant::now();
    assert_eq!(
        send(proxy.bound.outbound, Method::GET, b"").await.0,
        StatusCode::OK
    );
    assert_eq!(count.load(Ordering::SeqCst), 2);
    assert!(started.elapsed() >= Duration::from_millis(100));
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "not the slow answer"
    );
    // Always slow: tries of 100 ms each, but the route gives all of them 250 ms.
    let (slow, count) = app(|_| (StatusCode::OK, Duration::from_secs(10))).await;
    let (proxy, _tx) = proxy_for(state(&[slow], retry_on(5, &["reset"], 100), 250, None)).await;
    let started = tokio::time::Instant::now();
    let (status, body) = send(proxy.bound.outbound, Method::GET, b"").await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::GATEWAY_TIMEOUT, "upstream request timeout\n")
    );
    assert!(started.elapsed() >= Duration::from_millis(250));
    assert!(started.elapsed() < Duration::from_secs(10));
    let tries = count.load(Ordering::SeqCst);
    assert!(
        (2..=3).contains(&tries),
        "{tries} tries of 100 ms fit in 250 ms"
    );
}

#[tokio::test]
async fn the_retry_budget_caps_retries() {
    // A budget of no retries at all (0% and no minimum): the first answer stands.
    let (bad, count) = app(always(StatusCode::SERVICE_UNAVAILABLE)).await;
    let budget = proto::RetryBudget {
        percent: 0.0,
        min_retry_concurrency: 0,
    };
    let (proxy, _tx) = proxy_for(state(&[bad], retry_on(2, &["5xx"], 0), 0, Some(budget))).await;
    assert_eq!(
        send(proxy.bound.outbound, Method::GET, b"").await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(count.load(Ordering::SeqCst), 1);
    let stats = testing::admin_get(proxy.bound.admin, "/stats").await;
    let cluster = format!("cluster.outbound|80||{HOST}");
    assert!(
        stats.contains(&format!("{cluster}.retry_budget.overflow: 1\n")),
        "{stats}"
    );
    // Envoy's default (20%, at least 3 at once) lets a lone request's retries through.
    let (proxy, _tx) = proxy_for(state(&[bad], retry_on(2, &["5xx"], 0), 0, None)).await;
    count.store(0, Ordering::SeqCst);
    send(proxy.bound.outbound, Method::GET, b"").await;
    assert_eq!(count.load(Ordering::SeqCst), 3);
    let stats = testing::admin_get(proxy.bound.admin, "/stats").await;
    assert!(
        stats.contains(&format!("{cluster}.retry_budget.budget_percent: 20\n")),
        "{stats}"
    );
    assert!(
        stats.contains(&format!("{cluster}.upstream_rq_retry: 2\n")),
        "{stats}"
    );
    // The same in the config dump, beside the state.
    let dump: serde_json::Value =
        serde_json::from_str(&testing::admin_get(proxy.bound.admin, "/config_dump").await).unwrap();
    let budget = &dump["status"]["retryBudgets"][0];
    assert_eq!(budget["cluster"], format!("outbound|80||{HOST}"));
    assert_eq!(
        (&budget["budgetPercent"], &budget["retriesMade"]),
        (&serde_json::json!(20.0), &serde_json::json!(2)),
        "{dump}"
    );
    assert!(dump["services"].is_array(), "the state is still there");
}
