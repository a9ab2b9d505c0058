//! Gateway mode in process: the listeners follow the state (a port bound when it appears,
//! closed when it goes); a request's Host picks the most specific virtual host; its routes
//! send it to a service's endpoint with `x-forwarded-for`/`-proto` set; an unknown host or
//! path is 404 NR; an `httpsRedirect` server answers 301 to https; HTTPS is terminated by
//! server name (MUTUAL wanting a client certificate), TLS passed through by server name, TCP
//! forwarded by port; a listener the gateway cannot serve is refused with the field named; the policies selecting the
//! gateway apply before routing (an invalid token 401, a denial 403), and routes match on the
//! verified token's claims (`@request.auth.claims.*`).

#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use mesh_proxy::socket::FixedDst;
use mesh_proxy::state::{State, proto};
use mesh_proxy::{Proxy, Setup, testing};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// An app answering with what a gateway adds: `path xff proto`.
async fn app() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (c, _) = l.accept().await.unwrap();
            tokio::spawn(async move {
                let svc =
                    hyper::service::service_fn(|req: Request<hyper::body::Incoming>| async move {
                        let h = |name: &str| {
                            req.headers()
                                .get(name)
                                .map_or("-".to_string(), |v| v.to_str().unwrap().to_string())
                        };
                        let body = format!(
                            "{} {} {}",
                            req.uri().path(),
                            h("x-forwarded-for"),
                            h("x-forwarded-proto")
                        );
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body))))
                    });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(c), svc)
                    .await;
            });
        }
    });
    addr
}

