//! What pilot writes into a cluster, against a scripted API server that records every request:
//! the root certificate as `istio-ca-root-cert` in each namespace (server-side apply, pilot's
//! field manager, skipping excluded namespaces, going on past a refused one), and the webhook's
//! `caBundle` (a JSON patch per webhook, none when it already holds the roots).

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use mesh_pilot::kube_publish::{publish_roots, set_webhook_ca_bundle};
use serde_json::{Value, json};
use tokio::net::TcpListener;

const ROOTS: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";

/// (method, path and query, content type, body) of each request.
type Seen = Arc<Mutex<Vec<(String, String, String, Value)>>>;

/// Answers: `GET` of the webhook configuration with `webhook` (its caBundle as given), any
/// write to namespace `locked` with 403, every other write with its own body.
async fn api_server(webhook: Value) -> (String, Seen) {
    let seen: Seen = Arc::default();
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let log = seen.clone();
    tokio::spawn(async move {
        loop {
            let (c, _) = l.accept().await.unwrap();
            let log = log.clone();
            let webhook = webhook.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    let log = log.clone();
                    let webhook = webhook.clone();
                    async move {
                        let method = req.method().to_string();
                        let target = req.uri().to_string();
                        let ctype = req
                            .headers()
                            .get("content-type")
                            .map(|v| v.to_str().unwrap().to_string())
                            .unwrap_or_default();
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        // kube sends server-side apply bodies as JSON too.
                        let value: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                        log.lock().unwrap().push((
                            method.clone(),
                            target.clone(),
                            ctype,
                            value.clone(),
                        ));
                        let (status, answer) = if target.contains("/namespaces/locked/") {
                            (
                                StatusCode::FORBIDDEN,
                                json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Forbidden", "code": 403, "message": "configmaps is forbidden"}),
                            )
                        } else if method == "GET"
                            || target.contains("mutatingwebhookconfigurations")
                        {
                            (StatusCode::OK, webhook.clone())
                        } else {
                            (StatusCode::OK, value)
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
    (format!("http://{addr}"), seen)
}

fn client(url: &str) -> kube::Client {
    kube::Client::try_from(kube::Config::new(url.parse().unwrap())).unwrap()
}

fn webhook_config(bundle: Option<&str>) -> Value {
    let mut hook = json!({
        "name": "sidecar-injector.mesh.dev",
        "admissionReviewVersions": ["v1"],
        "sideEffects": "None",
        "clientConfig": {"service": {"name": "mesh-pilot", "namespace": "mesh-system", "path": "/inject", "port": 443}},
    });
    if let Some(b) = bundle {
        hook["clientConfig"]["caBundle"] = json!(b);
    }
    json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": "mesh-sidecar-injector", "resourceVersion": "7"},
        "webhooks": [hook.clone(), {"name": "rev.mesh.dev", "admissionReviewVersions": ["v1"], "sideEffects": "None", "clientConfig": hook["clientConfig"].clone()}],
    })
}

#[tokio::test]
async fn the_root_is_published_in_every_namespace_but_the_excluded() {
    let (url, seen) = api_server(webhook_config(None)).await;
    let failed = publish_roots(
        &client(&url),
        ["default", "shop", "kube-system", "locked"],
        &["kube-system".to_string()],
        ROOTS,
        "mesh-pilot",
    )
    .await;
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert!(
        failed[0]
            .to_string()
            .contains("ConfigMap locked/istio-ca-root-cert"),
        "{}",
        failed[0]
    );
    let seen = seen.lock().unwrap();
    let writes: Vec<&str> = seen.iter().map(|(_, t, _, _)| t.as_str()).collect();
    assert_eq!(writes.len(), 3, "{writes:?}");
    let (method, target, ctype, body) = &seen[1];
    assert_eq!(method, "PATCH");
    assert!(
        target.starts_with("/api/v1/namespaces/shop/configmaps/istio-ca-root-cert?")
            && target.contains("fieldManager=mesh-pilot")
            && target.contains("force=true"),
        "{target}"
    );
    assert_eq!(ctype, "application/apply-patch+yaml");
    assert_eq!(body["data"]["root-cert.pem"], ROOTS);
    assert_eq!(body["metadata"]["namespace"], "shop");
}

#[tokio::test]
async fn the_webhooks_ca_bundle_is_set_once() {
    let (url, seen) = api_server(webhook_config(None)).await;
    let n = set_webhook_ca_bundle(&client(&url), "mesh-sidecar-injector", ROOTS, "mesh-pilot")
        .await
        .unwrap();
    assert_eq!(n, 2, "one operation per webhook");
    let seen_now = seen.lock().unwrap().clone();
    let (method, target, ctype, body) = &seen_now[1];
    assert_eq!(method, "PATCH");
    assert!(
        target.starts_with(
            "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/mesh-sidecar-injector?"
        ),
        "{target}"
    );
    assert_eq!(ctype, "application/json-patch+json");
    let b64 = base64::engine::general_purpose::STANDARD.encode(ROOTS);
    assert_eq!(
        body,
        &json!([
            {"op": "add", "path": "/webhooks/0/clientConfig/caBundle", "value": b64},
            {"op": "add", "path": "/webhooks/1/clientConfig/caBundle", "value": b64},
        ])
    );
    // Already current: nothing written.
    let (url, seen) = api_server(webhook_config(Some(&b64))).await;
    let n = set_webhook_ca_bundle(&client(&url), "mesh-sidecar-injector", ROOTS, "mesh-pilot")
        .await
        .unwrap();
    assert_eq!(n, 0);
    assert_eq!(seen.lock().unwrap().len(), 1, "a read, no write");
}
