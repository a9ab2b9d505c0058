//! Mutual TLS between proxies (rustls, TLS 1.3 only): both sides present their SVID; the client
//! checks the server chains to the mesh roots and is the identity the state expects for that
//! destination; the server checks the client chains to the mesh roots and records who it is.
//! Certificates and roots are read from the identity watch at each handshake, so renewals and
//! root rotations apply to new connections without touching established ones. ALPN tells mesh
//! HTTP/2 from mesh TCP.

use std::fmt;
use std::sync::Arc;

use rustls::client::ResolvesClientCert;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{
    ClientConfig, DigitallySignedStruct, DistinguishedName, ServerConfig, SignatureScheme,
};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::sync::watch;

use crate::identity::{Svid, spiffe_id};

/// ALPN of HTTP/2 between proxies.
pub const ALPN_MESH_H2: &[u8] = b"h2";
/// ALPN of opaque TCP between proxies.
pub const ALPN_MESH_TCP: &[u8] = b"mesh-tcp";

/// The workload's current SVID, as the listeners see it.
pub type Svids = watch::Receiver<Option<Arc<Svid>>>;

/// A TLS configuration that cannot be built.
#[derive(Debug, thiserror::Error)]
#[error("TLS configuration: {0}")]
pub struct ConfigError(#[from] rustls::Error);

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Serves the current SVID on both sides of a handshake.
struct SvidResolver(Svids);

impl fmt::Debug for SvidResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SvidResolver")
    }
}

impl SvidResolver {
    fn current(&self) -> Option<Arc<CertifiedKey>> {
        self.0.borrow().as_ref().map(|s| s.certified.clone())
    }
}

impl ResolvesServerCert for SvidResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current()
    }
}

impl ResolvesClientCert for SvidResolver {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        self.current()
    }

    fn has_certs(&self) -> bool {
        self.0.borrow().is_some()
    }
}

/// Verifies a peer chain against the current roots for `usage`; returns the peer's identity.
/// Where a verifier's trust anchors come from.
enum Roots {
    /// The mesh roots that came with the workload's certificate (followed through rotations).
    Svids(Svids),
    /// A fixed bundle (the root file a workload holds before it has a certificate).
    Fixed(Vec<CertificateDer<'static>>),
    /// The root file's bundle and, once the workload has a certificate, the roots that came
    /// with it: the CA's own certificate moves to a new root during a rotation, and the file
    /// read at start does not know that root.
    FixedAndSvids(Vec<CertificateDer<'static>>, Svids),
}

fn verify_chain(
    roots: &Roots,
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    now: UnixTime,
    usage: webpki::KeyUsage,
) -> Result<String, rustls::Error> {
    let roots = match roots {
        Roots::Svids(svids) => svids
            .borrow()
            .as_ref()
            .map(|s| s.roots.clone())
            .unwrap_or_default(),
        Roots::Fixed(r) => r.clone(),
        Roots::FixedAndSvids(fixed, svids) => {
            let mut all = fixed.clone();
            if let Some(s) = svids.borrow().as_ref() {
                all.extend(s.roots.iter().filter(|r| !fixed.contains(r)).cloned());
            }
            all
        }
    };
    if roots.is_empty() {
        return Err(rustls::Error::General(
            "no mesh roots yet: the workload has no certificate".into(),
        ));
    }
    let anchors: Vec<_> = roots
        .iter()
        .filter_map(|r| webpki::anchor_from_trusted_cert(r).ok())
        .collect();
    let cert = webpki::EndEntityCert::try_from(end_entity)
        .map_err(|e| rustls::Error::General(format!("peer certificate: {e}")))?;
    cert.verify_for_usage(
        webpki::ALL_VERIFICATION_ALGS,
        &anchors,
        intermediates,
        now,
        usage,
        None,
        None,
    )
    .map_err(|e| {
        rustls::Error::General(format!(
            "peer certificate does not chain to the mesh roots: {e}"
        ))
    })?;
    spiffe_id(end_entity).ok_or_else(|| {
        rustls::Error::General("peer certificate has no single SPIFFE identity".into())
    })
}

/// The client side: the server must chain to the roots and be `expected`.
struct ServerIdentityVerifier {
    roots: Roots,
    expected: Vec<String>,
    provider: Arc<CryptoProvider>,
}

impl fmt::Debug for ServerIdentityVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ServerIdentityVerifier({:?})", self.expected)
    }
}

