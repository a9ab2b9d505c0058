//! Two proxies in-process: HTTP/1.1 from the app rides one pooled HTTP/2 connection between
//! the proxies and is restored to HTTP/1.1 for the destination app; gRPC streams (request and
//! response bodies in several frames, and trailers) pass through intact.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http_body_util::{BodyExt, Channel, Full};
use hyper::body::{Frame, Incoming};
use hyper::{HeaderMap, Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use mesh_proxy::Proxy;
use mesh_proxy::socket::FixedDst;
use mesh_proxy::state::{State, proto};
use mesh_proxy::testing;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// An app that answers with the protocol version it saw and the x-forwarded-for header; for
/// gRPC requests it echoes every request frame back as a response frame, then sends trailers.
async fn app() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (c, _) = l.accept().await.unwrap();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|req: Request<Incoming>| async move {
                    let grpc = req
                        .headers()
                        .get("content-type")
                        .is_some_and(|v| v == "application/grpc");
                    if !grpc {
                        let xff = req
                            .headers()
                            .get("x-forwarded-for")
                            .map(|v| v.to_str().unwrap().to_string())
                            .unwrap_or_default();
                        let text = format!("{:?} xff={xff}", req.version());
                        let body = Full::new(Bytes::from(text))
                            .map_err(|never| match never {})
                            .boxed();
                        return Ok::<_, Infallible>(Response::new(body));
                    }
                    let (mut tx, body) = Channel::<Bytes, hyper::Error>::new(8);
                    let mut incoming = req.into_body();
                    tokio::spawn(async move {
                        while let Some(Ok(frame)) = incoming.frame().await {
                            if let Ok(data) = frame
                                .into_data()
                                .map_err(|_| ())
                                .and_then(|d| if d.is_empty() { Err(()) } else { Ok(d) })
                            {
                                let _ = tx
                                    .send_data(Bytes::from(format!(
                                        "echo:{}",
                                        String::from_utf8_lossy(&data)
                                    )))
                                    .await;
                            }
                        }
                        let mut trailers = HeaderMap::new();
                        trailers.insert("grpc-status", "0".parse().unwrap());
                        trailers.insert("grpc-message", "all-good".parse().unwrap());
                        let _ = tx.send_trailers(trailers).await;
                    });
                    let mut resp = Response::new(body.boxed());
                    resp.headers_mut()
                        .insert("content-type", "application/grpc".parse().unwrap());
                    Ok::<_, Infallible>(resp)
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(c), svc)
                    .await;
            });
        }
    });
    addr
}

/// A TCP relay that counts the connections it carries.
async fn counting_relay(to: SocketAddr) -> (SocketAddr, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    let c2 = count.clone();
    tokio::spawn(async move {
        loop {
            let (mut a, _) = l.accept().await.unwrap();
            c2.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(async move {
                let mut b = TcpStream::connect(to).await.unwrap();
                let _ = tokio::io::copy_bidirectional(&mut a, &mut b).await;
            });
        }
    });
    (addr, count)
}

/// Proxy B in front of the app (inbound), proxy A for the client (outbound), the endpoint of
/// the service being B's inbound listener (through a counting relay).
async fn mesh_pair(app: SocketAddr, protocol: proto::Protocol) -> (Proxy, Proxy, Arc<AtomicUsize>) {
    let b_state = State::compile(proto::ProxyState {
        inbound_ports: vec![proto::WorkloadPort {
            port: u32::from(app.port()),
            protocol: protocol.into(),
        }],
        ..Default::default()
    })
    .unwrap();
    let (_btx, brx) = watch::channel(Arc::new(b_state));
    std::mem::forget(_btx);
    let b = Proxy::start(
        &testing::loopback(),
        brx,
        true,
        Arc::new(FixedDst("10.0.0.1:1".parse().unwrap())),
        Arc::new(FixedDst(SocketAddr::from(([10, 0, 0, 9], app.port())))),
    )
    .await
    .unwrap();
    let (relay, connections) = counting_relay(b.bound.inbound).await;
    let svc = proto::Service {
        hostname: "app.default.svc.cluster.local".into(),
        namespace: "default".into(),
        addresses: vec!["10.96.0.30".into()],
        ports: vec![proto::ServicePort {
            port: 80,
            name: "http".into(),
            protocol: protocol.into(),
            target_port: 0,
        }],
        endpoints: vec![proto::Endpoint {
            address: relay.ip().to_string(),
            ports: [("http".to_string(), u32::from(relay.port()))].into(),
            mesh: true,
            ..Default::default()
        }],
        ..Default::default()
    };
    let a_state = State::compile(proto::ProxyState {
        services: vec![svc],
        ..Default::default()
    })
    .unwrap();
    let (_atx, arx) = watch::channel(Arc::new(a_state));
    std::mem::forget(_atx);
    let a = Proxy::start(
        &testing::loopback(),
        arx,
        true,
        Arc::new(FixedDst("10.96.0.30:80".parse().unwrap())),
        Arc::new(FixedDst("10.0.0.1:1".parse().unwrap())),
    )
    .await
    .unwrap();
    (a, b, connections)
}

