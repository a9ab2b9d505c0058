//! Renewal: a workload with a valid certificate proves its identity with it — the certificate
//! chains to the mesh roots and is within its validity, and the new CSR is signed with its key.

use mesh_api::proto::ca::v1::Renewal;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, UnixTime};

use super::{AuthError, Proven};
use crate::identity::Identity;

/// The identity a renewal proves for `csr_pem`, checked against the PEM `roots`.
pub fn verify(
    renewal: &Renewal,
    csr_pem: &str,
    roots: &[String],
    trust_domain: &str,
) -> Result<Proven, AuthError> {
    let deny = |m: String| AuthError::Unauthenticated(format!("renewal refused: {m}"));
    let chain: Vec<CertificateDer<'static>> = renewal
        .cert_chain_pem
        .iter()
        .map(|p| CertificateDer::from_pem_slice(p.as_bytes()))
        .collect::<Result<_, _>>()
        .map_err(|e| deny(format!("the certificate chain is not PEM: {e}")))?;
    let leaf = chain.first().ok_or_else(|| deny("no certificate".into()))?;
    let root_ders: Vec<CertificateDer<'static>> = roots
        .iter()
        .filter_map(|r| CertificateDer::from_pem_slice(r.as_bytes()).ok())
        .collect();
    let anchors: Vec<_> = root_ders
        .iter()
        .filter_map(|r| webpki::anchor_from_trusted_cert(r).ok())
        .collect();
    let cert = webpki::EndEntityCert::try_from(leaf)
        .map_err(|e| deny(format!("unreadable certificate: {e}")))?;
    cert.verify_for_usage(
        webpki::ALL_VERIFICATION_ALGS,
        &anchors,
        &chain[1..],
        UnixTime::now(),
        webpki::KeyUsage::client_auth(),
        None,
        None,
    )
    .map_err(|e| {
        deny(format!(
            "the certificate is not a valid mesh certificate ({e})"
        ))
    })?;
    let (uri, point) = leaf_facts(leaf)
        .ok_or_else(|| deny("the certificate has no single SPIFFE identity".into()))?;
    let id = Identity::parse(&uri).map_err(|e| deny(e.to_string()))?;
    if id.trust_domain != trust_domain {
        return Err(deny(format!(
            "the certificate is from trust domain {}, not {trust_domain}",
            id.trust_domain
        )));
    }
    ring::signature::UnparsedPublicKey::new(&ring::signature::ECDSA_P256_SHA256_ASN1, &point)
        .verify(csr_pem.as_bytes(), &renewal.csr_signature)
        .map_err(|_| deny("the CSR is not signed with the certificate's key".into()))?;
    Ok(Proven {
        namespace: id.namespace,
        service_account: id.service_account,
    })
}

/// The SPIFFE URI and the raw public key of a certificate.
fn leaf_facts(der: &CertificateDer<'_>) -> Option<(String, Vec<u8>)> {
    use x509_parser::prelude::*;
    let uri = mesh_api::identity::spiffe_id_of(der)?;
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    Some((uri, cert.public_key().subject_public_key.data.to_vec()))
}
