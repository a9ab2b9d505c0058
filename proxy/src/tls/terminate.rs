//! TLS a gateway terminates (Istio Gateway servers with `tls.mode: SIMPLE` or `MUTUAL`): one
//! rustls server configuration per certificate, picked by the ClientHello's server name, with
//! client certificates required and verified against the server's CA for MUTUAL. HTTP/2 and
//! HTTP/1.1 are offered by ALPN.

use std::sync::Arc;

use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use mesh_api::proto::state::v1 as proto;

/// A certificate ready to serve.
#[derive(Debug)]
pub struct Terminate {
    /// Host patterns it serves (lower case).
    pub hosts: Vec<String>,
    /// The rustls configuration.
    pub config: Arc<ServerConfig>,
    /// Clients must present a certificate (MUTUAL).
    pub mutual: bool,
}

/// A certificate that cannot be served: the field of `ServerCertificate` at fault and why.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{field}: {message}")]
pub struct TerminateError {
    /// `certificateChainPem`, `privateKeyPem` or `caCertificatesPem`.
    pub field: &'static str,
    /// What is wrong.
    pub message: String,
}

fn err(field: &'static str, message: impl std::fmt::Display) -> TerminateError {
    TerminateError {
        field,
        message: message.to_string(),
    }
}

/// Builds a server configuration for `spec`.
pub fn build(spec: &proto::ServerCertificate) -> Result<Terminate, TerminateError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(spec.certificate_chain_pem.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|e| err("certificateChainPem", e))?;
    if chain.is_empty() {
        return Err(err("certificateChainPem", "no certificate in the PEM"));
    }
    let key = PrivateKeyDer::from_pem_slice(spec.private_key_pem.as_bytes())
        .map_err(|e| err("privateKeyPem", e))?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| err("certificateChainPem", e))?;
    let mutual = !spec.ca_certificates_pem.trim().is_empty();
    let builder = if mutual {
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(spec.ca_certificates_pem.as_bytes()) {
            let cert = cert.map_err(|e| err("caCertificatesPem", e))?;
            roots.add(cert).map_err(|e| err("caCertificatesPem", e))?;
        }
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .map_err(|e| err("caCertificatesPem", e))?;
        builder.with_client_cert_verifier(verifier)
    } else {
        builder.with_no_client_auth()
    };
    let mut config = builder.with_single_cert(chain, key).map_err(|e| {
        err(
            "privateKeyPem",
            format!("does not fit the certificate: {e}"),
        )
    })?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Terminate {
        hosts: spec.hosts.iter().map(|h| h.to_ascii_lowercase()).collect(),
        config: Arc::new(config),
        mutual,
    })
}

/// The certificate for a ClientHello naming `sni`: the most specific host match (exact, then
/// the longest `*.` suffix, then `*`), else the first.
pub fn pick<'a>(certs: &'a [Terminate], sni: Option<&str>) -> Option<&'a Terminate> {
    let score = |pattern: &str, name: &str| -> Option<usize> {
        if pattern == "*" {
            Some(0)
        } else if pattern.starts_with('*') {
            super::sni_matches(pattern, name).then_some(pattern.len())
        } else {
            pattern.eq_ignore_ascii_case(name).then_some(usize::MAX)
        }
    };
    let best = sni.and_then(|name| {
        let mut best: Option<(usize, &Terminate)> = None;
        for c in certs {
            if let Some(s) = c.hosts.iter().filter_map(|h| score(h, name)).max()
                && best.is_none_or(|(b, _)| s > b)
            {
                best = Some((s, c));
            }
        }
        best.map(|(_, c)| c)
    });
    best.or_else(|| certs.first())
}
