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
}

/// Every proxy's status, shared by the streams and the debug endpoints.
#[derive(Clone, Debug, Default)]
pub struct Status {
    inner: Arc<Mutex<BTreeMap<String, ProxyStatus>>>,
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
    }

    /// Every proxy, by id.
    pub fn all(&self) -> Vec<ProxyStatus> {
        self.inner
            .lock()
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }
}