/// A proxy in gateway mode on 127.0.0.1, fed `state`.
async fn gateway(state: watch::Receiver<Arc<State>>) -> Proxy {
    Proxy::launch(
        &testing::loopback(),
        Setup {
            state,
            has_state: true,
            outbound_dst: Arc::new(FixedDst("10.0.0.1:1".parse().unwrap())),
            inbound_dst: Arc::new(FixedDst("10.0.0.1:1".parse().unwrap())),
            svids: None,
            on_demand: None,
            workload: common::workload("istio-ingressgateway", "istio-ingressgateway", ""),
            debug_authz: false,
            jwks_ca_pem: None,
            gateway: Some([127, 0, 0, 1].into()),
            limits: Default::default(),
        },
    )
    .await
    .unwrap()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn route(prefix: &str) -> proto::HttpRoute {
    proto::HttpRoute {
        matches: vec![proto::HttpMatch {
            uri: Some(proto::StringMatch {
                kind: Some(proto::string_match::Kind::Prefix(prefix.into())),
            }),
            ..Default::default()
        }],
        destinations: vec![proto::WeightedDestination {
            host: "shop.shop.svc.cluster.local".into(),
            port: 8080,
            weight: 100,
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn host(domain: &str, routes: Vec<proto::HttpRoute>, redirect: bool) -> proto::GatewayHost {
    proto::GatewayHost {
        domains: vec![domain.into()],
        https_redirect: redirect,
        routes: Some(proto::Service {
            namespace: "shop".into(),
            http_routes: routes,
            ..Default::default()
        }),
    }
}

fn state(app: SocketAddr, listeners: Vec<proto::GatewayListener>) -> proto::ProxyState {
    proto::ProxyState {
        services: vec![proto::Service {
            hostname: "shop.shop.svc.cluster.local".into(),
            namespace: "shop".into(),
            ports: vec![proto::ServicePort {
                port: 8080,
                name: "http".into(),
                protocol: proto::Protocol::Http.into(),
                target_port: u32::from(app.port()),
            }],
            endpoints: vec![proto::Endpoint {
                address: "127.0.0.1".into(),
                ..Default::default()
            }],
            ..Default::default()
        }],
        gateway_listeners: listeners,
        ..Default::default()
    }
}

fn listener(port: u16) -> proto::GatewayListener {
    proto::GatewayListener {
        port: u32::from(port),
        protocol: proto::Protocol::Http.into(),
        hosts: vec![
            host("shop.example.com", vec![route("/api")], false),
            host("*.example.com", Vec::new(), true),
            host("*", vec![route("/")], false),
        ],
        certificates: Vec::new(),
    }
}

async fn send(port: u16, host: &str, path: &str) -> Option<(StatusCode, String, String)> {
    send_with(port, host, path, &[]).await
}

async fn send_with(
    port: u16,
    host: &str,
    path: &str,
    headers: &[(&str, String)],
) -> Option<(StatusCode, String, String)> {
    let stream = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .ok()?;
    tokio::spawn(conn);
    let mut req = Request::builder().uri(path).header("host", host);
    for (k, v) in headers {
        req = req.header(*k, v);
    }
    let req = req.body(Full::new(Bytes::new())).unwrap();
    let resp = sender.send_request(req).await.ok()?;
    let status = resp.status();
    let location = resp
        .headers()
        .get("location")
        .map_or(String::new(), |v| v.to_str().unwrap().to_string());
    let body = resp.into_body().collect().await.ok()?.to_bytes();
    Some((
        status,
        String::from_utf8_lossy(&body).into_owned(),
        location,
    ))
}

/// Whether connecting to `port` comes to `bound` within 10 s (the gateway binds and closes
/// its listeners as the state arrives, in a task of its own).
async fn comes_to(port: u16, bound: bool) -> bool {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut pace = tokio::time::interval(Duration::from_millis(20));
    while tokio::time::Instant::now() < deadline {
        pace.tick().await;
        if TcpStream::connect(("127.0.0.1", port)).await.is_ok() == bound {
            return true;
        }
    }
    false
}

/// Waits until `port` answers.
async fn answering(port: u16) -> bool {
    comes_to(port, true).await
}

/// Waits until `port` refuses connections.
async fn closed(port: u16) -> bool {
    comes_to(port, false).await
}

#[tokio::test]
async fn a_gateway_routes_by_host_and_follows_the_state() {
    let app = app().await;
    let port = free_port();
    let first = State::compile(state(app, vec![listener(port)])).unwrap();
    let (tx, rx) = watch::channel(Arc::new(first));
    let _proxy = gateway(rx).await;
    assert!(
        answering(port).await,
        "the gateway never listened on {port}"
    );

    // The exact host wins over the wildcards; the app sees what a gateway adds.
    let (status, body, _) = send(port, "shop.example.com", "/api/items").await.unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, "/api/items 127.0.0.1 http");
    // The same host, a path no route matches.
    let (status, body, _) = send(port, "Shop.Example.com:80", "/other").await.unwrap();
    assert_eq!(
        (status, body.trim()),
        (StatusCode::NOT_FOUND, "no route matched")
    );
    // `*.example.com` redirects; `*` takes the rest.
    let (status, _, location) = send(port, "www.example.com:80", "/a?b=1").await.unwrap();
    assert_eq!(status, StatusCode::MOVED_PERMANENTLY);
    assert_eq!(location, "https://www.example.com/a?b=1");
    let (status, body, _) = send(port, "other.org", "/x").await.unwrap();
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::OK, "/x 127.0.0.1 http")
    );

    // A state without the port closes it; a new port opens.
    let other = free_port();
    let mut only_shop = listener(other);
    only_shop.hosts.truncate(1);
    tx.send(Arc::new(
        State::compile(state(app, vec![only_shop])).unwrap(),
    ))
    .unwrap();
    assert!(closed(port).await, "port {port} still open");
    assert!(
        answering(other).await,
        "the gateway never listened on {other}"
    );
    let (status, body, _) = send(other, "other.org", "/x").await.unwrap();
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(
        body.contains("no virtual host of this gateway serves \"other.org\""),
        "{body}"
    );
}

#[test]
fn a_listener_the_gateway_cannot_serve_is_refused() {
    // A TCP listener has one host (its routes): three virtual hosts make no sense there.
    let mut tcp = listener(8443);
    tcp.protocol = proto::Protocol::Tcp.into();
    let err = State::compile(state("127.0.0.1:1".parse().unwrap(), vec![tcp]))
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "service state: gatewayListeners[0].hosts: a Tcp listener has one host, its routes, and no certificates"
    );
    let mut unnamed = listener(8444);
    unnamed.protocol = proto::Protocol::Detect.into();
    let err = State::compile(state("127.0.0.1:1".parse().unwrap(), vec![unnamed]))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("names its protocol: HTTP, TLS or TCP"),
        "{err}"
    );
    let twice = vec![listener(8080), listener(8080)];
    let err = State::compile(state("127.0.0.1:1".parse().unwrap(), twice))
        .unwrap_err()
        .to_string();
    assert!(err.contains("port 8080 is listed twice"), "{err}");
}

