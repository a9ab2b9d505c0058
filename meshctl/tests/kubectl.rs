//! The real `kubectl` against a scripted API server (discovery, objects kept in memory), for
//! the commands the docs give: `kubectl label namespace default istio-injection=enabled`, and
//! `meshctl manifest generate --profile demo | kubectl apply --server-side -f -`. The scripted
//! server serves no OpenAPI (kubectl wants it as protobuf to validate on its side), so apply
//! runs with `--validate=false`; a real API server validates against the CRDs' schemas
//! itself. Needs kubectl (`scripts/test.sh` installs Debian's `kubernetes-client` when there is
//! none), so it is `#[ignore = "needs kubectl"]` and runs with `--run-ignored all`.

#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use hyper::StatusCode;
use serde_json::{Value, json};

/// A resource served: (plural, kind, namespaced).
type Served = (&'static str, &'static str, bool);

/// The resources served, by group/version.
const RESOURCES: &[(&str, &[Served])] = &[
    (
        "v1",
        &[
            ("namespaces", "Namespace", false),
            ("serviceaccounts", "ServiceAccount", true),
            ("configmaps", "ConfigMap", true),
            ("secrets", "Secret", true),
            ("services", "Service", true),
        ],
    ),
    (
        "apiextensions.k8s.io/v1",
        &[(
            "customresourcedefinitions",
            "CustomResourceDefinition",
            false,
        )],
    ),
    (
        "rbac.authorization.k8s.io/v1",
        &[
            ("clusterroles", "ClusterRole", false),
            ("clusterrolebindings", "ClusterRoleBinding", false),
            ("roles", "Role", true),
            ("rolebindings", "RoleBinding", true),
        ],
    ),
    ("apps/v1", &[("deployments", "Deployment", true)]),
    (
        "admissionregistration.k8s.io/v1",
        &[(
            "mutatingwebhookconfigurations",
            "MutatingWebhookConfiguration",
            false,
        )],
    ),
];

fn resource_list(gv: &str, list: &[Served]) -> Value {
    json!({
        "kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv,
        "resources": list.iter().map(|(plural, kind, namespaced)| json!({
            "name": plural, "singularName": kind.to_lowercase(), "namespaced": namespaced,
            "kind": kind, "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"],
        })).collect::<Vec<_>>(),
    })
}

/// Objects by path, and the writes seen: (method, path and query, content type, body).
#[derive(Default)]
struct Server {
    objects: Mutex<HashMap<String, Value>>,
    writes: Mutex<Vec<(String, String, String, Value)>>,
}

fn answer(
    s: &Server,
    method: &str,
    path: &str,
    query: &str,
    ctype: &str,
    body: Value,
) -> (StatusCode, Value) {
    let not_found = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404});
    match path {
        "/version" => {
            return (
                StatusCode::OK,
                json!({"major": "1", "minor": "31", "gitVersion": "v1.31.2", "platform": "linux/amd64"}),
            );
        }
        "/api" => {
            return (
                StatusCode::OK,
                json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []}),
            );
        }
        "/apis" => {
            let groups: Vec<Value> = RESOURCES
                .iter()
                .filter_map(|(gv, _)| gv.split_once('/'))
                .map(|(g, v)| json!({"name": g, "versions": [{"groupVersion": format!("{g}/{v}"), "version": v}], "preferredVersion": {"groupVersion": format!("{g}/{v}"), "version": v}}))
                .collect();
            return (
                StatusCode::OK,
                json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}),
            );
        }
        _ => {}
    }
    for (gv, list) in RESOURCES {
        let base = if *gv == "v1" {
            "/api/v1".to_string()
        } else {
            format!("/apis/{gv}")
        };
        if path == base {
            return (StatusCode::OK, resource_list(gv, list));
        }
    }
    if method != "GET" {
        s.writes.lock().unwrap().push((
            method.into(),
            format!("{path}?{query}"),
            ctype.into(),
            body.clone(),
        ));
    }
    let mut objects = s.objects.lock().unwrap();
    match method {
        "GET" => objects
            .get(path)
            .map_or((StatusCode::NOT_FOUND, not_found), |o| {
                (StatusCode::OK, o.clone())
            }),
        "POST" => {
            let name = body["metadata"]["name"].as_str().unwrap_or("").to_string();
            objects.insert(format!("{path}/{name}"), body.clone());
            (StatusCode::CREATED, body)
        }
        "PATCH" if ctype.starts_with("application/apply-patch") => {
            objects.insert(path.to_string(), body.clone());
            (StatusCode::OK, body)
        }
        "PATCH" => {
            // A merge of labels (what `kubectl label` sends).
            let Some(obj) = objects.get_mut(path) else {
                return (StatusCode::NOT_FOUND, not_found);
            };
            if let Some(labels) = body["metadata"]["labels"].as_object() {
                let have = obj["metadata"]["labels"]
                    .as_object()
                    .cloned()
                    .unwrap_or_default();
                let mut merged = have;
                merged.extend(labels.clone());
                obj["metadata"]["labels"] = Value::Object(merged);
            }
            (StatusCode::OK, obj.clone())
        }
        _ => (StatusCode::NOT_FOUND, not_found),
    }
}

