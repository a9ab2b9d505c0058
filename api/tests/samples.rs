//! What the repository ships and generates stays in step with its sources: the order-app sample
//! with the seed scenario, and `manifests/crds/` with the Rust types.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use mesh_api::load::{self, LoadReport};
use mesh_api::{Resource, crd};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn resources(report: &LoadReport) -> Vec<(String, String, Resource)> {
    let mut all: Vec<_> = report
        .documents
        .iter()
        .map(|d| {
            (
                d.resource.kind().name().to_string(),
                d.resource.display_name(),
                d.resource.clone(),
            )
        })
        .collect();
    all.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
    all
}

#[test]
fn shipped_sample_is_valid() {
    let sample = load::load_path(&repo().join("manifests/samples/order-app")).expect("sample");
    assert!(
        sample.is_valid(),
        "{:?}",
        sample.errors().collect::<Vec<_>>()
    );
    assert_eq!(sample.documents.len(), 18);
}

#[test]
#[ignore = "needs shared testdata"]
fn shipped_sample_is_the_seed_scenario() {
    let sample = load::load_path(&repo().join("manifests/samples/order-app")).expect("sample");
    let seeds = mesh_api::testing::shared_testdata().join("seeds");
    let seeds = load::load_path(&seeds).expect("seeds");
    assert_eq!(
        resources(&sample),
        resources(&seeds),
        "manifests/samples/order-app differs from the seeds"
    );
}

#[test]
fn checked_in_crds_are_current() {
    let dir = repo().join("manifests/crds");
    let fix = "regenerate with: cargo run -p meshctl -- manifest crds --out-dir manifests/crds";
    let mut expected = BTreeSet::new();
    for (kind, def) in crd::all() {
        let name = crd::file_name(kind);
        let want = crd::to_yaml(&def).expect("renders");
        let have = std::fs::read_to_string(dir.join(&name)).unwrap_or_default();
        assert!(
            have == want,
            "manifests/crds/{name} is stale or missing: {fix}"
        );
        expected.insert(name);
    }
    let present: BTreeSet<String> = std::fs::read_dir(&dir)
        .expect("manifests/crds exists")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        present, expected,
        "manifests/crds holds files no kind generates: {fix}"
    );
}

#[test]
fn crds_serve_every_version_with_the_newest_stored() {
    for (kind, def) in crd::all() {
        let versions: Vec<(&str, bool, bool)> = def
            .spec
            .versions
            .iter()
            .map(|v| (v.name.as_str(), v.served, v.storage))
            .collect();
        let want: Vec<(&str, bool, bool)> = kind
            .versions()
            .iter()
            .map(|v| (*v, true, *v == kind.versions()[0]))
            .collect();
        if kind.is_istio() {
            assert_eq!(kind.versions()[0], "v1", "{kind}: Istio stores v1");
        }
        assert_eq!(versions, want, "{kind}");
        assert_eq!(def.spec.group, kind.group());
        assert_eq!(def.spec.names.kind, kind.name());
        assert_eq!(def.spec.scope, "Namespaced");
    }
    // Istio's eleven (with Telemetry), and the mesh's own RateLimitPolicy.
    assert_eq!(crd::all().len(), 12);
}
