//! An external authorizer that behaves like Istio's `samples/extauthz`: a request carrying
//! `x-ext-authz: allow` is allowed (and `x-ext-authz-check-result: allowed` is set on it), any
//! other is denied with 403, that header set to `denied` and a body saying why. It speaks
//! Envoy's ext_authz HTTP protocol on one listener and its gRPC protocol (the generated tonic
//! service) on another, and counts the checks it answers.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use mesh_api::proto::envoy::config::core::v3 as core;
use mesh_api::proto::envoy::service::auth::v3 as auth;
use mesh_api::proto::envoy::r#type::v3::HttpStatus;
use mesh_api::proto::google::rpc::Status;
use tokio::net::TcpListener;

/// The request header that asks to be allowed.
pub const ALLOW_HEADER: &str = "x-ext-authz";
/// The header carrying the verdict.
pub const RESULT_HEADER: &str = "x-ext-authz-check-result";
/// The denial's body.
pub const DENIED_BODY: &str =
    "denied by ext_authz for not found header `x-ext-authz: allow` in the request";

/// A running authorizer.
pub struct ExtAuthz {
    /// The HTTP protocol's listener.
    pub http: SocketAddr,
    /// The gRPC protocol's listener.
    pub grpc: SocketAddr,
    /// Checks answered, both protocols.
    pub checks: Arc<AtomicUsize>,
}

impl ExtAuthz {
    /// Checks answered so far.
    pub fn count(&self) -> usize {
        self.checks.load(Ordering::SeqCst)
    }
}

/// Starts both protocols on 127.0.0.1.
pub async fn start() -> ExtAuthz {
    let http = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let grpc = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let checks = Arc::new(AtomicUsize::new(0));
    let out = ExtAuthz {
        http: http.local_addr().unwrap(),
        grpc: grpc.local_addr().unwrap(),
        checks: checks.clone(),
    };
    tokio::spawn(serve_http(http, checks.clone()));
    tokio::spawn(serve_grpc(grpc, checks));
    out
}

/// Serves the HTTP protocol on `listener`.
pub async fn serve_http(listener: TcpListener, checks: Arc<AtomicUsize>) {
    loop {
        let Ok((conn, _)) = listener.accept().await else {
            continue;
        };
        let checks = checks.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                checks.fetch_add(1, Ordering::SeqCst);
                let allowed = req
                    .headers()
                    .get(ALLOW_HEADER)
                    .is_some_and(|v| v.as_bytes() == b"allow");
                let resp = if allowed {
                    Response::builder()
                        .header(RESULT_HEADER, "allowed")
                        .body(Full::new(Bytes::new()))
                } else {
                    Response::builder()
                        .status(StatusCode::FORBIDDEN)
                        .header(RESULT_HEADER, "denied")
                        .body(Full::new(Bytes::from(DENIED_BODY)))
                };
                async move { Ok::<_, Infallible>(resp.unwrap()) }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(conn), svc)
                .await;
        });
    }
}

struct Sample {
    checks: Arc<AtomicUsize>,
}

fn header(key: &str, value: &str) -> core::HeaderValueOption {
    core::HeaderValueOption {
        header: Some(core::HeaderValue {
            key: key.into(),
            value: value.into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[tonic::async_trait]
impl auth::authorization_server::Authorization for Sample {
    async fn check(
        &self,
        request: tonic::Request<auth::CheckRequest>,
    ) -> Result<tonic::Response<auth::CheckResponse>, tonic::Status> {
        self.checks.fetch_add(1, Ordering::SeqCst);
        let allowed = request
            .get_ref()
            .attributes
            .as_ref()
            .and_then(|a| a.request.as_ref())
            .and_then(|r| r.http.as_ref())
            .and_then(|h| h.headers.get(ALLOW_HEADER))
            .is_some_and(|v| v == "allow");
        let answer = if allowed {
            auth::CheckResponse {
                status: Some(Status::default()),
                http_response: Some(auth::check_response::HttpResponse::OkResponse(
                    auth::OkHttpResponse {
                        headers: vec![header(RESULT_HEADER, "allowed")],
                        ..Default::default()
                    },
                )),
            }
        } else {
            auth::CheckResponse {
                // PERMISSION_DENIED.
                status: Some(Status {
                    code: 7,
                    ..Default::default()
                }),
                http_response: Some(auth::check_response::HttpResponse::DeniedResponse(
                    auth::DeniedHttpResponse {
                        status: Some(HttpStatus { code: 403 }),
                        headers: vec![header(RESULT_HEADER, "denied")],
                        body: DENIED_BODY.into(),
                    },
                )),
            }
        };
        Ok(tonic::Response::new(answer))
    }
}

/// Serves the gRPC protocol on `listener`.
pub async fn serve_grpc(listener: TcpListener, checks: Arc<AtomicUsize>) {
    let server = auth::authorization_server::AuthorizationServer::new(Sample { checks });
    loop {
        let Ok((conn, _)) = listener.accept().await else {
            continue;
        };
        let svc = hyper_util::service::TowerToHyperService::new(server.clone());
        tokio::spawn(async move {
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .http2_only()
                .serve_connection(TokioIo::new(conn), svc)
                .await;
        });
    }
}
