//! Discovery over mutual TLS (15012): pilot presents its certificate, every proxy presents its
//! workload certificate, both chained to the mesh roots. The proxy's SPIFFE identity is put in
//! each request's extensions ([`PeerIdentity`]) so a stream may only ask for the view of the
//! namespace and service account its certificate proves.

use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::ServerConfig;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::server::{DiscoveryService, PeerIdentity};

/// TLS material that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM input that holds nothing usable.
    #[error("{what}: {message}")]
    Pem {
        /// Which input.
        what: &'static str,
        /// What is wrong.
        message: String,
    },
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
    /// The client verifier could not be built.
    #[error("client verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
}

fn certs(what: &'static str, pem: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Vec<_> = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Pem {
            what,
            message: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            what,
            message: "no certificate found".into(),
        });
    }
    Ok(certs)
}

/// The server side: pilot's chain and key, and the mesh roots that client certificates must
/// chain to. TLS 1.3, ALPN h2.
pub fn server_config(
    chain_pem: &str,
    key_pem: &str,
    roots_pem: &str,
) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = certs("certificate chain", chain_pem)?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| TlsError::Pem {
        what: "private key",
        message: e.to_string(),
    })?;
    let mut roots = rustls::RootCertStore::empty();
    for c in certs("roots", roots_pem)? {
        roots.add(c)?;
    }
    let verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone()).build()?;
    let mut cfg = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)?;
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(cfg))
}

/// The SPIFFE id of a certificate (its one `spiffe://` URI SAN).
pub fn spiffe_id(cert: &CertificateDer<'_>) -> Option<String> {
    mesh_api::identity::spiffe_id_of(cert)
}

/// Puts the peer's identity into every request of one connection.
#[derive(Clone)]
struct WithPeer<S> {
    inner: S,
    peer: PeerIdentity,
}

impl<S, B> tower_service::Service<hyper::Request<B>> for WithPeer<S>
where
    S: tower_service::Service<hyper::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: hyper::Request<B>) -> Self::Future {
        req.extensions_mut().insert(self.peer.clone());
        self.inner.call(req)
    }
}

/// Serves discovery over mutual TLS on `listener` until `shutdown` completes. Connections
/// without a client certificate carrying a SPIFFE id are closed after the handshake.
pub async fn serve_mtls(
    listener: tokio::net::TcpListener,
    service: DiscoveryService,
    tls: Arc<ServerConfig>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let server = service.into_server();
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((conn, peer)) = accepted else { continue };
                let _ = conn.set_nodelay(true);
                let (server, acceptor) = (server.clone(), acceptor.clone());
                tokio::spawn(async move {
                    let tls = match acceptor.accept(conn).await {
                        Ok(t) => t,
                        Err(e) => {
                            tracing::debug!("discovery TLS from {peer}: {e}");
                            return;
                        }
                    };
                    let id = tls.get_ref().1.peer_certificates().and_then(|c| c.first()).and_then(spiffe_id);
                    let Some(id) = id else {
                        tracing::warn!("discovery from {peer}: the client certificate has no SPIFFE id; closing");
                        return;
                    };
                    let svc = WithPeer { inner: server, peer: PeerIdentity(id) };
                    let svc = hyper_util::service::TowerToHyperService::new(svc);
                    let builder = crate::discovery::server::http2_builder();
                    if let Err(e) = builder.serve_connection(hyper_util::rt::TokioIo::new(tls), svc).await {
                        tracing::debug!("discovery connection from {peer}: {e}");
                    }
                });
            }
            () = &mut shutdown => return,
        }
    }
}
