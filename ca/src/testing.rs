//! Test support (feature `test-util`): throw-away CAs in temporary folders, made with rcgen,
//! and CSRs for any identity. Shared by the tests of every crate that needs a CA. Test support
//! panics on failure, like the tests it serves.

#![allow(clippy::expect_used)]

use std::path::PathBuf;
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    PKCS_ECDSA_P256_SHA256, SanType,
};

use crate::{Authority, CaConfig};

/// A CA in a temporary folder, removed on drop.
pub struct TestCa {
    /// The CA folder.
    pub dir: PathBuf,
    /// The loaded authority.
    pub authority: Arc<Authority>,
}

fn temp_dir(tag: &str) -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    std::env::temp_dir().join(format!("mesh-test-ca-{tag}-{}-{nanos}", std::process::id()))
}

impl TestCa {
    /// A CA the authority creates itself.
    pub fn self_signed(tag: &str, config: CaConfig) -> Self {
        let dir = temp_dir(tag);
        let (authority, created) = Authority::load_or_create(&dir, config).expect("test CA");
        assert!(created);
        Self {
            dir,
            authority: Arc::new(authority),
        }
    }

    /// A CA plugged in from files made elsewhere (here: by rcgen directly), in Istio's cacerts
    /// layout: an external root, an intermediate it signed, and no root key in the folder.
    pub fn plugged(tag: &str, config: CaConfig) -> Self {
        let dir = temp_dir(tag);
        std::fs::create_dir_all(&dir).expect("dir");
        let (root_pem, ca_pem, ca_key) = external_ca();
        std::fs::write(dir.join("root-cert.pem"), &root_pem).expect("write");
        std::fs::write(dir.join("ca-cert.pem"), &ca_pem).expect("write");
        std::fs::write(dir.join("ca-key.pem"), ca_key).expect("write");
        std::fs::write(dir.join("cert-chain.pem"), format!("{ca_pem}{root_pem}")).expect("write");
        let (authority, created) = Authority::load_or_create(&dir, config).expect("plugged CA");
        assert!(!created);
        Self {
            dir,
            authority: Arc::new(authority),
        }
    }
}

impl Drop for TestCa {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// An "external" root and intermediate: (root PEM, intermediate PEM, intermediate key PEM).
pub fn external_ca() -> (String, String, String) {
    let root_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("key");
    let mut root_params = CertificateParams::default();
    root_params
        .distinguished_name
        .push(DnType::CommonName, "External Root");
    root_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    root_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let root = root_params.self_signed(&root_key).expect("root");
    let issuer = Issuer::new(root_params, &root_key);
    let ca_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("key");
    let mut ca_params = CertificateParams::default();
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "External Intermediate");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca = ca_params.signed_by(&ca_key, &issuer).expect("intermediate");
    (root.pem(), ca.pem(), ca_key.serialize_pem())
}

/// A new key and a CSR asking for the given SANs (URIs, or `DNS:name`).
pub fn csr_for(sans: &[&str]) -> (KeyPair, String) {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("key");
    let mut params = CertificateParams::default();
    params.subject_alt_names = sans
        .iter()
        .map(|s| match s.strip_prefix("DNS:") {
            Some(d) => SanType::DnsName((*d).try_into().expect("dns")),
            None => SanType::URI((*s).try_into().expect("uri")),
        })
        .collect();
    let csr = params
        .serialize_request(&key)
        .expect("csr")
        .pem()
        .expect("pem");
    (key, csr)
}
