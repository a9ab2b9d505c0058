//! `meshctl install` and `meshctl uninstall` as a user runs them, against a scripted API server
//! named in a kubeconfig: the demo profile's objects applied in order by server-side apply
//! under meshctl's field manager, the control plane waited for until its Deployment reports
//! it available, then deleted in reverse order, the CRDs only with `--purge`.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::convert::Infallible;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;

/// (method, path, query, content type) of each request.
type Seen = Arc<Mutex<Vec<(String, String, String, String)>>>;

/// Applies echo their object; the Deployment is available from its third read; deletes of
/// the Role answer 404 (already gone).
fn serve(listener: std::net::TcpListener) -> Seen {
    let seen: Seen = Arc::default();
    let log = seen.clone();
    let reads = Arc::new(AtomicUsize::new(0));
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let l = TcpListener::from_std(listener).unwrap();
            loop {
                let (c, _) = l.accept().await.unwrap();
                let log = log.clone();
                let reads = reads.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                        let log = log.clone();
                        let reads = reads.clone();
                        async move {
                            let method = req.method().to_string();
                            let path = req.uri().path().to_string();
                            let query = req.uri().query().unwrap_or("").to_string();
                            let ctype = req
                                .headers()
                                .get("content-type")
                                .map(|v| v.to_str().unwrap().to_string())
                                .unwrap_or_default();
                            let body = req.into_body().collect().await.unwrap().to_bytes();
                            let value: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                            log.lock().unwrap().push((method.clone(), path.clone(), query, ctype));
                            let (status, answer) = match method.as_str() {
                                "PATCH" => (StatusCode::OK, value),
                                "GET" if path.ends_with("/deployments/mesh-pilot") => {
                                    let n = reads.fetch_add(1, Ordering::SeqCst);
                                    let available = i32::from(n >= 2);
                                    (StatusCode::OK, json!({
                                        "apiVersion": "apps/v1", "kind": "Deployment",
                                        "metadata": {"name": "mesh-pilot", "namespace": "mesh-system"},
                                        "spec": {"replicas": 1, "selector": {"matchLabels": {"a": "b"}}, "template": {}},
                                        "status": {"availableReplicas": available},
                                    }))
                                }
                                "DELETE" if path.contains("/roles/") => (StatusCode::NOT_FOUND, json!({
                                    "kind": "Status", "apiVersion": "v1", "status": "Failure",
                                    "reason": "NotFound", "code": 404, "message": "not found",
                                })),
                                "DELETE" => (StatusCode::OK, json!({"kind": "Status", "apiVersion": "v1", "status": "Success"})),
                                _ => (StatusCode::NOT_FOUND, json!({"kind": "Status", "code": 404})),
                            };
                            let mut r = Response::new(Full::new(Bytes::from(answer.to_string())));
                            *r.status_mut() = status;
                            Ok::<_, Infallible>(r)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(c), svc)
                        .await;
                });
            }
        });
    });
    seen
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
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = serve(listener);
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: scripted\n  cluster: {{server: \"http://{addr}\"}}\nusers:\n- name: admin\n  user: {{token: t}}\ncontexts:\n- name: scripted\n  context: {{cluster: scripted, user: admin}}\ncurrent-context: scripted\n"
        ),
    )
    .unwrap();

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
    assert!(
        applies[1]
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

    // Uninstall: reverse order, the CRDs kept; a Role already gone is no error.
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
            .any(|p| p.contains("customresourcedefinitions"))
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
