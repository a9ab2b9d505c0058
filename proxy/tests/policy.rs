//! Security policy through real proxies on 127.0.0.1: AuthorizationPolicy answers 403 (TCP:
//! the connection is closed) at once when applied and stops when removed; principals rules
//! hold the caller to the identity its certificate proves; RequestAuthentication with the
//! seed's `require-jwt.yaml` shape, its key set fetched through the mesh: no token 403, a
//! valid one 200, another issuer's 401, and the admin port's `/authn` saying the same.

#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use jsonwebtoken::Algorithm;
use mesh_proxy::state::{State, proto};
use mesh_proxy::testing::{self, jwt::Issuer};
use mesh_proxy::{Proxy, Setup};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use common::*;

/// The seed's issuer (`require-jwt.yaml`).
const SEED_ISSUER: &str = "testing@secure.istio.io";

fn policy(name: &str, spec: serde_json::Value) -> proto::Policy {
    proto::Policy {
        name: name.into(),
        namespace: "default".into(),
        spec_json: spec.to_string(),
        dry_run: false,
    }
}

/// B's state: the app's port, PERMISSIVE, the given policies, and the services B may call.
fn b_with(
    app_port: u16,
    protocol: proto::Protocol,
    authz: Vec<proto::Policy>,
    authn: Vec<proto::Policy>,
    services: Vec<proto::Service>,
) -> Arc<State> {
    Arc::new(
        State::compile(proto::ProxyState {
            inbound_ports: vec![proto::WorkloadPort {
                port: u32::from(app_port),
                protocol: protocol.into(),
            }],
            authorization_policies: authz,
            request_authentications: authn,
            services,
            ..Default::default()
        })
        .unwrap(),
    )
}

/// GET /orders through `addr` (A's outbound listener, or a proxy's inbound), with `token` as a
/// bearer token when given: the status, the body and the `x-mesh-authz` header.
async fn call(addr: SocketAddr, token: Option<&str>) -> (StatusCode, String, Option<String>) {
    get(addr, "/orders", "shipping", token).await
}

/// GET `path` of `host` at `addr`, with `token` as a bearer token when given: the status, the
/// body and the `x-mesh-authz` header.
async fn get(
    addr: SocketAddr,
    path: &str,
    host: &str,
    token: Option<&str>,
) -> (StatusCode, String, Option<String>) {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut req = Request::builder().uri(path).header("host", host);
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let resp = sender
        .send_request(req.body(Full::new(Bytes::new())).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let debug = resp
        .headers()
        .get("x-mesh-authz")
        .map(|v| v.to_str().unwrap().to_string());
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned(), debug)
}

#[tokio::test]
async fn deny_all_is_403_at_once_and_lifted_by_delete() {
    let p = pair(
        http_app().await,
        proto::Protocol::Http,
        proto::PeerMode::Permissive,
        SHIPPING,
        true,
    )
    .await;
    assert_eq!(call(p.a.bound.outbound, None).await.0, StatusCode::OK);
    let deny = policy("deny-all", json!({"action": "DENY", "rules": [{}]}));
    p.b_state
        .send(b_with(
            p.app_port,
            proto::Protocol::Http,
            vec![deny],
            vec![],
            vec![],
        ))
        .unwrap();
    let (status, body, debug) = call(p.a.bound.outbound, None).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(body.trim(), "RBAC: access denied");
    assert_eq!(
        debug, None,
        "the deciding policy is only told with the debug setting"
    );
    p.b_state
        .send(b_with(
            p.app_port,
            proto::Protocol::Http,
            vec![],
            vec![],
            vec![],
        ))
        .unwrap();
    assert_eq!(call(p.a.bound.outbound, None).await.0, StatusCode::OK);
}

