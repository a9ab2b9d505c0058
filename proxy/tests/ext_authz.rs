//! CUSTOM AuthorizationPolicies through real proxies on 127.0.0.1, with an authorizer that
//! behaves like Istio's ext-authz sample reached through the mesh: over HTTP and over gRPC it
//! allows `x-ext-authz: allow` (and the header it sets reaches the app) and its denial (status,
//! body, headers) is what the client gets; requests the policy does not match are not checked;
//! an authorizer that cannot be reached denies with `statusOnError` unless `failOpen`; a
//! provider missing from the mesh configuration denies; DENY still applies after CUSTOM allows;
//! over TCP a gRPC authorizer decides per connection.

#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use mesh_proxy::state::{State, proto};
use mesh_proxy::testing::{self, ext_authz};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use common::*;

const HOST: &str = "ext-authz.foo.svc.cluster.local";

fn policy(name: &str, spec: serde_json::Value) -> proto::Policy {
    proto::Policy {
        name: name.into(),
        namespace: "default".into(),
        spec_json: spec.to_string(),
        dry_run: false,
    }
}

/// The CUSTOM policy of Istio's ext-authz task: requests to `/orders*` ask `provider`.
fn custom(provider: &str) -> proto::Policy {
    policy(
        "ext-authz",
        json!({"action": "CUSTOM", "provider": {"name": provider},
               "rules": [{"to": [{"operation": {"paths": ["/orders*"]}}]}]}),
    )
}

fn provider(name: &str, spec: serde_json::Value, host: &str) -> proto::ExtensionProvider {
    let mut p = json!({"name": name});
    p.as_object_mut()
        .unwrap()
        .extend(spec.as_object().unwrap().clone());
    proto::ExtensionProvider {
        name: name.into(),
        spec_json: p.to_string(),
        host: host.into(),
    }
}

/// The authorizer's service as pilot would send it: one endpoint without a sidecar.
fn authorizer_service(addr: SocketAddr, port_name: &str, port: u16) -> proto::Service {
    testing::service(HOST, "10.96.0.80", port, port_name)
        .endpoint(addr, &[])
        .build()
}

fn b_with(
    app_port: u16,
    protocol: proto::Protocol,
    authz: Vec<proto::Policy>,
    providers: Vec<proto::ExtensionProvider>,
    services: Vec<proto::Service>,
) -> Arc<State> {
    Arc::new(
        State::compile(proto::ProxyState {
            inbound_ports: vec![proto::WorkloadPort {
                port: u32::from(app_port),
                protocol: protocol.into(),
            }],
            authorization_policies: authz,
            extension_providers: providers,
            services,
            ..Default::default()
        })
        .unwrap(),
    )
}

struct Answer {
    status: StatusCode,
    body: String,
    result: Option<String>,
}

/// GET `path` through A's outbound listener, with `x-ext-authz: allow` when `allow`.
async fn call(addr: SocketAddr, path: &str, allow: bool) -> Answer {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut req = Request::builder().uri(path).header("host", "shipping");
    if allow {
        req = req.header(ext_authz::ALLOW_HEADER, "allow");
    }
    let resp = sender
        .send_request(req.body(Full::new(Bytes::new())).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let result = resp
        .headers()
        .get(ext_authz::RESULT_HEADER)
        .map(|v| v.to_str().unwrap().to_string());
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    Answer {
        status,
        body: String::from_utf8_lossy(&body).into_owned(),
        result,
    }
}

/// The app: answers with the verdict header the request reached it with.
async fn app() -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (c, _) = l.accept().await.unwrap();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|req: Request<hyper::body::Incoming>| {
                    let seen = req
                        .headers()
                        .get(ext_authz::RESULT_HEADER)
                        .map_or("none".to_string(), |v| v.to_str().unwrap().to_string());
                    async move {
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                            Bytes::from(seen),
                        )))
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .serve_connection(TokioIo::new(c), svc)
                .await;
            });
        }
    });
    addr
}

/// Two sidecars over mesh mTLS, B in front of [`app`] on an HTTP port.
async fn http_pair() -> Pair {
    pair(
        app().await,
        proto::Protocol::Http,
        proto::PeerMode::Permissive,
        SHIPPING,
        true,
    )
    .await
}

async fn allows_and_denies_as_the_sample(
    providers: Vec<proto::ExtensionProvider>,
    svc: proto::Service,
    authz: &ext_authz::ExtAuthz,
) {
    let p = http_pair().await;
    let name = providers[0].name.clone();
    p.b_state
        .send(b_with(
            p.app_port,
            proto::Protocol::Http,
            vec![custom(&name)],
            providers,
            vec![svc],
        ))
        .unwrap();
    let out = p.a.bound.outbound;
    let before = authz.count();
    let denied = call(out, "/orders/1", false).await;
    assert_eq!(
        denied.status,
        StatusCode::FORBIDDEN,
        "{name}: {}",
        denied.body
    );
    assert_eq!(denied.body, ext_authz::DENIED_BODY, "{name}");
    assert_eq!(denied.result.as_deref(), Some("denied"), "{name}");
    let allowed = call(out, "/orders/1", true).await;
    assert_eq!(allowed.status, StatusCode::OK, "{name}: {}", allowed.body);
    assert_eq!(
        allowed.body, "allowed",
        "{name}: the authorizer's header reaches the app"
    );
    assert_eq!(authz.count() - before, 2, "{name}: one check per request");
    let unmatched = call(out, "/health", false).await;
    assert_eq!(
        unmatched.status,
        StatusCode::OK,
        "{name}: {}",
        unmatched.body
    );
    assert_eq!(
        authz.count() - before,
        2,
        "{name}: a request the policy does not match is not checked"
    );
}

