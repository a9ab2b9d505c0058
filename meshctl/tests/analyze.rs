//! `meshctl analyze` as a user runs it: messages with Istio's codes, the resource and a hint,
//! `-o json`, exit 1 on an Error and 0 when there is only advice, the seed's sample clean, and
//! a cluster (`--kube`, a scripted API server) with files applied over it and its pilot's
//! reports.

#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::process::Command;

fn meshctl(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_meshctl"))
        .args(args)
        .output()
        .unwrap()
}

const GATEWAYS: &str = "\
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: alpha, namespace: shop}
spec:
  selector: {istio: ingressgateway}
  servers: [{port: {number: 80, name: http, protocol: HTTP}, hosts: [\"*.example.com\"]}]
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: beta, namespace: shop}
spec:
  selector: {istio: ingressgateway}
  servers: [{port: {number: 80, name: http, protocol: HTTP}, hosts: [\"shop.example.com\"]}]
";

const SERVICE: &str = "\
apiVersion: v1
kind: Service
metadata: {name: orders, namespace: shop}
spec:
  selector: {app: orders}
  ports: [{name: web, port: 8080}]
";

#[test]
fn errors_fail_the_command_and_advice_does_not() {
    let dir = tempfile::tempdir().unwrap();
    let gateways = dir.path().join("gateways.yaml");
    let service = dir.path().join("service.yaml");
    std::fs::write(&gateways, GATEWAYS).unwrap();
    std::fs::write(&service, SERVICE).unwrap();

    let out = meshctl(&[
        "analyze",
        "-f",
        gateways.to_str().unwrap(),
        "-f",
        service.to_str().unwrap(),
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("Error [IST0145] (Gateway shop/alpha)"),
        "{text}"
    );
    assert!(
        text.contains("Error [IST0145] (Gateway shop/beta)"),
        "{text}"
    );
    assert!(
        text.contains("Info [IST0118] (Service shop/orders)"),
        "{text}"
    );
    assert!(
        text.contains("\n  → "),
        "every message says what to do: {text}"
    );

    // Advice alone: exit 0; as JSON for tools.
    let out = meshctl(&["analyze", "-f", service.to_str().unwrap(), "-o", "json"]);
    assert_eq!(out.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v[0]["code"], "IST0118");
    assert_eq!(v[0]["name"], "PortNameIsNotUnderNamingConvention");
    assert_eq!(v[0]["level"], "Info");
    assert_eq!(v[0]["origin"], "Service shop/orders");

    // One analyzer only; an unknown one is named with the list.
    let out = meshctl(&[
        "analyze",
        "-f",
        gateways.to_str().unwrap(),
        "--only",
        "service.PortNameAnalyzer",
    ]);
    assert_eq!(out.status.code(), Some(0));
    let out = meshctl(&[
        "analyze",
        "-f",
        gateways.to_str().unwrap(),
        "--only",
        "nothing",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("\"nothing\"") && err.contains("gateway.ConflictingGatewayAnalyzer"),
        "{err}"
    );
}

#[test]
fn the_seed_sample_has_no_errors_and_one_warning_about_its_jwt_policy() {
    let sample = Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/samples/order-app");
    let out = meshctl(&["analyze", "-f", sample.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    // The seed's JWT policy is for a booking-service its app.yaml does not deploy (the e2e
    // security suite deploys one): Istio's analyzer says so too.
    let lines: Vec<&str> = text.lines().filter(|l| !l.starts_with("  →")).collect();
    assert_eq!(lines.len(), 1, "{text}");
    assert!(
        lines[0].starts_with(
            "Warning [IST0127] (AuthorizationPolicy default/require-jwt) its selector (app=booking-service) selects no meshed workload"
        ),
        "{text}"
    );
}

/// A cluster's list of `items`.
fn list(items: serde_json::Value) -> serde_json::Value {
    serde_json::json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": "7"}, "items": items})
}

#[test]
fn a_cluster_is_analyzed_with_files_applied_over_it_and_its_proxies_reports() {
    use hyper::StatusCode;
    use serde_json::json;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    // Whether the API server lets the caller list Secrets.
    let secrets_allowed = Arc::new(AtomicBool::new(true));
    let allowed = secrets_allowed.clone();
    let url = common::api_server(move |seen| {
        let ok = |v| (StatusCode::OK, v);
        match seen.path {
            "/api/v1/namespaces" => ok(list(json!([
                {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop", "labels": {"istio-injection": "enabled"}}},
            ]))),
            "/api/v1/services" => ok(list(json!([
                {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "orders", "namespace": "shop"},
                 "spec": {"selector": {"app": "orders"}, "ports": [{"name": "web", "port": 8080}]}},
            ]))),
            "/api/v1/pods" => ok(list(json!([
                {"apiVersion": "v1", "kind": "Pod",
                 "metadata": {"name": "orders-1", "namespace": "shop", "labels": {"app": "orders"},
                              "managedFields": [{"manager": "kubelet"}]},
                 "spec": {"containers": [{"name": "orders", "image": "orders"}, {"name": "istio-proxy", "image": "proxy"}]}},
            ]))),
            "/apis/networking.istio.io/v1/virtualservices" => ok(list(json!([
                {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
                 "metadata": {"name": "orders", "namespace": "shop"},
                 "spec": {"hosts": ["orders.example.com"], "gateways": ["shop-gateway"],
                          "http": [{"route": [{"destination": {"host": "orders"}}]}]}},
            ]))),
            "/apis/networking.istio.io/v1/gateways" => ok(list(json!([
                {"apiVersion": "networking.istio.io/v1", "kind": "Gateway",
                 "metadata": {"name": "tls-edge", "namespace": "shop"},
                 "spec": {"selector": {"app": "orders"},
                          "servers": [{"port": {"number": 8080, "name": "https", "protocol": "HTTPS"},
                                       "hosts": ["secure.example.com"],
                                       "tls": {"mode": "SIMPLE", "credentialName": "shop-cert"}}]}},
            ]))),
            "/api/v1/secrets" if allowed.load(Ordering::SeqCst) => ok(list(json!([
                {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "unrelated", "namespace": "shop"},
                 "data": {"password": "aHVzaA=="}},
            ]))),
            "/api/v1/secrets" => (
                StatusCode::FORBIDDEN,
                json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Forbidden", "code": 403,
                       "message": "secrets is forbidden: User \"dev\" cannot list resource \"secrets\""}),
            ),
            // The mesh's own kind is not installed in this cluster.
            "/apis/policy.mesh.dev/v1alpha1/ratelimitpolicies" => {
                (StatusCode::NOT_FOUND, common::not_found())
            }
            "/api/v1/namespaces/istio-system/configmaps/istio" => {
                (StatusCode::NOT_FOUND, common::not_found())
            }
            "/debug/syncz" => ok(json!({"generation": 3, "proxies": [
                {"node": {"id": "sidecar~10.1.0.4~orders-1.shop", "namespace": "shop"}, "connected": true,
                 "sent_version": 3, "acked_version": 2, "nack": "listener 0.0.0.0_8080: bad regex", "services": 1},
            ]})),
            _ => ok(list(json!([]))),
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = common::kubeconfig(dir.path(), &url);
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_meshctl"))
            .args(args)
            .env("KUBECONFIG", &kubeconfig)
            .env_remove("MESH_PILOT_DEBUG")
            .output()
            .unwrap()
    };

    let out = run(&["analyze", "--kube"]);
    let text = String::from_utf8_lossy(&out.stdout);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{text}{err}");
    assert!(
        text.contains("Error [IST0101] (VirtualService shop/orders)")
            && text.contains("shop-gateway"),
        "{text}"
    );
    assert!(
        text.contains("Info [IST0118] (Service shop/orders)"),
        "{text}"
    );
    assert!(
        err.contains("ratelimitpolicies") && err.contains("CRD is not installed"),
        "{err}"
    );
    // The Gateway's credential is looked for where its pods run.
    assert!(
        text.contains("Error [IST0101] (Gateway shop/tls-edge) spec.servers[0].tls.credentialName: no Secret shop/shop-cert"),
        "{text}"
    );
    // A user who may not list Secrets is told so, and gets no message that would be untrue.
    secrets_allowed.store(false, Ordering::SeqCst);
    let out = run(&["analyze", "--kube"]);
    let text = String::from_utf8_lossy(&out.stdout);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot list Secrets") && err.contains("gateway.SecretAnalyzer left out"),
        "{err}"
    );
    assert!(!text.contains("shop-cert"), "{text}");
    secrets_allowed.store(true, Ordering::SeqCst);

    // The file's version replaces the cluster's: the Gateway is there now, and the other one
    // serves plain HTTP.
    let fix = dir.path().join("fix.yaml");
    std::fs::write(
        &fix,
        "\
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: shop-gateway, namespace: shop}
spec:
  selector: {app: orders}
  servers: [{port: {number: 8080, name: http, protocol: HTTP}, hosts: [orders.example.com]}]
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: tls-edge, namespace: shop}
spec:
  selector: {app: orders}
  servers: [{port: {number: 8080, name: http, protocol: HTTP}, hosts: [secure.example.com]}]
---
apiVersion: v1
kind: Service
metadata: {name: orders, namespace: shop}
spec:
  selector: {app: orders}
  ports: [{name: http-web, port: 8080}]
",
    )
    .unwrap();
    let out = run(&["analyze", "--kube", "-f", fix.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("No validation issues found"), "{text}");

    // Its pilot's reports: the proxy that refused its configuration.
    let out = run(&[
        "analyze",
        "--kube",
        "-f",
        fix.to_str().unwrap(),
        "--pilot",
        &url,
        "-o",
        "json",
    ]);
    let found: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(1), "{found}");
    let nack = found
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["code"] == "MESH0001")
        .unwrap_or_else(|| panic!("{found}"));
    assert_eq!(nack["origin"], "Pod shop/orders-1");
    assert!(
        nack["text"].as_str().unwrap().contains("bad regex"),
        "{nack}"
    );
}
