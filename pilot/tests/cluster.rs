//! The control plane as it runs in a cluster, against a scripted API server (lists, watches,
//! TokenReviews, and the writes recorded): it publishes the mesh's root in each namespace and
//! the webhook's caBundle; its CA signs a workload's certificate for a projected token the API
//! server vouches for, and refuses one it does not; its webhook answers over TLS with a
//! certificate valid for its Service's name; and a second control plane, started fresh, takes the
//! first one's root from the Secret it stored.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use mesh_api::proto::ca::v1::{Credential, credential::Kind};
use mesh_pilot::cluster::{ClusterConfig, WebhookSettings, start};
use mesh_pilot::discovery::Debounce;
use mesh_pilot::model::MeshConfig;
use mesh_proxy::identity::{CaClient, request_svid};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

const DEADLINE: Duration = Duration::from_secs(20);
const WEBHOOK_CONFIG: &str = "mesh-sidecar-injector";

type Body = BoxBody<Bytes, Infallible>;

/// Writes seen: (path, body); `count` says how many.
struct Api {
    writes: Mutex<Vec<(String, Value)>>,
    count: watch::Sender<usize>,
    /// The CA's Secret, once created.
    secret: Mutex<Option<Value>>,
}

fn full(v: Value) -> Body {
    Full::new(Bytes::from(v.to_string())).boxed()
}

fn list(items: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": "10"}, "items": items})
}

fn webhook_config() -> Value {
    json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": WEBHOOK_CONFIG, "resourceVersion": "3"},
        "webhooks": [{
            "name": "sidecar-injector.mesh.dev",
            "admissionReviewVersions": ["v1"],
            "sideEffects": "None",
            "clientConfig": {"service": {"name": "mesh-pilot", "namespace": "mesh-system", "path": "/inject", "port": 443}},
        }],
    })
}

async fn answer(api: Arc<Api>, req: Request<hyper::body::Incoming>) -> Response<Body> {
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let method = req.method().clone();
    let body = req.into_body().collect().await.unwrap().to_bytes();
    let value: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    if query.contains("watch=true") || query.contains("watch=1") {
        // Watches stay open and quiet.
        let (tx, rx) = mpsc::unbounded_channel::<String>();
        std::mem::forget(tx);
        let stream = tokio_stream::wrappers::UnboundedReceiverStream::new(rx)
            .map(|l| Ok::<_, Infallible>(Frame::data(Bytes::from(l))));
        return Response::new(BodyExt::boxed(StreamBody::new(stream)));
    }
    if path == "/api/v1/namespaces/mesh-system/secrets" && method == hyper::Method::POST {
        *api.secret.lock().unwrap() = Some(value.clone());
        let mut r = Response::new(full(value));
        *r.status_mut() = hyper::StatusCode::CREATED;
        return r;
    }
    if path == "/api/v1/namespaces/mesh-system/secrets/mesh-ca" {
        return match api.secret.lock().unwrap().clone() {
            Some(secret) => Response::new(full(secret)),
            None => {
                let mut r = Response::new(full(json!({
                    "kind": "Status", "apiVersion": "v1", "status": "Failure",
                    "reason": "NotFound", "code": 404, "message": "secrets \"mesh-ca\" not found",
                })));
                *r.status_mut() = hyper::StatusCode::NOT_FOUND;
                r
            }
        };
    }
    if path == "/apis/authentication.k8s.io/v1/tokenreviews" {
        let good = value["spec"]["token"] == "good-token";
        let mut review = value.clone();
        review["status"] = if good {
            json!({"authenticated": true, "user": {"username": "system:serviceaccount:shop:shipping"}})
        } else {
            json!({"authenticated": false, "error": "invalid bearer token"})
        };
        return Response::new(full(review));
    }
    if method == hyper::Method::PATCH {
        let mut w = api.writes.lock().unwrap();
        w.push((path.clone(), value.clone()));
        api.count.send_replace(w.len());
        return Response::new(full(if path.contains("mutatingwebhookconfigurations") {
            webhook_config()
        } else {
            value
        }));
    }
    Response::new(full(match path.as_str() {
        "/api/v1/namespaces" => list(json!([
            {"metadata": {"name": "default"}},
            {"metadata": {"name": "shop", "labels": {"istio-injection": "enabled"}}},
            {"metadata": {"name": "kube-system"}},
            {"metadata": {"name": "mesh-system"}},
        ])),
        p if p.ends_with(&format!("/mutatingwebhookconfigurations/{WEBHOOK_CONFIG}")) => {
            webhook_config()
        }
        _ => list(json!([])),
    }))
}

use tokio_stream::StreamExt;

async fn api_server() -> (String, Arc<Api>, watch::Receiver<usize>) {
    let (tx, rx) = watch::channel(0);
    let api = Arc::new(Api {
        writes: Mutex::default(),
        count: tx,
        secret: Mutex::default(),
    });
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let served = api.clone();
    tokio::spawn(async move {
        loop {
            let (c, _) = l.accept().await.unwrap();
            let api = served.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let api = api.clone();
                    async move { Ok::<_, Infallible>(answer(api, req).await) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .serve_connection(TokioIo::new(c), svc)
                .await;
            });
        }
    });
    (format!("http://{addr}"), api, rx)
}

