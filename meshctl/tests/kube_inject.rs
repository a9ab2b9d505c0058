//! `meshctl kube-inject` as a user runs it, and what it writes run by the real `mesh-proxy`:
//! the capture init container's arguments and the proxy's (with the values Kubernetes
//! substitutes for `$(VAR)`), the application probes, and the postStart hook's `wait`.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

use mesh_injector::template::inject_manifests;
use mesh_injector::{Decision, InjectConfig};
use serde_json::Value;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../injector/tests/fixtures/{name}"))
}

fn args_of(container: &Value) -> Vec<String> {
    container["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect()
}

#[test]
fn kube_inject_writes_what_mesh_proxy_runs() {
    let out = Command::new(env!("CARGO_BIN_EXE_meshctl"))
        .args([
            "kube-inject",
            "-f",
            fixture("probes.yaml").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("Deployment shop/inventory: injected"),
        "{stderr}"
    );
    let yaml = String::from_utf8(out.stdout).unwrap();
    let (docs, outcomes) = inject_manifests(&yaml, &InjectConfig::default()).unwrap();
    assert_eq!(
        outcomes[0].decision,
        Some(Decision::Skip("already injected")),
        "a second pass changes nothing"
    );
    let spec = &docs[0]["spec"]["template"]["spec"];
    let proxy = meshctl::local::find_binary("mesh-proxy", "mesh-proxy").unwrap();

    // istio-init: the capture rules it would write (printed, not applied).
    let mut init = args_of(&spec["initContainers"][0]);
    init.push("--dry-run".into());
    let run = Command::new(&proxy).args(&init).output().unwrap();
    let rules = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "{init:?}: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(
        rules.contains("MESH_INBOUND") && rules.contains("--dport 5432"),
        "{rules}"
    );

    // istio-proxy: its flags, with the pod's values, and the application probes.
    let container = &spec["initContainers"][1];
    let pod_values = [
        ("$(POD_NAMESPACE)", "shop"),
        ("$(SERVICE_ACCOUNT)", "inventory"),
        ("$(POD_NAME)", "inventory-6f7d9-abcde"),
        ("$(INSTANCE_IP)", "10.0.0.5"),
    ];
    let mut run_args: Vec<String> = args_of(container)
        .into_iter()
        .map(|a| {
            pod_values
                .iter()
                .fold(a, |a, (var, value)| a.replace(var, value))
        })
        .collect();
    assert!(
        !run_args.iter().any(|a| a.contains("$(")),
        "every variable is one the proxy container defines: {run_args:?}"
    );
    run_args.push("--dry-run".into());
    let probers = container["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "ISTIO_KUBE_APP_PROBERS")
        .unwrap()["value"]
        .as_str()
        .unwrap()
        .to_string();
    let run = Command::new(&proxy)
        .args(&run_args)
        .env("ISTIO_KUBE_APP_PROBERS", probers)
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{run_args:?}: {}",
        String::from_utf8_lossy(&run.stderr)
    );

    // Without native sidecars, the postStart hook's `mesh-proxy wait` (here against nothing,
    // so it gives up at once and says why).
    let out = Command::new(env!("CARGO_BIN_EXE_meshctl"))
        .args([
            "kube-inject",
            "--native-sidecar",
            "false",
            "-f",
            fixture("job.yaml").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let (docs, _) = inject_manifests(
        &String::from_utf8(out.stdout).unwrap(),
        &InjectConfig::default(),
    )
    .unwrap();
    let hook = &docs[0]["spec"]["template"]["spec"]["containers"][0]["lifecycle"]["postStart"]["exec"]
        ["command"];
    let hook: Vec<&str> = hook
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(hook[..2], ["mesh-proxy", "wait"]);
    // The hook as written, given no time.
    let mut args: Vec<&str> = hook[1..].to_vec();
    let at = args.iter().position(|a| *a == "--timeout-secs").unwrap();
    args[at + 1] = "0";
    let wait = Command::new(&proxy)
        .args(&args)
        .args(["--address", "127.0.0.1:9"])
        .output()
        .unwrap();
    assert_eq!(wait.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&wait.stderr).contains("was not ready within"),
        "{}",
        String::from_utf8_lossy(&wait.stderr)
    );
}

#[test]
fn kube_inject_names_the_file_it_cannot_read() {
    let out = Command::new(env!("CARGO_BIN_EXE_meshctl"))
        .args(["kube-inject", "-f", "/nonexistent/app.yaml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("/nonexistent/app.yaml"), "{stderr}");
}
