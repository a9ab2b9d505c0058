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
    /// Discovery over mutual TLS (needs --tls-cert-chain, --tls-key and --tls-roots).
    #[arg(long, value_name = "ADDR", requires_all = ["tls_cert_chain", "tls_key", "tls_roots"])]
    secure_discovery_address: Option<SocketAddr>,
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
        let source = match args.config_dir {
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
        let config = PilotConfig {
            source,
            secure,
            discovery: args.discovery_address,
            debug: args.debug_address,
            mesh: MeshConfig {
                domain: args.domain,
                trust_domain: args.trust_domain,
                root_namespace: args.root_namespace,
            },
            debounce: Debounce {
                quiet: Duration::from_millis(args.debounce_ms),
                max: Duration::from_millis(args.debounce_max_ms.max(args.debounce_ms)),
            },
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
