//! `mesh-proxy run` as a library call: a typed [`RunConfig`] (the binary builds it from its
//! flags) in, a running sidecar out: the runtime, the workload certificate, the state (a file,
//! or pilot with on-demand discovery), the listeners, and a graceful drain on SIGTERM, SIGINT
//! or `POST /drain`. Tests and embedders use [`Proxy::launch`] directly; this adds what only a
//! process has (signals, its own runtime).

use rustls_pki_types::pem::PemObject;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use mesh_api::identity::Identity;
use mesh_api::proto::ca::v1::{Credential, credential::Kind};
use mesh_api::proto::discovery::v1 as pb;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{mpsc, watch};

use crate::discovery::{DiscoveryConfig, OnDemand, PilotTls};
use crate::identity::{CaClient, IdentityError};
use crate::socket::{FixedDst, KernelOriginalDst, OriginalDst};
use crate::state::{self, State, StateError, StateFileError};
use crate::tls::mtls::Svids;
use crate::{BindError, Listeners, Proxy, Setup, metrics};

/// Where the proxy's state comes from.
#[derive(Clone, Debug)]
pub enum StateSource {
    /// A `mesh.state.v1.ProxyState` file, looked at every `poll`.
    File {
        /// The file.
        path: PathBuf,
        /// How often it is checked for changes.
        poll: Duration,
    },
    /// Pilot's discovery stream; `https://` addresses are mutual TLS with the workload
    /// certificate, pilot proving `pilot_identity` (istiod's by default).
    Pilot {
        /// e.g. `http://127.0.0.1:15010` or `https://10.0.0.1:15012`.
        address: String,
        /// The identity pilot must prove over mTLS.
        pilot_identity: Option<String>,
    },
}

/// What the token presented to the CA is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CredentialKind {
    /// A bootstrap token the local runtime wrote.
    #[default]
    Bootstrap,
    /// A Kubernetes projected service-account token (the CA reviews it with the API server).
    Kubernetes,
}

/// Where the workload certificate comes from.
#[derive(Clone, Debug)]
pub struct IdentitySource {
    /// The CA's address, e.g. `http://127.0.0.1:15012`.
    pub ca_address: String,
    /// The token file: the bootstrap token the local runtime wrote, or on Kubernetes the
    /// projected service-account token.
    pub bootstrap_token_file: PathBuf,
    /// What the token is, so the CA knows how to check it.
    pub credential: CredentialKind,
    /// Lifetime asked for (the CA may cap it).
    pub cert_ttl: Duration,
    /// For an `https://` CA: the mesh root file to check its certificate with, and the identity
    /// it must prove.
    pub ca_tls: Option<CaTls>,
}

/// How the proxy checks the CA it sends its bootstrap token to.
#[derive(Clone, Debug)]
pub struct CaTls {
    /// PEM file with the mesh's root certificates.
    pub root_file: PathBuf,
    /// The CA's SPIFFE identity (pilot's, where pilot serves the CA).
    pub identity: String,
}

/// Who the workload is.
#[derive(Clone, Debug)]
pub struct WorkloadConfig {
    /// The pod's name (sent to pilot); the host name when empty.
    pub pod_name: String,
    /// The workload it belongs to as metrics name it; the pod's name when empty.
    pub workload: String,
    /// Its namespace.
    pub namespace: String,
    /// Its service account.
    pub service_account: String,
    /// Its trust domain.
    pub trust_domain: String,
    /// Its labels (sent to pilot, and metrics' `app`/`version`).
    pub labels: HashMap<String, String>,
    /// Its addresses (sent to pilot).
    pub ips: Vec<String>,
}

