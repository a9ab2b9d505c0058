//! `mesh-proxy` is the data plane: the sidecar (and gateway) proxy beside every workload. This
//! crate owns traffic capture (`init`: the iptables rules of a pod's network namespace), the
//! outbound and inbound listeners, load balancing, the admin and readiness endpoints, and
//! graceful drain; HTTP routing and mTLS between proxies build on them. It owns no
//! configuration types of its own: its state is the `mesh.state.v1` message from `mesh-api`,
//! from the control plane or a local file, reaching the listeners through a watch channel.

// The modules form layers, from the bottom up: body, drain, identity, init, sniff, socket,
// tls, authn, authz, telemetry, state, discovery, route, metrics, upstream, ratelimit, inputs, http, tcp, inbound, outbound,
// gateway, admin (then `run`, the process around them). Each uses only the ones before it; tests/layers.rs checks it and
// docs/architecture.md draws it.
pub mod admin;
pub mod authn;
pub mod authz;
pub mod body;
pub mod discovery;
pub mod drain;
pub mod gateway;
pub mod http;
pub mod identity;
pub mod inbound;
pub mod init;
pub mod inputs;
pub mod metrics;
pub mod outbound;
pub mod ratelimit;
pub mod route;
pub mod run;
pub mod sniff;
pub mod socket;
pub mod state;
pub mod tcp;
pub mod telemetry;
#[cfg(feature = "test-util")]
pub mod testing;
pub mod tls;
pub mod upstream;

pub use inputs::Inputs;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

use crate::socket::OriginalDst;
use crate::state::State;
use crate::tls::mtls::Svids;

/// Where the proxy listens.
#[derive(Clone, Debug)]
pub struct Listeners {
    /// Outbound capture (15001).
    pub outbound: SocketAddr,
    /// Inbound capture (15006).
    pub inbound: SocketAddr,
    /// Admin (127.0.0.1:15000).
    pub admin: SocketAddr,
    /// Readiness (15021).
    pub readiness: SocketAddr,
    /// Prometheus metrics and readiness (15020).
    pub metrics: SocketAddr,
}

impl Default for Listeners {
    fn default() -> Self {
        Self {
            outbound: ([0, 0, 0, 0], 15001).into(),
            inbound: ([0, 0, 0, 0], 15006).into(),
            admin: ([127, 0, 0, 1], 15000).into(),
            readiness: ([0, 0, 0, 0], 15021).into(),
            metrics: ([0, 0, 0, 0], 15020).into(),
        }
    }
}

/// What a proxy runs with besides its listeners.
pub struct Setup {
    /// The latest state.
    pub state: watch::Receiver<Arc<State>>,
    /// Whether the current value of `state` is a real state (not a placeholder).
    pub has_state: bool,
    /// Where captured outbound connections were headed.
    pub outbound_dst: Arc<dyn OriginalDst>,
    /// Where captured inbound connections were headed.
    pub inbound_dst: Arc<dyn OriginalDst>,
    /// The workload's certificates, when it has an identity.
    pub svids: Option<Svids>,
    /// On-demand lookups, when pilot feeds the state.
    pub on_demand: Option<Arc<discovery::OnDemand>>,
    /// The workload the proxy serves, as its metrics' labels name it.
    pub workload: metrics::Workload,
    /// Whether responses say which policy decided (`x-mesh-authz`).
    pub debug_authz: bool,
    /// CA certificates (PEM) trusted for https `jwksUri`s besides the system's roots.
    pub jwks_ca_pem: Option<String>,
    /// Gateway mode: the address the gateway's listeners bind (their ports come with the
    /// state); `None` for a sidecar.
    pub gateway: Option<std::net::IpAddr>,
    /// The limits of the traffic listeners' connections.
    pub limits: http::Limits,
}

/// A running proxy.
pub struct Proxy {
    /// The addresses actually bound (useful with port 0 in tests).
    pub bound: Listeners,
    trigger: drain::Trigger,
    drain_requests: mpsc::Receiver<()>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    app: Arc<admin::App>,
}

/// A listener that could not be bound.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr} ({what}): {source}")]
pub struct BindError {
    /// The address.
    pub addr: SocketAddr,
    /// Which listener.
    pub what: &'static str,
    /// The cause.
    #[source]
    pub source: std::io::Error,
}

async fn bind(addr: SocketAddr, what: &'static str) -> Result<TcpListener, BindError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| BindError { addr, what, source })
}

impl Proxy {
    /// Binds every listener and starts serving. `outbound_dst` and `inbound_dst` tell where
    /// captured connections were headed (the kernel's `SO_ORIGINAL_DST` in production).
    pub async fn start(
        listeners: &Listeners,
        state: watch::Receiver<Arc<State>>,
        has_state: bool,
        outbound_dst: Arc<dyn OriginalDst>,
        inbound_dst: Arc<dyn OriginalDst>,
    ) -> Result<Self, BindError> {
        Self::start_with_identity(listeners, state, has_state, outbound_dst, inbound_dst, None)
            .await
    }

    /// As [`Proxy::start`], for a workload with an identity: its certificates (kept fresh by
    /// [`identity::keep_fresh`]) are used for mesh mTLS both ways.
    pub async fn start_with_identity(
        listeners: &Listeners,
        state: watch::Receiver<Arc<State>>,
        has_state: bool,
        outbound_dst: Arc<dyn OriginalDst>,
        inbound_dst: Arc<dyn OriginalDst>,
        svids: Option<Svids>,
    ) -> Result<Self, BindError> {
        let setup = Setup {
            state,
            has_state,
            outbound_dst,
            inbound_dst,
            svids,
            on_demand: None,
            workload: metrics::Workload::unknown(),
            debug_authz: false,
            jwks_ca_pem: None,
            gateway: None,
            limits: http::Limits::default(),
        };
        Self::launch(listeners, setup).await
    }

