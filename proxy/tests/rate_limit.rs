//! Local rate limits (RateLimitPolicy) through real proxies on 127.0.0.1: order's sidecar
//! calls shipping's over mTLS, and shipping's sidecar keeps the token buckets. A spent bucket
//! answers 429 `local_rate_limited` with flag RL (in the metrics and the admin `/stats`), a
//! route's limit counts only its requests, buckets fill at their interval and survive pushes
//! that keep them, and gRPC callers get the status Envoy gives them.

#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use mesh_proxy::state::{State, proto};
use mesh_proxy::testing;
use tokio::net::TcpStream;
use tokio::time::Instant;

use common::*;

/// Shipping's state: its app's port, PERMISSIVE, and `limits`.
fn limited(app_port: u16, limits: Vec<proto::RateLimit>) -> Arc<State> {
    Arc::new(
        State::compile(proto::ProxyState {
            inbound_ports: vec![proto::WorkloadPort {
                port: u32::from(app_port),
                protocol: proto::Protocol::Http.into(),
            }],
            rate_limits: limits,
            ..Default::default()
        })
        .unwrap(),
    )
}

fn limit(name: &str, max: u32, per_fill: u32, fill_ms: u64) -> proto::RateLimit {
    proto::RateLimit {
        name: name.into(),
        matches: Vec::new(),
        max_tokens: max,
        tokens_per_fill: per_fill,
        fill_interval_ms: fill_ms,
    }
}

fn prefix(p: &str) -> proto::HttpMatch {
    proto::HttpMatch {
        uri: Some(proto::StringMatch {
            kind: Some(proto::string_match::Kind::Prefix(p.into())),
        }),
        ..Default::default()
    }
}

/// Order's sidecar calling shipping's over mTLS (PERMISSIVE, so plaintext reaches it too).
async fn order_calls_shipping() -> Pair {
    pair(
        http_app().await,
        proto::Protocol::Http,
        proto::PeerMode::Permissive,
        SHIPPING,
        true,
    )
    .await
}

/// What came back: status, body, `retry-after`, `grpc-status`.
struct Answer {
    status: StatusCode,
    body: String,
    retry_after: Option<u64>,
    grpc_status: Option<String>,
}

async fn call(addr: SocketAddr, path: &str, grpc: bool) -> Answer {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut req = Request::builder().uri(path).header("host", "shipping");
    if grpc {
        req = req.header("content-type", "application/grpc");
    }
    let resp = sender
        .send_request(req.body(Full::new(Bytes::new())).unwrap())
        .await
        .unwrap();
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_string())
    };
    let retry_after = header("retry-after").map(|v| v.parse().unwrap());
    let grpc_status = header("grpc-status");
    let status = resp.status();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    Answer {
        status,
        body: String::from_utf8_lossy(&body).trim().to_string(),
        retry_after,
        grpc_status,
    }
}

#[tokio::test]
async fn a_workload_limit_answers_429_rl_once_its_burst_is_spent() {
    let p = order_calls_shipping().await;
    let name = "default/shipping-limit/per-workload";
    let limits = || limited(p.app_port, vec![limit(name, 3, 3, 60_000)]);
    p.b_state.send(limits()).unwrap();
    for i in 0..3 {
        let a = call(p.a.bound.outbound, "/orders", false).await;
        assert_eq!(a.status, StatusCode::OK, "request {i} is within the burst");
    }
    let refused = call(p.a.bound.outbound, "/orders", false).await;
    assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(refused.body, "local_rate_limited");
    let wait = refused.retry_after.expect("a 429 says when to retry");
    assert!((1..=60).contains(&wait), "retry-after {wait}");

    let stats = testing::admin_get(p.b.bound.admin, "/stats").await;
    for line in [
        format!("http_local_rate_limit.{name}.ok: 3"),
        format!("http_local_rate_limit.{name}.rate_limited: 1"),
        format!("http_local_rate_limit.{name}.tokens: 0"),
    ] {
        assert!(stats.contains(&line), "{line} in:\n{stats}");
    }
    let metrics = testing::admin_get(p.b.bound.admin, "/stats/prometheus").await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("istio_requests_total{")
                && l.contains("response_code=\"429\"")
                && l.contains("response_flags=\"RL\"")
                && l.ends_with(" 1")),
        "one 429 with flag RL in shipping's metrics:\n{metrics}"
    );

    let dump: serde_json::Value =
        serde_json::from_str(&testing::admin_get(p.b.bound.admin, "/config_dump").await).unwrap();
    let bucket = &dump["status"]["rateLimits"][0];
    assert_eq!(
        (&bucket["name"], &bucket["tokens"], &bucket["rateLimited"]),
        (
            &serde_json::json!(name),
            &serde_json::json!(0),
            &serde_json::json!(1)
        ),
        "{dump}"
    );
    // A push that keeps the limit keeps its (empty) bucket: no fresh burst.
    p.b_state.send(limits()).unwrap();
    let again = call(p.a.bound.outbound, "/orders", false).await;
    assert_eq!(again.status, StatusCode::TOO_MANY_REQUESTS);
    // Without the policy, nothing is counted.
    p.b_state.send(limited(p.app_port, Vec::new())).unwrap();
    for _ in 0..5 {
        assert_eq!(
            call(p.a.bound.outbound, "/orders", false).await.status,
            StatusCode::OK
        );
    }
}

