//! The control plane of a local mesh: pilot (watching `DIR/config`) and the CA (`DIR/ca`) in
//! one process, started by `meshctl up` inside the hub namespace and serving on the hub's
//! address: discovery over mutual TLS and the CA over TLS on 15012 (as istiod serves both; a
//! workload checks pilot with the mesh root file before it sends its bootstrap token), pilot's
//! debug endpoints on 15014, plaintext discovery on the hub's loopback only (15010). Pilot's
//! serving certificate is renewed at half its lifetime while the control plane runs.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use mesh_ca::auth::BootstrapTokens;
use mesh_ca::service::CaService;
use mesh_ca::{Authority, CaConfig, Identity};
use mesh_pilot::certs::{self, Subject};
use mesh_pilot::discovery::{Debounce, tls};
use mesh_pilot::model::MeshConfig;
use mesh_pilot::run::{ConfigSource, Pilot, PilotConfig, SecureDiscovery};

use super::state::Layout;

/// Discovery over mutual TLS.
pub const SECURE_DISCOVERY_PORT: u16 = 15012;
/// Pilot's debug endpoints (`/debug/syncz`, `/debug/model`, ...).
pub const DEBUG_PORT: u16 = 15014;
/// Plaintext discovery (hub loopback only).
pub const PLAINTEXT_DISCOVERY_PORT: u16 = 15010;
/// Pilot's identity, which proxies check (Istio's).
pub const PILOT_NAMESPACE: &str = "istio-system";
/// Pilot's service account.
pub const PILOT_SERVICE_ACCOUNT: &str = "istiod";
/// How long pilot's own serving certificate lasts (Istio's workload default); it is renewed at
/// half of that while the control plane runs.
const PILOT_CERT_TTL: Duration = Duration::from_secs(24 * 3600);

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
    let subject = Subject::Workload(pilot_id);
    let own = certs::issue(&authority, &subject, PILOT_CERT_TTL)?;
    let serving = tls::ServingCert::new(&own.chain, &own.key)?;
    let server_tls = tls::server_config_renewable(serving.clone(), &own.roots)?;
    let renewal = tokio::spawn(certs::keep_fresh(
        authority.clone(),
        subject,
        serving,
        PILOT_CERT_TTL,
    ));
    let tokens = BootstrapTokens::load(&layout.tokens())?;
    let ca = Arc::new(CaService::new(authority.clone(), Arc::new(tokens)));
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
            ca: Some(ca),
        }),
    })
    .await?;
    std::fs::write(layout.control_ready(), std::process::id().to_string())?;
    tracing::info!(
        "control plane serving: discovery and CA {}, debug {}",
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
    renewal.abort();
    pilot.stop().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn pilots_serving_certificate_is_renewed_at_half_its_life() {
        let dir = tempfile::tempdir().unwrap();
        let (authority, _) = Authority::load_or_create(dir.path(), ca_config()).unwrap();
        let authority = Arc::new(authority);
        let id = Identity::new("cluster.local", PILOT_NAMESPACE, PILOT_SERVICE_ACCOUNT);
        let subject = Subject::Workload(id);
        let own = certs::issue(&authority, &subject, PILOT_CERT_TTL).unwrap();
        let serving = tls::ServingCert::new(&own.chain, &own.key).unwrap();
        let first = serving.leaf().unwrap();
        let renewal = tokio::spawn(certs::keep_fresh(
            authority,
            subject,
            serving.clone(),
            PILOT_CERT_TTL,
        ));
        tokio::time::sleep(PILOT_CERT_TTL / 2 - Duration::from_secs(1)).await;
        assert_eq!(serving.leaf().unwrap(), first, "not before half its life");
        tokio::time::sleep(Duration::from_secs(2)).await;
        let second = serving.leaf().unwrap();
        assert_ne!(second, first, "renewed at half its life");
        tokio::time::sleep(PILOT_CERT_TTL / 2).await;
        assert_ne!(serving.leaf().unwrap(), second, "and again");
        renewal.abort();
    }
}
