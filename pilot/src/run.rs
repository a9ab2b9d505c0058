//! Pilot as one running piece: the folder source, the debounced model builder, the discovery
//! server and the debug endpoints, started together. The `mesh-pilot` binary and the local
//! runtime both use it, and tests start it in-process.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::debug::{self, DebugState};
use crate::discovery::{self, Debounce, DiscoveryService, Generation, Status};
use crate::model::{MeshConfig, Model};
use crate::source::Snapshot;
use crate::source::folder::{Folder, FolderError, watch_folder};

/// Where configuration comes from.
#[derive(Clone)]
pub enum ConfigSource {
    /// A folder of YAML, watched.
    Folder(PathBuf),
    /// A Kubernetes API server (reflectors; refusals written to status).
    Kubernetes(kube::Client),
}

impl std::fmt::Debug for ConfigSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConfigSource::Folder(p) => write!(f, "Folder({})", p.display()),
            ConfigSource::Kubernetes(_) => f.write_str("Kubernetes"),
        }
    }
}

/// How to run pilot.
#[derive(Clone, Debug)]
pub struct PilotConfig {
    /// Where configuration comes from.
    pub source: ConfigSource,
    /// Discovery (plaintext gRPC; keep it on loopback).
    pub discovery: SocketAddr,
    /// Debug endpoints.
    pub debug: SocketAddr,
    /// Mesh-wide settings.
    pub mesh: MeshConfig,
    /// How changes are coalesced.
    pub debounce: Debounce,
    /// Discovery over mutual TLS (15012), where each proxy may ask only for its own view.
    pub secure: Option<SecureDiscovery>,
}

/// Where and with what certificate pilot serves discovery over mutual TLS.
#[derive(Clone)]
pub struct SecureDiscovery {
    /// The address (15012).
    pub address: SocketAddr,
    /// Pilot's certificate, key and the mesh roots (see `discovery::tls::server_config`).
    pub tls: Arc<rustls::ServerConfig>,
    /// The CA, served on the same port to workloads without a certificate yet.
    pub ca: Option<Arc<mesh_ca::service::CaService>>,
}

impl std::fmt::Debug for SecureDiscovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecureDiscovery")
            .field("address", &self.address)
            .field("ca", &self.ca.is_some())
            .finish_non_exhaustive()
    }
}

/// Why pilot could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration folder.
    #[error(transparent)]
    Source(#[from] FolderError),
    /// A port.
    #[error("cannot listen on {addr} ({what}): {source}; is another pilot running?")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Which listener.
        what: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// A running pilot.
pub struct Pilot {
    /// Where discovery listens.
    pub discovery_addr: SocketAddr,
    /// Where the debug endpoints listen.
    pub debug_addr: SocketAddr,
    /// Where discovery over mutual TLS listens, when configured.
    pub secure_addr: Option<SocketAddr>,
    /// Every proxy's status.
    pub status: Status,
    /// The current model generation.
    pub generations: watch::Receiver<Arc<Generation>>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// Thousands of proxies reconnect at once when pilot restarts: a deep accept queue keeps the
/// kernel from resetting them while pilot is busy with the first ones.
const BACKLOG: u32 = 4096;

async fn bind(addr: SocketAddr, what: &'static str) -> Result<TcpListener, StartError> {
    let err = |source| StartError::Bind { addr, what, source };
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()
    } else {
        tokio::net::TcpSocket::new_v6()
    }
    .map_err(err)?;
    socket.set_reuseaddr(true).map_err(err)?;
    socket.bind(addr).map_err(err)?;
    socket.listen(BACKLOG).map_err(err)
}

impl Pilot {
    /// Reads the folder, binds the ports and starts serving.
    pub async fn start(config: PilotConfig) -> Result<Pilot, StartError> {
        let discovery_listener = bind(config.discovery, "discovery").await?;
        let debug_listener = bind(config.debug, "debug").await?;
        let discovery_addr = discovery_listener.local_addr().unwrap_or(config.discovery);
        let debug_addr = debug_listener.local_addr().unwrap_or(config.debug);
        let secure = match &config.secure {
            Some(s) => {
                let l = bind(s.address, "discovery over mTLS").await?;
                let addr = l.local_addr().unwrap_or(s.address);
                Some((l, addr, s.tls.clone(), s.ca.clone()))
            }
            None => None,
        };
        let secure_addr = secure.as_ref().map(|(_, a, _, _)| *a);
        let (snap_tx, mut snap_rx) = watch::channel(Arc::new(Snapshot::default()));
        let source_task: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> =
            match &config.source {
                ConfigSource::Folder(dir) => Box::pin(watch_folder(Folder::new(dir), snap_tx)?),
                ConfigSource::Kubernetes(client) => {
                    let options = crate::source::kube::KubeOptions {
                        root_namespace: config.mesh.root_namespace.clone(),
                        ..Default::default()
                    };
                    let run = crate::source::kube::run(client.clone(), snap_tx, options);
                    let task = tokio::spawn(run);
                    // Pilot serves nothing before the cluster has been read once.
                    let _ = snap_rx.wait_for(|s| s.revision > 0).await;
                    Box::pin(async move {
                        let _ = task.await;
                    })
                }
            };
        for f in &snap_rx.borrow().findings {
            tracing::warn!("config: {f}");
        }
        let (gen_tx, gen_rx) = watch::channel(Arc::new(Generation::new(
            0,
            Model::build(config.mesh.clone(), &[], Default::default()),
        )));
        let (shutdown, _) = watch::channel(false);
        let stopped = |mut rx: watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|s| *s).await;
        };
        let status = Status::default();
        let mut tasks = Vec::new();
        tasks.push(tokio::spawn(source_task));
        tasks.push(tokio::spawn(discovery::build_generations(
            config.mesh.clone(),
            snap_rx.clone(),
            gen_tx,
            config.debounce,
        )));
        let service = DiscoveryService::new(gen_rx.clone(), status.clone());
        if let Some((listener, _, tls, ca)) = secure {
            tasks.push(tokio::spawn(discovery::tls::serve_mtls(
                listener,
                service.clone(),
                tls,
                ca,
                stopped(shutdown.subscribe()),
            )));
        }
        tasks.push(tokio::spawn(discovery::server::serve(
            discovery_listener,
            service,
            stopped(shutdown.subscribe()),
        )));
        let debug_state = DebugState {
            generations: gen_rx.clone(),
            snapshots: snap_rx,
            status: status.clone(),
            ca: config.secure.as_ref().and_then(|s| s.ca.clone()),
        };
        tasks.push(tokio::spawn(debug::serve(
            debug_listener,
            debug_state,
            stopped(shutdown.subscribe()),
        )));
        let mut generations = gen_rx;
        // Ready once the first real generation is built.
        let _ = generations.wait_for(|g| g.version > 0).await;
        Ok(Pilot {
            discovery_addr,
            debug_addr,
            secure_addr,
            status,
            generations,
            shutdown,
            tasks,
        })
    }

    /// Stops every task (open streams end; proxies keep their state and reconnect).
    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        for t in &self.tasks {
            t.abort();
        }
        // Once every task has ended, its listeners are closed and the ports free again.
        for t in self.tasks {
            let _ = t.await;
        }
    }
}