#[tokio::test]
async fn a_route_limit_counts_only_its_requests_and_refusals_cost_no_other_bucket() {
    let p = order_calls_shipping().await;
    let mut api = limit("default/shipping-limit/api", 1, 1, 60_000);
    api.matches = vec![prefix("/api")];
    let mut other_port = limit("default/shipping-limit/other-port", 1, 1, 60_000);
    other_port.matches = vec![proto::HttpMatch {
        port: u32::from(p.app_port) + 1,
        ..Default::default()
    }];
    let all = limit("default/shipping-limit/all", 100, 1, 60_000);
    p.b_state
        .send(limited(p.app_port, vec![all, api, other_port]))
        .unwrap();
    for _ in 0..5 {
        let a = call(p.a.bound.outbound, "/orders", false).await;
        assert_eq!(a.status, StatusCode::OK, "/orders is not /api's to count");
    }
    assert_eq!(
        call(p.a.bound.outbound, "/api/items", false).await.status,
        StatusCode::OK
    );
    for _ in 0..3 {
        assert_eq!(
            call(p.a.bound.outbound, "/api/items", false).await.status,
            StatusCode::TOO_MANY_REQUESTS
        );
    }
    let stats = testing::admin_get(p.b.bound.admin, "/stats").await;
    for line in [
        // 6 let through; the 3 refused by /api's bucket gave their tokens back.
        "http_local_rate_limit.default/shipping-limit/all.ok: 6",
        "http_local_rate_limit.default/shipping-limit/all.tokens: 94",
        "http_local_rate_limit.default/shipping-limit/api.ok: 1",
        "http_local_rate_limit.default/shipping-limit/api.rate_limited: 3",
    ] {
        assert!(stats.contains(line), "{line} in:\n{stats}");
    }
    assert!(
        !stats.contains("other-port"),
        "a limit on another port never counted:\n{stats}"
    );
}

#[tokio::test]
async fn a_spent_bucket_fills_at_its_interval() {
    let p = order_calls_shipping().await;
    let fill = Duration::from_millis(400);
    p.b_state
        .send(limited(
            p.app_port,
            vec![limit("default/l/0", 2, 1, fill.as_millis() as u64)],
        ))
        .unwrap();
    let started = Instant::now();
    for _ in 0..2 {
        assert_eq!(
            call(p.a.bound.outbound, "/", false).await.status,
            StatusCode::OK
        );
    }
    let refused_at = Instant::now();
    assert_eq!(
        call(p.a.bound.outbound, "/", false).await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
    // Poll, paced, until a token is back.
    let deadline = refused_at + Duration::from_secs(10);
    let mut pace = tokio::time::interval(Duration::from_millis(20));
    let back = loop {
        pace.tick().await;
        assert!(Instant::now() < deadline, "no token back within 10 s");
        if call(p.a.bound.outbound, "/", false).await.status == StatusCode::OK {
            break Instant::now();
        }
    };
    // The first fill comes one interval after the bucket was made (at the first request).
    assert!(
        back.duration_since(started) >= fill,
        "a token came back after {:?}, before the fill interval {fill:?}",
        back.duration_since(started)
    );
    // One token per fill: the next request is refused again.
    assert_eq!(
        call(p.a.bound.outbound, "/", false).await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
}

#[tokio::test]
async fn grpc_callers_get_unavailable_as_envoy_answers_them() {
    let p = order_calls_shipping().await;
    p.b_state
        .send(limited(
            p.app_port,
            vec![limit("default/l/0", 1, 1, 60_000)],
        ))
        .unwrap();
    // Straight to shipping's sidecar, in plaintext (PERMISSIVE).
    let first = call(p.b_inbound, "/pkg.Svc/Get", true).await;
    assert_eq!(first.status, StatusCode::OK);
    let refused = call(p.b_inbound, "/pkg.Svc/Get", true).await;
    assert_eq!(refused.status, StatusCode::OK, "gRPC errors ride HTTP 200");
    assert_eq!(refused.grpc_status.as_deref(), Some("14"));
    assert!(refused.retry_after.is_some());
}