/// Everything `mesh-proxy run` runs with.
#[derive(Clone, Debug)]
pub struct RunConfig {
    /// The state.
    pub state: StateSource,
    /// The workload certificate; without it the proxy has no identity (no mTLS).
    pub identity: Option<IdentitySource>,
    /// The workload.
    pub workload: WorkloadConfig,
    /// Where to listen.
    pub listeners: Listeners,
    /// Every outbound connection taken as addressed here (no capture: benchmarks, tests).
    pub outbound_original_dst: Option<SocketAddr>,
    /// Every inbound connection taken as addressed here.
    pub inbound_original_dst: Option<SocketAddr>,
    /// Worker threads; one per core when `None`. One runs a current-thread runtime.
    pub worker_threads: Option<usize>,
    /// How long connections in flight may take to finish once a drain begins.
    pub drain_timeout: Duration,
    /// Whether responses say which AuthorizationPolicy decided (`x-mesh-authz`).
    pub debug_authz: bool,
    /// A PEM file of CA certificates trusted for https `jwksUri`s besides the system's roots.
    pub jwks_ca_file: Option<PathBuf>,
    /// The application's HTTP probes kubelet sends through the proxy (Istio's
    /// `ISTIO_KUBE_APP_PROBERS` JSON, written by the injector).
    pub app_probers: Option<String>,
    /// Where the application serves its own metrics, merged into the metrics port's page
    /// (Istio's `ISTIO_PROMETHEUS_ANNOTATIONS` JSON, written by the injector).
    pub app_metrics: Option<String>,
    /// Gateway mode: the address the gateway's listeners bind (their ports come from pilot);
    /// `None` for a sidecar.
    pub gateway: Option<std::net::IpAddr>,
    /// The most connections each traffic listener holds open at once; `None`: the smaller of
    /// [`crate::http::MAX_CONNECTIONS`] and a quarter of the open-file limit.
    pub max_connections: Option<usize>,
}