fn claim_route(groups: &str, prefix: &str) -> proto::HttpRoute {
    let mut r = route(prefix);
    r.matches[0].headers = [(
        "@request.auth.claims.groups".to_string(),
        proto::StringMatch {
            kind: Some(proto::string_match::Kind::Exact(groups.into())),
        },
    )]
    .into();
    // Tell the routes apart at the app: the admins' requests rewritten under /admins/.
    r.rewrite = Some(proto::Rewrite {
        uri: "/admins/".into(),
        ..Default::default()
    });
    r
}

fn policy(name: &str, spec: serde_json::Value) -> proto::Policy {
    proto::Policy {
        name: name.into(),
        namespace: "istio-system".into(),
        spec_json: spec.to_string(),
        dry_run: false,
    }
}

#[tokio::test]
async fn policies_apply_at_the_gateway_and_routes_match_on_verified_claims() {
    use mesh_proxy::testing::jwt::Issuer;
    let issuer = Issuer::new("https://issuer.test");
    let app = app().await;
    let port = free_port();
    let mut s = state(
        app,
        vec![proto::GatewayListener {
            port: u32::from(port),
            protocol: proto::Protocol::Http.into(),
            hosts: vec![host(
                "*",
                vec![claim_route("admin", "/"), route("/")],
                false,
            )],
            certificates: Vec::new(),
        }],
    );
    s.request_authentications = vec![policy(
        "jwt",
        serde_json::json!({"jwtRules": [{"issuer": issuer.iss, "jwks": issuer.jwks()}]}),
    )];
    s.authorization_policies = vec![policy(
        "no-internal",
        serde_json::json!({"action": "DENY", "rules": [{"to": [{"operation": {"paths": ["/internal*"]}}]}]}),
    )];
    let (_tx, rx) = watch::channel(Arc::new(State::compile(s).unwrap()));
    let _proxy = gateway(rx).await;
    assert!(answering(port).await);
    let token = |groups: serde_json::Value| {
        let mut claims = issuer.claims("alice", "shop");
        claims["groups"] = groups;
        let t = issuer.sign(jsonwebtoken::Algorithm::RS256, &claims);
        ("authorization", format!("Bearer {t}"))
    };
    // A member of `admin` (one of a list) takes the claims route.
    let admin = [token(serde_json::json!(["dev", "admin"]))];
    let (status, body, _) = send_with(port, "shop", "/x", &admin).await.unwrap();
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::OK, "/admins/x 127.0.0.1 http")
    );
    // Another token, or none, the other route: the claim is unknown without a token.
    let dev = [token(serde_json::json!("dev"))];
    let (status, body, _) = send_with(port, "shop", "/x", &dev).await.unwrap();
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::OK, "/x 127.0.0.1 http")
    );
    let (status, body, _) = send(port, "shop", "/x").await.unwrap();
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::OK, "/x 127.0.0.1 http")
    );
    // A plain header of the claim's name is not the claim (and `@request...` is no valid
    // header name, so a client cannot send one).
    let forged = [("groups", "admin".to_string())];
    let (status, body, _) = send_with(port, "shop", "/x", &forged).await.unwrap();
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::OK, "/x 127.0.0.1 http")
    );
    // An invalid token is refused before any route; so is what a DENY policy names.
    let bad = [("authorization", "Bearer not.a.token".to_string())];
    let (status, _, _) = send_with(port, "shop", "/x", &bad).await.unwrap();
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, body, _) = send(port, "shop", "/internal/metrics").await.unwrap();
    assert_eq!(
        (status, body.trim()),
        (StatusCode::FORBIDDEN, "RBAC: access denied")
    );
}

