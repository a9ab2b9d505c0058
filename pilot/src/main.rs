//! The `mesh-pilot` binary: a thin command line over the library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use mesh_pilot::discovery::Debounce;
use mesh_pilot::model::MeshConfig;
use mesh_pilot::run::{ConfigSource, Pilot, PilotConfig, SecureDiscovery};
use tokio::signal::unix::{SignalKind, signal};

/// mimalloc, as in the proxy: pilot holds a few small allocations per proxy per resource
/// (session maps, HTTP/2 and gRPC buffers), which glibc's malloc spreads over more pages.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The mesh's control plane.
#[derive(Parser)]
#[command(name = "mesh-pilot", version, about = "The mesh's control plane")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve discovery from a folder of configuration (watched for changes).
    Serve(ServeArgs),
}

#[derive(clap::Args)]
struct ServeArgs {
    /// The folder of configuration (Istio resources, Services, WorkloadEntries, ...).
    #[arg(
        long,
        value_name = "DIR",
        required_unless_present = "kubernetes",
        conflicts_with = "kubernetes"
    )]
    config_dir: Option<PathBuf>,
    /// Read configuration from Kubernetes (in-cluster, or the current kubeconfig context).
    #[arg(long)]
    kubernetes: bool,
    /// Discovery address (plaintext gRPC: keep it on loopback).
    #[arg(long, default_value = "127.0.0.1:15010")]
    discovery_address: SocketAddr,
    /// Debug endpoints (/debug/syncz, /debug/config_dump, /debug/model).
    #[arg(long, default_value = "127.0.0.1:15014")]
    debug_address: SocketAddr,
    /// Discovery over mutual TLS (with --tls-cert-chain, --tls-key and --tls-roots, or with
    /// --ca-dir, where it is also the CA's address and 0.0.0.0:15012 by default).
    #[arg(long, value_name = "ADDR")]
    secure_discovery_address: Option<SocketAddr>,
    /// Run as the control plane of a cluster (with --kubernetes): the CA in pilot, its root in
    /// DIR (created when empty; mount a Secret to keep it), checking workloads' projected
    /// service-account tokens with TokenReviews; pilot's certificates from it; the mesh's root
    /// published to every namespace as `istio-ca-root-cert`.
    #[arg(long, value_name = "DIR", requires = "kubernetes", conflicts_with_all = ["tls_cert_chain", "tls_key", "tls_roots"])]
    ca_dir: Option<PathBuf>,
    /// With --ca-dir: keep the CA's files in this Secret of pilot's namespace, so a restarted
    /// control plane keeps the mesh's root (restored when it exists, stored when not).
    #[arg(long, value_name = "NAME", requires = "ca_dir")]
    ca_secret: Option<String>,
    /// With --ca-dir: serve the sidecar injector's webhook here (0.0.0.0:15017), its
    /// certificate from the CA for `<service-name>.<namespace>.svc`.
    #[arg(long, value_name = "ADDR", requires = "ca_dir")]
    webhook_address: Option<SocketAddr>,
    /// The MutatingWebhookConfiguration whose caBundle pilot keeps current.
    #[arg(long, default_value = "mesh-sidecar-injector")]
    webhook_configuration: String,
    /// The injector's settings (YAML; see `meshctl kube-inject --help`).
    #[arg(long, value_name = "FILE", requires = "webhook_address")]
    injector_config: Option<PathBuf>,
    /// Pilot's namespace.
    #[arg(long, env = "POD_NAMESPACE", default_value = "mesh-system")]
    pod_namespace: String,
    /// Pilot's service account (its identity, which proxies check).
    #[arg(long, env = "SERVICE_ACCOUNT", default_value = "mesh-pilot")]
    service_account: String,
    /// Pilot's Service (the webhook's certificate names it).
    #[arg(long, default_value = "mesh-pilot")]
    service_name: String,
    /// Pilot's certificate chain (PEM), for discovery over mutual TLS.
    #[arg(long, value_name = "FILE")]
    tls_cert_chain: Option<PathBuf>,
    /// Pilot's private key (PEM).
    #[arg(long, value_name = "FILE")]
    tls_key: Option<PathBuf>,
    /// The mesh roots (PEM) that proxies' certificates chain to.
    #[arg(long, value_name = "FILE")]
    tls_roots: Option<PathBuf>,
    /// Cluster domain.
    #[arg(long, default_value = "cluster.local")]
    domain: String,
    /// Trust domain of workload identities.
    #[arg(long, default_value = "cluster.local")]
    trust_domain: String,
    /// Namespace of mesh-wide policies.
    #[arg(long, default_value = "istio-system")]
    root_namespace: String,
    /// Quiet time before a push, in milliseconds.
    #[arg(long, default_value_t = 100)]
    debounce_ms: u64,
    /// Longest delay of a push after a change, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    debounce_max_ms: u64,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mesh-pilot: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let secure = match (
        &args.secure_discovery_address,
        &args.tls_cert_chain,
        &args.tls_key,
        &args.tls_roots,
    ) {
        (Some(_), chain, key, roots)
            if args.ca_dir.is_none() && (chain.is_none() || key.is_none() || roots.is_none()) =>
        {
            anyhow::bail!(
                "--secure-discovery-address needs --tls-cert-chain, --tls-key and --tls-roots, or --ca-dir"
            )
        }
        (Some(address), Some(chain), Some(key), Some(roots)) => {
            let read = |p: &PathBuf| {
                std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))
            };
            let tls = mesh_pilot::discovery::tls::server_config(
                &read(chain)?,
                &read(key)?,
                &read(roots)?,
            )?;
            Some(SecureDiscovery {
                address: *address,
                tls,
                ca: None,
            })
        }
        _ => None,
    };
    runtime.block_on(async {
        let source = match args.config_dir.clone() {
            Some(dir) => ConfigSource::Folder(dir),
            None => {
                rustls::crypto::ring::default_provider()
                    .install_default()
                    .ok();
                let client = kube::Client::try_default()
                    .await
                    .context("cannot reach Kubernetes (in-cluster config or kubeconfig)")?;
                ConfigSource::Kubernetes(client)
            }
        };
        let mesh = MeshConfig {
            domain: args.domain.clone(),
            trust_domain: args.trust_domain.clone(),
            root_namespace: args.root_namespace.clone(),
        };
        let debounce = Debounce {
            quiet: Duration::from_millis(args.debounce_ms),
            max: Duration::from_millis(args.debounce_max_ms.max(args.debounce_ms)),
        };
        if let (Some(ca_dir), ConfigSource::Kubernetes(client)) = (&args.ca_dir, &source) {
            return serve_cluster(&args, ca_dir.clone(), client.clone(), mesh, debounce).await;
        }
        let config = PilotConfig {
            source,
            secure,
            discovery: args.discovery_address,
            debug: args.debug_address,
            mesh,
            debounce,
        };
        let pilot = Pilot::start(config).await?;
        tracing::info!(
            "mesh-pilot ready: discovery {}, debug {}{}",
            pilot.discovery_addr,
            pilot.debug_addr,
            pilot
                .secure_addr
                .map(|a| format!(", discovery over mTLS {a}"))
                .unwrap_or_default()
        );
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        pilot.stop().await;
        Ok(())
    })
}