#[tokio::test]
async fn an_http_authorizer_allows_and_denies_through_the_mesh() {
    let authz = ext_authz::start().await;
    let http = provider(
        "sample-ext-authz-http",
        json!({"envoyExtAuthzHttp": {"service": HOST, "port": 8000,
               "includeRequestHeadersInCheck": [ext_authz::ALLOW_HEADER],
               "headersToUpstreamOnAllow": [ext_authz::RESULT_HEADER],
               "headersToDownstreamOnDeny": [ext_authz::RESULT_HEADER]}}),
        HOST,
    );
    allows_and_denies_as_the_sample(
        vec![http],
        authorizer_service(authz.http, "http", 8000),
        &authz,
    )
    .await;
}

#[tokio::test]
async fn a_grpc_authorizer_allows_and_denies_through_the_mesh() {
    let authz = ext_authz::start().await;
    let grpc = provider(
        "sample-ext-authz-grpc",
        json!({"envoyExtAuthzGrpc": {"service": HOST, "port": 9000}}),
        HOST,
    );
    allows_and_denies_as_the_sample(
        vec![grpc],
        authorizer_service(authz.grpc, "grpc", 9000),
        &authz,
    )
    .await;
}

#[tokio::test]
async fn an_unreachable_authorizer_fails_closed_unless_fail_open() {
    // A port nothing listens on.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let p = http_pair().await;
    let out = p.a.bound.outbound;
    for (spec, want) in [
        (
            json!({"service": HOST, "port": 8000}),
            StatusCode::FORBIDDEN,
        ),
        (
            json!({"service": HOST, "port": 8000, "statusOnError": "503"}),
            StatusCode::SERVICE_UNAVAILABLE,
        ),
        (
            json!({"service": HOST, "port": 8000, "failOpen": true}),
            StatusCode::OK,
        ),
    ] {
        p.b_state
            .send(b_with(
                p.app_port,
                proto::Protocol::Http,
                vec![custom("down")],
                vec![provider("down", json!({"envoyExtAuthzHttp": spec}), HOST)],
                vec![authorizer_service(closed, "http", 8000)],
            ))
            .unwrap();
        let answer = call(out, "/orders", true).await;
        assert_eq!(answer.status, want, "{spec}: {}", answer.body);
    }
    // A provider whose service the registry does not have fails the same way.
    p.b_state
        .send(b_with(
            p.app_port,
            proto::Protocol::Http,
            vec![custom("nowhere")],
            vec![provider(
                "nowhere",
                json!({"envoyExtAuthzGrpc": {"service": "missing.foo.svc.cluster.local", "port": 9000, "statusOnError": "503"}}),
                "",
            )],
            vec![],
        ))
        .unwrap();
    assert_eq!(
        call(out, "/orders", true).await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
}

#[tokio::test]
async fn a_provider_missing_from_the_mesh_config_denies_and_deny_applies_after_custom() {
    let authz = ext_authz::start().await;
    let p = http_pair().await;
    let out = p.a.bound.outbound;
    p.b_state
        .send(b_with(
            p.app_port,
            proto::Protocol::Http,
            vec![custom("not-configured")],
            vec![],
            vec![],
        ))
        .unwrap();
    let answer = call(out, "/orders", true).await;
    assert_eq!(answer.status, StatusCode::FORBIDDEN);
    assert_eq!(answer.body.trim(), "RBAC: access denied");
    assert_eq!(call(out, "/health", false).await.status, StatusCode::OK);
    // CUSTOM allows, then a DENY policy still denies.
    let deny = policy(
        "deny-orders",
        json!({"action": "DENY", "rules": [{"to": [{"operation": {"paths": ["/orders/secret"]}}]}]}),
    );
    p.b_state
        .send(b_with(
            p.app_port,
            proto::Protocol::Http,
            vec![custom("g"), deny],
            vec![provider(
                "g",
                json!({"envoyExtAuthzGrpc": {"service": HOST, "port": 9000}}),
                HOST,
            )],
            vec![authorizer_service(authz.grpc, "grpc", 9000)],
        ))
        .unwrap();
    assert_eq!(call(out, "/orders/1", true).await.status, StatusCode::OK);
    let secret = call(out, "/orders/secret", true).await;
    assert_eq!(secret.status, StatusCode::FORBIDDEN);
    assert_eq!(secret.body.trim(), "RBAC: access denied");
}

#[tokio::test]
async fn over_tcp_a_grpc_authorizer_decides_per_connection() {
    let authz = ext_authz::start().await;
    let p = pair(
        tcp_app().await,
        proto::Protocol::Tcp,
        proto::PeerMode::Permissive,
        SHIPPING,
        true,
    )
    .await;
    let everything = policy(
        "ext-authz-tcp",
        json!({"action": "CUSTOM", "provider": {"name": "g"}, "rules": [{}]}),
    );
    p.b_state
        .send(b_with(
            p.app_port,
            proto::Protocol::Tcp,
            vec![everything],
            vec![provider(
                "g",
                json!({"envoyExtAuthzGrpc": {"service": HOST, "port": 9000}}),
                HOST,
            )],
            vec![authorizer_service(authz.grpc, "grpc", 9000)],
        ))
        .unwrap();
    // The sample allows only requests with its header; a connection has none, so it is closed.
    let mut c = TcpStream::connect(p.a.bound.outbound).await.unwrap();
    c.write_all(b"hello").await.unwrap();
    let mut got = Vec::new();
    let _ = c.read_to_end(&mut got).await;
    assert!(got.is_empty(), "closed before the app: {got:?}");
    assert_eq!(authz.count(), 1, "one check for the connection");
}
