//! The Grafana dashboards in `manifests/addons/dashboards` query only metrics a sidecar
//! really serves: two sidecars carry an HTTP request and a TCP connection with an access log on,
//! and every `istio_` and `mesh_proxy_` sample a dashboard names must be on their metrics pages
//! (pilot's and the CA's are checked in pilot/tests/discovery.rs).

#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use mesh_proxy::state::{State, proto};
use mesh_proxy::testing;

use common::*;

/// The sample names on a Prometheus text page.
fn samples(page: &str) -> BTreeSet<String> {
    page.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_string)
        .collect()
}

#[tokio::test]
async fn every_sidecar_metric_a_dashboard_queries_is_served() {
    let dir = tempfile::tempdir().unwrap();
    let http = pair(
        http_app().await,
        proto::Protocol::Http,
        proto::PeerMode::Strict,
        SHIPPING,
        true,
    )
    .await;
    // With an access log on the caller's side, so its drop counter is on the page.
    let mut source = http.a_state.borrow().source.clone();
    source.telemetry = Some(proto::Telemetry {
        access_logs: vec![proto::AccessLog {
            provider: "envoy".into(),
            path: dir.path().join("a.log").display().to_string(),
            text: false,
            client: true,
            server: false,
        }],
        tracing: None,
    });
    http.a_state
        .send_replace(Arc::new(State::compile(source).unwrap()));
    let (status, _) = get(http.a.bound.outbound).await;
    assert!(status.is_success());

    let tcp = pair(
        tcp_app().await,
        proto::Protocol::Tcp,
        proto::PeerMode::Strict,
        SHIPPING,
        true,
    )
    .await;
    drop(tcp_ping(tcp.a.bound.outbound).await);

    // Both sides count when the exchange ends; wait for the TCP connection's close.
    let scrape = || async {
        let mut served = BTreeSet::new();
        for proxy in [&http.a, &http.b, &tcp.a, &tcp.b] {
            let page = testing::admin_get(proxy.bound.admin, "/stats/prometheus").await;
            served.extend(samples(&page));
        }
        served
    };
    let served = testing::poll_until(Duration::from_secs(10), scrape, |s: &BTreeSet<String>| {
        s.contains("istio_tcp_connections_closed_total")
    })
    .await;
    let queried = mesh_api::testing::dashboard_metrics();
    let sidecar: Vec<_> = queried
        .iter()
        .filter(|(m, _)| m.starts_with("istio_") || m.starts_with("mesh_proxy_"))
        .collect();
    assert!(
        sidecar.len() >= 8,
        "the dashboards query the sidecars' metrics: {queried:?}"
    );
    let missing: Vec<_> = sidecar
        .iter()
        .filter(|(m, _)| !served.contains(m.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "queried but not served: {missing:#?}\nserved: {served:#?}"
    );
}