fn roots_of(pem: &str) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .map(Result::unwrap)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_plane_serves_a_cluster() {
    rustls::crypto::ring::default_provider()
        .install_default()
        .ok();
    let (url, api, mut writes) = api_server().await;
    let client = kube::Client::try_from(kube::Config::new(url.parse().unwrap())).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let any = "127.0.0.1:0".parse().unwrap();
    let config = |ca_dir: std::path::PathBuf| ClusterConfig {
        ca_dir,
        ca_secret: Some("mesh-ca".into()),
        namespace: "mesh-system".into(),
        service_account: "mesh-pilot".into(),
        service: "mesh-pilot".into(),
        domain: "cluster.local".into(),
        secure_discovery: any,
        discovery: any,
        debug: any,
        webhook: Some(WebhookSettings {
            address: any,
            configuration: WEBHOOK_CONFIG.into(),
            inject: mesh_injector::InjectConfig::default(),
        }),
        mesh: MeshConfig::default(),
        debounce: Debounce::default(),
        field_manager: "mesh-pilot".into(),
    };
    let cp = start(client.clone(), config(dir.path().join("ca")))
        .await
        .unwrap();
    let stored = api
        .secret
        .lock()
        .unwrap()
        .clone()
        .expect("the CA's files stored");
    for key in [
        "root-cert.pem",
        "root-key.pem",
        "ca-cert.pem",
        "ca-key.pem",
        "cert-chain.pem",
    ] {
        assert!(stored["data"][key].is_string(), "{key} in the Secret");
    }

    // The root in default, shop and its own namespace (never kube-system); the caBundle.
    tokio::time::timeout(DEADLINE, writes.wait_for(|n| *n >= 4))
        .await
        .expect("roots and caBundle written")
        .unwrap();
    let seen = api.writes.lock().unwrap().clone();
    let paths: Vec<&str> = seen.iter().map(|(p, _)| p.as_str()).collect();
    for ns in ["default", "shop", "mesh-system"] {
        let want = format!("/api/v1/namespaces/{ns}/configmaps/istio-ca-root-cert");
        let (_, body) = seen.iter().find(|(p, _)| *p == want).expect(&want);
        assert_eq!(body["data"]["root-cert.pem"], cp.roots);
    }
    assert!(
        !paths.iter().any(|p| p.contains("kube-system")),
        "{paths:?}"
    );
    let (_, bundle) = seen
        .iter()
        .find(|(p, _)| p.contains("mutatingwebhookconfigurations"))
        .unwrap();
    assert_eq!(
        bundle[0]["value"],
        base64::engine::general_purpose::STANDARD.encode(&cp.roots)
    );

    // The CA on 15012: a projected token the API server vouches for gets its certificate.
    let pilot_id = "spiffe://cluster.local/ns/mesh-system/sa/mesh-pilot";
    let tls = mesh_proxy::tls::mtls::ca_client_config(roots_of(&cp.roots), vec![pilot_id.into()])
        .unwrap();
    let ca_url = format!("https://{}", cp.pilot.secure_addr.unwrap());
    let with_token = |token: &str| {
        CaClient::new(
            &ca_url,
            Credential {
                kind: Some(Kind::KubernetesToken(token.into())),
            },
            Duration::from_secs(3600),
            Some(tls.clone()),
        )
        .unwrap()
    };
    let svid = request_svid(
        &with_token("good-token"),
        "spiffe://cluster.local/ns/shop/sa/shipping",
    )
    .await
    .unwrap();
    assert_eq!(svid.identity, "spiffe://cluster.local/ns/shop/sa/shipping");
    let refused = request_svid(
        &with_token("stolen"),
        "spiffe://cluster.local/ns/shop/sa/shipping",
    )
    .await;
    assert!(refused.is_err());

    // The webhook: TLS for its Service's name, an AdmissionReview answered with a patch.
    let mut store = rustls::RootCertStore::empty();
    for r in roots_of(&cp.roots) {
        store.add(r).unwrap();
    }
    let client_tls = rustls::ClientConfig::builder()
        .with_root_certificates(store)
        .with_no_client_auth();
    let tcp = TcpStream::connect(cp.webhook_addr.unwrap()).await.unwrap();
    let stream = tokio_rustls::TlsConnector::from(Arc::new(client_tls))
        .connect(
            ServerName::try_from("mesh-pilot.mesh-system.svc.cluster.local").unwrap(),
            tcp,
        )
        .await
        .expect("the webhook's certificate names its Service");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let review = json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "u-1",
            "namespace": "shop",
            "object": {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "shop"}, "spec": {"containers": [{"name": "app", "image": "x"}]}},
        },
    });
    let resp = sender
        .send_request(
            Request::post("/inject")
                .header("host", "mesh-pilot.mesh-system.svc")
                .body(Full::new(Bytes::from(review.to_string())))
                .unwrap(),
        )
        .await
        .unwrap();
    let answer: Value =
        serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(answer["response"]["uid"], "u-1");
    assert_eq!(answer["response"]["allowed"], true);
    assert_eq!(answer["response"]["patchType"], "JSONPatch");
    let roots = cp.roots.clone();
    cp.stop().await;

    // Restarted with an empty folder: the same root, from the Secret.
    let again = tempfile::tempdir().unwrap();
    let cp = start(client, config(again.path().join("ca")))
        .await
        .unwrap();
    assert_eq!(cp.roots, roots, "the mesh's root survives a restart");
    cp.stop().await;
}
