//! TLS the proxy originates to a destination outside the mesh (DestinationRule SIMPLE and
//! MUTUAL): the app speaks plaintext to the service address, the proxy speaks verified TLS to
//! the server, with a client certificate for MUTUAL; a server the CA does not vouch for is
//! refused.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use mesh_proxy::socket::FixedDst;
use mesh_proxy::state::{State, proto};
use mesh_proxy::{Listeners, Proxy, testing};
use tokio::net::TcpStream;
use tokio::sync::watch;

/// An HTTPS server for `name` saying whether the client presented a certificate.
async fn https_server(name: &str, client_ca: Option<&str>) -> (SocketAddr, String) {
    testing::tls::https_server(name, client_ca, |mutual| {
        format!("tls ok, client cert: {mutual}")
    })
    .await
}

async fn proxy_to(
    server: SocketAddr,
    mode: proto::TlsMode,
    originate: proto::OriginatedTls,
) -> Proxy {
    let svc = proto::Service {
        hostname: "api.example.com".into(),
        addresses: vec!["10.96.0.80".into()],
        ports: vec![proto::ServicePort {
            port: 80,
            name: "http".into(),
            protocol: proto::Protocol::Http.into(),
            target_port: 0,
        }],
        endpoints: vec![proto::Endpoint {
            address: "127.0.0.1".into(),
            ports: [("http".to_string(), u32::from(server.port()))].into(),
            ..Default::default()
        }],
        traffic_policy: Some(proto::TrafficPolicy {
            tls_mode: mode.into(),
            originate: Some(originate),
            ..Default::default()
        }),
        ..Default::default()
    };
    let state = State::compile(proto::ProxyState {
        services: vec![svc],
        ..Default::default()
    })
    .unwrap();
    let (tx, rx) = watch::channel(Arc::new(state));
    std::mem::forget(tx);
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let listeners = Listeners {
        outbound: any,
        inbound: any,
        admin: any,
        readiness: any,
        metrics: any,
    };
    Proxy::start(
        &listeners,
        rx,
        true,
        Arc::new(FixedDst("10.96.0.80:80".parse().unwrap())),
        Arc::new(FixedDst("10.0.0.1:1".parse().unwrap())),
    )
    .await
    .unwrap()
}

async fn get(addr: SocketAddr) -> (StatusCode, String) {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::builder()
        .uri("/")
        .header("host", "api.example.com")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    let status = resp.status();
    (
        status,
        String::from_utf8_lossy(&resp.into_body().collect().await.unwrap().to_bytes()).into_owned(),
    )
}

#[tokio::test]
async fn simple_tls_is_originated_and_verified() {
    let (server, root) = https_server("api.example.com", None).await;
    let proxy = proxy_to(
        server,
        proto::TlsMode::Simple,
        proto::OriginatedTls {
            ca_certificates_pem: root,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(
        get(proxy.bound.outbound).await,
        (StatusCode::OK, "tls ok, client cert: false".into())
    );
}

#[tokio::test]
async fn mutual_tls_presents_the_client_certificate() {
    let (client_root, client_chain, client_key) = testing::tls::pki("client.example.com");
    let (server, root) = https_server("api.example.com", Some(&client_root)).await;
    let o = proto::OriginatedTls {
        ca_certificates_pem: root,
        client_certificate_pem: client_chain,
        private_key_pem: client_key,
        ..Default::default()
    };
    let proxy = proxy_to(server, proto::TlsMode::Mutual, o).await;
    assert_eq!(
        get(proxy.bound.outbound).await,
        (StatusCode::OK, "tls ok, client cert: true".into())
    );
}

#[tokio::test]
async fn a_server_the_ca_does_not_vouch_for_is_refused() {
    let (server, _root) = https_server("api.example.com", None).await;
    let (other_root, _, _) = testing::tls::pki("api.example.com");
    let proxy = proxy_to(
        server,
        proto::TlsMode::Simple,
        proto::OriginatedTls {
            ca_certificates_pem: other_root,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(
        get(proxy.bound.outbound).await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    // And a name mismatch is refused too.
    let (server, root) = https_server("other.example.com", None).await;
    let proxy = proxy_to(
        server,
        proto::TlsMode::Simple,
        proto::OriginatedTls {
            ca_certificates_pem: root,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(
        get(proxy.bound.outbound).await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
}

#[test]
fn origination_without_ca_certificates_refuses_the_state() {
    let svc = proto::Service {
        hostname: "api.example.com".into(),
        traffic_policy: Some(proto::TrafficPolicy {
            tls_mode: proto::TlsMode::Simple.into(),
            originate: Some(proto::OriginatedTls::default()),
            ..Default::default()
        }),
        ..Default::default()
    };
    let err = State::compile(proto::ProxyState {
        services: vec![svc],
        ..Default::default()
    })
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("caCertificatesPem: no CA certificate"),
        "{err}"
    );
}
