//! Heap allocations per request on the two paths every mesh request takes: one plaintext
//! HTTP/1.1 hop, and the mTLS sidecar pair (HTTP/1.1 in, HTTP/2 over mesh mTLS between the
//! sidecars, HTTP/1.1 to the app). Every allocation of the process is counted (dhat's global
//! allocator), and the client and the app are written so they allocate nothing per request:
//! the direct path is checked to count zero, so what is counted is the proxies' (tokio's and
//! the libraries' included). docs/performance.md keeps the figures and what was done to them.
#![allow(clippy::expect_used, clippy::unwrap_used, missing_docs)]

mod common;

use std::net::SocketAddr;

use mesh_proxy::state::proto;
use mesh_proxy::testing;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use common::*;

#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

/// The stated bounds, per request, after warm-up: half an allocation above what was measured
/// (9 for the hop, 29 for the pair, on 2026-12-08), so one more allocation per request on
/// either path fails here with the figure. Lower them when a change allocates less.
const HOP_MAX: f64 = 9.5;
const PAIR_MAX: f64 = 29.5;

const WARM_UP: usize = 300;
const COUNTED: usize = 2000;

/// An app that answers every request on a connection with a fixed 200, from a buffer it
/// reuses: it allocates nothing per request.
async fn app() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut c, _) = l.accept().await.unwrap();
            c.set_nodelay(true).unwrap();
            tokio::spawn(async move {
                let mut buf = [0u8; 8192];
                let mut filled = 0;
                loop {
                    match c.read(&mut buf[filled..]).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => filled += n,
                    }
                    // Requests here have no body: each ends at its blank line.
                    while let Some(end) = find(&buf[..filled], b"\r\n\r\n") {
                        if c.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                            .await
                            .is_err()
                        {
                            return;
                        }
                        buf.copy_within(end + 4..filled, 0);
                        filled -= end + 4;
                    }
                }
            });
        }
    });
    addr
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// A keep-alive client sending `count` GETs one after the other, from buffers it reuses.
async fn requests(c: &mut TcpStream, count: usize) {
    let mut buf = [0u8; 8192];
    for _ in 0..count {
        c.write_all(b"GET / HTTP/1.1\r\nhost: shipping\r\nuser-agent: alloc-test\r\n\r\n")
            .await
            .unwrap();
        let mut filled = 0;
        loop {
            let n = c.read(&mut buf[filled..]).await.unwrap();
            assert!(n > 0, "the connection closed");
            filled += n;
            if let Some(end) = find(&buf[..filled], b"\r\n\r\n") {
                assert!(buf.starts_with(b"HTTP/1.1 200"), "{:?}", &buf[..filled]);
                // Every answer here is the app's 2-byte body.
                if filled >= end + 4 + 2 {
                    assert_eq!(filled, end + 4 + 2, "one answer at a time");
                    break;
                }
            }
        }
    }
}

/// Allocations per request through `addr`, after a warm-up on the same connection.
async fn per_request(addr: SocketAddr) -> f64 {
    let mut c = TcpStream::connect(addr).await.unwrap();
    c.set_nodelay(true).unwrap();
    requests(&mut c, WARM_UP).await;
    let before = dhat::HeapStats::get().total_blocks;
    requests(&mut c, COUNTED).await;
    let after = dhat::HeapStats::get().total_blocks;
    (after - before) as f64 / COUNTED as f64
}

/// One test, so the profiler (one per process) spans both paths and nothing else runs beside.
#[test]
fn allocations_per_request_stay_within_the_stated_bounds() {
    let _profiler = dhat::Profiler::builder().testing().build();
    // One worker thread, as `mesh-proxy run --worker-threads 1` (the bench's configuration).
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let backend = app().await;
        let direct = per_request(backend).await;
        assert!(
            direct < 0.01,
            "the test's own client and app allocate {direct} per request: they must not, or the counts below are not the proxy's"
        );

        let svc = testing::service("shipping.default.svc.cluster.local", "10.96.0.50", 80, "http")
            .endpoint(backend, &[])
            .build();
        let (tx, rx) = tokio::sync::watch::channel(testing::compile(proto::ProxyState {
            services: vec![svc],
            ..Default::default()
        }));
        let hop = testing::start(rx, "10.96.0.50:80", &backend.to_string(), None).await;
        let hop_count = per_request(hop.bound.outbound).await;

        let p = pair(
            backend,
            proto::Protocol::Http,
            proto::PeerMode::Strict,
            SHIPPING,
            true,
        )
        .await;
        let pair_count = per_request(p.a.bound.outbound).await;

        println!(
            "allocations per request: one hop {hop_count:.2} (bound {HOP_MAX}), mTLS pair {pair_count:.2} (bound {PAIR_MAX}), direct {direct:.2}"
        );
        assert!(
            hop_count <= HOP_MAX,
            "one plaintext hop allocates {hop_count:.2} times per request, over the stated {HOP_MAX}"
        );
        assert!(
            pair_count <= PAIR_MAX,
            "the mTLS pair allocates {pair_count:.2} times per request, over the stated {PAIR_MAX}"
        );
        drop((tx, hop, p));
    });
}
