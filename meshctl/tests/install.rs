//! `meshctl install` and `meshctl uninstall` as a user runs them, against a scripted API server
//! named in a kubeconfig: the demo profile's objects applied in order by server-side apply
//! under meshctl's field manager, the control plane waited for until its Deployment reports
//! it available, then deleted in reverse order, the CRDs only with `--purge`.

#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use hyper::StatusCode;
use serde_json::json;

/// (method, path, query, content type) of each request.
type Log = Arc<Mutex<Vec<(String, String, String, String)>>>;

/// Applies echo their object; the Deployment is available from its third read; deletes of
/// the Role answer 404 (already gone).
fn serve() -> (String, Log) {
    let log: Log = Arc::default();
    let seen = log.clone();
    let reads = AtomicUsize::new(0);
    let url = common::api_server(move |r| {
        seen.lock().unwrap().push((
            r.method.into(),
            r.path.into(),
            r.query.into(),
            r.content_type.into(),
        ));
        match r.method {
            "PATCH" => (StatusCode::OK, r.body),
            "GET" if r.path.ends_with("/deployments/mesh-pilot") => {
                let n = reads.fetch_add(1, Ordering::SeqCst);
                let available = i32::from(n >= 2);
                (
                    StatusCode::OK,
                    json!({
                        "apiVersion": "apps/v1", "kind": "Deployment",
                        "metadata": {"name": "mesh-pilot", "namespace": "mesh-system"},
                        "spec": {"replicas": 1, "selector": {"matchLabels": {"a": "b"}}, "template": {}},
                        "status": {"availableReplicas": available},
                    }),
                )
            }
            "DELETE" if r.path.contains("/roles/") => (StatusCode::NOT_FOUND, common::not_found()),
            "DELETE" => (
                StatusCode::OK,
                json!({"kind": "Status", "apiVersion": "v1", "status": "Success"}),
            ),
            _ => (StatusCode::NOT_FOUND, common::not_found()),
        }
    });
    (url, log)
}

fn meshctl(kubeconfig: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_meshctl"))
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .env_remove("KUBERNETES_SERVICE_HOST")
        .output()
        .unwrap()
}