/// Why the proxy could not start (once started it only stops by draining).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// `worker_threads` was 0.
    #[error("--worker-threads must be at least 1")]
    NoWorkers,
    /// The application probes do not read.
    #[error("{0}")]
    AppProbers(String),
    /// Where the application serves its metrics does not read.
    #[error("{0}")]
    AppMetrics(String),
    /// The runtime or the signal handlers could not be set up.
    #[error("cannot start the runtime: {0}")]
    Runtime(#[source] std::io::Error),
    /// The state file.
    #[error(transparent)]
    StateFile(#[from] StateFileError),
    /// A state that does not check (never the empty one).
    #[error(transparent)]
    State(#[from] StateError),
    /// A listener.
    #[error(transparent)]
    Bind(#[from] BindError),
    /// The bootstrap token, the CA's root file or the `--jwks-ca-file`.
    #[error("cannot read {path}: {source}")]
    Token {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The CA client.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// mTLS to pilot without a certificate to present.
    #[error(
        "--discovery-address {0}: mTLS to pilot needs the workload certificate; give --ca-address and --bootstrap-token-file"
    )]
    PilotTlsWithoutIdentity(String),
}

/// Runs the proxy until it has drained: builds its runtime and blocks on it.
pub fn run(config: &RunConfig) -> Result<(), RunError> {
    // One worker is a single-threaded runtime: every task on the thread that accepted its
    // connection, no work-stealing queues or cross-thread wake-ups to pay for (mesh-bench
    // measured 20% less CPU per request than a one-worker multi-threaded runtime).
    let mut builder = match config.worker_threads {
        Some(0) => return Err(RunError::NoWorkers),
        Some(1) => tokio::runtime::Builder::new_current_thread(),
        Some(n) => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(n);
            b
        }
        None => tokio::runtime::Builder::new_multi_thread(),
    };
    let runtime = builder.enable_all().build().map_err(RunError::Runtime)?;
    runtime.block_on(serve(config))
}

async fn serve(config: &RunConfig) -> Result<(), RunError> {
    let jwks_ca_pem = match &config.jwks_ca_file {
        None => None,
        Some(path) => Some(
            std::fs::read_to_string(path).map_err(|source| RunError::Token {
                path: path.clone(),
                source,
            })?,
        ),
    };
    let svids = match &config.identity {
        None => None,
        Some(id) => Some(start_identity(&config.workload, id)?),
    };
    let (rx, has_state, on_demand) = match &config.state {
        StateSource::File { path, poll } => {
            let initial = state::load_file(path)?;
            let (tx, rx) = watch::channel(Arc::new(initial));
            tokio::spawn(state::watch_file(
                path.clone(),
                tx,
                (*poll).max(Duration::from_millis(10)),
            ));
            (rx, true, None)
        }
        StateSource::Pilot {
            address,
            pilot_identity,
        } => {
            let (rx, od) = start_discovery(
                &config.workload,
                config.gateway.is_some(),
                address,
                pilot_identity.as_deref(),
                svids.clone(),
            )?;
            (rx, false, Some(od))
        }
    };
    let original_dst = |fixed: Option<SocketAddr>| -> Arc<dyn OriginalDst> {
        match fixed {
            Some(addr) => Arc::new(FixedDst(addr)),
            None => Arc::new(KernelOriginalDst),
        }
    };
    let setup = Setup {
        state: rx,
        has_state,
        outbound_dst: original_dst(config.outbound_original_dst),
        inbound_dst: original_dst(config.inbound_original_dst),
        svids,
        on_demand,
        workload: workload_of(config),
        debug_authz: config.debug_authz,
        jwks_ca_pem,
        gateway: config.gateway,
        limits: crate::http::Limits {
            max_connections: config
                .max_connections
                .unwrap_or_else(max_connections_for_files),
            ..Default::default()
        },
    };
    let probers = config
        .app_probers
        .as_deref()
        .filter(|j| !j.trim().is_empty())
        .map(crate::admin::AppProbers::parse)
        .transpose()
        .map_err(RunError::AppProbers)?;
    let app_metrics = config
        .app_metrics
        .as_deref()
        .filter(|j| !j.trim().is_empty())
        .map(crate::admin::AppMetrics::parse)
        .transpose()
        .map_err(RunError::AppMetrics)?
        .flatten()
        // Never the page itself, wherever it is served.
        .filter(|m| m.port() != config.listeners.metrics.port());
    let mut proxy = Proxy::launch(&config.listeners, setup).await?;
    if let Some(p) = probers {
        tracing::info!("application probes through the proxy: {}", p.len());
        proxy.set_app_probers(p);
    }
    if let Some(m) = app_metrics {
        tracing::info!("the application's metrics at {} are merged", m.target());
        proxy.set_app_metrics(m);
    }
    tracing::info!(
        "mesh-proxy ready: outbound {}, inbound {}, admin {}, readiness {}",
        proxy.bound.outbound,
        proxy.bound.inbound,
        proxy.bound.admin,
        proxy.bound.readiness
    );
    let mut term = signal(SignalKind::terminate()).map_err(RunError::Runtime)?;
    let mut int = signal(SignalKind::interrupt()).map_err(RunError::Runtime)?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: draining"),
        _ = int.recv() => tracing::info!("SIGINT: draining"),
        _ = proxy.drain_requested() => tracing::info!("drain requested on the admin port"),
    }
    let deadline = config.drain_timeout;
    if proxy.drain(deadline).await {
        tracing::info!("drained");
    } else {
        tracing::warn!(
            "drain deadline of {deadline:?} passed with connections still open; closing them"
        );
    }
    Ok(())
}

/// The pod's name: as given, else the host name (a pod's host name is its name).
fn pod_name(w: &WorkloadConfig) -> String {
    if w.pod_name.is_empty() {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_default()
    } else {
        w.pod_name.clone()
    }
}

/// The workload as metrics label it: its workload name (else the pod's), namespace, identity
/// (when the proxy has one) and labels.
/// Raises the open-file limit to its hard limit (as Envoy's and Linkerd's images run with a
/// high one), and returns how many connections a listener may hold open under it: a quarter
/// (a proxied connection takes two descriptors, and three listeners share them), at most
/// [`crate::http::MAX_CONNECTIONS`], so a flood is refused by count before accepting fails.
fn max_connections_for_files() -> usize {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return crate::http::MAX_CONNECTIONS;
    };
    let files = if hard > soft && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        hard
    } else {
        soft
    };
    usize::try_from(files / 4)
        .unwrap_or(usize::MAX)
        .clamp(64, crate::http::MAX_CONNECTIONS)
}

