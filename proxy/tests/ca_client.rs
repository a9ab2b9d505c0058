//! The proxy's CA client against the real signing service on 127.0.0.1: the first certificate
//! with a bootstrap token, renewals with the current certificate (even once the token is gone),
//! and refusals for forged renewals and for another identity.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use mesh_api::proto::ca::v1::{Credential, Renewal, credential::Kind};
use mesh_ca::CaConfig;
use mesh_ca::auth::BootstrapTokens;
use mesh_ca::service::CaService;
use mesh_ca::testing::TestCa;
use mesh_proxy::identity::{CaClient, CertificateSource, renew_svid, request_svid};

const ORDER: &str = "spiffe://cluster.local/ns/default/sa/order";

async fn ca_server(ca: &TestCa, tokens: Arc<BootstrapTokens>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(mesh_ca::service::serve(
        listener,
        CaService::new(ca.authority.clone(), tokens),
        std::future::pending(),
    ));
    format!("http://{addr}")
}

fn client(endpoint: &str, token: &str) -> CaClient {
    CaClient::new(
        endpoint,
        Credential {
            kind: Some(Kind::BootstrapToken(token.into())),
        },
        Duration::from_secs(3600),
        None,
    )
    .unwrap()
}

#[tokio::test]
async fn renewal_with_the_current_certificate_outlives_the_token() {
    let ca = TestCa::self_signed("client-renew", CaConfig::default());
    let tokens = Arc::new(BootstrapTokens::default());
    let token = tokens.issue("default", "order");
    let endpoint = ca_server(&ca, tokens.clone()).await;
    let c = client(&endpoint, &token);
    let first = request_svid(&c, ORDER).await.unwrap();
    tokens.revoke(&token);
    assert!(
        request_svid(&c, ORDER).await.is_err(),
        "the token no longer works"
    );
    let renewed = renew_svid(&c, ORDER, &first).await.unwrap();
    assert_ne!(renewed.chain[0], first.chain[0]);
    // And again, with the renewed certificate.
    renew_svid(&c, ORDER, &renewed).await.unwrap();
}

#[tokio::test]
async fn forged_renewals_and_other_identities_are_refused() {
    let ca = TestCa::self_signed("client-forged", CaConfig::default());
    let tokens = Arc::new(BootstrapTokens::default());
    let token = tokens.issue("default", "order");
    let endpoint = ca_server(&ca, tokens).await;
    let c = client(&endpoint, &token);
    let current = request_svid(&c, ORDER).await.unwrap();

    // A valid certificate cannot renew another identity.
    let err = renew_svid(
        &c,
        "spiffe://cluster.local/ns/default/sa/payments",
        &current,
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(err.contains("PermissionDenied"), "{err}");

    // A chain without the matching signature proves nothing.
    let (_key, csr) = mesh_ca::testing::csr_for(&[ORDER]);
    let chain_pem = current
        .chain
        .iter()
        .map(|c| pem::encode(&pem::Pem::new("CERTIFICATE", c.to_vec())))
        .collect();
    let forged = Renewal {
        cert_chain_pem: chain_pem,
        csr_signature: vec![0x30, 0x06, 0x02, 0x01, 0x01, 0x02, 0x01, 0x01],
    };
    let err = c
        .sign_renewal(csr.clone(), forged)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("Unauthenticated") && err.contains("not signed with the certificate's key"),
        "{err}"
    );

    // A certificate from another CA proves nothing either.
    let foreign = TestCa::self_signed("client-foreign", CaConfig::default());
    let ftokens = Arc::new(BootstrapTokens::default());
    let ftoken = ftokens.issue("default", "order");
    let fendpoint = ca_server(&foreign, ftokens).await;
    let stranger = request_svid(&client(&fendpoint, &ftoken), ORDER)
        .await
        .unwrap();
    let err = renew_svid(&c, ORDER, &stranger)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("not a valid mesh certificate"), "{err}");
}
