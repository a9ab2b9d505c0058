//! The proxy in-process on 127.0.0.1: outbound to services by VIP, passthrough and refusal of
//! unknown destinations, load balancing, inbound hand-over, state changes under load, admin
//! and drain. Captured destinations are given by a fixed resolver instead of iptables.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use mesh_proxy::Proxy;
use mesh_proxy::state::{State, proto};
use mesh_proxy::testing;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

use testing::named_tcp_echo as named_echo;

fn service(
    vip: &str,
    port: u32,
    endpoints: &[SocketAddr],
    lb: proto::LoadBalancer,
) -> proto::Service {
    proto::Service {
        hostname: "echo.default.svc.cluster.local".into(),
        namespace: "default".into(),
        addresses: vec![vip.into()],
        ports: vec![proto::ServicePort {
            port,
            name: "tcp".into(),
            protocol: proto::Protocol::Tcp.into(),
            target_port: 0,
        }],
        endpoints: endpoints
            .iter()
            .map(|e| proto::Endpoint {
                address: e.ip().to_string(),
                ports: [("tcp".to_string(), u32::from(e.port()))].into(),
                ..Default::default()
            })
            .collect(),
        traffic_policy: Some(proto::TrafficPolicy {
            load_balancer: lb.into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn state(services: Vec<proto::Service>, policy: proto::OutboundTrafficPolicy) -> Arc<State> {
    Arc::new(
        State::compile(proto::ProxyState {
            version: "t1".into(),
            services,
            outbound_traffic_policy: policy.into(),
            ..Default::default()
        })
        .unwrap(),
    )
}

async fn start(rx: watch::Receiver<Arc<State>>, out_dst: &str, in_dst: &str) -> Proxy {
    testing::start(rx, out_dst, in_dst, None).await
}

async fn roundtrip(addr: SocketAddr, msg: &str) -> String {
    let mut c = TcpStream::connect(addr).await.unwrap();
    c.write_all(msg.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(5), c.read(&mut buf))
        .await
        .expect("answer in time")
        .unwrap();
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[tokio::test]
async fn outbound_reaches_the_service_behind_its_vip() {
    let echo = named_echo("a").await;
    let (_tx, rx) = watch::channel(state(
        vec![service(
            "10.96.0.10",
            80,
            &[echo],
            proto::LoadBalancer::Unspecified,
        )],
        proto::OutboundTrafficPolicy::AllowAny,
    ));
    let proxy = start(rx, "10.96.0.10:80", "10.0.0.1:1").await;
    assert_eq!(
        roundtrip(proxy.bound.outbound, "hello").await,
        "a 127.0.0.1 hello"
    );
}

#[tokio::test]
async fn unknown_destinations_pass_through_or_are_refused() {
    let echo = named_echo("direct").await;
    let (_tx, rx) = watch::channel(state(vec![], proto::OutboundTrafficPolicy::AllowAny));
    let proxy = start(rx, &echo.to_string(), "10.0.0.1:1").await;
    assert_eq!(
        roundtrip(proxy.bound.outbound, "x").await,
        "direct 127.0.0.1 x"
    );

    let (_tx, rx) = watch::channel(state(vec![], proto::OutboundTrafficPolicy::RegistryOnly));
    let proxy = start(rx, &echo.to_string(), "10.0.0.1:1").await;
    let mut c = TcpStream::connect(proxy.bound.outbound).await.unwrap();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(5), c.read(&mut buf))
        .await
        .unwrap()
        .unwrap_or(0);
    assert_eq!(
        n, 0,
        "REGISTRY_ONLY closes connections to unknown destinations"
    );
}

#[tokio::test]
async fn round_robin_spreads_connections_evenly() {
    let eps = [
        named_echo("e0").await,
        named_echo("e1").await,
        named_echo("e2").await,
    ];
    let (_tx, rx) = watch::channel(state(
        vec![service(
            "10.96.0.10",
            80,
            &eps,
            proto::LoadBalancer::RoundRobin,
        )],
        proto::OutboundTrafficPolicy::AllowAny,
    ));
    let proxy = start(rx, "10.96.0.10:80", "10.0.0.1:1").await;
    let mut counts: HashMap<String, usize> = HashMap::new();
    for _ in 0..30 {
        let answer = roundtrip(proxy.bound.outbound, "q").await;
        *counts
            .entry(answer.split(' ').next().unwrap().to_string())
            .or_default() += 1;
    }
    assert_eq!(counts.len(), 3);
    assert!(counts.values().all(|n| *n == 10), "{counts:?}");
}

#[tokio::test]
async fn a_new_state_applies_to_new_connections_without_dropping_old_ones() {
    let (a, b) = (named_echo("a").await, named_echo("b").await);
    let (tx, rx) = watch::channel(state(
        vec![service(
            "10.96.0.10",
            80,
            &[a],
            proto::LoadBalancer::Unspecified,
        )],
        proto::OutboundTrafficPolicy::AllowAny,
    ));
    let proxy = start(rx, "10.96.0.10:80", "10.0.0.1:1").await;
    let mut old = TcpStream::connect(proxy.bound.outbound).await.unwrap();
    old.write_all(b"1").await.unwrap();
    let mut buf = [0u8; 64];
    let n = old.read(&mut buf).await.unwrap();
    assert_eq!(&buf[..n], b"a 127.0.0.1 1");

    tx.send_replace(state(
        vec![service(
            "10.96.0.10",
            80,
            &[b],
            proto::LoadBalancer::Unspecified,
        )],
        proto::OutboundTrafficPolicy::AllowAny,
    ));
    assert_eq!(roundtrip(proxy.bound.outbound, "2").await, "b 127.0.0.1 2");
    old.write_all(b"3").await.unwrap();
    let n = old.read(&mut buf).await.unwrap();
    assert_eq!(
        &buf[..n],
        b"a 127.0.0.1 3",
        "the established connection still reaches a"
    );
}

#[tokio::test]
async fn inbound_hands_connections_to_the_app_on_loopback_from_127_0_0_6() {
    let app = named_echo("app").await;
    let (_tx, rx) = watch::channel(state(vec![], proto::OutboundTrafficPolicy::AllowAny));
    let proxy = start(rx, "10.96.0.10:80", &format!("10.0.0.7:{}", app.port())).await;
    assert_eq!(
        roundtrip(proxy.bound.inbound, "in").await,
        "app 127.0.0.6 in"
    );
}

async fn http_get(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
    let mut c = TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nhost: admin\r\nconnection: close\r\ncontent-length: 0\r\n\r\n"
    );
    c.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    c.read_to_string(&mut out).await.unwrap();
    let status = out.split(' ').nth(1).unwrap().parse().unwrap();
    let body = out.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    (status, body)
}

#[tokio::test]
async fn admin_answers_ready_config_dump_and_drain() {
    let (_tx, rx) = watch::channel(state(
        vec![service(
            "10.96.0.10",
            80,
            &["127.0.0.1:9".parse().unwrap()],
            proto::LoadBalancer::Unspecified,
        )],
        proto::OutboundTrafficPolicy::AllowAny,
    ));
    let mut proxy = start(rx, "10.96.0.10:80", "10.0.0.1:1").await;
    assert_eq!(
        http_get(proxy.bound.admin, "GET", "/ready").await,
        (200, "LIVE\n".into())
    );
    assert_eq!(
        http_get(proxy.bound.readiness, "GET", "/healthz/ready")
            .await
            .0,
        200
    );
    assert_eq!(
        http_get(proxy.bound.readiness, "GET", "/config_dump")
            .await
            .0,
        404,
        "only readiness outside localhost"
    );
    let (status, body) = http_get(proxy.bound.admin, "GET", "/config_dump").await;
    assert_eq!(status, 200);
    let dump: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(dump["version"], "t1");
    assert_eq!(dump["services"][0]["addresses"][0], "10.96.0.10");
    assert_eq!(http_get(proxy.bound.admin, "POST", "/drain").await.0, 200);
    tokio::time::timeout(Duration::from_secs(5), proxy.drain_requested())
        .await
        .expect("drain requested");
}

#[tokio::test]
async fn drain_stops_accepting_and_waits_for_open_connections() {
    let echo = named_echo("a").await;
    let (_tx, rx) = watch::channel(state(
        vec![service(
            "10.96.0.10",
            80,
            &[echo],
            proto::LoadBalancer::Unspecified,
        )],
        proto::OutboundTrafficPolicy::AllowAny,
    ));
    let proxy = start(rx, "10.96.0.10:80", "10.0.0.1:1").await;
    let outbound = proxy.bound.outbound;
    let mut open = TcpStream::connect(outbound).await.unwrap();
    open.write_all(b"x").await.unwrap();
    let mut buf = [0u8; 64];
    let n = open.read(&mut buf).await.unwrap();
    assert_eq!(&buf[..n], b"a 127.0.0.1 x");

    let draining = tokio::spawn(proxy.drain(Duration::from_secs(10)));
    // Wait until the listener is gone: new connections are refused.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while TcpStream::connect(outbound).await.is_ok() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "listener still accepting after the drain began"
        );
        tokio::task::yield_now().await;
    }
    // The open connection still works, and the drain ends once it closes.
    open.write_all(b"y").await.unwrap();
    let n = open.read(&mut buf).await.unwrap();
    assert_eq!(&buf[..n], b"a 127.0.0.1 y");
    assert!(!draining.is_finished());
    drop(open);
    let finished = tokio::time::timeout(Duration::from_secs(5), draining)
        .await
        .expect("drain ends")
        .unwrap();
    assert!(finished, "every connection finished before the deadline");
}

#[tokio::test]
async fn tls_is_passed_through_and_routed_by_sni() {
    let (a, b) = (named_echo("a").await, named_echo("b").await);
    let mut svc_a = service("10.96.0.41", 443, &[a], proto::LoadBalancer::Unspecified);
    svc_a.hostname = "a.example.com".into();
    let mut svc_b = service("10.96.0.42", 443, &[b], proto::LoadBalancer::Unspecified);
    svc_b.hostname = "b.example.com".into();
    let mut front = service("10.96.0.40", 443, &[a], proto::LoadBalancer::Unspecified);
    front.hostname = "front.default.svc.cluster.local".into();
    front.ports[0].protocol = proto::Protocol::Tls.into();
    let to = |host: &str| proto::WeightedDestination {
        host: host.into(),
        weight: 100,
        ..Default::default()
    };
    front.tls_routes = vec![
        proto::TlsRoute {
            sni_hosts: vec!["a.example.com".into()],
            port: 443,
            destinations: vec![to("a.example.com")],
        },
        proto::TlsRoute {
            sni_hosts: vec!["*.b.example.com".into()],
            port: 0,
            destinations: vec![to("b.example.com")],
        },
    ];
    let (_tx, rx) = watch::channel(state(
        vec![front, svc_a, svc_b],
        proto::OutboundTrafficPolicy::AllowAny,
    ));
    let proxy = start(rx, "10.96.0.40:443", "10.0.0.1:1").await;
    for (sni, want) in [
        ("a.example.com", "a "),
        ("api.b.example.com", "b "),
        ("other.example.com", "a "),
    ] {
        let mut c = TcpStream::connect(proxy.bound.outbound).await.unwrap();
        c.write_all(&mesh_proxy::tls::client_hello(sni))
            .await
            .unwrap();
        let mut buf = vec![0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(5), c.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        let answer = String::from_utf8_lossy(&buf[..n]);
        assert!(answer.starts_with(want), "{sni}: {answer:?}");
    }
}
