//! The signing authority: a root and an intermediate in Istio's `cacerts` layout, and the
//! signing of workload CSRs.
//!
//! Files in the CA folder (Istio's names, so a plugged-in CA drops in unchanged):
//! `ca-cert.pem` (the signing certificate), `ca-key.pem` (its key), `cert-chain.pem` (the signing
//! certificate up to the root), `root-cert.pem` (the trust bundle: every accepted root). A
//! self-generated CA also keeps `root-key.pem`, so it can sign a new intermediate later.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    PKCS_ECDSA_P256_SHA256, SanType, SerialNumber,
};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use time::OffsetDateTime;

use crate::identity::Identity;

/// How the CA signs.
#[derive(Clone, Debug)]
pub struct CaConfig {
    /// Trust domain of the identities signed.
    pub trust_domain: String,
    /// Lifetime of a workload certificate when the caller asks for none.
    pub default_ttl: Duration,
    /// The longest lifetime granted, whatever the caller asks.
    pub max_ttl: Duration,
}

impl Default for CaConfig {
    fn default() -> Self {
        Self {
            trust_domain: "cluster.local".into(),
            default_ttl: Duration::from_secs(24 * 3600),
            max_ttl: Duration::from_secs(90 * 24 * 3600),
        }
    }
}

/// A CA that cannot start.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A file's content is not usable.
    #[error("{path}: {message}")]
    Content {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// Some but not all of the cacerts files are present.
    #[error(
        "{dir}: incomplete CA: found {found:?} but a CA needs ca-cert.pem, ca-key.pem, cert-chain.pem and root-cert.pem"
    )]
    Incomplete {
        /// The folder.
        dir: PathBuf,
        /// The files present.
        found: Vec<&'static str>,
    },
    /// Key or certificate generation failed.
    #[error("cannot generate the CA: {0}")]
    Generate(#[from] rcgen::Error),
}

/// A signing request refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SignError {
    /// Not a CSR, or its signature does not verify.
    #[error("the CSR is not valid: {0}")]
    BadCsr(String),
    /// The CSR asks for another identity than the caller proved.
    #[error("the CSR asks for {asked} but the credential proves {proved}")]
    WrongIdentity {
        /// What the CSR asks for.
        asked: String,
        /// What the credential proves.
        proved: String,
    },
    /// Signing failed.
    #[error("signing failed: {0}")]
    Internal(String),
}

/// A signed certificate with what a workload needs to use it.
#[derive(Clone, Debug)]
pub struct Signed {
    /// The workload certificate, then the intermediates, PEM.
    pub chain: Vec<String>,
    /// The trust bundle, PEM.
    pub roots: Vec<String>,
    /// When the certificate expires.
    pub not_after: OffsetDateTime,
}

/// The signing authority.
pub struct Authority {
    config: CaConfig,
    issuer: Issuer<'static, KeyPair>,
    /// `cert-chain.pem` split into PEM certificates (signing cert first).
    chain: Vec<String>,
    /// `root-cert.pem` split into PEM certificates.
    roots: Vec<String>,
}

const FILES: [&str; 4] = [
    "ca-cert.pem",
    "ca-key.pem",
    "cert-chain.pem",
    "root-cert.pem",
];

fn read(path: &Path) -> Result<String, CaError> {
    std::fs::read_to_string(path).map_err(|source| CaError::Io {
        path: path.into(),
        source,
    })
}

fn write(path: &Path, text: &str, secret: bool) -> Result<(), CaError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source| CaError::Io {
        path: path.into(),
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(if secret { 0o600 } else { 0o644 })
        .open(path)
        .map_err(io)?;
    file.write_all(text.as_bytes()).map_err(io)
}

/// Splits PEM text into its certificates, each re-encoded as PEM.
pub fn split_pem(path: &Path, text: &str) -> Result<Vec<String>, CaError> {
    let certs: Result<Vec<CertificateDer<'static>>, _> =
        CertificateDer::pem_slice_iter(text.as_bytes()).collect();
    let certs = certs.map_err(|e| CaError::Content {
        path: path.into(),
        message: format!("not PEM certificates: {e}"),
    })?;
    if certs.is_empty() {
        return Err(CaError::Content {
            path: path.into(),
            message: "no certificate in the file".into(),
        });
    }
    Ok(certs.iter().map(|c| pem_cert(c)).collect())
}

