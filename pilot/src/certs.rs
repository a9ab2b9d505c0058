//! The control plane's own certificates, from the CA it embeds: pilot's workload certificate
//! (its SPIFFE identity, which proxies check on 15012) and serving certificates for DNS names
//! (the injector's webhook, which the API server checks by its Service's name). Each is renewed
//! at half its lifetime while the control plane runs.

use std::sync::Arc;
use std::time::Duration;

use mesh_ca::{Authority, Identity};
use rcgen::{CertificateParams, KeyPair, PKCS_ECDSA_P256_SHA256, SanType};

use crate::discovery::tls::ServingCert;

/// A chain, its key and the mesh's roots, PEM.
#[derive(Clone, Debug)]
pub struct Issued {
    /// The certificate, then its intermediates.
    pub chain: String,
    /// Its private key (PKCS#8).
    pub key: String,
    /// The trust bundle.
    pub roots: String,
}

/// What a certificate names.
#[derive(Clone, Debug)]
pub enum Subject {
    /// A workload identity (pilot's own).
    Workload(Identity),
    /// DNS names (a serving certificate).
    Dns(Vec<String>),
}

/// A fresh key and certificate for `subject`, lasting `ttl`.
pub fn issue(authority: &Authority, subject: &Subject, ttl: Duration) -> anyhow::Result<Issued> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::default();
    params.subject_alt_names = match subject {
        Subject::Workload(id) => vec![SanType::URI(id.uri().try_into()?)],
        Subject::Dns(names) => names
            .iter()
            .map(|n| Ok(SanType::DnsName(n.clone().try_into()?)))
            .collect::<anyhow::Result<_>>()?,
    };
    let csr = params.serialize_request(&key)?.pem()?;
    let signed = match subject {
        Subject::Workload(id) => authority.sign(&csr, id, Some(ttl))?,
        Subject::Dns(names) => authority.sign_server(&csr, names, Some(ttl))?,
    };
    Ok(Issued {
        chain: signed.chain.concat(),
        key: key.serialize_pem(),
        roots: signed.roots.concat(),
    })
}

/// Renews `serving` at half of `ttl`, for as long as it runs; a failed renewal is retried after
/// a minute (the current certificate still has half its life).
pub async fn keep_fresh(
    authority: Arc<Authority>,
    subject: Subject,
    serving: Arc<ServingCert>,
    ttl: Duration,
) {
    let mut wait = ttl / 2;
    loop {
        tokio::time::sleep(wait).await;
        let renewed =
            issue(&authority, &subject, ttl).and_then(|i| Ok(serving.replace(&i.chain, &i.key)?));
        wait = match renewed {
            Ok(()) => {
                tracing::info!("renewed the serving certificate of {subject:?}");
                ttl / 2
            }
            Err(e) => {
                tracing::warn!(
                    "renewing the serving certificate of {subject:?}: {e:#}; retrying in 60 s"
                );
                Duration::from_secs(60).min(ttl / 2)
            }
        };
    }
}