/// A GET of `/api/x` over TLS to 127.0.0.1:`port` naming `sni`, trusting `root`, presenting `client`
/// (chain, key) when given: the status and body, or why it failed.
async fn tls_get(
    port: u16,
    sni: &str,
    root: &str,
    client: Option<(&str, &str)>,
) -> Result<(StatusCode, String), String> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(root.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots);
    let config = match client {
        Some((chain, key)) => builder
            .with_client_auth_cert(
                CertificateDer::pem_slice_iter(chain.as_bytes())
                    .collect::<Result<_, _>>()
                    .unwrap(),
                PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    let tcp = TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| e.to_string())?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from(sni.to_string()).unwrap(), tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let req = Request::builder()
        .uri("/api/x")
        .header("host", sni)
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| format!("request: {e}"))?;
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?;
    Ok((
        status,
        String::from_utf8_lossy(&body.to_bytes()).into_owned(),
    ))
}

#[tokio::test]
async fn https_servers_terminate_tls_by_server_name_and_mutual_ones_want_a_client_certificate() {
    use mesh_proxy::testing::tls::pki;
    let app = app().await;
    let (shop_root, shop_chain, shop_key) = pki("shop.example.com");
    let (blog_root, blog_chain, blog_key) = pki("www.blog.org");
    let (client_root, client_chain, client_key) = pki("partner.example.net");
    let (simple, mutual) = (free_port(), free_port());
    let certificate = |hosts: &[&str], chain: &str, key: &str, ca: &str| proto::ServerCertificate {
        hosts: hosts.iter().map(ToString::to_string).collect(),
        certificate_chain_pem: chain.into(),
        private_key_pem: key.into(),
        ca_certificates_pem: ca.into(),
    };
    let mut tls = listener(simple);
    tls.certificates = vec![
        certificate(&["shop.example.com"], &shop_chain, &shop_key, ""),
        certificate(&["*.blog.org"], &blog_chain, &blog_key, ""),
    ];
    let mut mtls = listener(mutual);
    mtls.certificates = vec![certificate(
        &["shop.example.com"],
        &shop_chain,
        &shop_key,
        &client_root,
    )];
    let (_tx, rx) = watch::channel(Arc::new(
        State::compile(state(app, vec![tls, mtls])).unwrap(),
    ));
    let _proxy = gateway(rx).await;
    assert!(answering(simple).await && answering(mutual).await);
    // Each name gets its own certificate (each client trusts only its site's CA); the app
    // sees the request came over https.
    let shop = tls_get(simple, "shop.example.com", &shop_root, None).await;
    assert_eq!(
        shop,
        Ok((StatusCode::OK, "/api/x 127.0.0.1 https".to_string()))
    );
    let blog = tls_get(simple, "www.blog.org", &blog_root, None).await;
    assert_eq!(blog.map(|(s, _)| s), Ok(StatusCode::OK));
    // The shop's certificate does not pass for the blog.
    assert!(
        tls_get(simple, "www.blog.org", &shop_root, None)
            .await
            .is_err()
    );
    // MUTUAL: no client certificate, no answer; one from the trusted CA, the route.
    let refused = tls_get(mutual, "shop.example.com", &shop_root, None).await;
    assert!(refused.is_err(), "{refused:?}");
    let stranger = pki("stranger.example.net");
    let wrong = tls_get(
        mutual,
        "shop.example.com",
        &shop_root,
        Some((&stranger.1, &stranger.2)),
    )
    .await;
    assert!(wrong.is_err(), "{wrong:?}");
    let partner = tls_get(
        mutual,
        "shop.example.com",
        &shop_root,
        Some((&client_chain, &client_key)),
    )
    .await;
    assert_eq!(partner.map(|(s, _)| s), Ok(StatusCode::OK));
    // A broken certificate is refused with the field named.
    let mut broken = listener(free_port());
    broken.certificates = vec![certificate(&["x"], "not pem", &shop_key, "")];
    let err = State::compile(state(app, vec![broken]))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("gatewayListeners[0].certificates[0].certificateChainPem"),
        "{err}"
    );
}

