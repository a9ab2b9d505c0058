//! Two proxies with identities, in-process on 127.0.0.1: HTTP and TCP between them ride mutual
//! TLS, the destination app learns the caller's identity, STRICT refuses plaintext, PERMISSIVE
//! takes both, and a destination proving the wrong identity is refused.

#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use mesh_proxy::Proxy;
use mesh_proxy::state::proto;
use mesh_proxy::testing;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use common::*;

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
    let c = tcp_ping(p.a.bound.outbound).await;

    // While it is open, each sidecar's metrics page counts it, with the certificate's life
    // and the state version (a scrape is not a traffic connection).
    for admin in [p.a.bound.admin, p.b.bound.admin] {
        let page = testing::admin_get(admin, "/stats/prometheus").await;
        assert!(
            page.lines()
                .any(|l| l == "envoy_server_total_connections 1"),
            "{page}"
        );
        assert!(
            page.lines()
                .any(|l| l == "mesh_proxy_state_info{version=\"none\"} 1"),
            "{page}"
        );
        let expiry: f64 = page
            .lines()
            .find_map(|l| {
                l.strip_prefix("istio_agent_cert_expiry_seconds{resource_name=\"default\"} ")
            })
            .unwrap_or_else(|| panic!("no certificate expiry: {page}"))
            .parse()
            .unwrap();
        assert!(expiry > 60.0 && expiry < 366.0 * 86400.0, "{expiry}");
    }
    drop(c);
    // Closed: the count goes back to 0 (once both sidecars have seen the close).
    let closed = |page: &String| {
        page.lines()
            .any(|l| l == "envoy_server_total_connections 0")
    };
    let page = testing::poll_until(
        Duration::from_secs(5),
        || testing::admin_get(p.a.bound.admin, "/stats/prometheus"),
        closed,
    )
    .await;
    assert!(closed(&page), "{page}");
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
    let c = tcp_ping(p.a.bound.outbound).await;
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

#[tokio::test]
async fn the_admin_port_says_which_certificate_and_roots_the_proxy_holds() {
    let p = pair(
        http_app().await,
        proto::Protocol::Http,
        proto::PeerMode::Strict,
        SHIPPING,
        true,
    )
    .await;
    let (status, body) = testing::http1(
        p.a.bound.admin,
        hyper::Method::GET,
        "/certs",
        "localhost",
        b"",
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let cert = &v["certificates"][0];
    assert_eq!(cert["identity"], ORDER);
    assert!(cert["secondsLeft"].as_f64().unwrap() > 0.0, "{v}");
    assert!(cert["validUntil"].as_str().unwrap().ends_with('Z'), "{v}");
    assert!(!cert["serialNumber"].as_str().unwrap().is_empty(), "{v}");
    let root = &v["roots"][0];
    assert_eq!(root["sha256"].as_str().unwrap().len(), 64, "{v}");
    assert!(root["subject"].as_str().is_some(), "{v}");
}
