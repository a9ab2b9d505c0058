//! The fuzz targets' corpus (`fuzz/corpus/TARGET/`) and every crash a fuzzing run found
//! (`fuzz/regressions/TARGET/`, copied there by `scripts/fuzz.sh`) replayed through the very
//! functions the cargo-fuzz targets call (`mesh_proxy::testing::fuzz`), on the stable
//! toolchain, as ordinary tests: none may panic or take longer than a second.
//!
//! `UPDATE_FUZZ_SEEDS=1` rewrites the seeds this file makes (`seed-*` files: a discovery
//! response, tokens, CSRs) from the code that makes them in tests elsewhere.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use mesh_proxy::testing::fuzz;
use prost::Message;

/// What a target runs on one input: whether it was accepted.
type Target = fn(&[u8]) -> bool;

const TARGETS: [(&str, Target); 6] = [
    ("sniff", fuzz::sniff),
    ("http1", fuzz::http1),
    ("config", fuzz::config),
    ("state", fuzz::state),
    ("jwt", fuzz::jwt),
    ("csr", fuzz::csr),
];

/// The longest one input may take (a debug build; libFuzzer's own limit is its `-timeout`).
const PER_INPUT: Duration = Duration::from_secs(1);

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|r| r.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    out.retain(|p| p.is_file());
    out.sort();
    out
}

#[test]
fn every_corpus_input_and_every_crash_found_runs_clean() {
    if std::env::var_os("UPDATE_FUZZ_SEEDS").is_some() {
        write_seeds();
    }
    let mut report = Vec::new();
    for (target, run) in TARGETS {
        let corpus = files(&fuzz_dir().join("corpus").join(target));
        assert!(
            !corpus.is_empty(),
            "fuzz/corpus/{target} is empty: the target would start from nothing"
        );
        let regressions = files(&fuzz_dir().join("regressions").join(target));
        let mut accepted = 0;
        for path in corpus.iter().chain(&regressions) {
            let data = std::fs::read(path).unwrap();
            let started = tokio::time::Instant::now();
            let outcome = std::panic::catch_unwind(|| run(&data));
            let took = started.elapsed();
            match outcome {
                Ok(ok) => accepted += usize::from(ok),
                Err(_) => panic!("{target}: {} panics", path.display()),
            }
            assert!(
                took < PER_INPUT,
                "{target}: {} took {took:?} (more than {PER_INPUT:?})",
                path.display()
            );
        }
        report.push(format!(
            "{target}: {} corpus inputs ({accepted} accepted), {} regressions",
            corpus.len(),
            regressions.len()
        ));
    }
    eprintln!("{}", report.join("\n"));
}

/// The seeds made from code rather than written by hand.
fn write_seeds() {
    let write = |target: &str, name: &str, data: &[u8]| {
        let dir = fuzz_dir().join("corpus").join(target);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("seed-{name}")), data).unwrap();
    };
    // A discovery response as pilot sends it: a service with endpoints, subsets and routes.
    let mut svc = mesh_proxy::testing::service(
        "shipping.default.svc.cluster.local",
        "10.96.0.12",
        8080,
        "http",
    )
    .endpoint("10.244.0.5:8080".parse().unwrap(), &[("version", "v1")])
    .endpoint("10.244.0.6:8080".parse().unwrap(), &[("version", "v2")])
    .build();
    svc.subsets = vec![mesh_api::proto::state::v1::Subset {
        name: "v1".into(),
        labels: [("version".to_string(), "v1".to_string())].into(),
        traffic_policy: None,
    }];
    let state = mesh_api::proto::state::v1::ProxyState {
        services: vec![svc],
        ..Default::default()
    };
    write("state", "service", &state.encode_to_vec());
    // Tokens of the target's issuer (the fixed RSA key), and another's.
    let issuer = mesh_proxy::testing::jwt::Issuer::new("https://fuzz.test");
    let claims = issuer.claims("alice", "fuzz");
    write(
        "jwt",
        "rs256",
        issuer
            .sign(jsonwebtoken::Algorithm::RS256, &claims)
            .as_bytes(),
    );
    write(
        "jwt",
        "unsigned",
        mesh_proxy::testing::jwt::unsigned(&claims).as_bytes(),
    );
    // A CSR for the target's identity, and one for another.
    let (_, pem) = mesh_ca::testing::csr_for(&["spiffe://cluster.local/ns/default/sa/fuzz"]);
    write("csr", "workload", pem.as_bytes());
    let (_, pem) = mesh_ca::testing::csr_for(&["spiffe://cluster.local/ns/default/sa/other"]);
    write("csr", "other-identity", pem.as_bytes());
}