    /// Binds every listener and starts serving with everything `setup` gives.
    pub async fn launch(listeners: &Listeners, setup: Setup) -> Result<Self, BindError> {
        let Setup {
            state,
            has_state,
            outbound_dst,
            inbound_dst,
            svids,
            on_demand,
            workload,
            debug_authz,
            jwks_ca_pem,
            gateway,
            limits,
        } = setup;
        let outbound = bind(listeners.outbound, "outbound").await?;
        let inbound = bind(listeners.inbound, "inbound").await?;
        let admin = bind(listeners.admin, "admin").await?;
        let readiness = bind(listeners.readiness, "readiness").await?;
        let metrics_listener = bind(listeners.metrics, "metrics").await?;
        let local = |l: &TcpListener, fallback| l.local_addr().unwrap_or(fallback);
        let bound = Listeners {
            outbound: local(&outbound, listeners.outbound),
            inbound: local(&inbound, listeners.inbound),
            admin: local(&admin, listeners.admin),
            readiness: local(&readiness, listeners.readiness),
            metrics: local(&metrics_listener, listeners.metrics),
        };
        let mut inputs = Inputs::with_identity(state, has_state, svids);
        inputs.on_demand = on_demand;
        inputs.metrics = Arc::new(metrics::Metrics::new(workload));
        inputs.own_addrs = vec![
            bound.outbound,
            bound.inbound,
            bound.admin,
            bound.readiness,
            bound.metrics,
        ];
        inputs.debug_authz = debug_authz;
        inputs.limits = limits;
        let inputs = Arc::new(inputs);
        let fetch = http::fetch::MeshFetch::new(Arc::downgrade(&inputs), jwks_ca_pem);
        let _ = inputs
            .jwks
            .set(Arc::new(authn::jwks::Cache::new(Box::new(fetch))));
        let _ = inputs.tracers.set(tracers(&inputs));
        let (trigger, watch) = drain::channel();
        let (drain_tx, drain_requests) = mpsc::channel(1);
        let app = Arc::new(admin::App::default());
        let mut tasks = vec![
            tokio::spawn(state::report_unenforced(inputs.state.clone())),
            tokio::spawn(outbound::serve(
                outbound,
                inputs.clone(),
                outbound_dst,
                watch.clone(),
            )),
            tokio::spawn(inbound::serve(
                inbound,
                inputs.clone(),
                inbound_dst,
                watch.clone(),
            )),
            tokio::spawn(admin::serve(admin, inputs.clone(), drain_tx, watch.clone())),
            tokio::spawn(admin::serve_readiness(
                readiness,
                inputs.clone(),
                watch.clone(),
                app.clone(),
            )),
            tokio::spawn(admin::serve_metrics(
                metrics_listener,
                inputs.clone(),
                watch.clone(),
                app.clone(),
            )),
        ];
        tasks.push(tokio::spawn(close_idle_upstreams(inputs.clone())));
        if let Some(ip) = gateway {
            tasks.push(tokio::spawn(gateway::serve(ip, inputs, watch)));
        }
        Ok(Self {
            bound,
            trigger,
            drain_requests,
            tasks,
            app,
        })
    }

    /// The application's probes, answered on the readiness port's `/app-health/...` paths
    /// (set once; `false` if they were set already).
    pub fn set_app_probers(&self, probers: admin::AppProbers) -> bool {
        self.app.probers.set(probers).is_ok()
    }

    /// Where the application serves its own metrics, merged into the metrics port's page
    /// (set once; `false` if it was set already).
    pub fn set_app_metrics(&self, metrics: admin::AppMetrics) -> bool {
        self.app.metrics.set(metrics).is_ok()
    }

    /// Resolves when someone asks the admin endpoint to drain.
    pub async fn drain_requested(&mut self) {
        if self.drain_requests.recv().await.is_none() {
            std::future::pending::<()>().await;
        }
    }

    /// Stops accepting, waits for connections in flight up to `deadline`, and returns whether
    /// they all finished.
    pub async fn drain(self, deadline: Duration) -> bool {
        let finished = self.trigger.drain(deadline).await;
        for t in self.tasks {
            t.abort();
        }
        finished
    }
}

/// How often pooled upstream connections idle past their timeout are closed.
const UPSTREAM_IDLE_SWEEP: Duration = Duration::from_secs(15);

/// Closes pooled upstream connections idle past their timeout, every [`UPSTREAM_IDLE_SWEEP`].
async fn close_idle_upstreams(inputs: Arc<Inputs>) {
    let mut every = tokio::time::interval(UPSTREAM_IDLE_SWEEP);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        inputs.upstreams.close_idle();
    }
}

/// The span pipeline of the proxy with `inputs`: spans of its workload, sent as OTLP/gRPC
/// `Export` calls through its own outbound path.
fn tracers(inputs: &Arc<Inputs>) -> telemetry::trace::Tracers {
    let w = inputs.metrics.local();
    let local = telemetry::trace::Local {
        name: w.name.clone(),
        namespace: w.namespace.clone(),
        canonical_service: w.canonical_service.clone(),
        canonical_revision: w.canonical_revision.clone(),
    };
    let weak = Arc::downgrade(inputs);
    let export: telemetry::trace::Export = Arc::new(move |host, port, message| {
        let weak = weak.clone();
        Box::pin(async move {
            let inputs = weak.upgrade().ok_or("the proxy stopped")?;
            http::fetch::grpc_call(&inputs, &host, port, telemetry::trace::EXPORT_PATH, message)
                .await
                .map(|_| ())
        })
    });
    telemetry::trace::Tracers::new(local, export)
}
