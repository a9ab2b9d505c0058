//! CSRs signed per second end to end over gRPC on 127.0.0.1: the proxy-side request (a fresh
//! CSR, bootstrap token), HTTP/2, authentication, verification, signing, and the answer, with
//! 32 requests in flight on one connection. Keys and CSRs are made before timing (that cost
//! belongs to the workloads, not to the CA). See docs/performance.md.
//!
//! With `MESH_CA_BENCH_ENDPOINT` (and `MESH_CA_BENCH_TOKEN`) set, it drives a separate
//! `mesh-ca serve` instead, so the CA can be pinned to its own core
//! (`taskset -c 1 mesh-ca serve ...`, bench with `taskset -c 0`): that measures one CA core.

#![allow(clippy::expect_used, clippy::unwrap_used, missing_docs)]

use std::sync::Arc;
use std::time::Instant;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use mesh_api::proto::ca::v1::certificates_client::CertificatesClient;
use mesh_api::proto::ca::v1::{CertificateRequest, Credential, credential::Kind};
use mesh_ca::auth::BootstrapTokens;
use mesh_ca::service::CaService;
use mesh_ca::testing::{TestCa, csr_for};

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let ca = TestCa::self_signed("bench-grpc", mesh_ca::CaConfig::default());
    let tokens = Arc::new(BootstrapTokens::default());
    let external = std::env::var("MESH_CA_BENCH_ENDPOINT").ok();
    let token = match &external {
        Some(_) => std::env::var("MESH_CA_BENCH_TOKEN")
            .expect("MESH_CA_BENCH_TOKEN with MESH_CA_BENCH_ENDPOINT"),
        None => tokens.issue("default", "order"),
    };
    let client = rt.block_on(async {
        let endpoint = match external {
            Some(e) => e,
            None => {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                let addr = listener.local_addr().unwrap();
                tokio::spawn(mesh_ca::service::serve(
                    listener,
                    CaService::new(ca.authority.clone(), tokens),
                    std::future::pending(),
                ));
                format!("http://{addr}")
            }
        };
        let channel = tonic::transport::Endpoint::from_shared(endpoint)
            .unwrap()
            .connect()
            .await
            .unwrap();
        CertificatesClient::new(channel)
    });
    let csrs: Vec<String> = (0..256)
        .map(|_| csr_for(&["spiffe://cluster.local/ns/default/sa/order"]).1)
        .collect();
    let mut group = c.benchmark_group("ca_grpc");
    group.throughput(Throughput::Elements(1));
    group.bench_function("create_certificate_32_in_flight", |b| {
        b.iter_custom(|n| {
            rt.block_on(async {
                let start = Instant::now();
                let mut done = 0u64;
                while done < n {
                    let batch = (n - done).min(32);
                    let calls: Vec<_> = (0..batch)
                        .map(|i| {
                            let mut client = client.clone();
                            let req = CertificateRequest {
                                csr_pem: csrs[((done + i) % 256) as usize].clone(),
                                credential: Some(Credential {
                                    kind: Some(Kind::BootstrapToken(token.clone())),
                                }),
                                validity_seconds: 0,
                            };
                            tokio::spawn(
                                async move { client.create_certificate(req).await.unwrap() },
                            )
                        })
                        .collect();
                    for call in calls {
                        call.await.unwrap();
                    }
                    done += batch;
                }
                start.elapsed()
            })
        });
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
