//! The control plane of a local mesh: pilot (watching `DIR/config`) and the CA (`DIR/ca`) in
//! one process, started by `meshctl up` inside the hub namespace and serving on the hub's
//! address: discovery over mutual TLS on 15012, the CA on 15013, pilot's debug endpoints on
//! 15014, plaintext discovery on the hub's loopback only (15010).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use mesh_ca::auth::BootstrapTokens;
use mesh_ca::service::CaService;
use mesh_ca::{Authority, CaConfig, Identity};
use mesh_pilot::discovery::{Debounce, tls};
use mesh_pilot::model::MeshConfig;
use mesh_pilot::run::{ConfigSource, Pilot, PilotConfig, SecureDiscovery};
use rcgen::{CertificateParams, KeyPair, PKCS_ECDSA_P256_SHA256, SanType};

use super::state::Layout;

/// Discovery over mutual TLS.
pub const SECURE_DISCOVERY_PORT: u16 = 15012;
/// Certificate signing.
pub const CA_PORT: u16 = 15013;
/// Pilot's debug endpoints (`/debug/syncz`, `/debug/model`, ...).
pub const DEBUG_PORT: u16 = 15014;
/// Plaintext discovery (hub loopback only).
pub const PLAINTEXT_DISCOVERY_PORT: u16 = 15010;
/// Pilot's identity, which proxies check (Istio's).
pub const PILOT_NAMESPACE: &str = "istio-system";
/// Pilot's service account.
pub const PILOT_SERVICE_ACCOUNT: &str = "istiod";
/// How long pilot's own serving certificate lasts; the control plane renews it by restarting
/// (`meshctl up` on a mesh whose control plane stopped), so a year keeps a long-lived local mesh
/// working.
const PILOT_CERT_TTL: Duration = Duration::from_secs(365 * 24 * 3600);

/// Creates the CA's root and intermediate in `DIR/ca` when absent.
pub fn ensure_ca(layout: &Layout) -> anyhow::Result<()> {
    Authority::load_or_create(&layout.ca(), ca_config())
        .with_context(|| format!("the CA in {}", layout.ca().display()))?;
    Ok(())
}

fn ca_config() -> CaConfig {
    CaConfig {
        max_ttl: PILOT_CERT_TTL,
        ..CaConfig::default()
    }
}

/// Serves until SIGTERM or SIGINT. Writes `DIR/control-plane.ready` once every port listens.
pub async fn serve(layout: Layout, address: IpAddr) -> anyhow::Result<()> {
    let (authority, created) = Authority::load_or_create(&layout.ca(), ca_config())
        .with_context(|| format!("the CA in {}", layout.ca().display()))?;
    if created {
        tracing::info!(
            "created a new root and intermediate in {}",
            layout.ca().display()
        );
    }
    let authority = Arc::new(authority);
    let pilot_id = Identity::new(
        &authority.config().trust_domain,
        PILOT_NAMESPACE,
        PILOT_SERVICE_ACCOUNT,
    );
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::default();
    params.subject_alt_names = vec![SanType::URI(pilot_id.uri().try_into()?)];
    let csr = params.serialize_request(&key)?.pem()?;
    let signed = authority.sign(&csr, &pilot_id, Some(PILOT_CERT_TTL))?;
    let server_tls = tls::server_config(
        &signed.chain.concat(),
        &key.serialize_pem(),
        &signed.roots.concat(),
    )?;
    std::fs::create_dir_all(layout.config())?;
    let pilot = Pilot::start(PilotConfig {
        source: ConfigSource::Folder(layout.config()),
        discovery: SocketAddr::from(([127, 0, 0, 1], PLAINTEXT_DISCOVERY_PORT)),
        debug: SocketAddr::new(address, DEBUG_PORT),
        mesh: MeshConfig::default(),
        debounce: Debounce::default(),
        secure: Some(SecureDiscovery {
            address: SocketAddr::new(address, SECURE_DISCOVERY_PORT),
            tls: server_tls,
        }),
    })
    .await?;
    let tokens = BootstrapTokens::load(&layout.tokens())?;
    let service = CaService::new(authority, Arc::new(tokens));
    let ca_addr = SocketAddr::new(address, CA_PORT);
    let ca_listener = tokio::net::TcpListener::bind(ca_addr)
        .await
        .with_context(|| format!("cannot listen on {ca_addr} (CA)"))?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let ca = tokio::spawn(async move {
        let mut stop_rx = stop_rx;
        mesh_ca::service::serve(ca_listener, service, async move {
            let _ = stop_rx.wait_for(|s| *s).await;
        })
        .await;
    });
    std::fs::write(layout.control_ready(), std::process::id().to_string())?;
    tracing::info!(
        "control plane serving: discovery {}, CA {ca_addr}, debug {}",
        pilot.secure_addr.map(|a| a.to_string()).unwrap_or_default(),
        pilot.debug_addr
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!("control plane stopping");
    let _ = std::fs::remove_file(layout.control_ready());
    let _ = stop_tx.send(true);
    let _ = ca.await;
    pilot.stop().await;
    Ok(())
}
