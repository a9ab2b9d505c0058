//! HTTPS servers outside the mesh, for tests of TLS the proxy originates (DestinationRule
//! SIMPLE/MUTUAL, https key sets): a CA of their own and a leaf for the server's name.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{CertificateParams, Issuer, KeyPair, PKCS_ECDSA_P256_SHA256};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;

/// A CA (root PEM) and a leaf for `name` it signed: (root PEM, leaf chain PEM, leaf key PEM).
pub fn pki(name: &str) -> (String, String, String) {
    let (root, ca, ca_key) = mesh_ca::testing::external_ca();
    let issuer = Issuer::from_ca_cert_pem(&ca, KeyPair::from_pem(&ca_key).unwrap()).unwrap();
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let leaf = CertificateParams::new(vec![name.to_string()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    (root, format!("{}{ca}", leaf.pem()), key.serialize_pem())
}

/// An HTTPS server on 127.0.0.1 for `name`, answering every request with `body` (given
/// whether the client presented a certificate); with `client_ca`, it requires client
/// certificates from it. Returns its address and its CA's root PEM.
pub async fn https_server(
    name: &str,
    client_ca: Option<&str>,
    body: impl Fn(bool) -> String + Send + Sync + 'static,
) -> (SocketAddr, String) {
    let (root, chain, key) = pki(name);
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(chain.as_bytes())
        .collect::<Result<_, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap();
    let cfg = match client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_slice_iter(ca.as_bytes()) {
                roots.add(c.unwrap()).unwrap();
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .unwrap();
            builder
                .with_client_cert_verifier(verifier)
                .with_single_cert(certs, key)
                .unwrap()
        }
        None => builder
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap(),
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let body = Arc::new(body);
    tokio::spawn(async move {
        loop {
            let (c, _) = l.accept().await.unwrap();
            let acceptor = acceptor.clone();
            let body = body.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(c).await else {
                    return;
                };
                let mutual = tls.get_ref().1.peer_certificates().is_some();
                let svc = hyper::service::service_fn(
                    move |_req: Request<hyper::body::Incoming>| {
                        let text = body(mutual);
                        async move { Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(text)))) }
                    },
                );
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    (addr, root)
}