/// PEM of one DER certificate.
pub fn pem_cert(der: &[u8]) -> String {
    pem::encode_config(
        &pem::Pem::new("CERTIFICATE", der.to_vec()),
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    )
}

fn ca_params(common_name: &str, validity: Duration, path_len: Option<u8>) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "mesh");
    dn.push(DnType::CommonName, common_name);
    params.distinguished_name = dn;
    params.is_ca = match path_len {
        Some(n) => IsCa::Ca(BasicConstraints::Constrained(n)),
        None => IsCa::Ca(BasicConstraints::Unconstrained),
    };
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::minutes(5);
    params.not_after =
        now + time::Duration::seconds(i64::try_from(validity.as_secs()).unwrap_or(i64::MAX / 2));
    params.serial_number = Some(random_serial());
    params
}

fn random_serial() -> SerialNumber {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 16];
    let _ = ring::rand::SystemRandom::new().fill(&mut bytes);
    bytes[0] &= 0x7f; // positive
    SerialNumber::from_slice(&bytes)
}

impl Authority {
    /// Loads the CA in `dir` (Istio's `cacerts` layout), or creates a self-signed root and an
    /// intermediate there when the folder holds none. Returns whether it was created.
    pub fn load_or_create(dir: &Path, config: CaConfig) -> Result<(Self, bool), CaError> {
        let found: Vec<&'static str> = FILES.into_iter().filter(|f| dir.join(f).exists()).collect();
        match found.len() {
            4 => Ok((Self::load(dir, config)?, false)),
            0 => {
                Self::create(dir)?;
                Ok((Self::load(dir, config)?, true))
            }
            _ => Err(CaError::Incomplete {
                dir: dir.into(),
                found,
            }),
        }
    }

    /// Writes a new self-signed root (10 years) and an intermediate signed by it (5 years).
    pub fn create(dir: &Path) -> Result<(), CaError> {
        std::fs::create_dir_all(dir).map_err(|source| CaError::Io {
            path: dir.into(),
            source,
        })?;
        let root_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let root_params = ca_params(
            "mesh root CA",
            Duration::from_secs(10 * 365 * 24 * 3600),
            None,
        );
        let root = root_params.self_signed(&root_key)?;
        let root_issuer = Issuer::new(root_params, &root_key);
        let ca_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let ca = ca_params(
            "mesh intermediate CA",
            Duration::from_secs(5 * 365 * 24 * 3600),
            Some(0),
        )
        .signed_by(&ca_key, &root_issuer)?;
        write(&dir.join("root-key.pem"), &root_key.serialize_pem(), true)?;
        write(&dir.join("root-cert.pem"), &root.pem(), false)?;
        write(&dir.join("ca-key.pem"), &ca_key.serialize_pem(), true)?;
        write(&dir.join("ca-cert.pem"), &ca.pem(), false)?;
        write(
            &dir.join("cert-chain.pem"),
            &format!("{}{}", ca.pem(), root.pem()),
            false,
        )
    }

