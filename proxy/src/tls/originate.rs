//! TLS the proxy originates towards destinations outside the mesh (DestinationRule
//! `tls.mode: SIMPLE` or `MUTUAL`): the app speaks plaintext, the proxy speaks TLS to the
//! server, verifying it against the given CA certificates and server name, and presenting a
//! client certificate for MUTUAL.

use std::sync::Arc;

use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use mesh_api::proto::state::v1 as proto;

/// A compiled origination: the TLS client configuration and the server name.
#[derive(Debug)]
pub struct Originate {
    /// rustls configuration (no ALPN; the connector adds what it speaks).
    pub config: Arc<ClientConfig>,
    /// Name sent as SNI and verified in the server certificate.
    pub sni: ServerName<'static>,
}

/// An origination that cannot be built: the field of `OriginatedTls` at fault and why.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{field}: {message}")]
pub struct OriginateError {
    /// The field (`caCertificatesPem`, `clientCertificatePem`, `privateKeyPem`, `sni`).
    pub field: &'static str,
    /// What is wrong with it.
    pub message: String,
}

fn err(field: &'static str, message: impl std::fmt::Display) -> OriginateError {
    OriginateError {
        field,
        message: message.to_string(),
    }
}

/// Builds an origination; `default_sni` is the service's host name.
pub fn build(
    spec: &proto::OriginatedTls,
    mutual: bool,
    default_sni: &str,
) -> Result<Originate, OriginateError> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(spec.ca_certificates_pem.as_bytes()) {
        let cert = cert.map_err(|e| err("caCertificatesPem", e))?;
        roots.add(cert).map_err(|e| err("caCertificatesPem", e))?;
    }
    if roots.is_empty() {
        return Err(err(
            "caCertificatesPem",
            "no CA certificate to verify the server with",
        ));
    }
    let builder =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| err("caCertificatesPem", e))?
            .with_root_certificates(roots);
    let config = if mutual {
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(spec.client_certificate_pem.as_bytes())
                .collect::<Result<_, _>>()
                .map_err(|e| err("clientCertificatePem", e))?;
        if chain.is_empty() {
            return Err(err(
                "clientCertificatePem",
                "MUTUAL needs a client certificate",
            ));
        }
        let key = PrivateKeyDer::from_pem_slice(spec.private_key_pem.as_bytes())
            .map_err(|e| err("privateKeyPem", e))?;
        builder.with_client_auth_cert(chain, key).map_err(|e| {
            err(
                "privateKeyPem",
                format!("does not fit the client certificate: {e}"),
            )
        })?
    } else {
        builder.with_no_client_auth()
    };
    let name = if spec.sni.is_empty() {
        default_sni
    } else {
        &spec.sni
    };
    let sni =
        ServerName::try_from(name.to_string()).map_err(|e| err("sni", format!("{name:?}: {e}")))?;
    Ok(Originate {
        config: Arc::new(config),
        sni,
    })
}
