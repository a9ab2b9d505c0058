//! mesh-echo in-process on 127.0.0.1 (no mesh, no root): every face answers with who it is,
//! `/call` chains, and the latency and error knobs do what they say.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::time::{Duration, Instant};

use mesh_e2e::echo::{self, Echo, EchoConfig};
use mesh_e2e::load::{self, LoadConfig, Progress};
use mesh_e2e::ws_grpc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

struct Server {
    http: String,
    tcp: String,
    grpc: String,
}

async fn start(config: EchoConfig) -> Server {
    let http = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let grpc = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = Server {
        http: http.local_addr().unwrap().to_string(),
        tcp: tcp.local_addr().unwrap().to_string(),
        grpc: grpc.local_addr().unwrap().to_string(),
    };
    tokio::spawn(echo::serve(config, http, Some(tcp), Some(grpc)));
    server
}

fn config(service: &str, version: &str) -> EchoConfig {
    EchoConfig {
        service: service.into(),
        version: version.into(),
        pod: format!("{service}-0"),
        namespace: "default".into(),
        ..EchoConfig::default()
    }
}

async fn get(url: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<bytes::Bytes>>();
    let mut req = http::Request::get(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = client
        .request(req.body(http_body_util::Empty::new()).unwrap())
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let body = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .unwrap()
        .to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn http1_and_h2c_answer_with_who_answered_and_who_called() {
    let s = start(config("shipping", "v2")).await;
    let (status, body) = get(
        &format!("http://{}/path?q=1", s.http),
        &[(
            "x-forwarded-client-cert",
            "By=spiffe://cluster.local/ns/default/sa/shipping;URI=spiffe://cluster.local/ns/default/sa/order",
        )],
    )
    .await;
    assert_eq!(status, 200);
    let echo: Echo = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (
            echo.service.as_str(),
            echo.version.as_str(),
            echo.pod.as_str()
        ),
        ("shipping", "v2", "shipping-0")
    );
    assert_eq!(echo.protocol, "HTTP/1.1");
    assert_eq!(echo.path, "/path?q=1");
    assert_eq!(
        echo.peer.as_deref(),
        Some("spiffe://cluster.local/ns/default/sa/order")
    );
    // h2c through the load generator.
    let report = load::run(
        LoadConfig {
            url: format!("http://{}/", s.http),
            requests: Some(20),
            http2: true,
            ..LoadConfig::default()
        },
        Progress::default(),
    )
    .await
    .unwrap();
    assert_eq!(report.ok, 20, "{report:?}");
    assert_eq!(report.by_version.get("v2"), Some(&20));
    assert_eq!(report.by_peer.get("none"), Some(&20), "no sidecar vouched");
}

#[tokio::test]
async fn call_chains_to_another_echo() {
    let front = start(config("order", "v1")).await;
    let back = start(config("shipping", "v1")).await;
    let url = format!(
        "http://{}/call?url=http%3A%2F%2F{}%2Fx",
        front.http, back.http
    );
    let (status, body) = get(&url, &[("end-user", "jason")]).await;
    assert_eq!(status, 200);
    let echo: Echo = serde_json::from_str(&body).unwrap();
    let call = echo.call.unwrap();
    assert_eq!(call.status, Some(200));
    let inner = call.echo.unwrap();
    assert_eq!(inner.service, "shipping");
    assert_eq!(inner.path, "/x");
    assert_eq!(
        inner.headers.get("end-user").map(String::as_str),
        Some("jason"),
        "routing headers are passed on"
    );
}

#[tokio::test]
async fn error_rate_and_latency_knobs() {
    let failing = start(EchoConfig {
        error_rate: 1.0,
        ..config("bad", "v1")
    })
    .await;
    let report = load::run(
        LoadConfig {
            url: format!("http://{}/", failing.http),
            requests: Some(10),
            ..LoadConfig::default()
        },
        Progress::default(),
    )
    .await
    .unwrap();
    assert_eq!(report.ok, 0);
    assert_eq!(
        report.failures.get("503 injected error"),
        Some(&10),
        "{report:?}"
    );

    let slow = start(EchoConfig {
        latency: Duration::from_millis(50),
        ..config("slow", "v1")
    })
    .await;
    let begun = Instant::now();
    let (status, _) = get(&format!("http://{}/", slow.http), &[]).await;
    assert_eq!(status, 200);
    assert!(begun.elapsed() >= Duration::from_millis(50));
}

#[tokio::test]
async fn tcp_websocket_and_grpc_faces() {
    let s = start(config("echo", "v3")).await;
    let mut tcp = tokio::net::TcpStream::connect(&s.tcp).await.unwrap();
    assert_eq!(
        echo::tcp_greeting(&mut tcp).await.unwrap(),
        "service=echo version=v3 pod=echo-0"
    );
    tcp.write_all(b"bytes").await.unwrap();
    let mut back = [0u8; 5];
    tcp.read_exact(&mut back).await.unwrap();
    assert_eq!(&back, b"bytes");

    let (greeting, echoed) = ws_grpc::websocket_call(&format!("ws://{}/ws", s.http), "frame")
        .await
        .unwrap();
    let greeting: Echo = serde_json::from_str(&greeting).unwrap();
    assert_eq!(greeting.version, "v3");
    assert_eq!(echoed, "frame");

    let answer = ws_grpc::grpc_call(&format!("http://{}", s.grpc), "rpc")
        .await
        .unwrap();
    assert_eq!(
        (
            answer.message.as_str(),
            answer.service.as_str(),
            answer.peer.as_str()
        ),
        ("rpc", "echo", "")
    );
}

#[tokio::test]
async fn fixed_files_are_served_as_json_at_their_path() {
    let jwks = r#"{"keys":[]}"#;
    let server = start(EchoConfig {
        files: [("/jwks.json".to_string(), bytes::Bytes::from(jwks))].into(),
        ..config("jwks", "v1")
    })
    .await;
    let (status, body) = get(&format!("http://{}/jwks.json", server.http), &[]).await;
    assert_eq!((status, body.as_str()), (200, jwks));
    // Every other path still echoes.
    let (status, body) = get(&format!("http://{}/other", server.http), &[]).await;
    assert_eq!(status, 200);
    assert!(body.contains("\"service\":\"jwks\""), "{body}");
}

#[tokio::test]
async fn the_ext_authz_mode_answers_as_istios_sample() {
    let server = start(EchoConfig {
        ext_authz: true,
        ..config("ext-authz", "v1")
    })
    .await;
    let url = format!("http://{}/orders/1", server.http);
    let (status, body) = get(&url, &[]).await;
    assert_eq!((status, body.as_str()), (403, echo::EXT_AUTHZ_DENIED));
    let (status, _) = get(&url, &[("x-ext-authz", "allow")]).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn upstreams_are_called_for_every_request_and_show_in_the_chain() {
    let ratings = start(config("ratings", "v1")).await;
    let reviews = start(EchoConfig {
        upstreams: vec![format!("http://{}/ratings/0", ratings.http)],
        ..config("reviews", "v2")
    })
    .await;
    let details = start(config("details", "v1")).await;
    let productpage = start(EchoConfig {
        upstreams: vec![
            format!("http://{}/details/0", details.http),
            format!("http://{}/reviews/0", reviews.http),
        ],
        ..config("productpage", "v1")
    })
    .await;
    let (status, body) = get(
        &format!("http://{}/productpage", productpage.http),
        &[("end-user", "jason")],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let echo: echo::Echo = serde_json::from_str(&body).unwrap();
    assert_eq!(
        echo.chain(),
        "productpage/v1(details/v1,reviews/v2(ratings/v1))"
    );
    // The routing header went down every call, as bookinfo passes `end-user` on.
    let reviews_echo = echo.calls[1].echo.as_ref().unwrap();
    assert_eq!(
        reviews_echo.headers.get("end-user").map(String::as_str),
        Some("jason")
    );
    assert_eq!(
        reviews_echo.calls[0]
            .echo
            .as_ref()
            .unwrap()
            .headers
            .get("end-user")
            .map(String::as_str),
        Some("jason")
    );

    // An upstream that fails makes the answer 502, with the chain saying which.
    let broken = start(EchoConfig {
        upstreams: vec![format!(
            "http://{}/x",
            start(EchoConfig {
                error_rate: 1.0,
                ..config("down", "v1")
            })
            .await
            .http
        )],
        ..config("front", "v1")
    })
    .await;
    let (status, body) = get(&format!("http://{}/", broken.http), &[]).await;
    assert_eq!(status, 502, "{body}");
    let echo: echo::Echo = serde_json::from_str(&body).unwrap();
    assert_eq!(echo.chain(), "front/v1(!503)");
}
