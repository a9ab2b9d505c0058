//! `meshctl verify` against scripted API servers of a healthy and of a broken cluster, through
//! the real binary and a kubeconfig: before an install (`--pre`: the API, its version, the
//! permissions, CRDs owned elsewhere) and of an installed mesh (the control plane, the
//! webhook's caBundle, the root's expiry, the proxies through pilot's /debug/syncz by the
//! service proxy, the namespaces labelled), each ✔ or ✘ with what to do, and the exit code.

#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::process::Command;

use hyper::StatusCode;
use serde_json::{Value, json};

fn root_pem() -> String {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.not_after = rcgen::date_time_ymd(2099, 1, 1);
    params.self_signed(&key).unwrap().pem()
}

fn answer(healthy: bool, root: &str, method: &str, path: &str) -> (StatusCode, Value) {
    let not_found = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404});
    match (method, path) {
        ("GET", "/version") => (
            StatusCode::OK,
            json!({
                "major": "1", "minor": if healthy { "31" } else { "27" },
                "gitVersion": if healthy { "v1.31.2" } else { "v1.27.9" },
                "gitCommit": "", "gitTreeState": "", "buildDate": "", "goVersion": "", "compiler": "", "platform": "linux/amd64",
            }),
        ),
        ("POST", "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews") => (
            StatusCode::CREATED,
            json!({
                "apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
                "spec": {}, "status": {"allowed": healthy, "reason": if healthy { "" } else { "RBAC: not cluster-admin" }},
            }),
        ),
        ("GET", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions") => {
            let items = if healthy {
                json!([])
            } else {
                json!([{
                    "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
                    "metadata": {"name": "virtualservices.networking.istio.io", "labels": {"app": "istio-pilot"}},
                    "spec": {"group": "networking.istio.io", "names": {"kind": "VirtualService", "plural": "virtualservices"}, "scope": "Namespaced", "versions": []},
                }])
            };
            (
                StatusCode::OK,
                json!({"apiVersion": "v1", "kind": "List", "metadata": {}, "items": items}),
            )
        }
        ("GET", "/apis/apps/v1/namespaces/mesh-system/deployments/mesh-pilot") => (
            StatusCode::OK,
            json!({
                "apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": "mesh-pilot", "namespace": "mesh-system"},
                "spec": {"replicas": 1, "selector": {}, "template": {}},
                "status": {"availableReplicas": i32::from(healthy)},
            }),
        ),
        ("GET", "/apis/apps/v1/namespaces/istio-system/deployments/istio-ingressgateway") => (
            StatusCode::OK,
            json!({
                "apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": "istio-ingressgateway", "namespace": "istio-system"},
                "spec": {"replicas": 1, "selector": {}, "template": {}},
                "status": {"availableReplicas": i32::from(healthy)},
            }),
        ),
        (
            "GET",
            "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/mesh-sidecar-injector",
        ) => {
            let mut hook = json!({"name": "namespace.sidecar-injector.mesh.dev", "admissionReviewVersions": ["v1"], "sideEffects": "None", "clientConfig": {}});
            if healthy {
                hook["clientConfig"]["caBundle"] = json!("LS0tLS1CRUdJTg==");
            }
            (
                StatusCode::OK,
                json!({"apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration", "metadata": {"name": "mesh-sidecar-injector"}, "webhooks": [hook]}),
            )
        }
        ("GET", "/api/v1/namespaces/mesh-system/configmaps/istio-ca-root-cert") if healthy => (
            StatusCode::OK,
            json!({
                "apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "istio-ca-root-cert", "namespace": "mesh-system"},
                "data": {"root-cert.pem": root},
            }),
        ),
        ("GET", "/api/v1/namespaces/mesh-system/services/mesh-pilot:15014/proxy/debug/syncz") => (
            StatusCode::OK,
            json!({
                "generation": 3,
                "pilot_version": env!("CARGO_PKG_VERSION"),
                "proxies": [
                    {"node": {"id": "shipping-v1-0.shop", "namespace": "shop", "proxy_version": env!("CARGO_PKG_VERSION")}, "connected": true, "sent_version": 3, "acked_version": 3, "nack": null, "services": 4},
                    {"node": {"id": "order-v1-0.shop", "namespace": "shop", "proxy_version": if healthy { env!("CARGO_PKG_VERSION") } else { "0.0.9" }}, "connected": true, "sent_version": 3, "acked_version": if healthy { 3 } else { 2 }, "nack": if healthy { Value::Null } else { json!("state: bad regex") }, "services": 4},
                ],
            }),
        ),
        ("GET", "/api/v1/namespaces/mesh-system/services/https:mesh-pilot:443/proxy/ready") => {
            if healthy {
                (StatusCode::OK, json!("ready"))
            } else {
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    json!({
                        "kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 503,
                        "message": "error trying to reach service: dial tcp 10.244.0.7:15017: connect: connection refused",
                    }),
                )
            }
        }
        ("GET", "/api/v1/namespaces") => {
            let labels = if healthy {
                json!({"istio-injection": "enabled"})
            } else {
                json!({})
            };
            (
                StatusCode::OK,
                json!({"apiVersion": "v1", "kind": "NamespaceList", "metadata": {}, "items": [
                    {"metadata": {"name": "shop", "labels": labels}},
                    {"metadata": {"name": "kube-system"}},
                ]}),
            )
        }
        _ => (StatusCode::NOT_FOUND, not_found),
    }
}

