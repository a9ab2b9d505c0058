//! Mesh mTLS handshakes per second: a full TLS 1.3 handshake with client certificates, SPIFFE
//! identity checks and chain verification on both sides, client and server in one thread over
//! in-memory buffers (no sockets), so the figure is the CPU cost of the handshake itself.
//! Session tickets are sent after the handshake and this loop stops at its end, so no
//! handshake is resumed: each one verifies both chains and signs on both sides.
//! See docs/performance.md.

#![allow(clippy::expect_used, clippy::unwrap_used, missing_docs)]

use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use mesh_ca::testing::TestCa;
use mesh_ca::{CaConfig, Identity};
use mesh_proxy::identity::{CertificateSource, IdentityError, SignFuture, Svid, request_svid};
use mesh_proxy::tls::mtls;
use rustls::{ClientConnection, ServerConnection};
use rustls_pki_types::ServerName;

struct Source(Arc<mesh_ca::Authority>, Identity);

impl CertificateSource for Source {
    fn sign(&self, csr: String) -> SignFuture<'_> {
        Box::pin(async move {
            let s = self
                .0
                .sign(&csr, &self.1, Some(Duration::from_secs(3600)))
                .map_err(|e| IdentityError::Ca(e.to_string()))?;
            Ok((s.chain, s.roots))
        })
    }
}

fn svids(ca: &TestCa, sa: &str, rt: &tokio::runtime::Runtime) -> mtls::Svids {
    let id = Identity::new("cluster.local", "default", sa);
    let svid: Svid = rt
        .block_on(request_svid(
            &Source(ca.authority.clone(), id.clone()),
            &id.uri(),
        ))
        .unwrap();
    let (tx, rx) = tokio::sync::watch::channel(Some(Arc::new(svid)));
    std::mem::forget(tx);
    rx
}

fn transfer(from: &mut dyn FnMut(&mut Vec<u8>) -> usize, to: &mut dyn FnMut(&[u8])) {
    let mut buf = Vec::new();
    if from(&mut buf) > 0 {
        to(&buf);
    }
}

fn handshake(client_cfg: &Arc<rustls::ClientConfig>, server_cfg: &Arc<rustls::ServerConfig>) {
    let mut client = ClientConnection::new(
        client_cfg.clone(),
        ServerName::try_from("127.0.0.1").unwrap(),
    )
    .unwrap();
    let mut server = ServerConnection::new(server_cfg.clone()).unwrap();
    while client.is_handshaking() || server.is_handshaking() {
        transfer(&mut |b| client.write_tls(b).unwrap(), &mut |b| {
            let mut r: &[u8] = b;
            while !r.is_empty() {
                server.read_tls(&mut r).unwrap();
            }
            server.process_new_packets().unwrap();
        });
        transfer(&mut |b| server.write_tls(b).unwrap(), &mut |b| {
            let mut r: &[u8] = b;
            while !r.is_empty() {
                client.read_tls(&mut r).unwrap();
            }
            client.process_new_packets().unwrap();
        });
    }
    assert_eq!(
        mtls::peer_identity(&server).as_deref(),
        Some("spiffe://cluster.local/ns/default/sa/order")
    );
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let ca = TestCa::self_signed("bench-handshake", CaConfig::default());
    let server_cfg = mtls::server_config(svids(&ca, "shipping", &rt)).unwrap();
    let client_cfg = mtls::client_config(
        svids(&ca, "order", &rt),
        vec!["spiffe://cluster.local/ns/default/sa/shipping".into()],
        mtls::ALPN_MESH_TCP,
    )
    .unwrap();
    let mut group = c.benchmark_group("mtls");
    group.throughput(Throughput::Elements(1));
    group.bench_function("full_handshake_both_sides", |b| {
        b.iter(|| handshake(&client_cfg, &server_cfg))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
