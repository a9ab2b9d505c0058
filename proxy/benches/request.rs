//! One HTTP/1.1 keep-alive request through the proxy's outbound path, against the same request
//! sent straight to the backend, in one process on 127.0.0.1. The ratio of the two is the cost
//! of the hop; see docs/performance.md.

// Benches measure wall time with std's clock; no test here pauses time.
#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::disallowed_types,
    missing_docs
)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use mesh_proxy::state::proto;
use mesh_proxy::testing;
use tokio::net::{TcpListener, TcpStream};

async fn backend() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (c, _) = l.accept().await.unwrap();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|_req| async {
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(c), svc)
                    .await;
            });
        }
    });
    addr
}

async fn client(addr: SocketAddr) -> hyper::client::conn::http1::SendRequest<Full<Bytes>> {
    let stream = TcpStream::connect(addr).await.unwrap();
    stream.set_nodelay(true).unwrap();
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    sender
}

async fn one(sender: &mut hyper::client::conn::http1::SendRequest<Full<Bytes>>) {
    sender.ready().await.unwrap();
    let req = Request::builder()
        .uri("/")
        .header("host", "bench")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    let _ = resp.into_body().collect().await.unwrap();
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (backend, proxy) = rt.block_on(async {
        let backend = backend().await;
        let svc = testing::service("bench.default.svc.cluster.local", "10.96.0.50", 80, "http")
            .endpoint(backend, &[])
            .build();
        let (tx, rx) = tokio::sync::watch::channel(testing::compile(proto::ProxyState {
            services: vec![svc],
            ..Default::default()
        }));
        std::mem::forget(tx);
        let proxy = testing::start(rx, "10.96.0.50:80", &backend.to_string(), None).await;
        (backend, proxy)
    });
    let mut direct = rt.block_on(client(backend));
    let mut via_proxy = rt.block_on(client(proxy.bound.outbound));
    let mut group = c.benchmark_group("http1_keepalive_request");
    group.measurement_time(Duration::from_secs(5));
    group.bench_function("direct", |b| {
        b.iter_custom(|n| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..n {
                    one(&mut direct).await;
                }
                start.elapsed()
            })
        });
    });
    group.bench_function("through_proxy", |b| {
        b.iter_custom(|n| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..n {
                    one(&mut via_proxy).await;
                }
                start.elapsed()
            })
        });
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
