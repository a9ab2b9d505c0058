//! Outlier detection in-process on 127.0.0.1: an endpoint answering 5xx in a row is ejected
//! from its cluster and traffic goes to the others; with none left, 503 "no healthy upstream"
//! (flag UH). The admin `/clusters` and `/stats` show the ejection as Envoy's do.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Response, StatusCode};
use hyper_util::rt::TokioIo;
use mesh_proxy::state::proto;
use mesh_proxy::testing;
use tokio::net::TcpListener;
use tokio::sync::watch;

const SHIPPING: &str = "shipping.default.svc.cluster.local";
const VIP: &str = "10.96.0.40:80";

/// An app that answers every request with `status` and its name.
async fn app(name: &'static str, status: StatusCode) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (c, _) = l.accept().await.unwrap();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |_req| async move {
                    let mut r = Response::new(Full::new(Bytes::from(name)));
                    *r.status_mut() = status;
                    Ok::<_, Infallible>(r)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(c), svc)
                    .await;
            });
        }
    });
    addr
}

fn shipping(eps: &[SocketAddr], outlier: proto::OutlierDetection) -> proto::ProxyState {
    let mut b = testing::service(SHIPPING, "10.96.0.40", 80, "http");
    for e in eps {
        b = b.endpoint(*e, &[("app", "shipping")]);
    }
    let mut svc = b.build();
    svc.traffic_policy = Some(proto::TrafficPolicy {
        outlier_detection: Some(outlier),
        ..Default::default()
    });
    proto::ProxyState {
        services: vec![svc],
        ..Default::default()
    }
}

async fn get(addr: SocketAddr, path: &str) -> (StatusCode, String) {
    testing::http1(addr, hyper::Method::GET, path, "shipping", b"").await
}

#[tokio::test]
async fn an_endpoint_answering_5xx_in_a_row_is_ejected() {
    let good = app("good", StatusCode::OK).await;
    let bad = app("bad", StatusCode::SERVICE_UNAVAILABLE).await;
    let policy = proto::OutlierDetection {
        consecutive_5xx_errors: 2,
        interval_ms: 1_000,
        base_ejection_time_ms: 60_000,
        max_ejection_percent: 50,
        ..Default::default()
    };
    let (_tx, rx) = watch::channel(testing::compile(shipping(&[good, bad], policy)));
    let proxy = testing::start(rx, VIP, "10.0.0.1:1", None).await;
    let mut answers = Vec::new();
    for _ in 0..40 {
        answers.push(get(proxy.bound.outbound, "/").await);
    }
    let failed = answers.iter().filter(|(s, _)| *s != StatusCode::OK).count();
    assert_eq!(
        failed, 2,
        "two 503s in a row, then the bad endpoint is out: {answers:?}"
    );
    assert!(
        answers
            .iter()
            .rev()
            .take(10)
            .all(|(s, b)| *s == StatusCode::OK && b == "good")
    );
    let clusters = testing::admin_get(proxy.bound.admin, "/clusters").await;
    let cluster = format!("outbound|80||{SHIPPING}");
    assert!(
        clusters.contains(&format!(
            "{cluster}::{bad}::health_flags::/failed_outlier_check\n"
        )),
        "{clusters}"
    );
    assert!(
        clusters.contains(&format!("{cluster}::{good}::health_flags::healthy\n")),
        "{clusters}"
    );
    let stats = testing::admin_get(proxy.bound.admin, "/stats").await;
    assert!(
        stats.contains(&format!(
            "cluster.{cluster}.outlier_detection.ejections_active: 1\n"
        )),
        "{stats}"
    );
    let dump: serde_json::Value =
        serde_json::from_str(&testing::admin_get(proxy.bound.admin, "/config_dump").await).unwrap();
    let od = &dump["status"]["outlierDetection"][0];
    assert_eq!(od["cluster"], cluster);
    assert_eq!(
        od["ejectedEndpoints"],
        serde_json::json!([bad.to_string()]),
        "{dump}"
    );
}

#[tokio::test]
async fn with_every_endpoint_ejected_there_is_no_healthy_upstream() {
    // The seed's settings: one 5xx ejects, up to all endpoints.
    let bad = app("bad", StatusCode::INTERNAL_SERVER_ERROR).await;
    let policy = proto::OutlierDetection {
        consecutive_5xx_errors: 1,
        interval_ms: 1_000,
        base_ejection_time_ms: 180_000,
        max_ejection_percent: 100,
        ..Default::default()
    };
    let (_tx, rx) = watch::channel(testing::compile(shipping(&[bad], policy)));
    let proxy = testing::start(rx, VIP, "10.0.0.1:1", None).await;
    assert_eq!(
        get(proxy.bound.outbound, "/").await,
        (StatusCode::INTERNAL_SERVER_ERROR, "bad".into())
    );
    assert_eq!(
        get(proxy.bound.outbound, "/").await,
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "no healthy upstream\n".into()
        )
    );
    // With minHealthPercent, too few healthy endpoints means all are used (panic).
    let panics = proto::OutlierDetection {
        min_health_percent: 50,
        ..policy
    };
    let (_tx, rx) = watch::channel(testing::compile(shipping(&[bad], panics)));
    let proxy = testing::start(rx, VIP, "10.0.0.1:1", None).await;
    for _ in 0..3 {
        assert_eq!(
            get(proxy.bound.outbound, "/").await.0,
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }
}

#[tokio::test]
async fn a_refused_connection_counts_as_a_failure() {
    let good = app("good", StatusCode::OK).await;
    let gone = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let policy = proto::OutlierDetection {
        consecutive_gateway_errors: 1,
        interval_ms: 1_000,
        base_ejection_time_ms: 60_000,
        max_ejection_percent: 50,
        ..Default::default()
    };
    let (_tx, rx) = watch::channel(testing::compile(shipping(&[good, gone], policy)));
    let proxy = testing::start(rx, VIP, "10.0.0.1:1", None).await;
    let mut failed = 0;
    for _ in 0..30 {
        if get(proxy.bound.outbound, "/").await.0 != StatusCode::OK {
            failed += 1;
        }
    }
    assert_eq!(
        failed, 1,
        "one refused connection, then the endpoint is out"
    );
}
