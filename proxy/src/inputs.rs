//! What every listener and handler of one proxy shares, in one `Arc`: the state watch, the
//! endpoint loads, the upstream pools, the identity, on-demand discovery and the metrics.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::route::balance::Loads;
use crate::state::State;
use crate::tls::mtls::Svids;
use crate::upstream::Upstreams;
use crate::{discovery, metrics, tls};

/// What every connection handler shares.
pub struct Inputs {
    /// The latest state.
    pub state: watch::Receiver<Arc<State>>,
    /// Active requests per endpoint, for load balancing.
    pub loads: Loads,
    /// Pooled upstream HTTP connections.
    pub upstreams: Upstreams,
    /// The proxy's own listening addresses, so a connection back to them is refused, not looped.
    pub own_addrs: Vec<SocketAddr>,
    /// Set once a state was received.
    has_state: std::sync::atomic::AtomicBool,
    /// The workload's certificates, when the proxy has an identity.
    pub svids: Option<Svids>,
    /// The inbound mTLS configuration, when the proxy has an identity.
    pub tls_server: Option<Arc<rustls::ServerConfig>>,
    /// Asks pilot for destinations the state does not hold yet, when pilot feeds the state.
    pub on_demand: Option<Arc<discovery::OnDemand>>,
    /// Istio's standard metrics.
    pub metrics: Arc<metrics::Metrics>,
    /// JWT key sets fetched from `jwksUri`s, kept across states; set once the proxy runs (its
    /// fetcher routes through the proxy's own outbound path).
    pub jwks: std::sync::OnceLock<Arc<crate::authn::jwks::Cache>>,
    /// Adds `x-mesh-authz` (which policy and rule decided) to responses, for debugging.
    pub debug_authz: bool,
    /// The token buckets of the workload's RateLimitPolicies, kept across states.
    pub rate_limits: crate::ratelimit::RateLimits,
    /// Where spans go, kept across states; set once the proxy runs (spans are sent through the
    /// proxy's own outbound path).
    pub tracers: std::sync::OnceLock<crate::telemetry::trace::Tracers>,
    /// The limits of the traffic listeners' connections.
    pub limits: Limits,
}

impl Inputs {
    /// Inputs reading states from `state`; `initial` says whether its current value is a real
    /// state (false when it is only a placeholder until the first state arrives).
    pub fn new(state: watch::Receiver<Arc<State>>, initial: bool) -> Self {
        Self::with_identity(state, initial, None)
    }

    /// Inputs of a proxy with a workload identity: mesh mTLS both ways.
    pub fn with_identity(
        state: watch::Receiver<Arc<State>>,
        initial: bool,
        svids: Option<Svids>,
    ) -> Self {
        let mtls = svids
            .clone()
            .map(|s| Arc::new(tls::connect::MtlsClient::new(s)));
        let tls_server = svids
            .clone()
            .and_then(|s| match tls::mtls::server_config(s) {
                Ok(c) => Some(c),
                Err(e) => {
                    tracing::error!("inbound mTLS unavailable: {e}");
                    None
                }
            });
        Self {
            state,
            loads: Loads::default(),
            upstreams: Upstreams::new(mtls),
            own_addrs: Vec::new(),
            has_state: initial.into(),
            svids,
            tls_server,
            on_demand: None,
            metrics: Arc::default(),
            jwks: std::sync::OnceLock::new(),
            debug_authz: false,
            rate_limits: Default::default(),
            tracers: std::sync::OnceLock::new(),
            limits: Limits::default(),
        }
    }

    /// This proxy's workload as metrics label it, with the identity its current certificate
    /// proves.
    pub fn workload(&self) -> metrics::Workload {
        let mut w = self.metrics.local().clone();
        if let Some(svid) = self.svids.as_ref().and_then(|s| s.borrow().clone()) {
            w.principal = svid.identity.clone();
        }
        w
    }

    /// How many connections `listener` may hold open at once, and the counter of those it
    /// closed past that.
    pub fn connection_limit(
        &self,
        listener: metrics::Listener,
    ) -> (usize, &std::sync::atomic::AtomicU64) {
        let counter = self
            .metrics
            .refused()
            .counter(listener, metrics::Refusal::ConnectionLimit);
        (self.limits.max_connections, counter)
    }

    /// True once the proxy has a state to serve with (and its certificate, when it has an
    /// identity).
    pub fn ready(&self) -> bool {
        let state = self.has_state.load(std::sync::atomic::Ordering::Relaxed)
            || self.state.has_changed().unwrap_or(false);
        let identity = self.svids.as_ref().is_none_or(|s| s.borrow().is_some());
        state && identity
    }
}

/// How long a request's line and headers may take to arrive, from their first byte: longer, and
/// the connection is closed. Envoy leaves `request_headers_timeout` off by default and its edge
/// guidance sets 10 s; ours is on everywhere, as a sidecar's callers are not all well behaved.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a served connection may carry nothing, either way, before it is closed (HTTP/1:
/// closed when between requests; HTTP/2: GOAWAY, then closed once its streams are done).
/// Envoy's `idle_timeout` default (and Istio's) is an hour.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(3600);

/// The most connections each traffic listener holds open at once, unless told otherwise
/// (`mesh-proxy run --max-connections`). Envoy sets no limit per listener by default (Istio
/// sets its overload manager's global one to 2^31-1); past the open-file limit accepting
/// fails anyway, so `mesh-proxy run` lowers this to a quarter of that limit when it is smaller.
pub const MAX_CONNECTIONS: usize = 100_000;

/// The limits of the traffic listeners' connections that can be set per proxy.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Connections open at once per listener; more are closed as they are accepted.
    pub max_connections: usize,
    /// How long an HTTP/1 request's headers may take from their first byte.
    pub header_read_timeout: Duration,
    /// How long a served HTTP connection may carry nothing before it is closed.
    pub idle_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: MAX_CONNECTIONS,
            header_read_timeout: HEADER_READ_TIMEOUT,
            idle_timeout: IDLE_TIMEOUT,
        }
    }
}