impl ServerCertVerifier for ServerIdentityVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let id = verify_chain(
            &self.roots,
            end_entity,
            intermediates,
            now,
            webpki::KeyUsage::server_auth(),
        )?;
        if self.expected.is_empty() || self.expected.contains(&id) {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(format!(
                "peer is {id}, but the destination must be {}",
                self.expected.join(" or ")
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The server side: every client must present a certificate chaining to the roots.
struct MeshClientVerifier {
    svids: Svids,
    provider: Arc<CryptoProvider>,
}

impl fmt::Debug for MeshClientVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MeshClientVerifier")
    }
}

impl ClientCertVerifier for MeshClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        verify_chain(
            &Roots::Svids(self.svids.clone()),
            end_entity,
            intermediates,
            now,
            webpki::KeyUsage::client_auth(),
        )
        .map(|_| ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The inbound side's configuration: the workload's SVID, mandatory client certificates from
/// the mesh, ALPN for mesh HTTP/2 and mesh TCP.
pub fn server_config(svids: Svids) -> Result<Arc<ServerConfig>, ConfigError> {
    let provider = provider();
    let mut cfg = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(Arc::new(MeshClientVerifier {
            svids: svids.clone(),
            provider,
        }))
        .with_cert_resolver(Arc::new(SvidResolver(svids)));
    cfg.alpn_protocols = vec![
        ALPN_MESH_H2.to_vec(),
        b"http/1.1".to_vec(),
        ALPN_MESH_TCP.to_vec(),
    ];
    Ok(Arc::new(cfg))
}

/// The outbound side's configuration towards a destination that must prove one of `expected`
/// (any mesh identity when empty), speaking `alpn`.
pub fn client_config(
    svids: Svids,
    expected: Vec<String>,
    alpn: &[u8],
) -> Result<Arc<ClientConfig>, ConfigError> {
    let provider = provider();
    let mut cfg = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(ServerIdentityVerifier {
            roots: Roots::Svids(svids.clone()),
            expected,
            provider,
        }))
        .with_client_cert_resolver(Arc::new(SvidResolver(svids)));
    cfg.alpn_protocols = vec![alpn.to_vec()];
    Ok(Arc::new(cfg))
}

/// The identity a peer proved in a finished handshake.
pub fn peer_identity(conn: &rustls::CommonState) -> Option<String> {
    conn.peer_certificates()?.first().and_then(spiffe_id)
}

/// The client side towards the CA, before the workload has a certificate: no client
/// certificate (the bootstrap token in the request proves who it is), the server checked
/// against `roots` (the mesh root file) and required to be one of `expected`.
pub fn ca_client_config(
    roots: Vec<CertificateDer<'static>>,
    expected: Vec<String>,
) -> Result<Arc<ClientConfig>, ConfigError> {
    ca_client_config_with(Roots::Fixed(roots), expected)
}

/// As [`ca_client_config`], trusting also the roots that come with the workload's certificates
/// in `svids` as they are renewed: renewals go on through a root rotation, when the CA's
/// serving certificate comes from a root the root file read at start does not hold.
pub fn ca_client_config_following(
    roots: Vec<CertificateDer<'static>>,
    svids: Svids,
    expected: Vec<String>,
) -> Result<Arc<ClientConfig>, ConfigError> {
    ca_client_config_with(Roots::FixedAndSvids(roots, svids), expected)
}

fn ca_client_config_with(
    roots: Roots,
    expected: Vec<String>,
) -> Result<Arc<ClientConfig>, ConfigError> {
    let provider = provider();
    let mut cfg = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(ServerIdentityVerifier {
            roots,
            expected,
            provider,
        }))
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(cfg))
}
