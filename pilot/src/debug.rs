//! Pilot's debug endpoints (HTTP on 15014, as istiod's): what each proxy was sent and
//! acknowledged, each proxy's full view, and the model.
//!
//! - `GET /debug/syncz`: every proxy's status (JSON), what `meshctl proxy-status` reads;
//! - `GET /debug/config_dump?proxyID=ID`: the whole view of one proxy (JSON);
//! - `GET /debug/model`: services, workloads and the findings of the config source.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use serde_json::json;
use tokio::sync::watch;

use crate::discovery::{Generation, Status};
use crate::source::Snapshot;
use crate::translate;

/// What the debug endpoints read.
#[derive(Clone)]
pub struct DebugState {
    /// The current model generation.
    pub generations: watch::Receiver<Arc<Generation>>,
    /// The current config snapshot.
    pub snapshots: watch::Receiver<Arc<Snapshot>>,
    /// Every proxy's status.
    pub status: Status,
    /// The CA, when pilot serves it (its counts join pilot's metrics).
    pub ca: Option<Arc<mesh_ca::service::CaService>>,
}

fn reply(code: StatusCode, body: serde_json::Value) -> Response<Full<Bytes>> {
    let text = serde_json::to_string_pretty(&body).unwrap_or_default() + "\n";
    let mut r = Response::new(Full::new(Bytes::from(text)));
    *r.status_mut() = code;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

fn query_param<'a>(query: &'a str, key: &str) -> Option<&'a str> {
    query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

/// Answers one request.
pub fn handle(state: &DebugState, path: &str, query: &str) -> Response<Full<Bytes>> {
    let generation = state.generations.borrow().clone();
    match path {
        "/metrics" | "/stats/prometheus" => {
            let connected = state.status.all().iter().filter(|p| p.connected).count();
            let rejected = state
                .snapshots
                .borrow()
                .findings
                .iter()
                .filter(|f| f.severity == mesh_api::Severity::Error)
                .count();
            let mut text = state
                .status
                .metrics
                .render(connected, generation.version, rejected);
            if let Some(ca) = &state.ca {
                text += &ca.render_metrics();
            }
            let mut r = Response::new(Full::new(Bytes::from(text)));
            r.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            r
        }
        "/debug/syncz" => reply(
            StatusCode::OK,
            json!({
                "generation": generation.version,
                "pilot_version": env!("CARGO_PKG_VERSION"),
                "proxies": state.status.all(),
            }),
        ),
        "/debug/config_dump" => {
            let Some(id) = query_param(query, "proxyID") else {
                return reply(
                    StatusCode::BAD_REQUEST,
                    json!({"error": "give ?proxyID=ID (see /debug/syncz)"}),
                );
            };
            let id = id.replace("%7E", "~").replace("%7e", "~");
            let Some(p) = state.status.all().into_iter().find(|p| p.node.id == id) else {
                return reply(
                    StatusCode::NOT_FOUND,
                    json!({"error": format!("no proxy {id:?} has connected (see /debug/syncz)")}),
                );
            };
            let view = translate::view(&generation.model, &p.node);
            reply(
                StatusCode::OK,
                json!({
                    "generation": generation.version,
                    "state": view.state,
                    "rejections": view.rejections,
                }),
            )
        }
        "/debug/model" => {
            let snapshot = state.snapshots.borrow().clone();
            let model = &generation.model;
            let services: Vec<_> = model
                .registry
                .services
                .values()
                .map(|s| {
                    json!({
                        "hostname": s.hostname,
                        "origin": s.origin,
                        "addresses": s.addresses,
                        "endpoints": s.endpoints.iter().map(|e| &e.address).collect::<Vec<_>>(),
                    })
                })
                .collect();
            let workloads: Vec<_> = model
                .registry
                .workloads
                .iter()
                .map(|w| json!({"kind": w.kind, "name": format!("{}/{}", w.namespace, w.name), "address": w.address}))
                .collect();
            let findings: Vec<String> = snapshot.findings.iter().map(ToString::to_string).collect();
            let gateway_api: Vec<_> = model
                .gateway_api_status
                .iter()
                .map(|s| json!({"object": s.describe(), "status": s.status}))
                .collect();
            reply(
                StatusCode::OK,
                json!({
                    "generation": generation.version,
                    "configRevision": snapshot.revision,
                    "resources": snapshot.resources.len(),
                    "services": services,
                    "workloads": workloads,
                    "findings": findings,
                    "gatewayApiStatus": gateway_api,
                }),
            )
        }
        _ => reply(
            StatusCode::NOT_FOUND,
            json!({"error": "unknown path", "paths": ["/debug/syncz", "/debug/config_dump?proxyID=ID", "/debug/model", "/metrics"]}),
        ),
    }
}

/// Serves the debug endpoints on `listener` until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: DebugState,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((conn, _)) = accepted else { continue };
                let state = state.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                        let r = handle(&state, req.uri().path(), req.uri().query().unwrap_or(""));
                        async move { Ok::<_, Infallible>(r) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(conn), svc)
                        .await;
                });
            }
            () = &mut shutdown => return,
        }
    }
}
