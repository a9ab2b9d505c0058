//! The limits every HTTP connection the proxy serves is held to (`mesh_proxy::http`): a request
//! whose headers are too large or too many is answered 431, while a kept-alive connection left
//! idle (as apps' pools leave theirs) stays open. Through a sidecar's inbound listener in front
//! of an app, on loopback.

#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::sync::Arc;

use std::time::Duration;

use mesh_proxy::http::{HEADER_READ_TIMEOUT, IDLE_TIMEOUT, Limits, MAX_HEADER_BYTES, MAX_HEADERS};
use mesh_proxy::metrics::Workload;
use mesh_proxy::state::{State, proto};
use mesh_proxy::{Proxy, Setup, testing};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;

/// A sidecar (no identity, PERMISSIVE) whose inbound listener serves `app` as HTTP: its
/// inbound address.
async fn sidecar_for(app: SocketAddr) -> (mesh_proxy::Proxy, SocketAddr) {
    sidecar_with(app, Limits::default()).await
}

/// As [`sidecar_for`], held to `limits`.
async fn sidecar_with(app: SocketAddr, limits: Limits) -> (mesh_proxy::Proxy, SocketAddr) {
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
    let setup = Setup {
        state: rx,
        has_state: true,
        outbound_dst: testing::fixed("10.0.0.1:1"),
        inbound_dst: testing::fixed(&format!("10.0.0.9:{}", app.port())),
        svids: None,
        on_demand: None,
        workload: Workload::unknown(),
        debug_authz: false,
        jwks_ca_pem: None,
        gateway: None,
        limits,
    };
    let proxy = Proxy::launch(&testing::loopback(), setup).await.unwrap();
    let inbound = proxy.bound.inbound;
    (proxy, inbound)
}

/// `mesh_proxy_refused_total` of the inbound listener for `reason`.
async fn refused(proxy: &Proxy, reason: &str) -> u64 {
    common::refused(proxy.bound.admin, "inbound", reason).await
}

/// An app that reads a request's whole body before answering `got N bytes`.
async fn body_reading_app() -> SocketAddr {
    use http_body_util::{BodyExt, Full};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((c, _)) = l.accept().await {
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    |req: hyper::Request<hyper::body::Incoming>| async move {
                        let body = req.into_body().collect().await?.to_bytes();
                        Ok::<_, hyper::Error>(hyper::Response::new(Full::new(bytes::Bytes::from(
                            format!("got {} bytes", body.len()),
                        ))))
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(c), svc)
                    .await;
            });
        }
    });
    addr
}