/// `serve --kubernetes --ca-dir`: the control plane of a cluster, until SIGTERM or SIGINT.
async fn serve_cluster(
    args: &ServeArgs,
    ca_dir: PathBuf,
    client: kube::Client,
    mesh: MeshConfig,
    debounce: Debounce,
) -> anyhow::Result<()> {
    use mesh_pilot::cluster::{ClusterConfig, WebhookSettings};
    let webhook = match args.webhook_address {
        None => None,
        Some(address) => {
            let inject = match &args.injector_config {
                None => mesh_injector::InjectConfig::default(),
                Some(path) => {
                    let text = std::fs::read_to_string(path)
                        .with_context(|| format!("--injector-config {}", path.display()))?;
                    mesh_injector::InjectConfig::from_yaml(&text)
                        .map_err(|e| anyhow::anyhow!("--injector-config {}: {e}", path.display()))?
                }
            };
            Some(WebhookSettings {
                address,
                configuration: args.webhook_configuration.clone(),
                inject,
            })
        }
    };
    let domain = mesh.domain.clone();
    let cp = mesh_pilot::cluster::start(
        client,
        ClusterConfig {
            ca_dir,
            ca_secret: args.ca_secret.clone(),
            namespace: args.pod_namespace.clone(),
            service_account: args.service_account.clone(),
            service: args.service_name.clone(),
            domain,
            secure_discovery: args
                .secure_discovery_address
                .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 15012))),
            discovery: args.discovery_address,
            debug: args.debug_address,
            webhook,
            mesh,
            debounce,
            field_manager: "mesh-pilot".into(),
        },
    )
    .await?;
    tracing::info!(
        "mesh-pilot ready as the cluster's control plane: discovery and CA {}, webhook {}, debug {}",
        cp.pilot
            .secure_addr
            .map(|a| a.to_string())
            .unwrap_or_default(),
        cp.webhook_addr.map_or("off".to_string(), |a| a.to_string()),
        cp.pilot.debug_addr
    );
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    cp.stop().await;
    Ok(())
}
