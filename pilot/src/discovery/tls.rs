//! Discovery over mutual TLS (15012): pilot presents its certificate, every proxy presents its
//! workload certificate, both chained to the mesh roots. The proxy's SPIFFE identity is put in
//! each request's extensions ([`PeerIdentity`]) so a stream may only ask for the view of the
//! namespace and service account its certificate proves.
//!
//! The CA is served on the same port, as Istio's istiod does: a workload that has no
//! certificate yet connects with server-only TLS (it checks pilot against the mesh root file)
//! and may call only the CA, so its bootstrap token never crosses the network in plaintext.
//! Pilot's own certificate is held by a [`ServingCert`] that can be replaced while serving.

use std::convert::Infallible;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};

use rustls::ServerConfig;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
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

/// Pilot's serving certificate, replaceable while serving: new handshakes get the latest,
/// connections already open keep theirs.
#[derive(Debug)]
pub struct ServingCert {
    current: RwLock<Arc<CertifiedKey>>,
}

fn certified(chain_pem: &str, key_pem: &str) -> Result<Arc<CertifiedKey>, TlsError> {
    let chain = certs("certificate chain", chain_pem)?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| TlsError::Pem {
        what: "private key",
        message: e.to_string(),
    })?;
    let provider = rustls::crypto::ring::default_provider();
    Ok(Arc::new(CertifiedKey::from_der(chain, key, &provider)?))
}

impl ServingCert {
    /// Holds the chain and key given.
    pub fn new(chain_pem: &str, key_pem: &str) -> Result<Arc<Self>, TlsError> {
        Ok(Arc::new(ServingCert {
            current: RwLock::new(certified(chain_pem, key_pem)?),
        }))
    }

    /// Serves a new chain and key from the next handshake on.
    pub fn replace(&self, chain_pem: &str, key_pem: &str) -> Result<(), TlsError> {
        let next = certified(chain_pem, key_pem)?;
        if let Ok(mut c) = self.current.write() {
            *c = next;
        }
        Ok(())
    }

    /// The leaf certificate served now.
    pub fn leaf(&self) -> Option<CertificateDer<'static>> {
        self.current.read().ok()?.cert.first().cloned()
    }
}

impl ResolvesServerCert for ServingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.read().ok().map(|c| c.clone())
    }
}

/// The server side of 15012 with pilot's renewable certificate: client certificates chained to
/// the mesh roots are verified when sent, and optional (a workload without one yet may call
/// only the CA; [`serve_mtls`] enforces that). TLS 1.3, ALPN h2.
pub fn server_config_renewable(
    cert: Arc<ServingCert>,
    roots_pem: &str,
) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in certs("roots", roots_pem)? {
        roots.add(c)?;
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()?;
    let mut cfg = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(cert);
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

type Ca =
    mesh_api::proto::ca::v1::certificates_server::CertificatesServer<mesh_ca::service::CaService>;

/// The CA's gRPC path prefix.
const CA_PATH: &str = "/mesh.ca.v1.Certificates/";

/// One connection's routes: the CA, and discovery when the peer proved an identity.
#[derive(Clone)]
struct Routes<D> {
    discovery: Option<D>,
    ca: Option<Ca>,
}

type BoxedResponse = std::pin::Pin<
    Box<
        dyn std::future::Future<Output = Result<hyper::Response<tonic::body::Body>, Infallible>>
            + Send,
    >,
>;

impl<D> tower_service::Service<hyper::Request<hyper::body::Incoming>> for Routes<D>
where
    D: tower_service::Service<
            hyper::Request<hyper::body::Incoming>,
            Response = hyper::Response<tonic::body::Body>,
            Error = Infallible,
        > + Clone
        + Send
        + 'static,
    D::Future: Send + 'static,
{
    type Response = hyper::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxedResponse;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: hyper::Request<hyper::body::Incoming>) -> Self::Future {
        if req.uri().path().starts_with(CA_PATH)
            && let Some(ca) = &mut self.ca
        {
            return Box::pin(ca.call(req));
        }
        match &mut self.discovery {
            Some(d) => Box::pin(d.call(req)),
            None => {
                let status = tonic::Status::unauthenticated(
                    "discovery needs the workload certificate: connect with mutual TLS (a connection without one may only call the CA)",
                );
                Box::pin(async move { Ok(status.into_http()) })
            }
        }
    }
}

/// Serves discovery over mutual TLS on `listener` until `shutdown` completes, and the CA when
/// `ca` is given. A connection without a client certificate carrying a SPIFFE id may call only
/// the CA; with no CA served it is closed after the handshake.
pub async fn serve_mtls(
    listener: tokio::net::TcpListener,
    service: DiscoveryService,
    tls: Arc<ServerConfig>,
    ca: Option<Arc<mesh_ca::service::CaService>>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let server = service.into_server();
    let ca = ca.map(Ca::from_arc);
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((conn, peer)) = accepted else { continue };
                let _ = conn.set_nodelay(true);
                let (server, acceptor, ca) = (server.clone(), acceptor.clone(), ca.clone());
                tokio::spawn(async move {
                    let tls = match acceptor.accept(conn).await {
                        Ok(t) => t,
                        Err(e) => {
                            tracing::debug!("discovery TLS from {peer}: {e}");
                            return;
                        }
                    };
                    let id = tls.get_ref().1.peer_certificates().and_then(|c| c.first()).and_then(spiffe_id);
                    let discovery = match id {
                        Some(id) => Some(WithPeer { inner: server, peer: PeerIdentity(id) }),
                        None if ca.is_some() => None,
                        None => {
                            tracing::warn!("discovery from {peer}: no client certificate with a SPIFFE id; closing");
                            return;
                        }
                    };
                    let svc = Routes { discovery, ca };
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
