//! What pilot knows of each proxy, for `meshctl proxy-status` and `/debug/`.

use std::collections::BTreeMap;
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

/// Every proxy's status, shared by the streams and the debug endpoints.
#[derive(Clone, Debug)]
pub struct Status {
    inner: Arc<Mutex<BTreeMap<String, ProxyStatus>>>,
    /// Bumped on every update, so callers can wait for a condition instead of polling.
    changes: Arc<tokio::sync::watch::Sender<u64>>,
}

impl Default for Status {
    fn default() -> Self {
        Status {
            inner: Arc::default(),
            changes: Arc::new(tokio::sync::watch::channel(0).0),
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
