//! The control plane in a Kubernetes cluster, as one process like istiod: pilot reading the
//! cluster, the CA (its root in a folder, a mounted Secret's) checking workloads' projected
//! service-account tokens with TokenReviews and served with discovery over mTLS on 15012, the
//! injector's webhook over HTTPS with a certificate the CA signs for its Service's DNS names,
//! and what the cluster must hold for injected pods: the root certificate in every namespace and
//! the webhook configuration's `caBundle`, written at start and kept so as namespaces appear.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::ListParams;
use kube::{Api, Client};
use mesh_ca::auth::KubernetesTokens;
use mesh_ca::service::CaService;
use mesh_ca::{Authority, CaConfig, Identity};
use mesh_injector::InjectConfig;
use tokio::net::TcpListener;

use crate::certs::{self, Subject};
use crate::discovery::{Debounce, tls};
use crate::kube_publish;
use crate::model::MeshConfig;
use crate::run::{ConfigSource, Pilot, PilotConfig, SecureDiscovery};

/// The audience of the tokens workloads present to the CA (what the injector projects).
pub const TOKEN_AUDIENCE: &str = "istio-ca";
/// How long the control plane's own certificates last; renewed at half of that.
const OWN_CERT_TTL: Duration = Duration::from_secs(24 * 3600);
/// How often namespaces are listed for the root certificate, and the `caBundle` checked.
const PUBLISH_EVERY: Duration = Duration::from_secs(30);

/// Where and as whom the control plane runs.
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    /// The CA's folder (its root and intermediate; created when empty).
    pub ca_dir: PathBuf,
    /// A Secret of the control plane's namespace that keeps the CA's files across restarts
    /// (restored into `ca_dir` when it exists, stored from it when not).
    pub ca_secret: Option<String>,
    /// The control plane's namespace (`mesh-system`).
    pub namespace: String,
    /// Its service account: pilot's identity, which proxies check.
    pub service_account: String,
    /// Its Service's name: the webhook's certificate names `<service>.<namespace>.svc`.
    pub service: String,
    /// The cluster's DNS domain.
    pub domain: String,
    /// Discovery over mTLS and the CA (15012).
    pub secure_discovery: SocketAddr,
    /// Plaintext discovery (keep it on loopback).
    pub discovery: SocketAddr,
    /// Debug endpoints.
    pub debug: SocketAddr,
    /// The injector: where its webhook listens, the MutatingWebhookConfiguration whose
    /// `caBundle` it keeps, and what it injects.
    pub webhook: Option<WebhookSettings>,
    /// Mesh-wide settings.
    pub mesh: MeshConfig,
    /// How changes are coalesced.
    pub debounce: Debounce,
    /// Field manager of what the control plane writes.
    pub field_manager: String,
}

/// The injector's part.
#[derive(Clone, Debug)]
pub struct WebhookSettings {
    /// Where it listens (15017).
    pub address: SocketAddr,
    /// The MutatingWebhookConfiguration whose `caBundle` it keeps current.
    pub configuration: String,
    /// What it injects.
    pub inject: InjectConfig,
}

