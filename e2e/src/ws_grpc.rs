//! mesh-echo's WebSocket (`GET /ws` on the HTTP port) and gRPC (`mesh.echo.v1.Echo` on the
//! gRPC port, h2c) faces, and their clients. Both first say who answered and who called, then
//! echo what they are sent.

use std::sync::Arc;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;

use crate::echo::{EchoConfig, peer_from_xfcc};

/// The generated gRPC code.
pub mod pb {
    #![allow(missing_docs, clippy::all)]
    tonic::include_proto!("mesh.echo.v1");
}

/// The conformance suite's gRPC echo (`gateway_api_conformance.echo_basic.grpcecho.GrpcEcho`).
pub mod conformance_pb {
    #![allow(missing_docs, clippy::all)]
    tonic::include_proto!("gateway_api_conformance.echo_basic.grpcecho");
}

/// The path prefix of the conformance echo's methods.
pub const CONFORMANCE_SERVICE: &str = "gateway_api_conformance.echo_basic.grpcecho.GrpcEcho";

/// True when `req` asks to become a WebSocket.
pub fn is_websocket<B>(req: &Request<B>) -> bool {
    req.headers()
        .get(http::header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

/// Accepts a WebSocket: answers 101, then sends `greeting` (a JSON echo) and echoes every
/// message back until the client closes.
pub fn accept_websocket(req: Request<Incoming>, greeting: String) -> Response<Full<Bytes>> {
    let Some(key) = req.headers().get("sec-websocket-key").cloned() else {
        let mut r = Response::new(Full::new(Bytes::from_static(
            b"missing sec-websocket-key\n",
        )));
        *r.status_mut() = StatusCode::BAD_REQUEST;
        return r;
    };
    let accept = derive_accept_key(key.as_bytes());
    tokio::spawn(async move {
        let Ok(upgraded) = hyper::upgrade::on(req).await else {
            return;
        };
        let mut ws =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        if ws.send(Message::text(greeting)).await.is_err() {
            return;
        }
        while let Some(Ok(msg)) = ws.next().await {
            let echo = matches!(msg, Message::Text(_) | Message::Binary(_));
            if matches!(msg, Message::Close(_)) || echo && ws.send(msg).await.is_err() {
                return;
            }
        }
    });
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(
        http::header::UPGRADE,
        http::HeaderValue::from_static("websocket"),
    );
    h.insert(
        http::header::CONNECTION,
        http::HeaderValue::from_static("Upgrade"),
    );
    if let Ok(v) = http::HeaderValue::from_str(&accept) {
        h.insert("sec-websocket-accept", v);
    }
    resp
}

/// Connects to `url` (`ws://host:port/ws`), returns the greeting and the echo of `message`.
pub async fn websocket_call(url: &str, message: &str) -> anyhow::Result<(String, String)> {
    let uri: http::Uri = url.parse()?;
    let host = uri
        .host()
        .ok_or_else(|| anyhow::anyhow!("{url}: no host"))?;
    let port = uri.port_u16().unwrap_or(80);
    let tcp = tokio::net::TcpStream::connect((host, port))
        .await
        .map_err(|e| anyhow::anyhow!("connecting to {host}:{port}: {e}"))?;
    let (mut ws, _) = tokio_tungstenite::client_async(url, tcp)
        .await
        .map_err(|e| anyhow::anyhow!("WebSocket handshake with {url}: {e}"))?;
    let greeting = match ws.next().await {
        Some(Ok(Message::Text(t))) => t.to_string(),
        other => anyhow::bail!("expected a greeting, got {other:?}"),
    };
    ws.send(Message::text(message)).await?;
    let echoed = match ws.next().await {
        Some(Ok(Message::Text(t))) => t.to_string(),
        other => anyhow::bail!("expected the echo, got {other:?}"),
    };
    let _ = ws.close(None).await;
    Ok((greeting, echoed))
}

struct EchoService {
    config: Arc<EchoConfig>,
}

#[tonic::async_trait]
impl pb::echo_server::Echo for EchoService {
    async fn echo(
        &self,
        request: tonic::Request<pb::EchoRequest>,
    ) -> Result<tonic::Response<pb::EchoResponse>, tonic::Status> {
        let peer = request
            .metadata()
            .get("x-forwarded-client-cert")
            .and_then(|v| v.to_str().ok())
            .and_then(peer_from_xfcc)
            .unwrap_or_default();
        Ok(tonic::Response::new(pb::EchoResponse {
            message: request.into_inner().message,
            service: self.config.service.clone(),
            version: self.config.version.clone(),
            pod: self.config.pod.clone(),
            peer,
        }))
    }
}

struct ConformanceEcho {
    config: Arc<EchoConfig>,
}

impl ConformanceEcho {
    fn answer(
        &self,
        method: &str,
        request: &tonic::Request<conformance_pb::EchoRequest>,
    ) -> tonic::Response<conformance_pb::EchoResponse> {
        let headers: Vec<conformance_pb::Header> = request
            .metadata()
            .iter()
            .filter_map(|kv| match kv {
                tonic::metadata::KeyAndValueRef::Ascii(k, v) => Some(conformance_pb::Header {
                    key: k.as_str().to_string(),
                    value: v.to_str().ok()?.to_string(),
                }),
                tonic::metadata::KeyAndValueRef::Binary(..) => None,
            })
            .collect();
        let authority = request
            .metadata()
            .get(":authority")
            .or_else(|| request.metadata().get("host"))
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        tonic::Response::new(conformance_pb::EchoResponse {
            assertions: Some(conformance_pb::Assertions {
                fully_qualified_method: format!("/{CONFORMANCE_SERVICE}/{method}"),
                headers,
                authority,
                context: Some(conformance_pb::Context {
                    namespace: self.config.namespace.clone(),
                    ingress: String::new(),
                    service_name: self.config.service.clone(),
                    pod: self.config.pod.clone(),
                }),
            }),
        })
    }
}

#[tonic::async_trait]
impl conformance_pb::grpc_echo_server::GrpcEcho for ConformanceEcho {
    async fn echo(
        &self,
        request: tonic::Request<conformance_pb::EchoRequest>,
    ) -> Result<tonic::Response<conformance_pb::EchoResponse>, tonic::Status> {
        Ok(self.answer("Echo", &request))
    }

    async fn echo_two(
        &self,
        request: tonic::Request<conformance_pb::EchoRequest>,
    ) -> Result<tonic::Response<conformance_pb::EchoResponse>, tonic::Status> {
        Ok(self.answer("EchoTwo", &request))
    }

    async fn echo_three(
        &self,
        request: tonic::Request<conformance_pb::EchoRequest>,
    ) -> Result<tonic::Response<conformance_pb::EchoResponse>, tonic::Status> {
        Ok(self.answer("EchoThree", &request))
    }
}

/// Serves `mesh.echo.v1.Echo`, and the conformance suite's `GrpcEcho`, over h2c on
/// `listener`.
pub async fn serve_grpc(config: EchoConfig, listener: tokio::net::TcpListener) {
    let config = Arc::new(config);
    let server = pb::echo_server::EchoServer::new(EchoService {
        config: config.clone(),
    });
    let conformance =
        conformance_pb::grpc_echo_server::GrpcEchoServer::new(ConformanceEcho { config });
    loop {
        let Ok((conn, _)) = listener.accept().await else {
            continue;
        };
        let _ = conn.set_nodelay(true);
        let (own, theirs) = (server.clone(), conformance.clone());
        let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
            use tower_service::Service;
            type Answer = std::pin::Pin<
                Box<
                    dyn std::future::Future<
                            Output = Result<Response<tonic::body::Body>, std::convert::Infallible>,
                        > + Send,
                >,
            >;
            let conformance_call = req
                .uri()
                .path()
                .starts_with(&format!("/{CONFORMANCE_SERVICE}/"));
            let fut: Answer = if conformance_call {
                Box::pin(theirs.clone().call(req))
            } else {
                Box::pin(own.clone().call(req))
            };
            fut
        });
        tokio::spawn(async move {
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .http2_only()
                .serve_connection(TokioIo::new(conn), svc)
                .await;
        });
    }
}

/// Calls `Echo` at `address` (`http://host:port`).
pub async fn grpc_call(address: &str, message: &str) -> anyhow::Result<pb::EchoResponse> {
    let channel = tonic::transport::Endpoint::from_shared(address.to_string())
        .map_err(|e| anyhow::anyhow!("--address {address:?}: {e}"))?
        .connect()
        .await
        .map_err(|e| {
            anyhow::anyhow!("connecting to {address}: {}", crate::echo::error_chain(&e))
        })?;
    let mut client = pb::echo_client::EchoClient::new(channel);
    let resp = client
        .echo(pb::EchoRequest {
            message: message.to_string(),
        })
        .await
        .map_err(|s| anyhow::anyhow!("Echo at {address}: {}: {}", s.code(), s.message()))?;
    Ok(resp.into_inner())
}
