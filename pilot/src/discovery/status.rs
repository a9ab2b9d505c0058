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
    /// From a generation's build to a push of it.
    convergence: Seconds<{ CONVERGENCE_BUCKETS_S.len() + 1 }>,
    /// The time a push took to compute.
    push_time: Seconds<{ PUSH_TIME_BUCKETS_S.len() + 1 }>,
}

/// Upper bounds, in seconds, of `pilot_xds_push_time`'s buckets: istiod's.
pub const PUSH_TIME_BUCKETS_S: [f64; 9] = [0.01, 0.1, 0.5, 1.0, 3.0, 5.0, 10.0, 20.0, 30.0];

/// A histogram of durations: per bucket (not cumulative; the last is +Inf) and a sum in
/// microseconds.
#[derive(Debug)]
struct Seconds<const N: usize> {
    buckets: [AtomicU64; N],
    sum_us: AtomicU64,
}

impl<const N: usize> Default for Seconds<N> {
    fn default() -> Self {
        Seconds {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_us: AtomicU64::new(0),
        }
    }
}

impl<const N: usize> Seconds<N> {
    fn record(&self, bounds: &[f64], d: std::time::Duration) {
        let secs = d.as_secs_f64();
        let bucket = bounds
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(bounds.len());
        self.buckets[bucket].fetch_add(1, Relaxed);
        self.sum_us
            .fetch_add(u64::try_from(d.as_micros()).unwrap_or(u64::MAX), Relaxed);
    }

    fn render(&self, name: &str, help: &str, bounds: &[f64], out: &mut String) {
        *out += &format!("# HELP {name} {help}\n# TYPE {name} histogram\n");
        let mut cumulative = 0;
        for (i, n) in self.buckets.iter().enumerate() {
            cumulative += n.load(Relaxed);
            let le = bounds.get(i).map_or("+Inf".to_string(), |b| b.to_string());
            *out += &format!("{name}_bucket{{le=\"{le}\"}} {cumulative}\n");
        }
        *out += &format!(
            "{name}_sum {}\n{name}_count {cumulative}\n",
            self.sum_us.load(Relaxed) as f64 / 1e6
        );
    }
}

impl PushMetrics {
    /// A push of a generation built `since` ago, which took `took` to compute.
    pub fn pushed(&self, services: bool, since: std::time::Duration, took: std::time::Duration) {
        if services {
            self.service_pushes.fetch_add(1, Relaxed);
        } else {
            self.workload_pushes.fetch_add(1, Relaxed);
        }
        self.convergence.record(&CONVERGENCE_BUCKETS_S, since);
        self.push_time.record(&PUSH_TIME_BUCKETS_S, took);
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
        self.convergence.render(
            "pilot_proxy_convergence_time",
            "Seconds from a configuration's build to its push to a proxy.",
            &CONVERGENCE_BUCKETS_S,
            &mut out,
        );
        self.push_time.render(
            "pilot_xds_push_time",
            "Seconds a push took to compute.",
            &PUSH_TIME_BUCKETS_S,
            &mut out,
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