#[test]
fn install_applies_in_order_waits_and_uninstall_deletes_in_reverse() {
    let (url, seen) = serve();
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = common::kubeconfig(dir.path(), &url);

    let out = meshctl(
        &kubeconfig,
        &["install", "--profile", "demo", "--timeout-secs", "30"],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("mesh-pilot: 0/1 available"), "{stderr}");
    assert!(stderr.contains("mesh-pilot: 1/1 available"), "{stderr}");
    assert!(stderr.contains("istio-injection=enabled"), "{stderr}");
    let applies: Vec<(String, String, String, String)> = seen
        .lock()
        .unwrap()
        .iter()
        .filter(|(m, ..)| m == "PATCH")
        .cloned()
        .collect();
    let docs = meshctl::profile::render(&meshctl::profile::values("demo", &[]).unwrap());
    assert_eq!(applies.len(), docs.len(), "every object applied once");
    assert_eq!(applies[0].1, "/api/v1/namespaces/mesh-system");
    // The root namespace, where the seed's mesh-wide PeerAuthentication goes.
    assert_eq!(applies[1].1, "/api/v1/namespaces/istio-system");
    assert!(
        applies[2]
            .1
            .starts_with("/apis/apiextensions.k8s.io/v1/customresourcedefinitions/")
    );
    assert_eq!(
        applies.last().unwrap().1,
        "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/mesh-sidecar-injector",
        "the webhook last, once what it calls exists"
    );
    for (_, path, query, ctype) in &applies {
        assert!(
            query.contains("fieldManager=meshctl") && query.contains("force=true"),
            "{path}?{query}"
        );
        assert_eq!(ctype, "application/apply-patch+yaml");
    }
    assert!(
        applies
            .iter()
            .any(|(_, p, ..)| p == "/apis/apps/v1/namespaces/mesh-system/deployments/mesh-pilot")
    );

    // Uninstall: reverse order, the CRDs and the root namespace kept; a Role already gone is
    // no error.
    seen.lock().unwrap().clear();
    let out = meshctl(&kubeconfig, &["uninstall", "--profile", "demo"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let deletes: Vec<String> = seen
        .lock()
        .unwrap()
        .iter()
        .filter(|(m, ..)| m == "DELETE")
        .map(|(_, p, ..)| p.clone())
        .collect();
    assert!(deletes[0].ends_with("/mutatingwebhookconfigurations/mesh-sidecar-injector"));
    assert_eq!(deletes.last().unwrap(), "/api/v1/namespaces/mesh-system");
    assert!(
        !deletes
            .iter()
            .any(|p| p.contains("customresourcedefinitions") || p.ends_with("/istio-system"))
    );
    assert!(stderr.contains("--purge removes them too"), "{stderr}");
    seen.lock().unwrap().clear();
    let out = meshctl(&kubeconfig, &["uninstall", "--profile", "demo", "--purge"]);
    assert!(out.status.success());
    let crds = seen
        .lock()
        .unwrap()
        .iter()
        .filter(|(m, p, ..)| m == "DELETE" && p.contains("customresourcedefinitions"))
        .count();
    assert_eq!(crds, mesh_api::crd::all().len());
    assert!(
        seen.lock()
            .unwrap()
            .iter()
            .any(|(m, p, ..)| m == "DELETE" && p == "/api/v1/namespaces/istio-system")
    );
}

#[test]
fn install_without_a_cluster_says_how_to_point_at_one() {
    let out = meshctl(
        std::path::Path::new("/nonexistent/kubeconfig"),
        &["install", "--profile", "demo"],
    );
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot reach Kubernetes"), "{stderr}");
}

/// The kind run is for public CI (no Docker here): its script, workflow and images are at least
/// well formed, and name what exists.
#[test]
fn the_kind_run_for_public_ci_is_well_formed() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let script = root.join("scripts/kind-e2e.sh");
    let syntax = Command::new("bash")
        .arg("-n")
        .arg(&script)
        .output()
        .unwrap();
    assert!(
        syntax.status.success(),
        "{}",
        String::from_utf8_lossy(&syntax.stderr)
    );
    let text = std::fs::read_to_string(&script).unwrap();
    for needed in [
        "meshctl install --profile demo",
        "verify --pre",
        "istio-injection=enabled",
    ] {
        assert!(
            text.contains(needed) || text.contains(&needed.replace("meshctl ", "$MESHCTL ")),
            "{needed}"
        );
    }
    // It runs the suite through the harness's Kubernetes backend, on test files that exist.
    assert!(text.contains("MESH_E2E_BACKEND=kube"));
    for test in ["scenarios", "security"] {
        assert!(text.contains(&format!("--test {test}")), "{test}");
        assert!(root.join(format!("e2e/tests/{test}.rs")).exists(), "{test}");
    }
    let workflow = std::fs::read_to_string(root.join(".github/workflows/kind-e2e.yml")).unwrap();
    let parsed = mesh_injector::template::from_yaml(&workflow).unwrap();
    let steps = parsed["jobs"]["kind-e2e"]["steps"].as_array().unwrap();
    assert!(
        steps.iter().any(|s| s["run"] == "make kind-e2e"),
        "{parsed}"
    );
    let makefile = std::fs::read_to_string(root.join("Makefile")).unwrap();
    assert!(makefile.contains("kind-e2e:") && makefile.contains("scripts/kind-e2e.sh"));
    let dockerfile = std::fs::read_to_string(root.join("docker/Dockerfile")).unwrap();
    for stage in ["AS proxy", "AS pilot", "AS echo"] {
        assert!(dockerfile.contains(stage), "{stage}");
    }
    // The images the profile and the injector name are the ones built.
    let v = meshctl::profile::values("demo", &[]).unwrap();
    assert_eq!(
        meshctl::profile::inject_config(&v).image,
        format!("mesh/proxy:{}", v.tag)
    );
    assert!(text.contains("mesh/$target:$TAG") && makefile.contains("mesh/$$target:$(TAG)"));
}