fn workload_of(config: &RunConfig) -> metrics::Workload {
    let w = &config.workload;
    let name = if w.workload.is_empty() {
        pod_name(w)
    } else {
        w.workload.clone()
    };
    let principal = if config.identity.is_some() {
        Identity::new(&w.trust_domain, &w.namespace, &w.service_account).uri()
    } else {
        String::new()
    };
    metrics::Workload::from_labels(&name, &w.namespace, &principal, |k| {
        w.labels.get(k).map(String::as_str)
    })
}

type StateFeed = (watch::Receiver<Arc<State>>, Arc<OnDemand>);

/// Starts the discovery client; the state it feeds is empty until pilot's first answer (the
/// proxy reports ready only then).
fn start_discovery(
    w: &WorkloadConfig,
    gateway: bool,
    address: &str,
    pilot_identity: Option<&str>,
    svids: Option<Svids>,
) -> Result<StateFeed, RunError> {
    let name = pod_name(w);
    // Istio's ids: `sidecar~IP~POD.NS`, and `router~...` for a gateway.
    let (prefix, kind) = if gateway {
        ("router", pb::ProxyKind::Gateway)
    } else {
        ("sidecar", pb::ProxyKind::Sidecar)
    };
    let node = pb::Node {
        id: format!(
            "{prefix}~{}~{name}.{}",
            w.ips.first().map_or("", String::as_str),
            w.namespace
        ),
        kind: kind.into(),
        namespace: w.namespace.clone(),
        service_account: w.service_account.clone(),
        workload_name: name,
        labels: w.labels.clone(),
        ip_addresses: w.ips.clone(),
        proxy_version: env!("CARGO_PKG_VERSION").to_string(),
    };
    let empty = State::compile(state::proto::ProxyState::default())?;
    let (tx, rx) = watch::channel(Arc::new(empty));
    let (lookups_tx, lookups) = mpsc::unbounded_channel();
    let od = Arc::new(OnDemand::new(lookups_tx));
    // https:// means mutual TLS with the workload certificate (the connector does the TLS; the
    // channel itself speaks HTTP/2 over it).
    let (address, tls) = match address.strip_prefix("https://") {
        Some(rest) => {
            let svids =
                svids.ok_or_else(|| RunError::PilotTlsWithoutIdentity(address.to_string()))?;
            let pilot_identity = pilot_identity.map_or_else(
                || Identity::new(&w.trust_domain, "istio-system", "istiod").uri(),
                str::to_string,
            );
            (
                format!("http://{rest}"),
                Some(PilotTls {
                    svids,
                    pilot_identity,
                }),
            )
        }
        None => (address.to_string(), None),
    };
    let config = DiscoveryConfig {
        tls,
        address,
        node,
        backoff_min: Duration::from_millis(500),
        backoff_max: Duration::from_secs(30),
    };
    tokio::spawn(crate::discovery::run(config, tx, lookups, Some(od.clone())));
    Ok((rx, od))
}

/// Starts fetching and renewing the workload certificate; the proxy reports ready once it has
/// one.
fn start_identity(w: &WorkloadConfig, id: &IdentitySource) -> Result<Svids, RunError> {
    let token = std::fs::read_to_string(&id.bootstrap_token_file)
        .map_err(|source| RunError::Token {
            path: id.bootstrap_token_file.clone(),
            source,
        })?
        .trim()
        .to_string();
    let credential = Credential {
        kind: Some(match id.credential {
            CredentialKind::Bootstrap => Kind::BootstrapToken(token),
            CredentialKind::Kubernetes => Kind::KubernetesToken(token),
        }),
    };
    let (tx, rx) = watch::channel(None);
    let tls = match &id.ca_tls {
        None => None,
        Some(t) => {
            let pem = std::fs::read(&t.root_file).map_err(|source| RunError::Token {
                path: t.root_file.clone(),
                source,
            })?;
            let roots: Vec<_> = rustls_pki_types::CertificateDer::pem_slice_iter(&pem)
                .collect::<Result<_, _>>()
                .map_err(|e| {
                    IdentityError::Ca(format!("--ca-root-file {}: {e}", t.root_file.display()))
                })?;
            if roots.is_empty() {
                return Err(IdentityError::Ca(format!(
                    "--ca-root-file {}: no certificate in it",
                    t.root_file.display()
                ))
                .into());
            }
            Some(
                crate::tls::mtls::ca_client_config_following(
                    roots,
                    rx.clone(),
                    vec![t.identity.clone()],
                )
                .map_err(|e| IdentityError::Ca(e.to_string()))?,
            )
        }
    };
    let client = CaClient::new(&id.ca_address, credential, id.cert_ttl, tls)?;
    let identity = Identity::new(&w.trust_domain, &w.namespace, &w.service_account).uri();
    tokio::spawn(crate::identity::keep_fresh(Arc::new(client), identity, tx));
    Ok(rx)
}

