//! HTTP through the proxy in-process on 127.0.0.1: VirtualService routing, weighted splits,
//! direct responses, redirects, rewrites, header operations, the headers Envoy users expect,
//! HTTP/2, failures with Envoy's codes, upstream connection reuse and WebSocket upgrades.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use mesh_proxy::Proxy;
use mesh_proxy::state::{State, proto};
use mesh_proxy::testing;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// An HTTP server (HTTP/1.1 and h2c) that answers with JSON describing the request it saw, and
/// echoes WebSocket-style upgrades. Counts the connections it accepted.
struct Backend {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
}

async fn backend(name: &'static str) -> Backend {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let count = connections.clone();
    tokio::spawn(async move {
        loop {
            let (c, _) = l.accept().await.unwrap();
            count.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    move |mut req: Request<hyper::body::Incoming>| async move {
                        if req.headers().contains_key(hyper::header::UPGRADE) {
                            let upgrade = hyper::upgrade::on(&mut req);
                            tokio::spawn(async move {
                                let mut io = TokioIo::new(upgrade.await.unwrap());
                                let mut buf = [0u8; 64];
                                while let Ok(n) = io.read(&mut buf).await {
                                    if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                                        break;
                                    }
                                }
                            });
                            let mut r = Response::new(Full::new(Bytes::new()));
                            *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
                            r.headers_mut()
                                .insert("upgrade", "websocket".parse().unwrap());
                            r.headers_mut()
                                .insert("connection", "upgrade".parse().unwrap());
                            return Ok::<_, Infallible>(r);
                        }
                        let headers: HashMap<String, String> = req
                            .headers()
                            .iter()
                            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
                            .collect();
                        let (parts, body) = req.into_parts();
                        let received = body
                            .collect()
                            .await
                            .map(|b| b.to_bytes().len())
                            .unwrap_or(0);
                        let req = Request::from_parts(parts, ());
                        let body = serde_json::json!({
                        "body_len": received,
                            "server": name,
                            "method": req.method().as_str(),
                            "path": req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/"),
                            "version": format!("{:?}", req.version()),
                            "headers": headers,
                        });
                        let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
                        r.headers_mut().insert("x-backend", name.parse().unwrap());
                        Ok::<_, Infallible>(r)
                    },
                );
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(c), svc)
                    .await;
            });
        }
    });
    Backend { addr, connections }
}

fn service(
    host: &str,
    vip: &str,
    eps: &[(SocketAddr, &str)],
    routes: Vec<proto::HttpRoute>,
) -> proto::Service {
    proto::Service {
        hostname: host.into(),
        namespace: "default".into(),
        addresses: vec![vip.into()],
        ports: vec![proto::ServicePort {
            port: 80,
            name: "http".into(),
            ..Default::default()
        }],
        endpoints: eps
            .iter()
            .map(|(a, version)| proto::Endpoint {
                address: a.ip().to_string(),
                ports: [("http".to_string(), u32::from(a.port()))].into(),
                labels: [("version".to_string(), (*version).to_string())].into(),
                ..Default::default()
            })
            .collect(),
        subsets: ["v1", "v2"]
            .iter()
            .map(|v| proto::Subset {
                name: (*v).into(),
                labels: [("version".to_string(), (*v).to_string())].into(),
                ..Default::default()
            })
            .collect(),
        http_routes: routes,
        ..Default::default()
    }
}

fn dest(host: &str, subset: &str, weight: u32) -> proto::WeightedDestination {
    proto::WeightedDestination {
        host: host.into(),
        subset: subset.into(),
        weight,
        ..Default::default()
    }
}

fn prefix(p: &str) -> proto::HttpMatch {
    proto::HttpMatch {
        uri: Some(proto::StringMatch {
            kind: Some(proto::string_match::Kind::Prefix(p.into())),
        }),
        ..Default::default()
    }
}

async fn proxy_for(services: Vec<proto::Service>, vip: &str) -> (Proxy, watch::Sender<Arc<State>>) {
    proxy_with(
        proto::ProxyState {
            version: "h1".into(),
            services,
            namespace: "default".into(),
            ..Default::default()
        },
        vip,
    )
    .await
}

