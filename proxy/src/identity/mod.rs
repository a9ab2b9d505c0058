//! The workload's identity: its key (made here, never leaving the process), its certificate
//! from the CA, kept fresh, and the trust bundle. Listeners read the latest [`Svid`] from a
//! watch channel per handshake, so a renewed certificate is used by new connections while
//! established ones carry on.

mod connector;
mod manager;
pub(crate) use connector::TlsConnector;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use mesh_api::proto::ca::v1::certificates_client::CertificatesClient;
use mesh_api::proto::ca::v1::{CertificateRequest, Credential, Renewal, credential::Kind};
use rcgen::{CertificateParams, KeyPair, PKCS_ECDSA_P256_SHA256, SanType};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

pub use manager::{keep_fresh, renew_delay};

/// An X.509 SVID with its key and the trust bundle it came with.
#[derive(Debug)]
pub struct Svid {
    /// The SPIFFE identity.
    pub identity: String,
    /// Leaf first, then intermediates.
    pub chain: Vec<CertificateDer<'static>>,
    /// The mesh's roots.
    pub roots: Vec<CertificateDer<'static>>,
    /// Start of validity.
    pub not_before: SystemTime,
    /// End of validity.
    pub not_after: SystemTime,
    /// The chain and key, ready for rustls.
    pub certified: Arc<CertifiedKey>,
}

/// Why no certificate could be had.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The CA said no, or could not be reached.
    #[error("CA: {0}")]
    Ca(String),
    /// The answer is not usable.
    #[error("the CA's answer is not usable: {0}")]
    BadAnswer(String),
    /// Key or CSR generation failed.
    #[error("cannot make a key or CSR: {0}")]
    Key(String),
}

/// A signed chain and the roots, both PEM.
pub type SignedPem = (Vec<String>, Vec<String>);

/// The future a [`CertificateSource`] returns.
pub type SignFuture<'a> =
    Pin<Box<dyn Future<Output = Result<SignedPem, IdentityError>> + Send + 'a>>;

/// Where signed certificates come from (the CA over gRPC; a test CA in tests).
pub trait CertificateSource: Send + Sync + 'static {
    /// Signs `csr_pem`; returns the chain and the roots, PEM.
    fn sign(&self, csr_pem: String) -> SignFuture<'_>;

    /// Signs `csr_pem` for a caller proving itself with its current certificate. Sources that
    /// do not check credentials just sign.
    fn sign_renewal(&self, csr_pem: String, _renewal: Renewal) -> SignFuture<'_> {
        self.sign(csr_pem)
    }
}

/// The CA's gRPC service, called with this workload's credential.
pub struct CaClient {
    client: CertificatesClient<tonic::transport::Channel>,
    credential: Credential,
    validity: Duration,
}

impl CaClient {
    /// A client of the CA at `endpoint` (`https://pilot:15012` with `tls`, the mesh root file's
    /// trust; `http://` only for a CA on loopback); connects lazily, so a CA that is not up yet
    /// is retried by the caller's backoff.
    pub fn new(
        endpoint: &str,
        credential: Credential,
        validity: Duration,
        tls: Option<Arc<rustls::ClientConfig>>,
    ) -> Result<Self, IdentityError> {
        let uri: http::Uri = endpoint
            .parse()
            .map_err(|e| IdentityError::Ca(format!("{endpoint}: {e}")))?;
        let loopback = uri
            .host()
            .map(|h| h.trim_start_matches('[').trim_end_matches(']'))
            .is_some_and(|h| {
                h == "localhost"
                    || h.parse::<std::net::IpAddr>()
                        .is_ok_and(|ip| ip.is_loopback())
            });
        match (uri.scheme_str(), &tls) {
            (Some("https"), Some(_)) => {}
            (Some("https"), None) => {
                return Err(IdentityError::Ca(format!(
                    "{endpoint}: TLS to the CA needs the mesh root to check it: give --ca-root-file"
                )));
            }
            (Some("http"), None) if loopback => {}
            (Some("http"), _) => {
                return Err(IdentityError::Ca(format!(
                    "{endpoint}: the bootstrap token would cross the network in plaintext; use https:// (with --ca-root-file)"
                )));
            }
            _ => {
                return Err(IdentityError::Ca(format!(
                    "{endpoint}: the CA address must be https://HOST:PORT"
                )));
            }
        }
        let endpoint_cfg = tonic::transport::Endpoint::from_shared(endpoint.to_string())
            .map_err(|e| IdentityError::Ca(format!("{endpoint}: {e}")))?
            .connect_timeout(Duration::from_secs(5));
        let channel = match tls {
            Some(config) => endpoint_cfg.connect_with_connector_lazy(TlsConnector { config }),
            None => endpoint_cfg.connect_lazy(),
        };
        Ok(Self {
            client: CertificatesClient::new(channel),
            credential,
            validity,
        })
    }
}