/// Reads from `c` until the proxy closes it (end of stream or reset); what it sent.
async fn read_to_close(c: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match c.read(&mut buf).await {
            Ok(0) | Err(_) => return got,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
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
    tokio::time::sleep(Duration::from_secs(600)).await;
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

// The clock is paused in the timing tests below: tokio moves it on whenever every task waits,
// so the test's own sleeps (a client's pauses between bytes) and the proxy's timers take no
// wall time, and the elapsed times they assert are exact to the tick.

#[tokio::test(start_paused = true)]
async fn a_slow_head_is_closed_at_the_header_read_timeout_from_its_first_byte() {
    let app = common::http_app().await;
    let (proxy, inbound) = sidecar_for(app).await;
    let mut c = TcpStream::connect(inbound).await.unwrap();
    let mut answer = vec![0u8; 4096];
    c.write_all(b"GET / HTTP/1.1\r\nHost: shipping\r\n\r\n")
        .await
        .unwrap();
    let n = c.read(&mut answer).await.unwrap();
    assert!(answer[..n].starts_with(b"HTTP/1.1 200"));
    // Quiet between requests for longer than the limit: not timed (no head has begun).
    tokio::time::sleep(HEADER_READ_TIMEOUT * 6).await;
    // Then a head trickled a byte a second, as slowloris sends them.
    let (mut read, mut write) = c.into_split();
    let started = Instant::now();
    let trickle = tokio::spawn(async move {
        for b in b"GET / HTTP/1.1\r\nHost: shipping\r\nx-slow: "
            .iter()
            .chain(std::iter::repeat(&b'a'))
        {
            if write.write_all(&[*b]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
    let mut got = Vec::new();
    let closed = tokio::time::timeout(HEADER_READ_TIMEOUT * 3, read.read_to_end(&mut got)).await;
    let took = started.elapsed();
    assert!(
        closed.is_ok(),
        "still open {took:?} after the head's first byte"
    );
    trickle.abort();
    assert!(got.is_empty(), "{}", String::from_utf8_lossy(&got));
    assert!(
        took >= HEADER_READ_TIMEOUT && took <= HEADER_READ_TIMEOUT + Duration::from_secs(1),
        "closed {took:?} after the head's first byte"
    );
    assert_eq!(refused(&proxy, "header_timeout").await, 1);
}

#[tokio::test(start_paused = true)]
async fn a_slow_body_is_not_cut_by_the_header_timeout() {
    let app = body_reading_app().await;
    let (proxy, inbound) = sidecar_for(app).await;
    let mut c = TcpStream::connect(inbound).await.unwrap();
    let len = 30;
    c.write_all(
        format!("POST / HTTP/1.1\r\nHost: shipping\r\ncontent-length: {len}\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    // The body comes a byte a second: three times the header limit.
    for _ in 0..len {
        tokio::time::sleep(Duration::from_secs(1)).await;
        c.write_all(b"b").await.unwrap();
    }
    let mut answer = vec![0u8; 4096];
    let n = c.read(&mut answer).await.unwrap();
    let text = String::from_utf8_lossy(&answer[..n]);
    assert!(
        text.starts_with("HTTP/1.1 200") && text.ends_with("got 30 bytes"),
        "{text}"
    );
    // And the connection serves the next request.
    c.write_all(b"GET / HTTP/1.1\r\nHost: shipping\r\n\r\n")
        .await
        .unwrap();
    let n = c.read(&mut answer).await.unwrap();
    assert!(answer[..n].starts_with(b"HTTP/1.1 200"));
    assert_eq!(refused(&proxy, "header_timeout").await, 0);
}

#[tokio::test(start_paused = true)]
async fn a_connection_idle_for_the_idle_timeout_is_closed() {
    let app = common::http_app().await;
    let (proxy, inbound) = sidecar_for(app).await;
    let mut c = TcpStream::connect(inbound).await.unwrap();
    c.write_all(b"GET / HTTP/1.1\r\nHost: shipping\r\n\r\n")
        .await
        .unwrap();
    let mut answer = vec![0u8; 4096];
    let n = c.read(&mut answer).await.unwrap();
    assert!(answer[..n].starts_with(b"HTTP/1.1 200"));
    let last = Instant::now();
    assert!(read_to_close(&mut c).await.is_empty());
    let idle = last.elapsed();
    assert!(
        idle >= IDLE_TIMEOUT && idle <= IDLE_TIMEOUT + IDLE_TIMEOUT / 4,
        "closed after {idle:?} idle"
    );
    assert_eq!(refused(&proxy, "idle_timeout").await, 1);
}

#[tokio::test]
async fn connections_past_the_listeners_limit_are_closed_and_counted() {
    let app = common::http_app().await;
    let limits = Limits {
        max_connections: 4,
        ..Limits::default()
    };
    let (proxy, inbound) = sidecar_with(app, limits).await;
    let request = b"GET / HTTP/1.1\r\nHost: shipping\r\n\r\n";
    let mut answer = vec![0u8; 4096];
    let mut open = Vec::new();
    for _ in 0..4 {
        let mut c = TcpStream::connect(inbound).await.unwrap();
        c.write_all(request).await.unwrap();
        let n = c.read(&mut answer).await.unwrap();
        assert!(answer[..n].starts_with(b"HTTP/1.1 200"));
        open.push(c);
    }
    // The fifth is accepted by the kernel and closed by the proxy at once, unanswered.
    let mut fifth = TcpStream::connect(inbound).await.unwrap();
    let _ = fifth.write_all(request).await;
    assert!(read_to_close(&mut fifth).await.is_empty());
    assert_eq!(refused(&proxy, "connection_limit").await, 1);
    // The four still serve; once one closes, a new connection is served again.
    for c in &mut open {
        c.write_all(request).await.unwrap();
        let n = c.read(&mut answer).await.unwrap();
        assert!(answer[..n].starts_with(b"HTTP/1.1 200"));
    }
    drop(open.pop());
    let served = testing::poll_until(
        Duration::from_secs(5),
        || async {
            let Ok(mut c) = TcpStream::connect(inbound).await else {
                return false;
            };
            let _ = c.write_all(request).await;
            let mut buf = [0u8; 64];
            let n = c.read(&mut buf).await.unwrap_or(0);
            n > 0
        },
        |served| *served,
    )
    .await;
    assert!(served, "a connection is served once one of the four closed");
}

/// An app address that accepts connections (the kernel's backlog does) and never answers, so
/// requests to it stay in flight.
async fn silent_app() -> (tokio::net::TcpListener, SocketAddr) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    (l, addr)
}

#[tokio::test]
async fn http2_streams_past_the_limit_are_refused_and_the_connection_kept() {
    use common::raw_h2::*;
    use mesh_proxy::http::MAX_H2_CONCURRENT_STREAMS;
    // Every stream in flight holds a connection to the app: room for them in this process.
    let _ = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).map(
        |(_, hard)| {
            nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, hard, hard)
        },
    );
    let (_held, app) = silent_app().await;
    let (proxy, inbound) = sidecar_for(app).await;
    let mut c = connect(inbound).await;
    let extra = 8;
    let total = MAX_H2_CONCURRENT_STREAMS + extra;
    let block = get_block(&[]);
    let mut burst = Vec::new();
    for i in 0..total {
        // Open streams: each waits for its answer, which never comes.
        burst.extend(headers(2 * i + 1, &block, true));
    }
    c.write_all(&burst).await.unwrap();
    let mut refused = Vec::new();
    c.write_all(&frame(PING, 0, 0, b"stillok!")).await.unwrap();
    let mut pong = false;
    while refused.len() < extra as usize || !pong {
        let (kind, flags, stream, payload) =
            tokio::time::timeout(Duration::from_secs(10), read(&mut c))
                .await
                .expect("the proxy answers within 10 s")
                .expect("the connection stays open");
        match kind {
            RST_STREAM => {
                assert_eq!(code(&payload, 0), REFUSED_STREAM, "stream {stream}");
                refused.push(stream);
            }
            PING if flags & 0x1 == 0x1 => {
                assert_eq!(payload, b"stillok!");
                pong = true;
            }
            GOAWAY => panic!("GOAWAY {:#x}", code(&payload, 4)),
            _ => {}
        }
    }
    // The streams refused are those past the limit, and each is counted.
    let first_refused = 2 * MAX_H2_CONCURRENT_STREAMS + 1;
    assert!(refused.iter().all(|s| *s >= first_refused), "{refused:?}");
    assert_eq!(
        self::refused(&proxy, "stream_limit").await,
        u64::from(extra)
    );
}

#[tokio::test]
async fn an_http2_header_list_past_the_limit_is_refused_and_the_connection_kept() {
    use common::raw_h2::*;
    use mesh_proxy::http::MAX_H2_HEADER_LIST_BYTES;
    let app = common::http_app().await;
    let (_proxy, inbound) = sidecar_for(app).await;
    let mut c = connect(inbound).await;
    let big = "x".repeat(usize::try_from(MAX_H2_HEADER_LIST_BYTES).unwrap());
    c.write_all(&headers(1, &get_block(&[("x-big", &big)]), true))
        .await
        .unwrap();
    c.write_all(&headers(3, &get_block(&[]), true))
        .await
        .unwrap();
    // Stream 1 is refused (a 431, or a reset); stream 3, after it, is answered.
    let (mut one, mut three) = (false, false);
    while !(one && three) {
        let (kind, _, stream, payload) =
            tokio::time::timeout(Duration::from_secs(10), read(&mut c))
                .await
                .expect("the proxy answers within 10 s")
                .expect("the connection stays open");
        match (kind, stream) {
            (HEADERS | RST_STREAM, 1) => one = true,
            (HEADERS, 3) => three = true,
            (RST_STREAM, 3) => panic!("stream 3 reset: {:#x}", code(&payload, 0)),
            (GOAWAY, _) => panic!("GOAWAY {:#x}", code(&payload, 4)),
            _ => {}
        }
    }
}

#[tokio::test]
async fn a_rapid_reset_flood_is_closed_with_goaway_counted_and_others_still_served() {
    use common::raw_h2::*;
    let app = common::http_app().await;
    let (proxy, inbound) = sidecar_for(app).await;
    let mut c = connect(inbound).await;
    // CVE-2023-44487: open a stream and cancel it at once, over and over.
    let block = get_block(&[]);
    let mut burst = Vec::new();
    for i in 0..1000u32 {
        burst.extend(headers(2 * i + 1, &block, true));
        burst.extend(frame(RST_STREAM, 0, 2 * i + 1, &0x8u32.to_be_bytes()));
    }
    let _ = c.write_all(&burst).await;
    let goaway = loop {
        match tokio::time::timeout(Duration::from_secs(10), read(&mut c))
            .await
            .expect("the proxy acts within 10 s")
        {
            Some((GOAWAY, _, _, payload)) => break Some(code(&payload, 4)),
            Some(_) => {}
            None => break None,
        }
    };
    assert_eq!(goaway, Some(ENHANCE_YOUR_CALM));
    let counted = testing::poll_until(
        Duration::from_secs(5),
        || refused(&proxy, "http2_abuse"),
        |n| *n == 1,
    )
    .await;
    assert_eq!(counted, 1);
    // Another client is served as before.
    let mut other = connect(inbound).await;
    other.write_all(&headers(1, &block, true)).await.unwrap();
    loop {
        let (kind, _, stream, _) = read(&mut other).await.expect("served");
        if (kind, stream) == (HEADERS, 1) {
            break;
        }
    }
}

#[tokio::test(start_paused = true)]
async fn an_upstream_connection_idle_past_the_pool_timeout_is_closed() {
    use mesh_proxy::upstream::POOL_IDLE_TIMEOUT;
    // An app written by hand, to see its connection from the sidecar close.
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app = l.local_addr().unwrap();
    let (_proxy, inbound) = sidecar_for(app).await;
    let client = tokio::spawn(exchange(
        inbound,
        b"GET / HTTP/1.1\r\nHost: shipping\r\n\r\n",
    ));
    let (mut up, _) = l.accept().await.unwrap();
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = up.read(&mut buf).await.unwrap();
        assert!(n > 0, "the sidecar closed before its request was whole");
        head.extend_from_slice(&buf[..n]);
    }
    up.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        .await
        .unwrap();
    assert!(client.await.unwrap().starts_with("HTTP/1.1 200"));
    let last = Instant::now();
    let closed = tokio::time::timeout(POOL_IDLE_TIMEOUT * 3, read_to_close(&mut up)).await;
    assert!(closed.is_ok_and(|got| got.is_empty()), "still open");
    let idle = last.elapsed();
    // Closed by the sweep that follows the timeout (every 15 s).
    assert!(
        idle >= POOL_IDLE_TIMEOUT && idle <= POOL_IDLE_TIMEOUT + Duration::from_secs(16),
        "the pooled connection closed after {idle:?} idle"
    );
}