/// A running control plane.
pub struct ClusterControlPlane {
    /// Pilot.
    pub pilot: Pilot,
    /// Where the webhook listens, when it runs.
    pub webhook_addr: Option<SocketAddr>,
    /// The mesh's roots (PEM).
    pub roots: String,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl ClusterControlPlane {
    /// Stops every task and pilot.
    pub async fn stop(self) {
        for t in self.tasks {
            t.abort();
        }
        self.pilot.stop().await;
    }
}

/// Starts the control plane against the cluster `client` talks to.
pub async fn start(client: Client, cfg: ClusterConfig) -> anyhow::Result<ClusterControlPlane> {
    let ca_config = CaConfig {
        trust_domain: cfg.mesh.trust_domain.clone(),
        max_ttl: OWN_CERT_TTL,
        ..CaConfig::default()
    };
    if let Some(secret) = &cfg.ca_secret {
        let files =
            kube_publish::sync_ca_secret(&client, &cfg.namespace, secret, &cfg.ca_dir, |dir| {
                let has_files = dir.join("ca-key.pem").exists();
                if has_files {
                    Ok(())
                } else {
                    Authority::create(dir).map_err(|e| e.to_string())
                }
            })
            .await?;
        tracing::info!(
            "the CA's root and intermediate: {}",
            match files {
                kube_publish::CaFiles::Restored => "restored from the Secret",
                kube_publish::CaFiles::Stored => "new, stored in the Secret",
            }
        );
    }
    let (authority, created) = Authority::load_or_create(&cfg.ca_dir, ca_config)
        .with_context(|| format!("the CA in {}", cfg.ca_dir.display()))?;
    if created {
        tracing::info!(
            "created a new root and intermediate in {}",
            cfg.ca_dir.display()
        );
    }
    let authority = Arc::new(authority);
    let mut tasks = Vec::new();

    // Pilot's own certificate, for discovery and the CA on 15012.
    let pilot_id = Identity::new(
        &authority.config().trust_domain,
        &cfg.namespace,
        &cfg.service_account,
    );
    let subject = Subject::Workload(pilot_id);
    let own = certs::issue(&authority, &subject, OWN_CERT_TTL)?;
    let roots = own.roots.clone();
    let serving = tls::ServingCert::new(&own.chain, &own.key)?;
    let discovery_tls = tls::server_config_renewable(serving.clone(), &roots)?;
    tasks.push(tokio::spawn(certs::keep_fresh(
        authority.clone(),
        subject,
        serving,
        OWN_CERT_TTL,
    )));
    let tokens = KubernetesTokens::new(client.clone(), vec![TOKEN_AUDIENCE.to_string()]);
    let ca = Arc::new(CaService::new(authority.clone(), Arc::new(tokens)));
    let pilot = Pilot::start(PilotConfig {
        source: ConfigSource::Kubernetes(client.clone()),
        discovery: cfg.discovery,
        debug: cfg.debug,
        mesh: cfg.mesh.clone(),
        debounce: cfg.debounce,
        secure: Some(SecureDiscovery {
            address: cfg.secure_discovery,
            tls: discovery_tls,
            ca: Some(ca),
        }),
    })
    .await?;

    // The webhook, with a certificate for its Service's names.
    let mut webhook_addr = None;
    if let Some(w) = &cfg.webhook {
        let base = format!("{}.{}.svc", cfg.service, cfg.namespace);
        let names = vec![base.clone(), format!("{base}.{}", cfg.domain)];
        let subject = Subject::Dns(names);
        let own = certs::issue(&authority, &subject, OWN_CERT_TTL)?;
        let serving = tls::ServingCert::new(&own.chain, &own.key)?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let server = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(serving.clone());
        let listener = TcpListener::bind(w.address)
            .await
            .with_context(|| format!("the webhook's address {}", w.address))?;
        webhook_addr = Some(listener.local_addr()?);
        tasks.push(tokio::spawn(mesh_injector::webhook::serve(
            listener,
            Arc::new(server),
            Arc::new(w.inject.clone()),
        )));
        tasks.push(tokio::spawn(certs::keep_fresh(
            authority.clone(),
            subject,
            serving,
            OWN_CERT_TTL,
        )));
    }

    match &cfg.webhook {
        Some(w) => tasks.push(tokio::spawn(crate::gateway_deploy::keep_deployed(
            client.clone(),
            cfg.field_manager.clone(),
            w.inject.clone(),
            pilot.generations.clone(),
        ))),
        None => tracing::info!(
            "no injector configuration: Gateway API Gateways get no gateway deployed; name one in their spec.addresses"
        ),
    }
    tasks.push(tokio::spawn(crate::gateway_status::keep_published(
        client.clone(),
        cfg.field_manager.clone(),
        pilot.generations.clone(),
    )));
    tasks.push(tokio::spawn(keep_published(client, cfg, roots.clone())));
    Ok(ClusterControlPlane {
        pilot,
        webhook_addr,
        roots,
        tasks,
    })
}

/// Writes the roots into every namespace (the injector's exclusions aside) and the webhook's
/// `caBundle`, then again every 30 s for namespaces created since (writes of what is already
/// there change nothing).
async fn keep_published(client: Client, cfg: ClusterConfig, roots: String) {
    let excluded: Vec<String> = cfg
        .webhook
        .as_ref()
        .map(|w| w.inject.excluded_namespaces.clone())
        .unwrap_or_default()
        .into_iter()
        .filter(|n| *n != cfg.namespace)
        .collect();
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let mut published = std::collections::BTreeSet::new();
    let mut pace = tokio::time::interval(PUBLISH_EVERY);
    loop {
        pace.tick().await;
        match namespaces.list(&ListParams::default()).await {
            Ok(list) => {
                let fresh: Vec<String> = list
                    .items
                    .iter()
                    .filter_map(|n| n.metadata.name.clone())
                    .filter(|n| !published.contains(n))
                    .collect();
                let failed = kube_publish::publish_roots(
                    &client,
                    fresh.iter().map(String::as_str),
                    &excluded,
                    &roots,
                    &cfg.field_manager,
                )
                .await;
                for e in &failed {
                    tracing::warn!("publishing the mesh's root certificate: {e}");
                }
                for n in fresh {
                    if !failed.iter().any(|e| e.what.contains(&format!(" {n}/"))) {
                        published.insert(n);
                    }
                }
            }
            Err(e) => tracing::warn!("listing namespaces for the root certificate: {e}"),
        }
        if let Some(w) = &cfg.webhook {
            match kube_publish::set_webhook_ca_bundle(
                &client,
                &w.configuration,
                &roots,
                &cfg.field_manager,
            )
            .await
            {
                Ok(0) => {}
                Ok(n) => tracing::info!("set the caBundle of {n} webhooks of {}", w.configuration),
                Err(e) => tracing::warn!("keeping the webhook's caBundle: {e}"),
            }
        }
    }
}
