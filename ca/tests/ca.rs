//! The CA: creating and loading roots (self-made and plugged in), identity checks, lifetimes,
//! chains that verify to the roots, and the gRPC service's answers.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::Duration;

use mesh_api::proto::ca::v1::certificates_client::CertificatesClient;
use mesh_api::proto::ca::v1::{CertificateRequest, Credential, credential::Kind};
use mesh_ca::auth::BootstrapTokens;
use mesh_ca::service::CaService;
use mesh_ca::testing::{TestCa, csr_for};
use mesh_ca::{Authority, CaConfig, CaError, Identity, SignError};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, UnixTime};
use x509_parser::prelude::*;

fn order() -> Identity {
    Identity::new("cluster.local", "default", "order")
}

/// Verifies `chain` (leaf first) against `roots` as a TLS client certificate would be.
fn verify(chain: &[String], roots: &[String]) -> Result<(), webpki::Error> {
    let der = |pem: &String| CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
    let leaf = der(&chain[0]);
    let intermediates: Vec<CertificateDer<'_>> = chain[1..].iter().map(der).collect();
    let root_ders: Vec<CertificateDer<'_>> = roots.iter().map(der).collect();
    let anchors: Vec<_> = root_ders
        .iter()
        .map(|r| webpki::anchor_from_trusted_cert(r).unwrap())
        .collect();
    let cert = webpki::EndEntityCert::try_from(&leaf)?;
    cert.verify_for_usage(
        webpki::ALL_VERIFICATION_ALGS,
        &anchors,
        &intermediates,
        UnixTime::now(),
        webpki::KeyUsage::client_auth(),
        None,
        None,
    )
    .map(|_| ())
}

fn leaf_facts(pem: &str) -> (Vec<String>, Duration, bool) {
    let der = CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
    let (_, cert) = X509Certificate::from_der(&der).unwrap();
    let sans = cert
        .subject_alternative_name()
        .unwrap()
        .map(|s| {
            s.value
                .general_names
                .iter()
                .map(|n| format!("{n}"))
                .collect()
        })
        .unwrap_or_default();
    let life = cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp();
    (sans, Duration::from_secs(life as u64), cert.is_ca())
}

#[test]
fn a_created_ca_is_kept_and_its_keys_are_private() {
    let ca = TestCa::self_signed("create", CaConfig::default());
    for key in ["ca-key.pem", "root-key.pem"] {
        let mode = std::fs::metadata(ca.dir.join(key))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600, "{key}");
    }
    let (again, created) = Authority::load_or_create(&ca.dir, CaConfig::default()).unwrap();
    assert!(!created, "the second start loads the same CA");
    assert_eq!(again.roots(), ca.authority.roots());
}

#[test]
fn an_incomplete_ca_folder_is_refused_with_what_is_missing() {
    let ca = TestCa::self_signed("incomplete", CaConfig::default());
    std::fs::remove_file(ca.dir.join("ca-key.pem")).unwrap();
    let err = Authority::load_or_create(&ca.dir, CaConfig::default())
        .err()
        .expect("refused");
    assert!(matches!(err, CaError::Incomplete { .. }));
    assert!(
        err.to_string()
            .contains("needs ca-cert.pem, ca-key.pem, cert-chain.pem and root-cert.pem"),
        "{err}"
    );
}

#[test]
fn signed_certificates_are_svids_that_chain_to_the_roots() {
    for ca in [
        TestCa::self_signed("chain", CaConfig::default()),
        TestCa::plugged("plugged", CaConfig::default()),
    ] {
        let (_key, csr) = csr_for(&["spiffe://cluster.local/ns/default/sa/order"]);
        let signed = ca.authority.sign(&csr, &order(), None).unwrap();
        assert_eq!(signed.chain.len(), 2, "leaf and intermediate");
        verify(&signed.chain, &signed.roots).expect("the chain verifies to the trust bundle");
        let (sans, life, is_ca) = leaf_facts(&signed.chain[0]);
        assert_eq!(sans, ["URI(spiffe://cluster.local/ns/default/sa/order)"]);
        assert!(!is_ca);
        assert_eq!(
            life,
            Duration::from_secs(24 * 3600 + 60),
            "24 h plus a minute of clock grace"
        );
    }
}