#[tokio::test]
async fn http1_rides_one_http2_connection_between_proxies_and_is_restored() {
    let app = app().await;
    let (a, _b, between) = mesh_pair(app, proto::Protocol::Http).await;
    let mut tasks = Vec::new();
    for i in 0..50 {
        if i == 1 {
            // Let the first request open the connection; the rest arrive together.
            let first: tokio::task::JoinHandle<String> = tasks.pop().unwrap();
            let answer = first.await.unwrap();
            assert!(answer.starts_with("HTTP/1.1"), "{answer}");
        }
        let outbound = a.bound.outbound;
        tasks.push(tokio::spawn(async move {
            let stream = TcpStream::connect(outbound).await.unwrap();
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .unwrap();
            tokio::spawn(conn);
            let req = Request::builder()
                .uri("/")
                .header("host", "app")
                .body(Full::new(Bytes::new()))
                .unwrap();
            let resp = sender.send_request(req).await.unwrap();
            String::from_utf8(
                resp.into_body()
                    .collect()
                    .await
                    .unwrap()
                    .to_bytes()
                    .to_vec(),
            )
            .unwrap()
        }));
    }
    for t in tasks {
        let answer = t.await.unwrap();
        assert!(
            answer.starts_with("HTTP/1.1 xff="),
            "the app sees HTTP/1.1: {answer}"
        );
        assert!(
            answer.contains("127.0.0.1"),
            "x-forwarded-for names the caller: {answer}"
        );
    }
    let n = between.load(Ordering::Relaxed);
    assert_eq!(
        n, 1,
        "50 client connections shared {n} connection(s) between the proxies"
    );
}

async fn grpc_stream(outbound: SocketAddr) -> (Vec<String>, HeaderMap) {
    let stream = TcpStream::connect(outbound).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let (mut tx, body) = Channel::<Bytes, Infallible>::new(8);
    let req = Request::builder()
        .method("POST")
        .uri("http://app/echo.Echo/Stream")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(body)
        .unwrap();
    let resp = sender.send_request(req);
    let sending = tokio::spawn(async move {
        for i in 0..3 {
            tx.send_data(Bytes::from(format!("m{i}"))).await.unwrap();
        }
    });
    let resp = resp.await.unwrap();
    sending.await.unwrap();
    let mut body = resp.into_body();
    let (mut data, mut trailers) = (Vec::new(), HeaderMap::new());
    while let Some(frame) = body.frame().await {
        let frame: Frame<Bytes> = frame.unwrap();
        match frame.into_data() {
            Ok(d) => data.push(String::from_utf8_lossy(&d).into_owned()),
            Err(f) => trailers = f.into_trailers().unwrap(),
        }
    }
    (data, trailers)
}

#[tokio::test]
async fn grpc_streams_and_trailers_pass_through_two_proxies() {
    let app = app().await;
    let (a, _b, _) = mesh_pair(app, proto::Protocol::Grpc).await;
    let (data, trailers) = grpc_stream(a.bound.outbound).await;
    assert_eq!(data.concat(), "echo:m0echo:m1echo:m2");
    assert_eq!(trailers["grpc-status"], "0");
    assert_eq!(trailers["grpc-message"], "all-good");
}
