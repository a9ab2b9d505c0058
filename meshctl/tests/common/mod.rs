//! A scripted Kubernetes API server for meshctl's tests, on 127.0.0.1 in a thread of its own,
//! and a kubeconfig that names it: what `meshctl install`, `verify` and the real `kubectl` are
//! pointed at.

#![allow(clippy::expect_used, clippy::unwrap_used, dead_code)]

use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpListener;

/// One request as the scripted server sees it.
pub struct Seen<'a> {
    /// `GET`, `PATCH`, ...
    pub method: &'a str,
    /// The path.
    pub path: &'a str,
    /// The query, without `?`.
    pub query: &'a str,
    /// The content type.
    pub content_type: &'a str,
    /// The body as JSON (`null` when it is not).
    pub body: Value,
}

/// What the server answers: a status and a JSON body.
pub type Answer = (StatusCode, Value);

/// Serves `answer` for every request; the server's `http://` address.
pub fn api_server(answer: impl Fn(Seen<'_>) -> Answer + Send + Sync + 'static) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    let answer = Arc::new(answer);
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let l = TcpListener::from_std(listener).unwrap();
            loop {
                let (c, _) = l.accept().await.unwrap();
                let answer = answer.clone();
                tokio::spawn(async move {
                    let svc =
                        hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                            let answer = answer.clone();
                            async move {
                                let method = req.method().to_string();
                                let path = req.uri().path().to_string();
                                let query = req.uri().query().unwrap_or("").to_string();
                                let content_type = req
                                    .headers()
                                    .get("content-type")
                                    .map(|v| v.to_str().unwrap().to_string())
                                    .unwrap_or_default();
                                let body = req.into_body().collect().await.unwrap().to_bytes();
                                let body = serde_json::from_slice(&body).unwrap_or(Value::Null);
                                let (status, out) = answer(Seen {
                                    method: &method,
                                    path: &path,
                                    query: &query,
                                    content_type: &content_type,
                                    body,
                                });
                                let mut r = Response::new(Full::new(Bytes::from(out.to_string())));
                                *r.status_mut() = status;
                                r.headers_mut()
                                    .insert("content-type", "application/json".parse().unwrap());
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
    format!("http://{addr}")
}

/// A kubeconfig in `dir` whose current context is the server at `url`.
pub fn kubeconfig(dir: &Path, url: &str) -> PathBuf {
    let path = dir.join("kubeconfig");
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: scripted\n  cluster: {{server: \"{url}\"}}\nusers:\n- name: admin\n  user: {{token: t}}\ncontexts:\n- name: scripted\n  context: {{cluster: scripted, user: admin}}\ncurrent-context: scripted\n"
        ),
    )
    .unwrap();
    path
}

/// The API's "not found".
pub fn not_found() -> Value {
    serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404, "message": "not found"})
}
