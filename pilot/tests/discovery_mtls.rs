//! Discovery over mutual TLS: a proxy with a mesh certificate gets its view; a proxy whose
//! certificate proves another identity than the node it claims is refused; a client without a
//! certificate never gets a stream.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use mesh_api::proto::discovery::v1 as pb;
use mesh_ca::testing::{TestCa, csr_for};
use mesh_ca::{CaConfig, Identity};
use mesh_pilot::discovery::{Debounce, tls};
use mesh_pilot::model::MeshConfig;
use mesh_pilot::run::{ConfigSource, Pilot, PilotConfig, SecureDiscovery};
use mesh_proxy::discovery::{DiscoveryConfig, PilotTls};
use mesh_proxy::identity::{CertificateSource, IdentityError, SignFuture, request_svid};
use mesh_proxy::state::{State, proto};
use tokio::sync::{mpsc, watch};

const DEADLINE: Duration = Duration::from_secs(20);

struct Signer {
    ca: Arc<mesh_ca::Authority>,
    identity: Identity,
}

impl CertificateSource for Signer {
    fn sign(&self, csr: String) -> SignFuture<'_> {
        Box::pin(async move {
            let s = self
                .ca
                .sign(&csr, &self.identity, None)
                .map_err(|e| IdentityError::Ca(e.to_string()))?;
            Ok((s.chain, s.roots))
        })
    }
}

async fn pilot(ca: &TestCa, dir: &std::path::Path) -> Pilot {
    let pilot_id = Identity::new("cluster.local", "istio-system", "istiod");
    let (key, csr) = csr_for(&[&pilot_id.uri()]);
    let signed = ca.authority.sign(&csr, &pilot_id, None).unwrap();
    let server = tls::server_config(
        &signed.chain.concat(),
        &key.serialize_pem(),
        &signed.roots.concat(),
    )
    .unwrap();
    Pilot::start(PilotConfig {
        source: ConfigSource::Folder(dir.to_path_buf()),
        discovery: "127.0.0.1:0".parse().unwrap(),
        debug: "127.0.0.1:0".parse().unwrap(),
        mesh: MeshConfig::default(),
        debounce: Debounce::default(),
        secure: Some(SecureDiscovery {
            address: "127.0.0.1:0".parse().unwrap(),
            tls: server,
            ca: None,
        }),
    })
    .await
    .unwrap()
}

/// A discovery client configuration whose certificate proves `cert_sa` and whose node
/// claims `node_sa`.
async fn config_for(ca: &TestCa, pilot: &Pilot, cert_sa: &str, node_sa: &str) -> DiscoveryConfig {
    let signer = Signer {
        ca: ca.authority.clone(),
        identity: Identity::new("cluster.local", "default", cert_sa),
    };
    let svid = request_svid(&signer, &signer.identity.uri()).await.unwrap();
    let (svid_tx, svids) = watch::channel(Some(Arc::new(svid)));
    std::mem::forget(svid_tx);
    DiscoveryConfig {
        address: format!("http://{}", pilot.secure_addr.unwrap()),
        node: pb::Node {
            id: format!("sidecar~{cert_sa}-as-{node_sa}"),
            namespace: "default".into(),
            service_account: node_sa.into(),
            ..Default::default()
        },
        backoff_min: Duration::from_millis(20),
        backoff_max: Duration::from_millis(100),
        tls: Some(PilotTls {
            svids,
            pilot_identity: "spiffe://cluster.local/ns/istio-system/sa/istiod".into(),
        }),
    }
}

/// Runs a discovery client (see [`config_for`]); returns its state.
async fn client(
    ca: &TestCa,
    pilot: &Pilot,
    cert_sa: &str,
    node_sa: &str,
) -> watch::Receiver<Arc<State>> {
    let config = config_for(ca, pilot, cert_sa, node_sa).await;
    let (tx, rx) = watch::channel(Arc::new(
        State::compile(proto::ProxyState::default()).unwrap(),
    ));
    let (lookups_tx, lookups) = mpsc::unbounded_channel();
    std::mem::forget(lookups_tx);
    tokio::spawn(mesh_proxy::discovery::run(config, tx, lookups, None));
    rx
}

const SVC: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: shipping, namespace: default}\nspec:\n  ports: [{name: http, port: 80}]\n";

