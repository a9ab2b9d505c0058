//! Istio's PeerAuthentication precedence, on YAML as users write it (and the seed's policy).

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::collections::BTreeMap;

use mesh_api::Resource;
use mesh_api::load;
use mesh_api::proto::enum_serde::ProtoEnum;
use mesh_api::proto::state::v1::PeerMode;
use mesh_api::security::PeerAuthentication;
use mesh_pilot::model::peer_authentication::{DEFAULT_ROOT_NAMESPACE, effective};

fn policies(yaml: &str) -> Vec<PeerAuthentication> {
    let report = load::load_str(yaml, None);
    assert!(
        report.is_valid(),
        "{:?}",
        report.errors().collect::<Vec<_>>()
    );
    report
        .documents
        .into_iter()
        .filter_map(|d| match d.resource {
            Resource::PeerAuthentication(p) => Some(*p),
            _ => None,
        })
        .collect()
}

fn pa(ns: &str, name: &str, body: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n{body}---\n"
    )
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
        .collect()
}

fn mode(all: &[PeerAuthentication], ns: &str, l: &[(&str, &str)]) -> (String, Vec<(u32, String)>) {
    let e = effective(all, DEFAULT_ROOT_NAMESPACE, ns, &labels(l));
    let name = |m: i32| PeerMode::try_from(m).unwrap().short_name().to_string();
    let mut ports: Vec<(u32, String)> = e
        .port_modes
        .into_iter()
        .map(|(p, m)| (p, name(m)))
        .collect();
    ports.sort();
    (name(e.mode), ports)
}

#[test]
fn nothing_set_is_permissive() {
    assert_eq!(mode(&[], "default", &[]).0, "PERMISSIVE");
}

#[test]
fn the_seed_mesh_policy_makes_everything_strict() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../manifests/samples/order-app/mtls-strict.yaml"
    ))
    .unwrap();
    let all = policies(&text);
    assert_eq!(mode(&all, "default", &[("app", "order")]).0, "STRICT");
    assert_eq!(mode(&all, "shop", &[]).0, "STRICT");
}

#[test]
fn narrower_scopes_win_and_unset_inherits() {
    let yaml = [
        pa("istio-system", "default", "  mtls: {mode: STRICT}\n"),
        pa("legacy", "default", "  mtls: {mode: PERMISSIVE}\n"),
        pa("legacy", "db", "  selector: {matchLabels: {app: db}}\n  mtls: {mode: UNSET}\n  portLevelMtls:\n    5432: {mode: DISABLE}\n    9000: {}\n"),
        pa("shop", "cart", "  selector: {matchLabels: {app: cart}}\n  mtls: {mode: DISABLE}\n"),
    ]
    .concat();
    let all = policies(&yaml);
    assert_eq!(
        mode(&all, "default", &[("app", "order")]).0,
        "STRICT",
        "mesh-wide"
    );
    assert_eq!(
        mode(&all, "legacy", &[("app", "web")]).0,
        "PERMISSIVE",
        "namespace over mesh"
    );
    assert_eq!(
        mode(&all, "legacy", &[("app", "db")]),
        (
            "PERMISSIVE".to_string(),
            vec![
                (5432, "DISABLE".to_string()),
                (9000, "PERMISSIVE".to_string())
            ]
        ),
        "the workload inherits the namespace's mode; per-port settings win, unset ports inherit"
    );
    assert_eq!(
        mode(&all, "shop", &[("app", "cart")]).0,
        "DISABLE",
        "workload over mesh"
    );
    assert_eq!(
        mode(&all, "shop", &[("app", "other")]).0,
        "STRICT",
        "a selector that does not match does not apply"
    );
}

#[test]
fn the_oldest_policy_of_a_level_wins() {
    let yaml = [
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: b-newer, namespace: shop, creationTimestamp: \"2026-02-01T00:00:00Z\"}\nspec: {mtls: {mode: DISABLE}}\n---\n",
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: z-older, namespace: shop, creationTimestamp: \"2026-01-01T00:00:00Z\"}\nspec: {mtls: {mode: STRICT}}\n---\n",
    ]
    .concat();
    assert_eq!(mode(&policies(&yaml), "shop", &[]).0, "STRICT");
}