#[test]
fn another_identity_in_the_csr_is_refused() {
    let ca = TestCa::self_signed("wrong-id", CaConfig::default());
    let cases: [&[&str]; 4] = [
        &["spiffe://cluster.local/ns/default/sa/payments"],
        &[
            "spiffe://cluster.local/ns/default/sa/order",
            "spiffe://cluster.local/ns/default/sa/payments",
        ],
        &["DNS:order.default.svc"],
        &[],
    ];
    for sans in cases {
        let (_key, csr) = csr_for(sans);
        let err = ca.authority.sign(&csr, &order(), None).unwrap_err();
        assert!(
            matches!(err, SignError::WrongIdentity { .. }),
            "{sans:?}: {err}"
        );
        assert!(
            err.to_string()
                .contains("the credential proves spiffe://cluster.local/ns/default/sa/order")
        );
    }
}

#[test]
fn serving_certificates_name_exactly_the_dns_names_asked() {
    let ca = TestCa::self_signed("server", CaConfig::default());
    let names = vec![
        "mesh-pilot.mesh-system.svc".to_string(),
        "mesh-pilot.mesh-system.svc.cluster.local".to_string(),
    ];
    let (_key, csr) = csr_for(&[
        "DNS:mesh-pilot.mesh-system.svc.cluster.local",
        "DNS:mesh-pilot.mesh-system.svc",
    ]);
    let signed = ca.authority.sign_server(&csr, &names, None).unwrap();
    let der = CertificateDer::from_pem_slice(signed.chain[0].as_bytes()).unwrap();
    let leaf = webpki::EndEntityCert::try_from(&der).unwrap();
    let name = rustls_pki_types::ServerName::try_from("mesh-pilot.mesh-system.svc").unwrap();
    leaf.verify_is_valid_for_subject_name(&name).unwrap();
    for asked in [
        &["DNS:mesh-pilot.mesh-system.svc"][..],
        &["DNS:other.svc", "DNS:mesh-pilot.mesh-system.svc"],
        &["spiffe://cluster.local/ns/mesh-system/sa/mesh-pilot"],
    ] {
        let (_key, csr) = csr_for(asked);
        let err = ca.authority.sign_server(&csr, &names, None).unwrap_err();
        assert!(matches!(err, SignError::WrongIdentity { .. }), "{asked:?}");
    }
}

#[test]
fn broken_csrs_are_refused() {
    let ca = TestCa::self_signed("bad-csr", CaConfig::default());
    let (_key, csr) = csr_for(&["spiffe://cluster.local/ns/default/sa/order"]);
    // Flip one byte inside the base64 body: the signature no longer verifies (or it no longer parses).
    let mut bytes = csr.into_bytes();
    let at = bytes.len() / 2;
    bytes[at] = if bytes[at] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(bytes).unwrap();
    assert!(matches!(
        ca.authority.sign(&tampered, &order(), None),
        Err(SignError::BadCsr(_))
    ));
    assert!(matches!(
        ca.authority.sign("not a csr", &order(), None),
        Err(SignError::BadCsr(_))
    ));
}

#[test]
fn lifetimes_follow_the_request_and_are_capped() {
    let config = CaConfig {
        max_ttl: Duration::from_secs(48 * 3600),
        ..CaConfig::default()
    };
    let ca = TestCa::self_signed("ttl", config);
    let (_key, csr) = csr_for(&["spiffe://cluster.local/ns/default/sa/order"]);
    let one_hour = ca
        .authority
        .sign(&csr, &order(), Some(Duration::from_secs(3600)))
        .unwrap();
    assert_eq!(
        leaf_facts(&one_hour.chain[0]).1,
        Duration::from_secs(3600 + 60)
    );
    let too_long = ca
        .authority
        .sign(&csr, &order(), Some(Duration::from_secs(365 * 24 * 3600)))
        .unwrap();
    assert_eq!(
        leaf_facts(&too_long.chain[0]).1,
        Duration::from_secs(48 * 3600 + 60),
        "capped at the maximum"
    );
}