/// The proxy at `readiness` did not say it was ready in time.
#[derive(Debug, thiserror::Error)]
#[error("the proxy at {address} was not ready within {within:?} (last: {last})")]
pub struct NotReady {
    /// Where it was asked.
    pub address: SocketAddr,
    /// How long it was given.
    pub within: Duration,
    /// What it last answered.
    pub last: String,
}

/// Waits until `GET /healthz/ready` at `readiness` answers 200, asking every 200 ms, for at
/// most `within` (`mesh-proxy wait`).
pub fn wait_ready(readiness: SocketAddr, within: Duration) -> Result<(), NotReady> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| NotReady {
            address: readiness,
            within,
            last: format!("no runtime: {e}"),
        })?;
    runtime.block_on(async {
        let deadline = tokio::time::Instant::now() + within;
        let mut last = String::from("nothing yet");
        let mut pace = tokio::time::interval(Duration::from_millis(200));
        while tokio::time::Instant::now() < deadline {
            pace.tick().await;
            match ask_ready(readiness).await {
                Ok(200) => return Ok(()),
                Ok(status) => last = format!("HTTP {status}"),
                Err(e) => last = e.to_string(),
            }
        }
        Err(NotReady {
            address: readiness,
            within,
            last,
        })
    })
}

async fn ask_ready(addr: SocketAddr) -> std::io::Result<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(b"GET /healthz/ready HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .await?;
    let mut head = [0u8; 12];
    s.read_exact(&mut head).await?;
    std::str::from_utf8(&head[9..12])
        .ok()
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other("not an HTTP answer"))
}

/// What `mesh-proxy request` got: the status and the body.
#[derive(Debug)]
pub struct Answer {
    /// The HTTP status.
    pub status: u16,
    /// The body.
    pub body: bytes::Bytes,
}

/// One request to the proxy's own admin (15000), metrics (15020) or readiness (15021) port on
/// loopback, as Istio's `pilot-agent request`: how tools that reach a pod only by exec (the
/// admin port listens on loopback alone) read `/config_dump`, `/stats` or `/clusters`.
pub fn request(method: &str, port: u16, path: &str, within: Duration) -> anyhow::Result<Answer> {
    use anyhow::Context;
    use http_body_util::{BodyExt, Empty};
    let method: http::Method = method
        .to_ascii_uppercase()
        .parse()
        .with_context(|| format!("{method:?} is not an HTTP method"))?;
    let path = if path.starts_with('/') {
        path.to_string()
    } else {
        format!("/{path}")
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let ask = async {
            let stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .with_context(|| format!("nothing listens on 127.0.0.1:{port} in this pod"))?;
            let (mut sender, conn) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
            tokio::spawn(conn);
            let req = http::Request::builder()
                .method(method)
                .uri(&path)
                .header(http::header::HOST, "localhost")
                .body(Empty::<bytes::Bytes>::new())?;
            let resp = sender.send_request(req).await?;
            let status = resp.status().as_u16();
            let body = resp.into_body().collect().await?.to_bytes();
            anyhow::Ok(Answer { status, body })
        };
        tokio::time::timeout(within, ask)
            .await
            .with_context(|| format!("127.0.0.1:{port} did not answer {path} within {within:?}"))?
    })
}
