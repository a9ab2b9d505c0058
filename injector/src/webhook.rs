//! The admission webhook: Kubernetes sends an `AdmissionReview` (v1) for each pod created in a
//! namespace the webhook configuration selects (`istio-injection=enabled`, or a pod labelled
//! `sidecar.istio.io/inject=true`), over HTTPS to `POST /inject` on port 15017; the answer
//! allows the pod, with the JSON patch that injects it when it should be. The selectors have
//! already chosen the namespace, so the pod's own opt-out and the injector's exclusions are
//! what is left to decide here.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;

use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use k8s_openapi::api::core::v1::Pod;
use serde::Deserialize;
use serde_json::json;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::config::InjectConfig;

/// The webhook's port (Istio's).
pub const PORT: u16 = 15017;
/// The path Kubernetes posts reviews to.
pub const PATH: &str = "/inject";
/// The largest review read (Kubernetes caps objects at about 1.5 MiB).
const BODY_LIMIT: usize = 4 << 20;

/// The part of an `AdmissionReview` the injector reads.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Review {
    #[serde(default)]
    api_version: String,
    kind: String,
    request: Option<ReviewRequest>,
}

#[derive(Deserialize)]
struct ReviewRequest {
    uid: String,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    object: Option<Pod>,
}

/// Answers one `AdmissionReview` (JSON) with another: allowed, with the base64 JSON patch that
/// injects the pod when it should be (Kubernetes reads `patch` as Go's `[]byte`, base64).
pub fn review(body: &[u8], cfg: &InjectConfig) -> Vec<u8> {
    let read = serde_json::from_slice::<Review>(body)
        .map_err(|e| format!("not an AdmissionReview of a Pod: {e}"))
        .and_then(|r| {
            if r.kind != "AdmissionReview" {
                return Err(format!("not an AdmissionReview but a {:?}", r.kind));
            }
            let version = if r.api_version.is_empty() {
                "admission.k8s.io/v1".to_string()
            } else {
                r.api_version
            };
            let req = r.request.ok_or("an AdmissionReview without a request")?;
            Ok((version, req))
        });
    let answer = match read {
        Err(why) => json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "response": {
                "uid": "",
                "allowed": false,
                "status": {"status": "Failure", "code": 400, "reason": "BadRequest", "message": why},
            },
        }),
        Ok((version, req)) => {
            let mut response = json!({"uid": req.uid, "allowed": true});
            if let Some(patch) = patch_for(&req, cfg) {
                response["patchType"] = json!("JSONPatch");
                response["patch"] = json!(base64::engine::general_purpose::STANDARD.encode(patch));
            }
            json!({"apiVersion": version, "kind": "AdmissionReview", "response": response})
        }
    };
    serde_json::to_vec(&answer).unwrap_or_default()
}

/// The patch (JSON) for the pod of `req`, when it is to be injected.
fn patch_for(req: &ReviewRequest, cfg: &InjectConfig) -> Option<Vec<u8>> {
    let pod = req.object.as_ref()?;
    let namespace = req
        .namespace
        .as_deref()
        .or(pod.metadata.namespace.as_deref())
        .unwrap_or("default");
    // The webhook configuration's namespaceSelector chose the namespace.
    let selected: BTreeMap<String, String> =
        [("istio-injection".to_string(), "enabled".to_string())].into();
    let (decision, patch) = crate::patch(pod, namespace, &selected, cfg);
    let name = pod
        .metadata
        .name
        .as_deref()
        .or(pod.metadata.generate_name.as_deref())
        .unwrap_or("?");
    tracing::info!("pod {namespace}/{name}: {decision:?}");
    serde_json::to_vec(&patch?).ok()
}

/// Serves the webhook on `listener` over TLS until the task is dropped.
pub async fn serve(listener: TcpListener, tls: Arc<rustls::ServerConfig>, cfg: Arc<InjectConfig>) {
    let acceptor = TlsAcceptor::from(tls);
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            continue;
        };
        let acceptor = acceptor.clone();
        let cfg = cfg.clone();
        tokio::spawn(async move {
            let stream = match acceptor.accept(stream).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::debug!("webhook: TLS from {peer}: {e}");
                    return;
                }
            };
            let svc = hyper::service::service_fn(move |req| {
                let cfg = cfg.clone();
                async move { Ok::<_, Infallible>(handle(req, &cfg).await) }
            });
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            if let Err(e) = builder.serve_connection(TokioIo::new(stream), svc).await {
                tracing::debug!("webhook: connection from {peer}: {e}");
            }
        });
    }
}

async fn handle(req: Request<Incoming>, cfg: &InjectConfig) -> Response<Full<Bytes>> {
    let text = |status: StatusCode, body: &str| {
        let mut r = Response::new(Full::new(Bytes::from(format!("{body}\n"))));
        *r.status_mut() = status;
        r
    };
    match (req.method(), req.uri().path()) {
        (&Method::POST, PATH) => {
            let body = match Limited::new(req.into_body(), BODY_LIMIT).collect().await {
                Ok(b) => b.to_bytes(),
                Err(e) => {
                    return text(
                        StatusCode::BAD_REQUEST,
                        &format!("cannot read the review: {e}"),
                    );
                }
            };
            let mut r = Response::new(Full::new(Bytes::from(review(&body, cfg))));
            r.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("application/json"),
            );
            r
        }
        (&Method::GET, "/ready") => text(StatusCode::OK, "ready"),
        (_, PATH) => text(StatusCode::METHOD_NOT_ALLOWED, "POST an AdmissionReview"),
        _ => text(StatusCode::NOT_FOUND, "paths: POST /inject, GET /ready"),
    }
}
