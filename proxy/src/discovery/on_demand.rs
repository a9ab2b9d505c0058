//! On-demand discovery from the data path: a connection to a destination the proxy has no
//! state for asks pilot for it and waits (briefly) for the answer before deciding, so the
//! proxy needs to hold only what its workload actually calls.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use mesh_api::proto::discovery::v1 as pb;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

/// How long a "pilot does not know it" answer is remembered, so a workload that keeps calling
/// an address outside the mesh does not ask again on every connection.
const NEGATIVE_TTL: Duration = Duration::from_secs(5);

/// The data path's handle on the discovery client: on-demand lookups, and how many responses
/// the client refused (for the proxy's metrics page).
#[derive(Debug)]
pub struct OnDemand {
    requests: mpsc::UnboundedSender<pb::OnDemandLookup>,
    waiters: Mutex<HashMap<String, Vec<oneshot::Sender<()>>>>,
    negative: Mutex<HashMap<String, Instant>>,
    refused: AtomicU64,
}

impl OnDemand {
    /// A handle sending lookups on `requests` (read by the discovery client).
    pub fn new(requests: mpsc::UnboundedSender<pb::OnDemandLookup>) -> Self {
        OnDemand {
            requests,
            waiters: Mutex::new(HashMap::new()),
            negative: Mutex::new(HashMap::new()),
            refused: AtomicU64::new(0),
        }
    }

    /// Responses the discovery client refused (NACKed) since the proxy started.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// The discovery client refused a response.
    pub(crate) fn note_refused(&self) {
        self.refused.fetch_add(1, Ordering::Relaxed);
    }

    /// Asks pilot for the service at `addr` and waits until it answers or `deadline` passes.
    /// Returns true when pilot answered (the state may now hold the service).
    pub async fn lookup_address(&self, addr: std::net::SocketAddr, deadline: Duration) -> bool {
        let key = addr.to_string();
        let known_absent = self
            .negative
            .lock()
            .ok()
            .and_then(|n| n.get(&key).copied())
            .is_some_and(|at| at.elapsed() < NEGATIVE_TTL);
        if known_absent {
            return false;
        }
        let (tx, rx) = oneshot::channel();
        if let Ok(mut w) = self.waiters.lock() {
            w.entry(key.clone()).or_default().push(tx);
        }
        let lookup = pb::OnDemandLookup {
            target: Some(pb::on_demand_lookup::Target::Address(key.clone())),
        };
        if self.requests.send(lookup).is_err() {
            return false;
        }
        let answered = matches!(tokio::time::timeout(deadline, rx).await, Ok(Ok(())));
        if !answered {
            // Pilot is slow or away: do not make every new connection wait as long.
            if let Ok(mut w) = self.waiters.lock() {
                w.remove(&key);
            }
            if let Ok(mut n) = self.negative.lock() {
                n.insert(key, Instant::now());
            }
        }
        answered
    }

    /// Pilot sent `name` (a resource name or alias): release whoever waits for it.
    pub fn found(&self, name: &str) {
        let waiting = self.waiters.lock().ok().and_then(|mut w| w.remove(name));
        for tx in waiting.into_iter().flatten() {
            let _ = tx.send(());
        }
    }

    /// Pilot said `name` does not exist (or may not be seen): remember it briefly and release
    /// whoever waits for it.
    pub fn not_found(&self, name: &str) {
        if let Ok(mut n) = self.negative.lock() {
            n.retain(|_, at| at.elapsed() < NEGATIVE_TTL);
            n.insert(name.to_string(), Instant::now());
        }
        self.found(name);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const ADDR: &str = "10.96.0.99:80";

    #[tokio::test(start_paused = true)]
    async fn a_negative_answer_is_remembered_for_its_ttl_then_asked_again() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let od = OnDemand::new(tx);
        let addr = ADDR.parse().unwrap();
        od.not_found(ADDR);
        assert!(!od.lookup_address(addr, Duration::from_secs(1)).await);
        assert!(rx.try_recv().is_err(), "no lookup within the TTL");

        tokio::time::advance(NEGATIVE_TTL).await;
        let (answered, asked) =
            tokio::join!(od.lookup_address(addr, Duration::from_secs(1)), async {
                let asked = rx.recv().await.unwrap();
                od.found(ADDR);
                asked
            });
        assert!(answered, "pilot's answer releases the waiting connection");
        assert_eq!(
            asked.target,
            Some(pb::on_demand_lookup::Target::Address(ADDR.into()))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_pilot_that_does_not_answer_makes_later_connections_wait_no_more() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let od = OnDemand::new(tx);
        let addr = ADDR.parse().unwrap();
        let started = Instant::now();
        assert!(!od.lookup_address(addr, Duration::from_secs(1)).await);
        assert_eq!(started.elapsed(), Duration::from_secs(1));
        assert!(rx.try_recv().is_ok());
        let again = Instant::now();
        assert!(!od.lookup_address(addr, Duration::from_secs(1)).await);
        assert_eq!(again.elapsed(), Duration::ZERO, "remembered as absent");
    }
}