impl CaClient {
    fn request(&self, csr_pem: String, credential: Credential) -> SignFuture<'_> {
        Box::pin(async move {
            let req = CertificateRequest {
                csr_pem,
                credential: Some(credential),
                validity_seconds: i64::try_from(self.validity.as_secs()).unwrap_or(0),
            };
            let resp = self
                .client
                .clone()
                .create_certificate(req)
                .await
                .map_err(|s| IdentityError::Ca(format!("{:?}: {}", s.code(), s.message())))?
                .into_inner();
            Ok((resp.cert_chain_pem, resp.root_certs_pem))
        })
    }
}

impl CertificateSource for CaClient {
    fn sign(&self, csr_pem: String) -> SignFuture<'_> {
        self.request(csr_pem, self.credential.clone())
    }

    fn sign_renewal(&self, csr_pem: String, renewal: Renewal) -> SignFuture<'_> {
        self.request(
            csr_pem,
            Credential {
                kind: Some(Kind::Renewal(renewal)),
            },
        )
    }
}

/// The SPIFFE URI SAN of a certificate, if it has exactly one.
pub fn spiffe_id(cert: &CertificateDer<'_>) -> Option<String> {
    mesh_api::identity::spiffe_id_of(cert)
}

fn validity(cert: &CertificateDer<'_>) -> Option<(SystemTime, SystemTime)> {
    use x509_parser::prelude::*;
    let (_, parsed) = X509Certificate::from_der(cert).ok()?;
    let at = |t: i64| Some(SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(t).ok()?));
    Some((
        at(parsed.validity().not_before.timestamp())?,
        at(parsed.validity().not_after.timestamp())?,
    ))
}

/// Makes a key, asks `source` to sign it for `identity`, and checks the answer.
pub async fn request_svid(
    source: &dyn CertificateSource,
    identity: &str,
) -> Result<Svid, IdentityError> {
    obtain(source, identity, None).await
}

/// As [`request_svid`], proving the identity with `current` (a still valid certificate)
/// instead of the bootstrap credential.
pub async fn renew_svid(
    source: &dyn CertificateSource,
    identity: &str,
    current: &Svid,
) -> Result<Svid, IdentityError> {
    obtain(source, identity, Some(current)).await
}

/// The renewal proof: `current`'s chain and its key's signature of the new CSR.
fn renewal(current: &Svid, csr_pem: &str) -> Result<Renewal, IdentityError> {
    let signer = current
        .certified
        .key
        .choose_scheme(&[rustls::SignatureScheme::ECDSA_NISTP256_SHA256])
        .ok_or_else(|| IdentityError::Key("the current key cannot sign with ECDSA P-256".into()))?;
    let csr_signature = signer
        .sign(csr_pem.as_bytes())
        .map_err(|e| IdentityError::Key(e.to_string()))?;
    let cert_chain_pem = current
        .chain
        .iter()
        .map(|c| {
            pem::encode_config(
                &pem::Pem::new("CERTIFICATE", c.to_vec()),
                pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
            )
        })
        .collect();
    Ok(Renewal {
        cert_chain_pem,
        csr_signature,
    })
}

async fn obtain(
    source: &dyn CertificateSource,
    identity: &str,
    current: Option<&Svid>,
) -> Result<Svid, IdentityError> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
        .map_err(|e| IdentityError::Key(e.to_string()))?;
    let mut params = CertificateParams::default();
    let uri = identity
        .to_string()
        .try_into()
        .map_err(|e: rcgen::Error| IdentityError::Key(e.to_string()))?;
    params.subject_alt_names = vec![SanType::URI(uri)];
    let csr = params
        .serialize_request(&key)
        .and_then(|c| c.pem())
        .map_err(|e| IdentityError::Key(e.to_string()))?;
    let (chain_pem, roots_pem) = match current {
        Some(cur) if cur.not_after > SystemTime::now() => {
            let proof = renewal(cur, &csr)?;
            source.sign_renewal(csr, proof).await?
        }
        _ => source.sign(csr).await?,
    };
    let parse = |pems: &[String]| -> Result<Vec<CertificateDer<'static>>, IdentityError> {
        pems.iter()
            .map(|p| {
                CertificateDer::from_pem_slice(p.as_bytes())
                    .map_err(|e| IdentityError::BadAnswer(e.to_string()))
            })
            .collect()
    };
    let chain = parse(&chain_pem)?;
    let roots = parse(&roots_pem)?;
    let leaf = chain
        .first()
        .ok_or_else(|| IdentityError::BadAnswer("empty chain".into()))?;
    if roots.is_empty() {
        return Err(IdentityError::BadAnswer("no roots".into()));
    }
    match spiffe_id(leaf) {
        Some(id) if id == identity => {}
        other => {
            return Err(IdentityError::BadAnswer(format!(
                "the certificate is for {other:?}, not {identity}"
            )));
        }
    }
    let (not_before, not_after) =
        validity(leaf).ok_or_else(|| IdentityError::BadAnswer("unreadable validity".into()))?;
    let key_der = PrivateKeyDer::try_from(key.serialize_der())
        .map_err(|e| IdentityError::Key(e.to_string()))?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&key_der)
        .map_err(|e| IdentityError::Key(e.to_string()))?;
    let certified = Arc::new(CertifiedKey::new(chain.clone(), signing));
    Ok(Svid {
        identity: identity.to_string(),
        chain,
        roots,
        not_before,
        not_after,
        certified,
    })
}
