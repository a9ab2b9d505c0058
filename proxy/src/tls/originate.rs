//! TLS the proxy originates towards destinations outside the mesh (DestinationRule
//! `tls.mode: SIMPLE` or `MUTUAL`): the app speaks plaintext, the proxy speaks TLS to the
//! server, verifying it against the given CA certificates and server name, and presenting a
//! client certificate for MUTUAL.

use std::sync::Arc;

use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use crate::state::proto;

/// A compiled origination: the TLS client configuration and the server name.
#[derive(Debug)]
pub struct Originate {
    /// rustls configuration (no ALPN; the connector adds what it speaks).
    pub config: Arc<ClientConfig>,
    /// Name sent as SNI and verified in the server certificate.
    pub sni: ServerName<'static>,
}

/// Builds an origination; `default_sni` is the service's host name. The error names what is
/// wrong, for the state's refusal.
pub fn build(
    spec: &proto::OriginatedTls,
    mutual: bool,
    default_sni: &str,
) -> Result<Originate, String> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(spec.ca_certificates_pem.as_bytes()) {
        let cert = cert.map_err(|e| format!("caCertificatesPem: {e}"))?;
        roots
            .add(cert)
            .map_err(|e| format!("caCertificatesPem: {e}"))?;
    }
    if roots.is_empty() {
        return Err("caCertificatesPem: no CA certificate to verify the server with".into());
    }
    let builder =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots);
    let config = if mutual {
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(spec.client_certificate_pem.as_bytes())
                .collect::<Result<_, _>>()
                .map_err(|e| format!("clientCertificatePem: {e}"))?;
        if chain.is_empty() {
            return Err("clientCertificatePem: MUTUAL needs a client certificate".into());
        }
        let key = PrivateKeyDer::from_pem_slice(spec.private_key_pem.as_bytes())
            .map_err(|e| format!("privateKeyPem: {e}"))?;
        builder
            .with_client_auth_cert(chain, key)
            .map_err(|e| format!("clientCertificatePem/privateKeyPem: {e}"))?
    } else {
        builder.with_no_client_auth()
    };
    let name = if spec.sni.is_empty() {
        default_sni
    } else {
        &spec.sni
    };
    let sni = ServerName::try_from(name.to_string()).map_err(|e| format!("sni: {name:?}: {e}"))?;
    Ok(Originate {
        config: Arc::new(config),
        sni,
    })
}