#[tokio::test]
async fn principals_hold_the_caller_to_its_certificate() {
    let p = pair(
        http_app().await,
        proto::Protocol::Http,
        proto::PeerMode::Permissive,
        SHIPPING,
        true,
    )
    .await;
    let only = |sa: &str| {
        vec![policy(
            "only",
            json!({"rules": [{"from": [{"source": {"principals": [format!("cluster.local/ns/default/sa/{sa}")]}}]}]}),
        )]
    };
    p.b_state
        .send(b_with(
            p.app_port,
            proto::Protocol::Http,
            only("order"),
            vec![],
            vec![],
        ))
        .unwrap();
    assert_eq!(call(p.a.bound.outbound, None).await.0, StatusCode::OK);
    // A holds a certificate for `order`; a rule for `billing` refuses it.
    p.b_state
        .send(b_with(
            p.app_port,
            proto::Protocol::Http,
            only("billing"),
            vec![],
            vec![],
        ))
        .unwrap();
    assert_eq!(
        call(p.a.bound.outbound, None).await.0,
        StatusCode::FORBIDDEN
    );
    // A plaintext caller proves no identity at all.
    p.b_state
        .send(b_with(
            p.app_port,
            proto::Protocol::Http,
            only("order"),
            vec![],
            vec![],
        ))
        .unwrap();
    assert_eq!(call(p.b_inbound, None).await.0, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn tcp_denied_is_closed_before_the_app() {
    let p = pair(
        tcp_app().await,
        proto::Protocol::Tcp,
        proto::PeerMode::Permissive,
        SHIPPING,
        true,
    )
    .await;
    let send = |addr: SocketAddr| async move {
        let mut c = TcpStream::connect(addr).await.unwrap();
        c.write_all(b"ping").await.unwrap();
        let mut buf = vec![0u8; 64];
        let n = c.read(&mut buf).await.unwrap_or(0);
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    assert_eq!(send(p.a.bound.outbound).await, "app:ping");
    let deny = policy(
        "deny-order",
        json!({"action": "DENY", "rules": [{"from": [{"source": {"namespaces": ["default"]}}]}]}),
    );
    p.b_state
        .send(b_with(
            p.app_port,
            proto::Protocol::Tcp,
            vec![deny],
            vec![],
            vec![],
        ))
        .unwrap();
    assert_eq!(send(p.a.bound.outbound).await, "", "closed without a byte");
    // An ALLOW rule that needs HTTP never matches TCP: denied too.
    let http_only = policy(
        "get-only",
        json!({"rules": [{"to": [{"operation": {"methods": ["GET"]}}]}]}),
    );
    p.b_state
        .send(b_with(
            p.app_port,
            proto::Protocol::Tcp,
            vec![http_only],
            vec![],
            vec![],
        ))
        .unwrap();
    assert_eq!(send(p.a.bound.outbound).await, "");
}

/// An HTTP server answering every request with `body`.
async fn serve_text(body: String) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let body = Bytes::from(body);
    tokio::spawn(async move {
        loop {
            let (c, _) = l.accept().await.unwrap();
            let body = body.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |_req| {
                    let body = body.clone();
                    async move { Ok::<_, Infallible>(Response::new(Full::new(body))) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(c), svc)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn the_seed_jwt_policy_with_keys_fetched_through_the_mesh() {
    let issuer = Issuer::new(SEED_ISSUER);
    let keys = serve_text(issuer.jwks()).await;
    // The key set's service as pilot would send it: jwks.default:8080, one endpoint without a
    // sidecar (the test server).
    let jwks = testing::service("jwks.default.svc.cluster.local", "10.96.0.70", 8080, "http")
        .endpoint(keys, &[])
        .build();
    let p = pair(
        http_app().await,
        proto::Protocol::Http,
        proto::PeerMode::Permissive,
        SHIPPING,
        true,
    )
    .await;
    let authn = policy(
        "booking-jwt",
        json!({"jwtRules": [{"issuer": SEED_ISSUER,
                             "jwksUri": "http://jwks.default.svc.cluster.local:8080/jwks.json"}]}),
    );
    let authz = policy(
        "require-jwt",
        json!({"action": "ALLOW", "rules": [{"from": [{"source": {
            "requestPrincipals": [format!("{SEED_ISSUER}/{SEED_ISSUER}")]}}]}]}),
    );
    p.b_state
        .send(b_with(
            p.app_port,
            proto::Protocol::Http,
            vec![authz],
            vec![authn],
            vec![jwks],
        ))
        .unwrap();
    let out = p.a.bound.outbound;
    assert_eq!(call(out, None).await.0, StatusCode::FORBIDDEN, "no token");
    let valid = issuer.sign(Algorithm::RS256, &issuer.claims(SEED_ISSUER, "booking"));
    assert_eq!(
        call(out, Some(&valid)).await.0,
        StatusCode::OK,
        "valid token"
    );
    let other = Issuer::new("https://other.test");
    let foreign = other.sign(Algorithm::ES256, &other.claims(SEED_ISSUER, "booking"));
    let (status, body, _) = call(out, Some(&foreign)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "another issuer: {body}");
    assert_eq!(body.trim(), "Jwt issuer is not configured");

    // B's admin port says the same of each token, with the keys B holds (`meshctl why`).
    let admin = p.b.bound.admin;
    let none = admin_authn(admin, None).await;
    assert_eq!(none["outcome"], "none", "{none}");
    assert_eq!(none["policies"], json!(["default/booking-jwt"]));
    let verified = admin_authn(admin, Some(&valid)).await;
    assert_eq!(verified["outcome"], "verified", "{verified}");
    assert_eq!(
        verified["principal"],
        format!("{SEED_ISSUER}/{SEED_ISSUER}")
    );
    assert_eq!(verified["claims"]["aud"], "booking", "{verified}");
    let refused = admin_authn(admin, Some(&foreign)).await;
    assert_eq!(refused["outcome"], "refused", "{refused}");
    assert_eq!(refused["reason"], "Jwt issuer is not configured");
}

/// What `GET /authn` on the admin port `addr` answers for a request bearing `token`.
async fn admin_authn(addr: SocketAddr, token: Option<&str>) -> serde_json::Value {
    let (status, body, _) = get(addr, "/authn", "localhost", token).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    serde_json::from_str(&body).unwrap()
}

#[tokio::test]
async fn the_debug_setting_names_the_deciding_policy() {
    let app = http_app().await;
    let state = b_with(
        app.port(),
        proto::Protocol::Http,
        vec![policy("deny-all", json!({"action": "DENY", "rules": [{}]}))],
        vec![],
        vec![],
    );
    let proxy = lone_proxy(state, app, |s| s.debug_authz = true).await;
    let (status, _, debug) = call(proxy.bound.inbound, None).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(
        debug.as_deref(),
        Some("denied by default/deny-all rules[0] (DENY)")
    );
}

/// A proxy (no identity) in front of `app` whose inbound listener takes the calls, its setup
/// changed by `adjust`.
async fn lone_proxy(state: Arc<State>, app: SocketAddr, adjust: impl FnOnce(&mut Setup)) -> Proxy {
    let (tx, rx) = watch::channel(state);
    std::mem::forget(tx);
    let mut setup = Setup {
        state: rx,
        has_state: true,
        outbound_dst: testing::fixed("10.0.0.1:1"),
        inbound_dst: testing::fixed(&format!("10.0.0.9:{}", app.port())),
        svids: None,
        on_demand: None,
        workload: workload("booking-v1", "booking", "v1"),
        debug_authz: false,
        jwks_ca_pem: None,
        gateway: None,
        limits: Default::default(),
    };
    adjust(&mut setup);
    Proxy::launch(&testing::loopback(), setup).await.unwrap()
}

#[tokio::test]
async fn an_https_key_set_is_fetched_over_verified_tls() {
    // An issuer outside the mesh with a private CA, known to the mesh by a ServiceEntry
    // (issuer.example.com:8443, one endpoint): its key set is fetched over TLS the proxy
    // originates, the server verified for the issuer's host name.
    const HOST: &str = "issuer.example.com";
    let issuer = Issuer::new(SEED_ISSUER);
    let jwks = issuer.jwks();
    let (server, root) = testing::tls::https_server(HOST, None, move |_| jwks.clone()).await;
    let entry = testing::service(HOST, "240.240.0.1", 8443, "https")
        .endpoint(server, &[])
        .build();
    let app = http_app().await;
    // Each proxy compiles its own state (a compiled state remembers the tokens it verified).
    let state = || {
        b_with(
            app.port(),
            proto::Protocol::Http,
            vec![policy(
                "require-jwt",
                json!({"action": "ALLOW", "rules": [{"from": [{"source": {
                "requestPrincipals": [format!("{SEED_ISSUER}/{SEED_ISSUER}")]}}]}]}),
            )],
            vec![policy(
                "booking-jwt",
                json!({"jwtRules": [{"issuer": SEED_ISSUER,
                                 "jwksUri": format!("https://{HOST}:8443/jwks.json")}]}),
            )],
            vec![entry.clone()],
        )
    };
    let valid = issuer.sign(Algorithm::RS256, &issuer.claims(SEED_ISSUER, "booking"));

    let trusting = lone_proxy(state(), app, |s| s.jwks_ca_pem = Some(root)).await;
    let at = trusting.bound.inbound;
    assert_eq!(call(at, None).await.0, StatusCode::FORBIDDEN, "no token");
    let (status, body, _) = call(at, Some(&valid)).await;
    assert_eq!(status, StatusCode::OK, "valid token: {body}");

    // Without the issuer's CA the server cannot be verified: no keys, so the token is
    // refused (fail closed).
    let doubting = lone_proxy(state(), app, |_| {}).await;
    let (status, body, _) = call(doubting.bound.inbound, Some(&valid)).await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "unverified key set: {body}"
    );
}
