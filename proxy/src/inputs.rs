//! What every listener and handler of one proxy shares, in one `Arc`: the state watch, the
//! endpoint loads, the upstream pools, the identity, on-demand discovery and the metrics.

use std::net::SocketAddr;
use std::sync::Arc;

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

    /// True once the proxy has a state to serve with (and its certificate, when it has an
    /// identity).
    pub fn ready(&self) -> bool {
        let state = self.has_state.load(std::sync::atomic::Ordering::Relaxed)
            || self.state.has_changed().unwrap_or(false);
        let identity = self.svids.as_ref().is_none_or(|s| s.borrow().is_some());
        state && identity
    }
}
