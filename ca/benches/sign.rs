//! CSRs signed per second by the CA, end to end in-process (parse, verify the CSR signature,
//! check the identity, sign, PEM-encode), on one thread. See docs/performance.md.

#![allow(clippy::expect_used, clippy::unwrap_used, missing_docs)]

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use mesh_ca::{Authority, CaConfig, Identity};
use rcgen::{CertificateParams, KeyPair, PKCS_ECDSA_P256_SHA256, SanType};

fn bench(c: &mut Criterion) {
    let dir = std::env::temp_dir().join(format!("mesh-ca-bench-{}", std::process::id()));
    let (ca, _) = Authority::load_or_create(&dir, CaConfig::default()).unwrap();
    let id = Identity::new("cluster.local", "default", "order");
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = CertificateParams::default();
    params.subject_alt_names = vec![SanType::URI(id.uri().try_into().unwrap())];
    let csr = params.serialize_request(&key).unwrap().pem().unwrap();
    let mut group = c.benchmark_group("ca");
    group.throughput(Throughput::Elements(1));
    group.bench_function("sign_csr", |b| b.iter(|| ca.sign(&csr, &id, None).unwrap()));
    group.bench_function("generate_key_and_csr", |b| {
        b.iter(|| {
            let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
            params.serialize_request(&key).unwrap().pem().unwrap()
        });
    });
    group.finish();
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(benches, bench);
criterion_main!(benches);