#[tokio::test]
async fn a_proxy_gets_its_own_view_over_mtls() {
    let ca = TestCa::self_signed("pilot-mtls-ok", CaConfig::default());
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("svc.yaml"), SVC).unwrap();
    let pilot = pilot(&ca, dir.path()).await;
    let mut state = client(&ca, &pilot, "order", "order").await;
    tokio::time::timeout(DEADLINE, state.wait_for(|s| !s.source.services.is_empty()))
        .await
        .expect("the view arrives over mTLS")
        .unwrap();
    let status = pilot.status.all();
    assert_eq!(status.len(), 1);
    assert!(status[0].connected);
    pilot.stop().await;
}

#[tokio::test]
async fn a_proxy_may_not_ask_for_another_identitys_view() {
    let ca = TestCa::self_signed("pilot-mtls-deny", CaConfig::default());
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("svc.yaml"), SVC).unwrap();
    let pilot = pilot(&ca, dir.path()).await;
    // The impostor's certificate says `order`, its node claims `payments`.
    let config = config_for(&ca, &pilot, "order", "payments").await;
    let channel = mesh_proxy::discovery::channel(&config).await.unwrap();
    let first = pb::DeltaDiscoveryRequest {
        node: Some(config.node.clone()),
        type_url: mesh_pilot::discovery::SERVICE_TYPE.into(),
        ..Default::default()
    };
    let err = pb::discovery_client::DiscoveryClient::new(channel)
        .delta_resources(tokio_stream::iter(vec![first]))
        .await
        .expect_err("refused");
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    assert!(
        err.message()
            .contains("spiffe://cluster.local/ns/default/sa/order"),
        "{}",
        err.message()
    );
    assert!(
        pilot.status.all().is_empty(),
        "the impostor never got a session"
    );
    // The same certificate asking for its own view is served.
    let mut honest = client(&ca, &pilot, "order", "order").await;
    tokio::time::timeout(DEADLINE, honest.wait_for(|s| !s.source.services.is_empty()))
        .await
        .expect("the honest proxy is served")
        .unwrap();
    pilot.stop().await;
}

#[tokio::test]
async fn plaintext_clients_cannot_use_the_mtls_port() {
    let ca = TestCa::self_signed("pilot-mtls-plain", CaConfig::default());
    let dir = tempfile::tempdir().unwrap();
    let pilot = pilot(&ca, dir.path()).await;
    let channel =
        tonic::transport::Endpoint::from_shared(format!("http://{}", pilot.secure_addr.unwrap()))
            .unwrap()
            .connect()
            .await;
    let refused = match channel {
        Err(_) => true,
        Ok(ch) => {
            let mut c = pb::discovery_client::DiscoveryClient::new(ch);
            let first = pb::DeltaDiscoveryRequest {
                node: Some(pb::Node {
                    id: "x".into(),
                    namespace: "default".into(),
                    ..Default::default()
                }),
                type_url: mesh_pilot::discovery::SERVICE_TYPE.into(),
                ..Default::default()
            };
            c.delta_resources(tokio_stream::iter(vec![first]))
                .await
                .is_err()
        }
    };
    assert!(refused);
    assert!(pilot.status.all().is_empty());
    pilot.stop().await;
}

/// TLS to pilot as a workload without a certificate yet: the server checked against the
/// mesh roots as pilot, the leaf it presented kept for the test to look at.
#[derive(Clone)]
struct NoCertConnector {
    config: Arc<rustls::ClientConfig>,
    leaf: Arc<std::sync::Mutex<Option<Vec<u8>>>>,
}

impl tower_service::Service<hyper::Uri> for NoCertConnector {
    type Response = hyper_util::rt::TokioIo<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;
    type Error = std::io::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: hyper::Uri) -> Self::Future {
        let (config, leaf) = (self.config.clone(), self.leaf.clone());
        Box::pin(async move {
            let addr = format!("{}:{}", uri.host().unwrap(), uri.port_u16().unwrap());
            let tcp = tokio::net::TcpStream::connect(addr).await?;
            let name = rustls_pki_types::ServerName::IpAddress(
                uri.host()
                    .unwrap()
                    .parse::<std::net::IpAddr>()
                    .unwrap()
                    .into(),
            );
            let tls = tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await?;
            *leaf.lock().unwrap() = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|c| c.to_vec());
            Ok(hyper_util::rt::TokioIo::new(tls))
        })
    }
}

