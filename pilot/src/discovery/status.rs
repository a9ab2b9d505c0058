//! What pilot knows of each proxy, for `meshctl proxy-status` and `/debug/`.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};

use serde::Serialize;

use crate::translate::ProxyNode;

/// One proxy's status.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ProxyStatus {
    /// Who it is.
    pub node: ProxyNode,
    /// Its stream is open.
    pub connected: bool,
    /// The generation of the last response sent.
    pub sent_version: Option<u64>,
    /// The generation of the last response it acknowledged.
    pub acked_version: Option<u64>,
    /// Why it refused the last response it refused, while that is the latest word.
    pub nack: Option<String>,
    /// Services in its view.
    pub services: usize,
    /// Configuration left out of its view, with reasons.
    pub rejections: Vec<String>,
    /// Fields of its own policies and Sidecar it does not enforce yet.
    pub not_enforced_workload: Vec<String>,
    /// Fields of its services' DestinationRules and VirtualServices it does not enforce yet.
    pub not_enforced_services: Vec<String>,
}

/// Upper bounds, in seconds, of `pilot_proxy_convergence_time`'s buckets: istiod's.
pub const CONVERGENCE_BUCKETS_S: [f64; 8] = [0.1, 0.5, 1.0, 3.0, 5.0, 10.0, 20.0, 30.0];

/// Counters of the discovery service, named as istiod's (`pilot_xds_pushes`,
/// `pilot_total_xds_rejects`, `pilot_proxy_convergence_time`).
#[derive(Debug, Default)]
pub struct PushMetrics {
    /// Responses sent, of the proxy's own state.
    pub workload_pushes: AtomicU64,
    /// Responses sent, of services.
    pub service_pushes: AtomicU64,
    /// Responses proxies refused (NACKs).
    pub rejects: AtomicU64,
    /// Per bucket (not cumulative; the last is +Inf), from a generation's build to a push of it.
    convergence: [AtomicU64; CONVERGENCE_BUCKETS_S.len() + 1],
    /// Sum of those times, in microseconds.
    convergence_us: AtomicU64,
}

impl PushMetrics {
    /// A push of a generation built `since` ago.
    pub fn pushed(&self, services: bool, since: std::time::Duration) {
        if services {
            self.service_pushes.fetch_add(1, Relaxed);
        } else {
            self.workload_pushes.fetch_add(1, Relaxed);
        }
        let secs = since.as_secs_f64();
        let bucket = CONVERGENCE_BUCKETS_S
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(CONVERGENCE_BUCKETS_S.len());
        self.convergence[bucket].fetch_add(1, Relaxed);
        self.convergence_us.fetch_add(
            u64::try_from(since.as_micros()).unwrap_or(u64::MAX),
            Relaxed,
        );
    }

    /// The Prometheus text of these counters, with `connected` proxies, the `generation` and
    /// the `rejected` configuration resources.
    pub fn render(&self, connected: usize, generation: u64, rejected: usize) -> String {
        let mut out = String::new();
        out += "# HELP pilot_xds Proxies connected to this pilot.\n# TYPE pilot_xds gauge\n";
        out += &format!("pilot_xds {connected}\n");
        out += "# HELP pilot_xds_pushes Responses sent to proxies, by type.\n# TYPE pilot_xds_pushes counter\n";
        out += &format!(
            "pilot_xds_pushes{{type=\"workload\"}} {}\npilot_xds_pushes{{type=\"services\"}} {}\n",
            self.workload_pushes.load(Relaxed),
            self.service_pushes.load(Relaxed)
        );
        out += "# HELP pilot_total_xds_rejects Responses proxies refused (NACK).\n# TYPE pilot_total_xds_rejects counter\n";
        out += &format!("pilot_total_xds_rejects {}\n", self.rejects.load(Relaxed));
        out += "# HELP pilot_proxy_convergence_time Seconds from a configuration's build to its push to a proxy.\n# TYPE pilot_proxy_convergence_time histogram\n";
        let mut cumulative = 0;
        for (i, n) in self.convergence.iter().enumerate() {
            cumulative += n.load(Relaxed);
            let le = CONVERGENCE_BUCKETS_S
                .get(i)
                .map_or("+Inf".to_string(), |b| b.to_string());
            out += &format!("pilot_proxy_convergence_time_bucket{{le=\"{le}\"}} {cumulative}\n");
        }
        out += &format!(
            "pilot_proxy_convergence_time_sum {}\npilot_proxy_convergence_time_count {cumulative}\n",
            self.convergence_us.load(Relaxed) as f64 / 1e6
        );
        out += "# HELP mesh_pilot_config_generation The model's current generation.\n# TYPE mesh_pilot_config_generation gauge\n";
        out += &format!("mesh_pilot_config_generation {generation}\n");
        out += "# HELP mesh_pilot_rejected_configs Configuration resources refused (see /debug/model).\n# TYPE mesh_pilot_rejected_configs gauge\n";
        out += &format!("mesh_pilot_rejected_configs {rejected}\n");
        out
    }
}

/// Every proxy's status, shared by the streams and the debug endpoints.
#[derive(Clone, Debug)]
pub struct Status {
    inner: Arc<Mutex<BTreeMap<String, ProxyStatus>>>,
    /// Bumped on every update, so callers can wait for a condition instead of polling.
    changes: Arc<tokio::sync::watch::Sender<u64>>,
    /// Pushes, refusals and convergence times.
    pub metrics: Arc<PushMetrics>,
}

impl Default for Status {
    fn default() -> Self {
        Status {
            inner: Arc::default(),
            changes: Arc::new(tokio::sync::watch::channel(0).0),
            metrics: Arc::default(),
        }
    }
}

impl Status {
    /// Records `node` (replacing what was known of its id).
    pub fn register(&self, node: &ProxyNode) {
        if let Ok(mut map) = self.inner.lock() {
            let entry = map.entry(node.id.clone()).or_default();
            entry.node = node.clone();
        }
    }

    /// Changes the status of `id`.
    pub fn update(&self, id: &str, f: impl FnOnce(&mut ProxyStatus)) {
        if let Some(s) = self.inner.lock().ok().as_mut().and_then(|m| m.get_mut(id)) {
            f(s);
        }
        self.changes.send_modify(|n| *n += 1);
    }

    /// Waits until `pred` holds for the statuses of all proxies.
    pub async fn wait_for(&self, mut pred: impl FnMut(&[ProxyStatus]) -> bool) {
        let mut rx = self.changes.subscribe();
        loop {
            if pred(&self.all()) {
                return;
            }
            if rx.changed().await.is_err() {
                return;
            }
        }
    }

    /// Every proxy, by id.
    pub fn all(&self) -> Vec<ProxyStatus> {
        self.inner
            .lock()
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }
}
