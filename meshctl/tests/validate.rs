//! `meshctl validate` and `meshctl manifest crds` as a user runs them.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn meshctl(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_meshctl"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("meshctl starts");
    let mut input = child.stdin.take().expect("stdin");
    input
        .write_all(stdin.unwrap_or("").as_bytes())
        .expect("write stdin");
    drop(input);
    child.wait_with_output().expect("meshctl ends")
}

fn sample() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/samples/order-app")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn valid_input_exits_zero_with_a_summary() {
    let out = meshctl(&["validate", "-f", sample().to_str().unwrap()], None);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout(&out), "18 resources valid\n");
}

const INVALID: &str = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: reviews\n  namespace: default\nspec:\n  hosts: [reviews]\n  http:\n  - route:\n    - destination: {host: reviews, subset: v1}\n      weight: 90\n    - destination: {host: reviews, subset: v2}\n      weight: 20\n---\napiVersion: v1\nkind: ServiceAccount\nmetadata: {name: ok}\n";

#[test]
fn invalid_input_exits_one_with_one_line_per_error() {
    let out = meshctl(&["validate", "-f", "-"], Some(INVALID));
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stdout(&out),
        "-:13: VirtualService default/reviews: spec.http[0].route[1].weight: weights sum to 110, must be 100\n1 error; 1 resource valid\n"
    );
}

#[test]
fn json_output_lists_resources_and_errors() {
    let out = meshctl(&["validate", "-f", "-", "-o", "json"], Some(INVALID));
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(v["valid"], false);
    assert_eq!(v["resources"][0]["kind"], "ServiceAccount");
    let e = &v["errors"][0];
    assert_eq!(e["kind"], "VirtualService");
    assert_eq!(e["resource"], "default/reviews");
    assert_eq!(e["field"], "spec.http[0].route[1].weight");
    assert_eq!(e["line"], 13);
    assert_eq!(e["file"], "-");
}

#[test]
fn unreadable_input_exits_two() {
    let out = meshctl(&["validate", "-f", "/nonexistent/mesh.yaml"], None);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read /nonexistent/mesh.yaml"));
}

#[test]
fn crds_are_written_to_a_folder() {
    let dir = std::env::temp_dir().join(format!("meshctl-crds-{}", std::process::id()));
    let out = meshctl(
        &["manifest", "crds", "--out-dir", dir.to_str().unwrap()],
        None,
    );
    assert_eq!(out.status.code(), Some(0));
    let written = std::fs::read_dir(&dir).unwrap().count();
    assert_eq!(written, 12, "Istio's eleven kinds and RateLimitPolicy");
    let vs = std::fs::read_to_string(dir.join("virtualservice.networking.istio.io.yaml")).unwrap();
    assert!(vs.contains("kind: CustomResourceDefinition") && vs.contains("name: v1alpha3"));
    let rlp = std::fs::read_to_string(dir.join("ratelimitpolicy.policy.mesh.dev.yaml")).unwrap();
    assert!(rlp.contains("group: policy.mesh.dev") && rlp.contains("name: v1alpha1"));
    std::fs::remove_dir_all(&dir).unwrap();
}