/// A proxy serving `state`, its captured connections headed for `vip`.
async fn proxy_with(state: proto::ProxyState, vip: &str) -> (Proxy, watch::Sender<Arc<State>>) {
    let (tx, rx) = watch::channel(testing::compile(state));
    (testing::start(rx, vip, "10.0.0.1:1", None).await, tx)
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

async fn h1(addr: SocketAddr) -> Sender {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    sender
}

struct Answer {
    status: StatusCode,
    headers: hyper::HeaderMap,
    json: serde_json::Value,
    text: String,
}

async fn get(sender: &mut Sender, path: &str, headers: &[(&str, &str)]) -> Answer {
    let mut req = Request::builder().uri(path).header("host", "shop.default");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = sender
        .send_request(req.body(Full::new(Bytes::new())).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let text = String::from_utf8_lossy(&body).into_owned();
    Answer {
        status,
        headers,
        json: serde_json::from_str(&text).unwrap_or(serde_json::Value::Null),
        text,
    }
}

const SHOP: &str = "shop.default.svc.cluster.local";
const VIP: &str = "10.96.0.20:80";

#[tokio::test]
async fn routes_by_path_to_subsets_and_other_services() {
    let (v1, v2, other) = (
        backend("v1").await,
        backend("v2").await,
        backend("other").await,
    );
    let routes = vec![
        proto::HttpRoute {
            name: "to-v2".into(),
            matches: vec![prefix("/v2")],
            destinations: vec![dest(SHOP, "v2", 100)],
            ..Default::default()
        },
        proto::HttpRoute {
            name: "to-other".into(),
            matches: vec![prefix("/other")],
            destinations: vec![dest("other", "", 100)],
            ..Default::default()
        },
        proto::HttpRoute {
            name: "default".into(),
            destinations: vec![dest(SHOP, "v1", 100)],
            ..Default::default()
        },
    ];
    let shop = service(
        SHOP,
        "10.96.0.20",
        &[(v1.addr, "v1"), (v2.addr, "v2")],
        routes,
    );
    let other_svc = service(
        "other.default.svc.cluster.local",
        "10.96.0.21",
        &[(other.addr, "v1")],
        vec![],
    );
    let (proxy, _tx) = proxy_for(vec![shop, other_svc], VIP).await;
    let mut c = h1(proxy.bound.outbound).await;
    assert_eq!(get(&mut c, "/v2/items", &[]).await.json["server"], "v2");
    assert_eq!(get(&mut c, "/other", &[]).await.json["server"], "other");
    assert_eq!(get(&mut c, "/anything", &[]).await.json["server"], "v1");
}

#[tokio::test]
async fn a_90_10_split_stays_within_statistical_bounds() {
    let (v1, v2) = (backend("v1").await, backend("v2").await);
    let routes = vec![proto::HttpRoute {
        destinations: vec![dest(SHOP, "v1", 90), dest(SHOP, "v2", 10)],
        ..Default::default()
    }];
    let (proxy, _tx) = proxy_for(
        vec![service(
            SHOP,
            "10.96.0.20",
            &[(v1.addr, "v1"), (v2.addr, "v2")],
            routes,
        )],
        VIP,
    )
    .await;
    let mut c = h1(proxy.bound.outbound).await;
    let n = 2000;
    let mut to_v2 = 0;
    for _ in 0..n {
        if get(&mut c, "/", &[]).await.json["server"] == "v2" {
            to_v2 += 1;
        }
    }
    // Expect 200; the standard deviation is sqrt(2000 * 0.1 * 0.9) ≈ 13.4, so ±67 is five.
    assert!((133..=267).contains(&to_v2), "v2 got {to_v2} of {n}");
}

#[tokio::test]
async fn direct_responses_redirects_rewrites_and_header_operations() {
    let v1 = backend("v1").await;
    let ops = |set: &str, add: &str, remove: &str| proto::HeaderOps {
        set: [(set.to_string(), "s".to_string())].into(),
        add: [(add.to_string(), "a".to_string())].into(),
        remove: vec![remove.to_string()],
    };
    let routes = vec![
        proto::HttpRoute {
            matches: vec![prefix("/svc/")],
            rewrite: Some(proto::Rewrite {
                uri_regex: r"^/svc/([a-z]+)/(.*)$".into(),
                uri_regex_substitution: r"/\2/\1".into(),
                ..Default::default()
            }),
            destinations: vec![dest(SHOP, "", 100)],
            ..Default::default()
        },
        proto::HttpRoute {
            matches: vec![prefix("/down")],
            direct_response: Some(proto::DirectResponse {
                status: 503,
                body: "maintenance".into(),
            }),
            ..Default::default()
        },
        proto::HttpRoute {
            matches: vec![prefix("/old")],
            redirect: Some(proto::Redirect {
                uri: "/new".into(),
                authority: "shop.example.com".into(),
                ..Default::default()
            }),
            ..Default::default()
        },
        // A Gateway API prefix redirect: the matched segment replaced, the query kept, the
        // scheme's default port left out.
        proto::HttpRoute {
            matches: vec![prefix("/moved/")],
            redirect: Some(proto::Redirect {
                uri_regex: "^/moved(/.*)?$".into(),
                uri_regex_substitution: r"/here\1".into(),
                scheme: "https".into(),
                protocol_default_port: true,
                code: 302,
                ..Default::default()
            }),
            ..Default::default()
        },
        proto::HttpRoute {
            matches: vec![prefix("/port/")],
            redirect: Some(proto::Redirect {
                port: 8443,
                scheme: "https".into(),
                ..Default::default()
            }),
            ..Default::default()
        },
        proto::HttpRoute {
            matches: vec![prefix("/api/v1/")],
            rewrite: Some(proto::Rewrite {
                uri: "/v1/".into(),
                authority: "internal.shop".into(),
                ..Default::default()
            }),
            request_headers: Some(ops("x-set", "x-added", "x-secret")),
            response_headers: Some(ops("x-resp-set", "x-resp-added", "x-backend")),
            destinations: vec![dest(SHOP, "", 100)],
            ..Default::default()
        },
    ];
    let (proxy, _tx) = proxy_for(
        vec![service(SHOP, "10.96.0.20", &[(v1.addr, "v1")], routes)],
        VIP,
    )
    .await;
    let mut c = h1(proxy.bound.outbound).await;

    assert_eq!(
        get(&mut c, "/svc/users/list", &[]).await.json["path"],
        "/list/users"
    );

    let down = get(&mut c, "/down", &[]).await;
    assert_eq!(
        (down.status, down.text.as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, "maintenance")
    );

    let old = get(&mut c, "/old/x", &[]).await;
    assert_eq!(old.status, StatusCode::MOVED_PERMANENTLY);
    assert_eq!(old.headers["location"], "http://shop.example.com/new");

    let moved = get(&mut c, "/moved/a/b?x=1", &[]).await;
    assert_eq!(moved.status, StatusCode::FOUND);
    assert_eq!(
        moved.headers["location"],
        "https://shop.default/here/a/b?x=1"
    );
    let port = get(&mut c, "/port/p", &[]).await;
    assert_eq!(port.headers["location"], "https://shop.default:8443/port/p");

    let api = get(
        &mut c,
        "/api/v1/items?page=2",
        &[("x-secret", "t"), ("x-set", "old")],
    )
    .await;
    assert_eq!(api.json["path"], "/v1/items?page=2");
    let seen = &api.json["headers"];
    assert_eq!(seen["host"], "internal.shop");
    assert_eq!(seen["x-set"], "s");
    assert_eq!(seen["x-added"], "a");
    assert!(seen.get("x-secret").is_none());
    assert_eq!(api.headers["x-resp-set"], "s");
    assert_eq!(api.headers["x-resp-added"], "a");
    assert!(!api.headers.contains_key("x-backend"));
}

#[tokio::test]
async fn request_ids_and_forwarded_proto_are_added_like_envoy() {
    let v1 = backend("v1").await;
    let (proxy, _tx) = proxy_for(
        vec![service(SHOP, "10.96.0.20", &[(v1.addr, "v1")], vec![])],
        VIP,
    )
    .await;
    let mut c = h1(proxy.bound.outbound).await;
    let a = get(&mut c, "/", &[]).await;
    let id = a.json["headers"]["x-request-id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(id.len(), 36);
    assert_eq!(a.json["headers"]["x-forwarded-proto"], "http");
    let b = get(
        &mut c,
        "/",
        &[
            ("x-request-id", "keep-me"),
            (
                "traceparent",
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            ),
        ],
    )
    .await;
    assert_eq!(b.json["headers"]["x-request-id"], "keep-me");
    assert_eq!(
        b.json["headers"]["traceparent"],
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    );
}

#[tokio::test]
async fn failures_answer_with_envoys_codes() {
    let routes = vec![proto::HttpRoute {
        matches: vec![prefix("/only")],
        destinations: vec![dest(SHOP, "", 100)],
        ..Default::default()
    }];
    // An endpoint nobody listens on.
    let dead: SocketAddr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let (proxy, tx) = proxy_for(
        vec![service(SHOP, "10.96.0.20", &[(dead, "v1")], routes)],
        VIP,
    )
    .await;
    let mut c = h1(proxy.bound.outbound).await;
    assert_eq!(
        get(&mut c, "/elsewhere", &[]).await.status,
        StatusCode::NOT_FOUND,
        "no route: 404 (NR)"
    );
    assert_eq!(
        get(&mut c, "/only", &[]).await.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "connect failure: 503 (UF)"
    );
    let empty = State::compile(proto::ProxyState {
        services: vec![service(SHOP, "10.96.0.20", &[], vec![])],
        ..Default::default()
    })
    .unwrap();
    tx.send_replace(Arc::new(empty));
    let none = get(&mut c, "/", &[]).await;
    assert_eq!(
        none.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "no endpoints: 503 (UH)"
    );
    assert_eq!(none.text, "no healthy upstream\n");
}

#[tokio::test]
async fn http2_clients_are_served_and_forwarded() {
    let v1 = backend("v1").await;
    let mut svc = service(SHOP, "10.96.0.20", &[(v1.addr, "v1")], vec![]);
    svc.ports[0].protocol = proto::Protocol::Http2.into();
    let (proxy, _tx) = proxy_for(vec![svc], VIP).await;
    let stream = TcpStream::connect(proxy.bound.outbound).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let mut answers = Vec::new();
    for i in 0..20 {
        let req = Request::builder()
            .uri(format!("http://shop/stream/{i}"))
            .body(Empty::<Bytes>::new())
            .unwrap();
        answers.push(sender.send_request(req));
    }
    for (i, a) in answers.into_iter().enumerate() {
        let resp = a.await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let body: serde_json::Value =
            serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
        assert_eq!(body["path"], format!("/stream/{i}"));
        assert_eq!(body["version"], "HTTP/2.0");
    }
}

#[tokio::test]
async fn http2_clients_reach_an_http_port_over_http1() {
    // An `http` port of a destination without a sidecar may speak only HTTP/1.1 (nginx does):
    // the port decides the upstream protocol, not the client, as in Istio.
    let v1 = backend("v1").await;
    let svc = service(SHOP, "10.96.0.20", &[(v1.addr, "v1")], vec![]);
    let (proxy, _tx) = proxy_for(vec![svc], VIP).await;
    let stream = TcpStream::connect(proxy.bound.outbound).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = Request::builder()
        .uri("http://shop/h1")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let body: serde_json::Value =
        serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(body["version"], "HTTP/1.1");
    assert_eq!(body["path"], "/h1");
}

#[tokio::test]
async fn upstream_connections_are_reused() {
    let v1 = backend("v1").await;
    let (proxy, _tx) = proxy_for(
        vec![service(SHOP, "10.96.0.20", &[(v1.addr, "v1")], vec![])],
        VIP,
    )
    .await;
    let mut c = h1(proxy.bound.outbound).await;
    let n = 1000;
    for _ in 0..n {
        assert_eq!(get(&mut c, "/", &[]).await.status, StatusCode::OK);
    }
    let opened = v1.connections.load(Ordering::Relaxed);
    let reuse = 1.0 - opened as f64 / f64::from(n);
    eprintln!(
        "{n} requests over {opened} upstream connection(s): {:.1}% reuse",
        reuse * 100.0
    );
    assert!(
        reuse >= 0.99,
        "only {:.1}% of requests reused a connection",
        reuse * 100.0
    );
}

#[tokio::test]
async fn websocket_upgrades_pass_through() {
    let v1 = backend("v1").await;
    let (proxy, _tx) = proxy_for(
        vec![service(SHOP, "10.96.0.20", &[(v1.addr, "v1")], vec![])],
        VIP,
    )
    .await;
    let mut c = TcpStream::connect(proxy.bound.outbound).await.unwrap();
    c.write_all(b"GET /ws HTTP/1.1\r\nhost: shop\r\nconnection: upgrade\r\nupgrade: websocket\r\nsec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n").await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        c.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    c.write_all(b"frame-1").await.unwrap();
    let mut buf = [0u8; 7];
    tokio::time::timeout(Duration::from_secs(5), c.read_exact(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf, b"frame-1");
}

#[tokio::test]
async fn undeclared_ports_are_detected_as_http() {
    let v1 = backend("v1").await;
    let mut svc = service(
        SHOP,
        "10.96.0.20",
        &[(v1.addr, "v1")],
        vec![
            proto::HttpRoute {
                matches: vec![prefix("/x")],
                direct_response: Some(proto::DirectResponse {
                    status: 204,
                    body: String::new(),
                }),
                ..Default::default()
            },
            proto::HttpRoute {
                destinations: vec![dest(SHOP, "", 100)],
                ..Default::default()
            },
        ],
    );
    svc.ports[0].name = "web".into();
    let (proxy, _tx) = proxy_for(vec![svc], VIP).await;
    let mut c = h1(proxy.bound.outbound).await;
    assert_eq!(
        get(&mut c, "/x", &[]).await.status,
        StatusCode::NO_CONTENT,
        "sniffed as HTTP, so routes apply"
    );
}

#[tokio::test]
async fn chunked_request_bodies_are_streamed_through() {
    let v1 = backend("v1").await;
    let (proxy, _tx) = proxy_for(
        vec![service(SHOP, "10.96.0.20", &[(v1.addr, "v1")], vec![])],
        VIP,
    )
    .await;
    let mut c = TcpStream::connect(proxy.bound.outbound).await.unwrap();
    c.write_all(b"POST /upload HTTP/1.1\r\nhost: shop\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n").await.unwrap();
    for chunk in ["hello ", "chunked ", "world"] {
        c.write_all(format!("{:x}\r\n{chunk}\r\n", chunk.len()).as_bytes())
            .await
            .unwrap();
    }
    c.write_all(b"0\r\n\r\n").await.unwrap();
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(5), c.read_to_string(&mut out))
        .await
        .unwrap()
        .unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.contains("\"body_len\":19"), "{out}");
}

#[tokio::test]
async fn cors_preflights_are_answered_and_responses_tagged() {
    let v1 = backend("v1").await;
    let cors = proto::Cors {
        allow_origins: vec![proto::StringMatch {
            kind: Some(proto::string_match::Kind::Exact(
                "https://shop.example.com".into(),
            )),
        }],
        allow_methods: vec!["GET".into(), "POST".into()],
        allow_headers: vec!["x-token".into()],
        max_age_seconds: 600,
        ..Default::default()
    };
    let routes = vec![proto::HttpRoute {
        cors: Some(cors),
        destinations: vec![dest(SHOP, "", 100)],
        ..Default::default()
    }];
    let (proxy, _tx) = proxy_for(
        vec![service(SHOP, "10.96.0.20", &[(v1.addr, "v1")], routes)],
        VIP,
    )
    .await;
    let mut c = h1(proxy.bound.outbound).await;
    let pre = Request::builder()
        .method("OPTIONS")
        .uri("/cart")
        .header("host", "shop")
        .header("origin", "https://shop.example.com")
        .header("access-control-request-method", "POST")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = c.send_request(pre).await.unwrap();
    assert_eq!(
        resp.headers()["access-control-allow-origin"],
        "https://shop.example.com"
    );
    assert_eq!(resp.headers()["access-control-allow-methods"], "GET,POST");
    assert_eq!(resp.headers()["access-control-max-age"], "600");
    let _ = resp.into_body().collect().await;
    let ok = get(&mut c, "/cart", &[("origin", "https://shop.example.com")]).await;
    assert_eq!(
        ok.headers["access-control-allow-origin"],
        "https://shop.example.com"
    );
    let other = get(&mut c, "/cart", &[("origin", "https://evil.example.com")]).await;
    assert!(!other.headers.contains_key("access-control-allow-origin"));
}

/// Builds the path and headers that carry a user's key.
type RequestFor = fn(&str) -> (String, Vec<(&'static str, String)>);

#[tokio::test]
async fn consistent_hashing_keeps_a_user_on_one_endpoint() {
    use proto::consistent_hash::Key;
    let eps = [
        backend("e0").await,
        backend("e1").await,
        backend("e2").await,
    ];
    let cases: [(Key, RequestFor); 3] = [
        (Key::HttpHeaderName("x-user".into()), |u| {
            ("/".into(), vec![("x-user", u.to_string())])
        }),
        (Key::HttpCookie("session".into()), |u| {
            (
                "/".into(),
                vec![("cookie", format!("theme=dark; session={u}"))],
            )
        }),
        (Key::HttpQueryParameterName("user".into()), |u| {
            (format!("/?page=1&user={u}"), vec![])
        }),
    ];
    for (key, request) in cases {
        let mut svc = service(
            SHOP,
            "10.96.0.20",
            &[
                (eps[0].addr, "v1"),
                (eps[1].addr, "v1"),
                (eps[2].addr, "v1"),
            ],
            vec![],
        );
        svc.traffic_policy = Some(proto::TrafficPolicy {
            consistent_hash: Some(proto::ConsistentHash {
                key: Some(key.clone()),
            }),
            ..Default::default()
        });
        let (proxy, _tx) = proxy_for(vec![svc], VIP).await;
        let mut c = h1(proxy.bound.outbound).await;
        let mut servers_seen = std::collections::HashSet::new();
        for user in 0..30 {
            let (path, headers) = request(&format!("user-{user}"));
            let headers: Vec<(&str, &str)> =
                headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let first = get(&mut c, &path, &headers).await.json["server"].clone();
            for _ in 0..5 {
                assert_eq!(
                    get(&mut c, &path, &headers).await.json["server"],
                    first,
                    "{key:?}: user-{user} moved"
                );
            }
            servers_seen.insert(first.to_string());
        }
        assert_eq!(
            servers_seen.len(),
            3,
            "{key:?}: users spread over all endpoints"
        );
    }
}

#[tokio::test]
async fn routes_can_match_the_calling_workloads_labels() {
    let (v1, v2) = (backend("v1").await, backend("v2").await);
    let routes = vec![
        proto::HttpRoute {
            matches: vec![proto::HttpMatch {
                source_labels: [("app".to_string(), "order".to_string())].into(),
                ..Default::default()
            }],
            destinations: vec![dest(SHOP, "v2", 100)],
            ..Default::default()
        },
        proto::HttpRoute {
            destinations: vec![dest(SHOP, "v1", 100)],
            ..Default::default()
        },
    ];
    let svc = service(
        SHOP,
        "10.96.0.20",
        &[(v1.addr, "v1"), (v2.addr, "v2")],
        routes,
    );
    for (labels, want) in [
        (vec![("app", "order")], "v2"),
        (vec![("app", "billing")], "v1"),
    ] {
        let state = proto::ProxyState {
            services: vec![svc.clone()],
            namespace: "default".into(),
            workload_labels: labels
                .iter()
                .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
                .collect(),
            ..Default::default()
        };
        let (proxy, _tx) = proxy_with(state, VIP).await;
        let mut c = h1(proxy.bound.outbound).await;
        assert_eq!(
            get(&mut c, "/", &[]).await.json["server"],
            want,
            "{labels:?}"
        );
    }
}

#[tokio::test]
async fn a_drain_closes_idle_keepalive_connections_promptly() {
    let v1 = backend("v1").await;
    let (proxy, _tx) = proxy_for(
        vec![service(SHOP, "10.96.0.20", &[(v1.addr, "v1")], vec![])],
        VIP,
    )
    .await;
    let mut c = h1(proxy.bound.outbound).await;
    assert_eq!(get(&mut c, "/", &[]).await.status, StatusCode::OK);
    // The keep-alive connection is idle now; the drain must not wait for its deadline.
    let started = tokio::time::Instant::now();
    let finished = proxy.drain(Duration::from_secs(30)).await;
    assert!(finished, "every connection finished");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "drain took {:?}",
        started.elapsed()
    );
    // The client sees its connection closed.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !c.is_closed() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the idle connection was not closed"
        );
        tokio::task::yield_now().await;
    }
}

#[tokio::test]
async fn a_drain_lets_a_request_in_flight_finish() {
    // A backend that answers only when told to, and says when a request arrived.
    let (arrived_tx, mut arrived_rx) = tokio::sync::mpsc::channel::<()>(1);
    let (release_tx, release_rx) = tokio::sync::watch::channel(false);
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let slow = l.local_addr().unwrap();
    tokio::spawn(async move {
        let (c, _) = l.accept().await.unwrap();
        let svc = hyper::service::service_fn(move |_req| {
            let arrived = arrived_tx.clone();
            let mut release = release_rx.clone();
            async move {
                let _ = arrived.send(()).await;
                let _ = release.wait_for(|go| *go).await;
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"finished"))))
            }
        });
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(c), svc)
            .await;
    });
    let (proxy, _tx) = proxy_for(
        vec![service(SHOP, "10.96.0.20", &[(slow, "v1")], vec![])],
        VIP,
    )
    .await;
    let mut c = h1(proxy.bound.outbound).await;
    let in_flight = tokio::spawn(async move { get(&mut c, "/slow", &[]).await });
    arrived_rx
        .recv()
        .await
        .expect("the request reached the backend");
    let draining = tokio::spawn(proxy.drain(Duration::from_secs(30)));
    release_tx.send(true).unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(10), in_flight)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (answer.status, answer.text.as_str()),
        (StatusCode::OK, "finished")
    );
    assert!(
        tokio::time::timeout(Duration::from_secs(10), draining)
            .await
            .unwrap()
            .unwrap(),
        "drain finished in time"
    );
}