#[tokio::test]
async fn the_ca_is_served_over_tls_beside_discovery_and_pilots_certificate_is_renewed() {
    let ca = TestCa::self_signed("pilot-ca-tls", CaConfig::default());
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("svc.yaml"), SVC).unwrap();
    let pilot_id = Identity::new("cluster.local", "istio-system", "istiod");
    let sign_pilot = || {
        let (key, csr) = csr_for(&[&pilot_id.uri()]);
        let signed = ca.authority.sign(&csr, &pilot_id, None).unwrap();
        (
            signed.chain.concat(),
            key.serialize_pem(),
            signed.roots.concat(),
        )
    };
    let (chain, key, roots) = sign_pilot();
    let serving = tls::ServingCert::new(&chain, &key).unwrap();
    let tokens = Arc::new(mesh_ca::auth::BootstrapTokens::default());
    let token = tokens.issue("default", "order");
    let pilot = Pilot::start(PilotConfig {
        source: ConfigSource::Folder(dir.path().to_path_buf()),
        discovery: "127.0.0.1:0".parse().unwrap(),
        debug: "127.0.0.1:0".parse().unwrap(),
        mesh: MeshConfig::default(),
        debounce: Debounce::default(),
        secure: Some(SecureDiscovery {
            address: "127.0.0.1:0".parse().unwrap(),
            tls: tls::server_config_renewable(serving.clone(), &roots).unwrap(),
            ca: Some(Arc::new(mesh_ca::service::CaService::new(
                ca.authority.clone(),
                tokens,
            ))),
        }),
    })
    .await
    .unwrap();
    let url = format!("https://{}", pilot.secure_addr.unwrap());
    let root_certs: Vec<_> = ca
        .authority
        .roots()
        .iter()
        .map(|pem| {
            use rustls_pki_types::pem::PemObject;
            rustls_pki_types::CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
        })
        .collect();
    let tls_for = |expected: &str| {
        mesh_proxy::tls::mtls::ca_client_config(root_certs.clone(), vec![expected.to_string()])
            .unwrap()
    };
    let credential = mesh_api::proto::ca::v1::Credential {
        kind: Some(mesh_api::proto::ca::v1::credential::Kind::BootstrapToken(
            token.clone(),
        )),
    };
    // The workload's first certificate, its token sent only inside TLS to a server proven
    // to be pilot.
    let first_ca = mesh_proxy::identity::CaClient::new(
        &url,
        credential.clone(),
        Duration::from_secs(3600),
        Some(tls_for(&pilot_id.uri())),
    )
    .unwrap();
    let svid = request_svid(&first_ca, "spiffe://cluster.local/ns/default/sa/order")
        .await
        .unwrap();
    assert_eq!(svid.identity, "spiffe://cluster.local/ns/default/sa/order");
    // A server that is not the expected identity gets no token.
    let wary = mesh_proxy::identity::CaClient::new(
        &url,
        credential.clone(),
        Duration::from_secs(3600),
        Some(tls_for("spiffe://cluster.local/ns/other/sa/ca")),
    )
    .unwrap();
    assert!(
        request_svid(&wary, "spiffe://cluster.local/ns/default/sa/order")
            .await
            .is_err()
    );
    // Plaintext to a CA off loopback is refused before anything is sent.
    let plain = mesh_proxy::identity::CaClient::new(
        "http://10.0.0.1:15012",
        credential,
        Duration::from_secs(3600),
        None,
    );
    assert!(
        plain
            .err()
            .is_some_and(|e| e.to_string().contains("plaintext")),
        "plaintext off loopback"
    );
    // Without a certificate, discovery on the same port is refused.
    let connector = NoCertConnector {
        config: tls_for(&pilot_id.uri()),
        leaf: Arc::default(),
    };
    let channel = tonic::transport::Endpoint::from_shared(url.clone())
        .unwrap()
        .connect_with_connector(connector.clone())
        .await
        .unwrap();
    let first = pb::DeltaDiscoveryRequest {
        node: Some(pb::Node {
            id: "sidecar~anon".into(),
            namespace: "default".into(),
            ..Default::default()
        }),
        type_url: mesh_pilot::discovery::SERVICE_TYPE.into(),
        ..Default::default()
    };
    let err = pb::discovery_client::DiscoveryClient::new(channel)
        .delta_resources(tokio_stream::iter(vec![first]))
        .await
        .expect_err("refused");
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err:?}");
    assert!(pilot.status.all().is_empty());
    let before = connector.leaf.lock().unwrap().clone().unwrap();
    assert_eq!(Some(before.clone()), serving.leaf().map(|c| c.to_vec()));
    // A renewed certificate is what the next handshake presents; pilot did not restart.
    let (chain, key, _) = sign_pilot();
    serving.replace(&chain, &key).unwrap();
    // A new client configuration: one that resumed its TLS session would see no certificate.
    let connector = NoCertConnector {
        config: tls_for(&pilot_id.uri()),
        leaf: Arc::default(),
    };
    let channel = tonic::transport::Endpoint::from_shared(url)
        .unwrap()
        .connect_with_connector(connector.clone())
        .await
        .unwrap();
    drop(channel);
    let after = connector.leaf.lock().unwrap().clone().unwrap();
    assert_ne!(after, before, "the new certificate is served");
    assert_eq!(Some(after), serving.leaf().map(|c| c.to_vec()));
    // And the proxy with a certificate still gets its view.
    let mut state = client(&ca, &pilot, "order", "order").await;
    tokio::time::timeout(DEADLINE, state.wait_for(|s| !s.source.services.is_empty()))
        .await
        .expect("the view arrives over mTLS")
        .unwrap();
    pilot.stop().await;
}

