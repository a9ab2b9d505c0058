//! The limits every HTTP connection the proxy serves is held to (`mesh_proxy::http`): a request
//! whose headers are too large or too many is answered 431, while a kept-alive connection left
//! idle (as apps' pools leave theirs) stays open. Through a sidecar's inbound listener in front
//! of an app, on loopback.

#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::sync::Arc;

use mesh_proxy::http::{MAX_HEADER_BYTES, MAX_HEADERS};
use mesh_proxy::state::{State, proto};
use mesh_proxy::testing;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

/// A sidecar (no identity, PERMISSIVE) whose inbound listener serves `app` as HTTP: its
/// inbound address.
async fn sidecar_for(app: SocketAddr) -> (mesh_proxy::Proxy, SocketAddr) {
    let state = Arc::new(
        State::compile(proto::ProxyState {
            inbound_ports: vec![proto::WorkloadPort {
                port: u32::from(app.port()),
                protocol: proto::Protocol::Http.into(),
            }],
            ..Default::default()
        })
        .unwrap(),
    );
    let (tx, rx) = watch::channel(state);
    std::mem::forget(tx);
    let proxy = testing::start(rx, "10.0.0.1:1", &format!("10.0.0.9:{}", app.port()), None).await;
    let inbound = proxy.bound.inbound;
    (proxy, inbound)
}

/// Sends `request` on a new connection and reads until the proxy closes it or answers.
async fn exchange(addr: SocketAddr, request: &[u8]) -> String {
    let mut c = TcpStream::connect(addr).await.unwrap();
    c.write_all(request).await.unwrap();
    let mut answer = vec![0u8; 4096];
    let n = c.read(&mut answer).await.unwrap_or(0);
    String::from_utf8_lossy(&answer[..n]).into_owned()
}

#[tokio::test]
async fn headers_too_large_or_too_many_are_answered_431() {
    let app = common::http_app().await;
    let (_proxy, inbound) = sidecar_for(app).await;
    let big = "x".repeat(MAX_HEADER_BYTES + 1024);
    let too_large = format!("GET / HTTP/1.1\r\nHost: shipping\r\nx-big: {big}\r\n\r\n");
    let answer = exchange(inbound, too_large.as_bytes()).await;
    assert!(
        answer.starts_with("HTTP/1.1 431"),
        "{}",
        &answer[..answer.len().min(200)]
    );
    let many: String = (0..=MAX_HEADERS)
        .map(|i| format!("x-h{i}: v\r\n"))
        .collect();
    let too_many = format!("GET / HTTP/1.1\r\nHost: shipping\r\n{many}\r\n");
    let answer = exchange(inbound, too_many.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
    // Under both limits: served (a few under the count: the sidecar adds its own headers, such
    // as x-request-id, on the way to the app, whose own limit is 100 too).
    let fine: String = (0..MAX_HEADERS - 10)
        .map(|i| format!("x-h{i}: v\r\n"))
        .collect();
    let near = "y".repeat(MAX_HEADER_BYTES / 2);
    let answer = exchange(
        inbound,
        format!("GET / HTTP/1.1\r\nHost: shipping\r\nx-near: {near}\r\n{fine}\r\n").as_bytes(),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

#[tokio::test(start_paused = true)]
async fn an_idle_keep_alive_connection_stays_open() {
    let app = common::http_app().await;
    let (_proxy, inbound) = sidecar_for(app).await;
    let mut c = TcpStream::connect(inbound).await.unwrap();
    let request = b"GET / HTTP/1.1\r\nHost: shipping\r\n\r\n";
    let mut answer = vec![0u8; 4096];
    c.write_all(request).await.unwrap();
    let n = c.read(&mut answer).await.unwrap();
    assert!(answer[..n].starts_with(b"HTTP/1.1 200"));
    // Quiet for ten minutes, as an app's pooled connection may be: still open.
    tokio::time::sleep(std::time::Duration::from_secs(600)).await;
    c.write_all(request).await.unwrap();
    let n = c.read(&mut answer).await.unwrap_or(0);
    assert!(
        answer[..n].starts_with(b"HTTP/1.1 200"),
        "the second request on an idle connection: {:?}",
        String::from_utf8_lossy(&answer[..n])
    );
}

#[tokio::test]
async fn an_http2_client_is_told_the_stream_and_header_limits() {
    use mesh_proxy::http::{MAX_H2_CONCURRENT_STREAMS, MAX_H2_HEADER_LIST_BYTES};
    let app = common::http_app().await;
    let (_proxy, inbound) = sidecar_for(app).await;
    let mut c = TcpStream::connect(inbound).await.unwrap();
    // The client preface and an empty SETTINGS frame (h2c with prior knowledge).
    c.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    // The server's first frame is its SETTINGS: 9 bytes of header, then (id, value) pairs.
    let mut head = [0u8; 9];
    c.read_exact(&mut head).await.unwrap();
    assert_eq!(head[3], 0x4, "the server's first frame is SETTINGS");
    let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
    let mut payload = vec![0u8; len];
    c.read_exact(&mut payload).await.unwrap();
    let settings: std::collections::BTreeMap<u16, u32> = payload
        .chunks_exact(6)
        .map(|s| {
            (
                u16::from_be_bytes([s[0], s[1]]),
                u32::from_be_bytes([s[2], s[3], s[4], s[5]]),
            )
        })
        .collect();
    // SETTINGS_MAX_CONCURRENT_STREAMS (3) and SETTINGS_MAX_HEADER_LIST_SIZE (6).
    assert_eq!(
        settings.get(&3),
        Some(&MAX_H2_CONCURRENT_STREAMS),
        "{settings:?}"
    );
    assert_eq!(
        settings.get(&6),
        Some(&MAX_H2_HEADER_LIST_BYTES),
        "{settings:?}"
    );
}
