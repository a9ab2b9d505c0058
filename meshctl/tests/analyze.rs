//! `meshctl analyze` as a user runs it: messages with Istio's codes, the resource and a hint,
//! `-o json`, exit 1 on an Error and 0 when there is only advice, and the seed's sample clean.

#![allow(clippy::expect_used, clippy::unwrap_used)]

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
fn the_seed_sample_has_no_issues() {
    let sample = Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/samples/order-app");
    let out = meshctl(&["analyze", "-f", sample.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.starts_with("✔ No validation issues found when analyzing 18 resources."),
        "{text}"
    );
}