fn serve() -> (String, Arc<Server>) {
    let server = Arc::new(Server::default());
    server.objects.lock().unwrap().insert(
        "/api/v1/namespaces/default".into(),
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "default", "uid": "u1", "resourceVersion": "1"}}),
    );
    let shared = server.clone();
    let url = common::api_server(move |r| {
        answer(&shared, r.method, r.path, r.query, r.content_type, r.body)
    });
    (url, server)
}

fn kubectl(
    kubeconfig: &std::path::Path,
    args: &[&str],
    stdin: Option<&str>,
) -> std::process::Output {
    let mut child = Command::new("kubectl")
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kubectl is installed (scripts/test.sh installs kubernetes-client)");
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.unwrap_or("").as_bytes()).unwrap();
    drop(input);
    child.wait_with_output().unwrap()
}

#[test]
#[ignore = "needs kubectl"]
fn kubectl_labels_the_namespace_and_applies_the_generated_manifests() {
    let (url, server) = serve();
    let dir = tempfile::tempdir().unwrap();
    let kc = common::kubeconfig(dir.path(), &url);

    let out = kubectl(
        &kc,
        &["label", "namespace", "default", "istio-injection=enabled"],
        None,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ns = server.objects.lock().unwrap()["/api/v1/namespaces/default"].clone();
    assert_eq!(ns["metadata"]["labels"]["istio-injection"], "enabled");

    let generated = Command::new(env!("CARGO_BIN_EXE_meshctl"))
        .args(["manifest", "generate", "--profile", "demo"])
        .output()
        .unwrap();
    assert!(generated.status.success());
    let yaml = String::from_utf8(generated.stdout).unwrap();
    server.writes.lock().unwrap().clear();
    let out = kubectl(
        &kc,
        &["apply", "--server-side", "--validate=false", "-f", "-"],
        Some(&yaml),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("mutatingwebhookconfiguration.admissionregistration.k8s.io/mesh-sidecar-injector serverside-applied"), "{stdout}");
    let docs = meshctl::profile::render(&meshctl::profile::values("demo", &[]).unwrap());
    let writes = server.writes.lock().unwrap().clone();
    assert_eq!(writes.len(), docs.len(), "one server-side apply per object");
    for (method, target, ctype, _) in &writes {
        assert_eq!(method, "PATCH");
        assert!(
            ctype.starts_with("application/apply-patch"),
            "{target}: {ctype}"
        );
        assert!(target.contains("fieldManager=kubectl"), "{target}");
    }
    let objects = server.objects.lock().unwrap();
    let deployment = &objects["/apis/apps/v1/namespaces/mesh-system/deployments/mesh-pilot"];
    assert_eq!(
        deployment["spec"]["template"]["spec"]["containers"][0]["args"][0],
        "serve"
    );
}
