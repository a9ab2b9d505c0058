//! The `mesh-ca` binary: serves the signing service, and issues bootstrap tokens for workloads.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use mesh_ca::auth::BootstrapTokens;
use mesh_ca::service::CaService;
use mesh_ca::{Authority, CaConfig};

/// The mesh's certificate authority.
#[derive(Parser)]
#[command(name = "mesh-ca", version, about = "The mesh's certificate authority")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve mesh.ca.v1.Certificates: sign workload CSRs for proven identities.
    Serve {
        /// CA folder (Istio's cacerts layout); a root and an intermediate are created there on
        /// first start when it holds none. Put a plugged-in CA's files there to use it instead.
        #[arg(long, default_value = "./.mesh/ca")]
        dir: PathBuf,
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:15012")]
        listen: SocketAddr,
        /// Trust domain of the identities signed.
        #[arg(long, default_value = "cluster.local")]
        trust_domain: String,
        /// Registered bootstrap token hashes (written by `mesh-ca issue-token`).
        #[arg(long, default_value = "./.mesh/ca/tokens.json")]
        tokens: PathBuf,
        /// Lifetime of a workload certificate, in hours, when the caller asks for none.
        #[arg(long, default_value_t = 24)]
        default_ttl_hours: u64,
        /// The longest lifetime granted, in hours.
        #[arg(long, default_value_t = 90 * 24)]
        max_ttl_hours: u64,
        /// How callers prove who they are: `local` bootstrap tokens, or `kubernetes`
        /// service-account tokens checked with a TokenReview (in-cluster credentials).
        #[arg(long, value_enum, default_value = "local")]
        auth: AuthKind,
        /// Audience a Kubernetes token must be valid for (the API server's default when unset).
        #[arg(long)]
        token_audience: Vec<String>,
    },
    /// Register a new bootstrap token for a workload and print it (only its hash is stored).
    IssueToken {
        /// Registered token hashes.
        #[arg(long, default_value = "./.mesh/ca/tokens.json")]
        tokens: PathBuf,
        /// The workload's namespace.
        #[arg(long)]
        namespace: String,
        /// The workload's service account.
        #[arg(long)]
        service_account: String,
    },
}

/// Caller authentication.
#[derive(Clone, Copy, clap::ValueEnum)]
enum AuthKind {
    /// Bootstrap tokens registered with `mesh-ca issue-token`.
    Local,
    /// Kubernetes service-account tokens (TokenReview).
    Kubernetes,
}

fn main() -> ExitCode {
    // kube uses the process-wide rustls provider: make it ring (aws-lc-rs stays out).
    let _ = rustls::crypto::ring::default_provider().install_default();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(Cli::parse().command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mesh-ca: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::IssueToken {
            tokens,
            namespace,
            service_account,
        } => {
            let registry = BootstrapTokens::load(&tokens)?;
            let token = registry.issue(&namespace, &service_account);
            if let Some(dir) = tokens.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)?;
            }
            registry.save(&tokens)?;
            println!("{token}");
            Ok(())
        }
        Command::Serve {
            dir,
            listen,
            trust_domain,
            tokens,
            default_ttl_hours,
            max_ttl_hours,
            auth,
            token_audience,
        } => {
            let config = CaConfig {
                trust_domain,
                default_ttl: Duration::from_secs(default_ttl_hours * 3600),
                max_ttl: Duration::from_secs(max_ttl_hours * 3600),
            };
            let (authority, created) = Authority::load_or_create(&dir, config)?;
            if created {
                tracing::info!("created a new root and intermediate in {}", dir.display());
            }
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async move {
                let auth: Arc<dyn mesh_ca::auth::Authenticator> = match auth {
                    AuthKind::Local => Arc::new(BootstrapTokens::load(&tokens)?),
                    AuthKind::Kubernetes => {
                        let client = kube::Client::try_default().await.map_err(|e| {
                            anyhow::anyhow!("--auth kubernetes needs access to the API server: {e}")
                        })?;
                        Arc::new(mesh_ca::auth::KubernetesTokens::new(client, token_audience))
                    }
                };
                let service = CaService::new(Arc::new(authority), auth);
                let listener = tokio::net::TcpListener::bind(listen)
                    .await
                    .map_err(|e| anyhow::anyhow!("cannot listen on {listen}: {e}"))?;
                tracing::info!("mesh-ca serving on {listen}");
                mesh_ca::service::serve(listener, service, async {
                    let _ = tokio::signal::ctrl_c().await;
                })
                .await;
                Ok::<_, anyhow::Error>(())
            })
        }
    }
}