    /// Loads a CA from Istio's `cacerts` files in `dir`.
    pub fn load(dir: &Path, config: CaConfig) -> Result<Self, CaError> {
        let key_path = dir.join("ca-key.pem");
        let key = KeyPair::from_pem(&read(&key_path)?).map_err(|e| CaError::Content {
            path: key_path.clone(),
            message: format!("not a private key: {e}"),
        })?;
        let cert_path = dir.join("ca-cert.pem");
        let issuer =
            Issuer::from_ca_cert_pem(&read(&cert_path)?, key).map_err(|e| CaError::Content {
                path: cert_path,
                message: format!("not a CA certificate: {e}"),
            })?;
        let chain_path = dir.join("cert-chain.pem");
        let chain = split_pem(&chain_path, &read(&chain_path)?)?;
        let roots_path = dir.join("root-cert.pem");
        let roots = split_pem(&roots_path, &read(&roots_path)?)?;
        Ok(Self {
            config,
            issuer,
            chain,
            roots,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &CaConfig {
        &self.config
    }

    /// The trust bundle (PEM certificates).
    pub fn roots(&self) -> &[String] {
        &self.roots
    }

    /// Signs `csr_pem` for `identity`, for `ttl` (the default when `None`, capped at the maximum).
    /// The CSR's signature must verify and it must ask for exactly that identity.
    pub fn sign(
        &self,
        csr_pem: &str,
        identity: &Identity,
        ttl: Option<Duration>,
    ) -> Result<Signed, SignError> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| SignError::BadCsr(e.to_string()))?;
        let want = identity.uri();
        let asked: Vec<String> = csr
            .params
            .subject_alt_names
            .iter()
            .map(|san| match san {
                SanType::URI(u) => u.as_str().to_string(),
                SanType::DnsName(d) => format!("DNS:{}", d.as_str()),
                SanType::IpAddress(ip) => format!("IP:{ip}"),
                SanType::Rfc822Name(e) => format!("email:{}", e.as_str()),
                _ => "another kind of name".into(),
            })
            .collect();
        if asked != [want.clone()] {
            let asked = if asked.is_empty() {
                "no identity".to_string()
            } else {
                asked.join(", ")
            };
            return Err(SignError::WrongIdentity {
                asked,
                proved: want,
            });
        }
        let san = SanType::URI(
            want.clone()
                .try_into()
                .map_err(|e: rcgen::Error| SignError::Internal(e.to_string()))?,
        );
        self.issue(
            &csr,
            vec![san],
            ttl,
            vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
        )
    }

    /// Signs `csr_pem` as a serving certificate for the DNS names `dns` (the control plane's
    /// own HTTPS endpoints, such as the injector's webhook, which the Kubernetes API server
    /// checks by the Service's DNS name). The CSR must ask for exactly those names. The
    /// caller decides who may ask: this is never offered to workloads.
    pub fn sign_server(
        &self,
        csr_pem: &str,
        dns: &[String],
        ttl: Option<Duration>,
    ) -> Result<Signed, SignError> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| SignError::BadCsr(e.to_string()))?;
        let mut asked: Vec<String> = csr
            .params
            .subject_alt_names
            .iter()
            .map(|san| match san {
                SanType::DnsName(d) => d.as_str().to_string(),
                _ => "a name that is not DNS".into(),
            })
            .collect();
        let mut want = dns.to_vec();
        asked.sort();
        want.sort();
        if asked != want || want.is_empty() {
            return Err(SignError::WrongIdentity {
                asked: asked.join(", "),
                proved: want.join(", "),
            });
        }
        let sans = dns
            .iter()
            .map(|d| {
                d.clone()
                    .try_into()
                    .map(SanType::DnsName)
                    .map_err(|e: rcgen::Error| SignError::Internal(e.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        self.issue(&csr, sans, ttl, vec![ExtendedKeyUsagePurpose::ServerAuth])
    }

    fn issue(
        &self,
        csr: &CertificateSigningRequestParams,
        sans: Vec<SanType>,
        ttl: Option<Duration>,
        usages: Vec<ExtendedKeyUsagePurpose>,
    ) -> Result<Signed, SignError> {
        let ttl = ttl
            .unwrap_or(self.config.default_ttl)
            .min(self.config.max_ttl);
        let now = OffsetDateTime::now_utc();
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = sans;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = usages;
        // A minute of grace for clocks that run a little behind.
        params.not_before = now - time::Duration::minutes(1);
        params.not_after =
            now + time::Duration::seconds(i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX / 2));
        params.serial_number = Some(random_serial());
        params.use_authority_key_identifier_extension = true;
        let cert = params
            .signed_by(&csr.public_key, &self.issuer)
            .map_err(|e| SignError::Internal(e.to_string()))?;
        let mut chain = vec![cert.pem()];
        // The chain ends below the root: peers have the root in their bundle.
        let intermediates = self.chain.len().saturating_sub(1);
        chain.extend(self.chain.iter().take(intermediates.max(1)).cloned());
        Ok(Signed {
            chain,
            roots: self.roots.clone(),
            not_after: params.not_after,
        })
    }
}
