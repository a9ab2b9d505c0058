//! The admission webhook over HTTPS, as the Kubernetes API server calls it: a real
//! AdmissionReview v1 JSON posted to `/inject` on a server whose certificate the mesh CA
//! signed for the Service's DNS name; the answer allows the pod with a JSON patch that, applied,
//! gives the injected pod. A pod that opts out is allowed unchanged.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::path::Path;
use std::sync::Arc;

use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use mesh_ca::CaConfig;
use mesh_ca::testing::{TestCa, csr_for};
use mesh_injector::InjectConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};

const NAME: &str = "mesh-pilot.mesh-system.svc";

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The webhook on 127.0.0.1 with a serving certificate from `ca`.
async fn webhook(ca: &TestCa) -> std::net::SocketAddr {
    let (key, csr) = csr_for(&[&format!("DNS:{NAME}")]);
    let signed = ca
        .authority
        .sign_server(&csr, &[NAME.to_string()], None)
        .unwrap();
    let chain: Vec<CertificateDer<'static>> = signed
        .chain
        .iter()
        .map(|p| CertificateDer::from_pem_slice(p.as_bytes()).unwrap())
        .collect();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(mesh_injector::webhook::serve(
        listener,
        Arc::new(tls),
        Arc::new(InjectConfig::default()),
    ));
    addr
}

/// POSTs `review` as the API server would: TLS to `NAME`, checked against the mesh's roots.
async fn post(addr: std::net::SocketAddr, ca: &TestCa, review: &Value) -> Value {
    let mut roots = rustls::RootCertStore::empty();
    for r in ca.authority.roots() {
        roots
            .add(CertificateDer::from_pem_slice(r.as_bytes()).unwrap())
            .unwrap();
    }
    let tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = TcpStream::connect(addr).await.unwrap();
    let stream = tokio_rustls::TlsConnector::from(Arc::new(tls))
        .connect(ServerName::try_from(NAME).unwrap(), tcp)
        .await
        .expect("the webhook's certificate is valid for the Service's name");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = hyper::Request::post("/inject?timeout=10s")
        .header("host", NAME)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(review.to_string())))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice(&body).unwrap()
}

fn review() -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/admission-review.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[tokio::test]
async fn the_api_servers_review_gets_the_injecting_patch_over_https() {
    let ca = TestCa::self_signed("webhook", CaConfig::default());
    let addr = webhook(&ca).await;
    let sent = review();
    let answer = post(addr, &ca, &sent).await;
    assert_eq!(answer["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(answer["kind"], "AdmissionReview");
    let r = &answer["response"];
    assert_eq!(r["uid"], sent["request"]["uid"]);
    assert_eq!(r["allowed"], true);
    assert_eq!(r["patchType"], "JSONPatch");
    // Go's []byte in JSON: base64 text.
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(r["patch"].as_str().expect("the patch is base64 text"))
        .unwrap();
    let patch: json_patch::Patch = serde_json::from_slice(&bytes).unwrap();
    let mut pod = sent["request"]["object"].clone();
    json_patch::patch(&mut pod, &patch).unwrap();
    let inits: Vec<&str> = pod["spec"]["initContainers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(inits, ["istio-init", "istio-proxy"]);
    assert_eq!(
        pod["metadata"]["labels"]["security.istio.io/tlsMode"],
        "istio"
    );
    let args = pod["spec"]["initContainers"][1]["args"].as_array().unwrap();
    let at = args.iter().position(|a| a == "--workload").unwrap();
    assert_eq!(
        args[at + 1],
        "shipping-v1",
        "the Deployment behind the ReplicaSet"
    );
    assert_eq!(
        pod["spec"]["containers"][0]["readinessProbe"]["httpGet"],
        json!({"path": "/app-health/shipping/readyz", "port": 15021, "scheme": "HTTP"})
    );

    // A pod that opts out: allowed, untouched.
    let mut opt_out = sent.clone();
    opt_out["request"]["object"]["metadata"]["annotations"] =
        json!({"sidecar.istio.io/inject": "false"});
    let r = &post(addr, &ca, &opt_out).await["response"];
    assert_eq!(r["allowed"], true);
    assert!(r.get("patch").is_none_or(Value::is_null), "{r}");

    // Not a review: said so.
    let r = &post(addr, &ca, &json!({"hello": "world"})).await["response"];
    assert_eq!(r["allowed"], false);
    assert!(
        r["status"]["message"]
            .as_str()
            .unwrap()
            .contains("not an AdmissionReview"),
        "{r}"
    );
}
