//! Bad peers at a sidecar whose PeerAuthentication is STRICT (issue 22): plaintext, a TLS
//! client without a mesh certificate, a client certificate from another CA, and a destination
//! that proves another identity than the caller's sidecar expects. Each is refused, counted in
//! the proxy's metrics, and the mesh goes on serving the callers that do belong. (HTTP/2
//! clients past the stream limit and rapid-reset floods are in `limits.rs`; memory under a
//! flood of all of these, in `flood_memory.rs`.)

#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{SHIPPING, get, http_app, pair};
use hyper::StatusCode;
use mesh_ca::CaConfig;
use mesh_ca::testing::TestCa;
use mesh_proxy::Proxy;
use mesh_proxy::state::proto;
use mesh_proxy::testing;
use mesh_proxy::tls::mtls;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// `mesh_proxy_refused_total` of the inbound listener for `reason`.
async fn refused(proxy: &Proxy, reason: &str) -> u64 {
    common::refused(proxy.bound.admin, "inbound", reason).await
}

/// What the server sends before it closes, after `hello` was written on `stream`.
async fn answer<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(mut stream: S) -> Vec<u8> {
    let _ = stream
        .write_all(b"GET / HTTP/1.1\r\nhost: shipping\r\n\r\n")
        .await;
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut got)).await;
    assert!(read.is_ok(), "the proxy neither answered nor closed in 5 s");
    got
}

/// A TLS client that takes any server and has no certificate of its own.
#[derive(Debug)]
struct AnyServer(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn no_certificate_client() -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer(provider)))
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(cfg)
}

#[tokio::test]
async fn bad_peers_are_refused_counted_and_the_mesh_still_serves() {
    let p = pair(
        http_app().await,
        proto::Protocol::Http,
        proto::PeerMode::Strict,
        SHIPPING,
        true,
    )
    .await;
    let server_name = ServerName::IpAddress(p.b_inbound.ip().into());

    // Plaintext to a STRICT port: closed unanswered.
    let plain = TcpStream::connect(p.b_inbound).await.unwrap();
    assert!(answer(plain).await.is_empty());
    assert_eq!(refused(&p.b, "plaintext_to_strict").await, 1);

    // TLS without a client certificate: the handshake is refused.
    let tcp = TcpStream::connect(p.b_inbound).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(no_certificate_client())
        .connect(server_name.clone(), tcp)
        .await;
    if let Ok(tls) = tls {
        // TLS 1.3: the client finishes first; the server's refusal comes as an alert.
        assert!(answer(tls).await.is_empty(), "served without a certificate");
    }

    // A client certificate from another CA (another mesh, or a forged one): refused.
    let foreign = TestCa::self_signed("foreign-mesh", CaConfig::default());
    let stranger = testing::svids(&foreign, "order").await;
    let cfg = mtls::client_config(stranger, Vec::new(), b"http/1.1");
    let tcp = TcpStream::connect(p.b_inbound).await.unwrap();
    // The stranger does not trust our server either; whichever side ends it, no request is
    // served and the server counts a failed handshake.
    if let Ok(tls) = tokio_rustls::TlsConnector::from(cfg.unwrap())
        .connect(server_name, tcp)
        .await
    {
        assert!(answer(tls).await.is_empty(), "served a foreign certificate");
    }
    let counted = testing::poll_until(
        Duration::from_secs(5),
        || refused(&p.b, "tls_handshake"),
        |n| *n == 2,
    )
    .await;
    assert_eq!(counted, 2, "both failed handshakes are counted");

    // The caller that belongs is served, over mutual TLS, as before.
    let (status, body) = get(p.a.bound.outbound).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.contains(&format!("By={SHIPPING}")), "{body}");
}

#[tokio::test]
async fn a_destination_proving_another_identity_is_refused_and_counted_by_the_caller() {
    // A's sidecar expects payments; B proves shipping.
    let p = pair(
        http_app().await,
        proto::Protocol::Http,
        proto::PeerMode::Strict,
        "spiffe://cluster.local/ns/default/sa/payments",
        true,
    )
    .await;
    let (status, _) = get(p.a.bound.outbound).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    // Counted as Envoy counts it: a 503 with UF (upstream connection failure).
    let page = testing::admin_get(p.a.bound.admin, "/stats/prometheus").await;
    let refused = page.lines().any(|l| {
        l.starts_with("istio_requests_total{")
            && l.contains("response_code=\"503\"")
            && l.contains("response_flags=\"UF\"")
            && l.ends_with(" 1")
    });
    assert!(refused, "{page}");
}