/// A service on 127.0.0.1:`port` (port 443 of the mesh), with no sidecar.
fn backend(host: &str, port: u16) -> proto::Service {
    proto::Service {
        hostname: host.into(),
        namespace: "shop".into(),
        ports: vec![proto::ServicePort {
            port: 443,
            name: "tls".into(),
            protocol: proto::Protocol::Tls.into(),
            target_port: u32::from(port),
        }],
        endpoints: vec![proto::Endpoint {
            address: "127.0.0.1".into(),
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn to(host: &str) -> Vec<proto::WeightedDestination> {
    vec![proto::WeightedDestination {
        host: host.into(),
        port: 443,
        weight: 100,
        ..Default::default()
    }]
}

#[tokio::test]
async fn tls_is_passed_through_by_server_name_and_tcp_by_port() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (https, root) = mesh_proxy::testing::tls::https_server("api.example.com", None, |_| {
        "from the backend".to_string()
    })
    .await;
    let echo = common::tcp_app().await;
    let (tls_port, tcp_port) = (free_port(), free_port());
    let layer4 =
        |port: u16, protocol: proto::Protocol, routes: proto::Service| proto::GatewayListener {
            port: u32::from(port),
            protocol: protocol.into(),
            hosts: vec![proto::GatewayHost {
                domains: vec!["*".into()],
                https_redirect: false,
                routes: Some(routes),
            }],
            certificates: Vec::new(),
        };
    let mut s = state("127.0.0.1:1".parse().unwrap(), Vec::new());
    s.services = vec![
        backend("api.shop.svc.cluster.local", https.port()),
        backend("echo.shop.svc.cluster.local", echo.port()),
    ];
    s.gateway_listeners = vec![
        layer4(
            tls_port,
            proto::Protocol::Tls,
            proto::Service {
                namespace: "istio-system".into(),
                tls_routes: vec![proto::TlsRoute {
                    sni_hosts: vec!["api.example.com".into()],
                    port: 0,
                    destinations: to("api.shop.svc.cluster.local"),
                }],
                ..Default::default()
            },
        ),
        layer4(
            tcp_port,
            proto::Protocol::Tcp,
            proto::Service {
                namespace: "istio-system".into(),
                tcp_routes: vec![proto::TcpRoute {
                    port: u32::from(tcp_port),
                    destinations: to("echo.shop.svc.cluster.local"),
                }],
                ..Default::default()
            },
        ),
    ];
    let (_tx, rx) = watch::channel(Arc::new(State::compile(s).unwrap()));
    let _proxy = gateway(rx).await;
    assert!(answering(tls_port).await && answering(tcp_port).await);
    // The backend's own certificate answers: the gateway only read the server name.
    let (status, body) = tls_get(tls_port, "api.example.com", &root, None)
        .await
        .unwrap();
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::OK, "from the backend")
    );
    // A name no route has reaches nothing.
    assert!(
        tls_get(tls_port, "other.example.com", &root, None)
            .await
            .is_err()
    );
    // TCP: bytes both ways.
    let mut c = TcpStream::connect(("127.0.0.1", tcp_port)).await.unwrap();
    c.write_all(b"hello").await.unwrap();
    let mut buf = [0u8; 9];
    c.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"app:hello");
}