#[tokio::test]
async fn the_service_signs_for_proven_callers_only() {
    let ca = TestCa::self_signed("grpc", CaConfig::default());
    let tokens = Arc::new(BootstrapTokens::default());
    let token = tokens.issue("default", "order");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let service = CaService::new(ca.authority.clone(), tokens);
    tokio::spawn(mesh_ca::service::serve(
        listener,
        service,
        std::future::pending(),
    ));
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = CertificatesClient::new(channel);
    let request = |token: &str, sans: &[&str]| CertificateRequest {
        csr_pem: csr_for(sans).1,
        credential: Some(Credential {
            kind: Some(Kind::BootstrapToken(token.into())),
        }),
        validity_seconds: 0,
    };

    let ok = client
        .create_certificate(request(
            &token,
            &["spiffe://cluster.local/ns/default/sa/order"],
        ))
        .await
        .unwrap()
        .into_inner();
    verify(&ok.cert_chain_pem, &ok.root_certs_pem).unwrap();

    let wrong_token = client
        .create_certificate(request(
            "nope",
            &["spiffe://cluster.local/ns/default/sa/order"],
        ))
        .await
        .unwrap_err();
    assert_eq!(wrong_token.code(), tonic::Code::Unauthenticated);
    assert!(
        wrong_token
            .message()
            .contains("bootstrap token not recognised")
    );

    let other_sa = client
        .create_certificate(request(
            &token,
            &["spiffe://cluster.local/ns/default/sa/payments"],
        ))
        .await
        .unwrap_err();
    assert_eq!(other_sa.code(), tonic::Code::PermissionDenied);
    assert!(
        other_sa
            .message()
            .contains("asks for spiffe://cluster.local/ns/default/sa/payments")
    );

    let no_credential = client
        .create_certificate(CertificateRequest {
            csr_pem: csr_for(&["spiffe://cluster.local/ns/default/sa/order"]).1,
            credential: None,
            validity_seconds: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(no_credential.code(), tonic::Code::Unauthenticated);
}

#[tokio::test]
async fn requests_issues_and_refusals_are_counted_with_the_roots_expiry() {
    use mesh_api::proto::ca::v1::certificates_server::Certificates;
    let ca = TestCa::self_signed("metrics", CaConfig::default());
    let tokens = Arc::new(BootstrapTokens::default());
    let token = tokens.issue("default", "order");
    let service = CaService::new(ca.authority.clone(), tokens);
    let request = |token: &str, san: &str| {
        tonic::Request::new(CertificateRequest {
            csr_pem: csr_for(&[san]).1,
            credential: Some(Credential {
                kind: Some(Kind::BootstrapToken(token.into())),
            }),
            validity_seconds: 0,
        })
    };
    let order = "spiffe://cluster.local/ns/default/sa/order";
    assert!(
        service
            .create_certificate(request(&token, order))
            .await
            .is_ok()
    );
    assert!(
        service
            .create_certificate(request("nope", order))
            .await
            .is_err()
    );
    let other = "spiffe://cluster.local/ns/default/sa/payments";
    assert!(
        service
            .create_certificate(request(&token, other))
            .await
            .is_err()
    );
    let text = service.render_metrics();
    for line in [
        "citadel_server_csr_count 3\n",
        "citadel_server_success_cert_issuance_count 1\n",
        "citadel_server_authentication_failure_count 1\n",
        "citadel_server_csr_sign_err_count 1\n",
    ] {
        assert!(text.contains(line), "no {line:?} in:\n{text}");
    }
    let expiry: i64 = text
        .lines()
        .find_map(|l| l.strip_prefix("citadel_server_root_cert_expiry_timestamp "))
        .unwrap()
        .parse()
        .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!(
        expiry > now,
        "the root expires in the future: {expiry} vs {now}"
    );
}