/// A scripted API server of a healthy (or broken) cluster, and a kubeconfig naming it.
fn cluster(healthy: bool, dir: &std::path::Path) -> std::path::PathBuf {
    let root = root_pem();
    let url = common::api_server(move |r| answer(healthy, &root, r.method, r.path));
    common::kubeconfig(dir, &url)
}

fn verify(kubeconfig: &std::path::Path, args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_meshctl"))
        .arg("verify")
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .env_remove("KUBERNETES_SERVICE_HOST")
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn a_healthy_cluster_passes_every_check() {
    let dir = tempfile::tempdir().unwrap();
    let kc = cluster(true, dir.path());
    let (code, text) = verify(&kc, &["--pre"]);
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("✔ Kubernetes version supported: 1.31"),
        "{text}"
    );
    assert!(
        text.contains("✔ can create mutatingwebhookconfigurations: allowed"),
        "{text}"
    );
    let (code, text) = verify(&kc, &[]);
    assert_eq!(code, Some(0), "{text}");
    for line in [
        "✔ control plane ready: mesh-pilot 1/1 available",
        "✔ ingress gateway ready: istio-ingressgateway 1/1 available",
        "✔ injector webhook configured: 1 webhooks with a caBundle",
        "✔ injector webhook answers over HTTPS: ready",
        "✔ proxies connected and in sync: 2 connected, all in sync",
        concat!(
            "✔ data plane and control plane versions: control plane ",
            env!("CARGO_PKG_VERSION"),
            ", proxies 2 at ",
            env!("CARGO_PKG_VERSION")
        ),
        "✔ namespaces labelled for injection: shop",
    ] {
        assert!(text.contains(line), "{line} in:\n{text}");
    }
    assert!(
        text.contains("✔ mesh root certificate valid:") && text.contains("days to expiry"),
        "{text}"
    );
    let (_, json) = verify(&kc, &["-o", "json"]);
    let checks: Vec<Value> = serde_json::from_str(&json).unwrap();
    assert!(checks.iter().all(|c| c["ok"] == true), "{json}");
}

#[test]
fn a_broken_cluster_fails_with_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let kc = cluster(false, dir.path());
    let (code, text) = verify(&kc, &["--pre"]);
    assert_eq!(code, Some(1), "{text}");
    for line in [
        "✘ Kubernetes version supported: 1.27",
        "--set injector.nativeSidecar=false",
        "✘ can create namespaces: RBAC: not cluster-admin",
        "✘ no conflicting CRDs: installed by something else: virtualservices.networking.istio.io",
    ] {
        assert!(text.contains(line), "{line} in:\n{text}");
    }
    let (code, text) = verify(&kc, &[]);
    assert_eq!(code, Some(1), "{text}");
    for line in [
        "✘ control plane ready: mesh-pilot 0/1 available",
        "✘ ingress gateway ready: istio-ingressgateway 0/1 available",
        "kubectl -n istio-system logs deploy/istio-ingressgateway",
        "kubectl -n mesh-system logs deploy/mesh-pilot",
        "✘ injector webhook configured: 1 of 1 webhooks without a caBundle",
        "✘ injector webhook answers over HTTPS:",
        "pods cannot be created while it does not answer",
        "✘ mesh root certificate valid: no ConfigMap istio-ca-root-cert in mesh-system",
        "✘ proxies connected and in sync: order-v1-0.shop refused a push: state: bad regex",
        "order-v1-0.shop: 0.0.9 is too old for the control plane's",
        "→ restart those workloads so they are injected with the control plane's proxy: kubectl rollout restart deployment -n shop",
        "✘ namespaces labelled for injection: none",
        "→ kubectl label namespace default istio-injection=enabled",
    ] {
        assert!(text.contains(line), "{line} in:\n{text}");
    }
}

#[test]
fn no_cluster_is_one_failed_check_not_a_crash() {
    let (code, text) = verify(std::path::Path::new("/nonexistent/kubeconfig"), &[]);
    assert_eq!(code, Some(1));
    assert!(text.contains("✘ Kubernetes API reachable"), "{text}");
}

#[test]
fn version_skew_allows_one_minor_release_behind_and_never_ahead() {
    use meshctl::verify::supported_skew;
    assert_eq!(supported_skew("1.4.2", "1.4.0"), Ok(()));
    assert_eq!(supported_skew("1.4.2", "1.3.7"), Ok(()));
    assert_eq!(supported_skew("v1.4.0", "1.4.0-rc.1"), Ok(()));
    let too_old = supported_skew("1.4.2", "1.2.0").unwrap_err();
    assert!(too_old.contains("supported: 1.3.x and 1.4.x"), "{too_old}");
    let ahead = supported_skew("1.4.2", "1.5.0").unwrap_err();
    assert!(
        ahead.contains("newer than the control plane's 1.4.2"),
        "{ahead}"
    );
    assert!(supported_skew("1.4.2", "0.9.0").is_err());
    // Before 1.0 a minor release may change the protocol: only the same minor is supported.
    assert_eq!(supported_skew("0.2.3", "0.2.0"), Ok(()));
    let pre = supported_skew("0.2.3", "0.1.0").unwrap_err();
    assert!(pre.contains("supported: 0.2.x"), "{pre}");
    let silent = supported_skew("0.2.3", "").unwrap_err();
    assert!(silent.contains("reports no version"), "{silent}");
    assert!(supported_skew("0.2.3", "latest").is_err());
}