#[tokio::test]
async fn faults_abort_and_delay_the_routes_they_are_on() {
    // Bookinfo's ratings-test-abort shape: requests from jason are aborted with 500 and never
    // reach the service; the others are delayed, then forwarded.
    let b = backend("v1").await;
    let jason = proto::HttpMatch {
        headers: [(
            "end-user".to_string(),
            proto::StringMatch {
                kind: Some(proto::string_match::Kind::Exact("jason".into())),
            },
        )]
        .into(),
        ..Default::default()
    };
    let routes = vec![
        proto::HttpRoute {
            matches: vec![jason],
            destinations: vec![dest(SHOP, "v1", 100)],
            fault: Some(proto::FaultInjection {
                abort_http_status: 500,
                abort_percent: 100.0,
                ..Default::default()
            }),
            ..Default::default()
        },
        proto::HttpRoute {
            destinations: vec![dest(SHOP, "v1", 100)],
            fault: Some(proto::FaultInjection {
                delay_ms: 300,
                delay_percent: 100.0,
                ..Default::default()
            }),
            ..Default::default()
        },
    ];
    let (proxy, _tx) = proxy_for(
        vec![service(SHOP, "10.96.0.20", &[(b.addr, "v1")], routes)],
        VIP,
    )
    .await;
    let mut c = h1(proxy.bound.outbound).await;
    let aborted = get(&mut c, "/ratings/0", &[("end-user", "jason")]).await;
    assert_eq!(aborted.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(aborted.text, "fault filter abort");
    assert_eq!(
        b.connections.load(Ordering::SeqCst),
        0,
        "an aborted request never reaches the service"
    );
    let started = tokio::time::Instant::now();
    let delayed = get(&mut c, "/ratings/0", &[("end-user", "bob")]).await;
    assert_eq!(delayed.status, StatusCode::OK, "{}", delayed.text);
    // A delay cannot end early: this lower bound is exact, not a timing guess.
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "delayed {:?}",
        started.elapsed()
    );
}