/// The Grafana dashboards in `manifests/addons/dashboards` query only metrics pilot and the CA
/// it serves really put on pilot's metrics page (the sidecars' are checked in
/// proxy/tests/dashboards.rs).
#[tokio::test]
async fn every_control_plane_metric_a_dashboard_queries_is_served() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let ca = TestCa::self_signed("mesh", CaConfig::default());
    let dir = tempfile::tempdir().unwrap();
    let pilot_id = Identity::new("cluster.local", "istio-system", "istiod");
    let (key, csr) = csr_for(&[&pilot_id.uri()]);
    let signed = ca.authority.sign(&csr, &pilot_id, None).unwrap();
    let serving = tls::ServingCert::new(&signed.chain.concat(), &key.serialize_pem()).unwrap();
    let pilot = Pilot::start(PilotConfig {
        source: ConfigSource::Folder(dir.path().to_path_buf()),
        discovery: "127.0.0.1:0".parse().unwrap(),
        debug: "127.0.0.1:0".parse().unwrap(),
        mesh: MeshConfig::default(),
        debounce: Debounce::default(),
        secure: Some(SecureDiscovery {
            address: "127.0.0.1:0".parse().unwrap(),
            tls: tls::server_config_renewable(serving, &signed.roots.concat()).unwrap(),
            ca: Some(Arc::new(mesh_ca::service::CaService::new(
                ca.authority.clone(),
                Arc::new(mesh_ca::auth::BootstrapTokens::default()),
            ))),
        }),
    })
    .await
    .unwrap();
    let mut conn = tokio::net::TcpStream::connect(pilot.debug_addr)
        .await
        .unwrap();
    conn.write_all(b"GET /metrics HTTP/1.0\r\nHost: pilot\r\n\r\n")
        .await
        .unwrap();
    let mut page = String::new();
    conn.read_to_string(&mut page).await.unwrap();
    let served: std::collections::BTreeSet<&str> = page
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .collect();
    let queried = mesh_api::testing::dashboard_metrics();
    let control: Vec<_> = queried
        .iter()
        .filter(|(m, _)| {
            ["pilot_", "citadel_", "mesh_pilot_"]
                .iter()
                .any(|p| m.starts_with(p))
        })
        .collect();
    assert!(
        control.len() >= 8,
        "the dashboards query pilot's and the CA's metrics: {queried:?}"
    );
    let missing: Vec<_> = control
        .iter()
        .filter(|(m, _)| !served.contains(m.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "queried but not served: {missing:#?}\n{page}"
    );
    pilot.stop().await;
}
