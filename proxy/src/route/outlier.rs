//! Outlier detection: endpoints that keep failing are ejected from their cluster's load
//! balancing for a while, as Envoy does for Istio's `outlierDetection`.
//!
//! - Each answer an endpoint gives is recorded: `consecutive5xxErrors` 5xx in a row (or local
//!   failures: no connection, a reset, a timeout) eject it, and so do
//!   `consecutiveGatewayErrors` 502, 503 or 504 in a row. Any other answer resets the count.
//!   With `splitExternalLocalOriginErrors`, local failures count apart instead:
//!   `consecutiveLocalOriginFailures` of them in a row eject.
//! - An ejection lasts `baseEjectionTime` times the number of times the endpoint has been
//!   ejected (at most 300 s or the base time, whichever is longer); the multiplier decays by
//!   one for each `interval` the endpoint spends healthy.
//! - No more than `maxEjectionPercent` of the endpoints are ejected at once (Istio's default,
//!   10%, never ejects one of fewer than ten endpoints: as in Envoy).
//! - When fewer than `minHealthPercent` of the endpoints are healthy, all of them are used
//!   (panic); at 0% (the default) an all-ejected cluster has no endpoint: 503, flag UH.
//!
//! Ejections end when their time is up, checked whenever the cluster is used; Envoy checks at
//! each interval, so its ejections can last up to an interval longer.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use crate::state::OutlierPolicy;

/// Envoy's `max_ejection_time` default.
const MAX_EJECTION: Duration = Duration::from_secs(300);

/// The outlier state of every cluster with outlier detection, by name.
#[derive(Default)]
pub struct Outliers {
    clusters: Mutex<HashMap<String, Arc<ClusterHealth>, foldhash::fast::RandomState>>,
}

impl Outliers {
    /// The state of the cluster `policy` names: the one it had while its policy stays the
    /// same, a fresh one when it changes.
    pub fn cluster(&self, policy: &Arc<OutlierPolicy>) -> Arc<ClusterHealth> {
        let mut map = self.clusters.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = map.get(&policy.cluster)
            && (Arc::ptr_eq(&c.policy, policy) || *c.policy == **policy)
        {
            return c.clone();
        }
        let health = Arc::new(ClusterHealth {
            policy: policy.clone(),
            hosts: Mutex::default(),
            ejections_total: AtomicU64::new(0),
            ejections_overflow: AtomicU64::new(0),
        });
        map.insert(policy.cluster.clone(), health.clone());
        health
    }

    /// Every cluster's state, by name.
    pub fn all(&self) -> Vec<Arc<ClusterHealth>> {
        let map = self.clusters.lock().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<_> = map.values().cloned().collect();
        out.sort_by(|a, b| a.policy.cluster.cmp(&b.policy.cluster));
        out
    }
}

/// What an endpoint answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// An HTTP status (a TCP connection made counts as 200).
    Status(u16),
    /// No answer: the connection failed, was reset, or the answer timed out.
    LocalFailure,
}

/// One cluster's endpoints as outlier detection sees them.
#[derive(Debug)]
pub struct ClusterHealth {
    /// The policy.
    pub policy: Arc<OutlierPolicy>,
    hosts: Mutex<HashMap<SocketAddr, Host>>,
    ejections_total: AtomicU64,
    ejections_overflow: AtomicU64,
}

#[derive(Debug, Default)]
struct Host {
    consecutive_5xx: u32,
    consecutive_gateway: u32,
    consecutive_local: u32,
    /// When the current ejection started.
    ejected_at: Option<Instant>,
    /// The ejection multiplier.
    ejections: u32,
    /// Since when the multiplier has been decaying (healthy).
    healthy_since: Option<Instant>,
}

impl Host {
    fn ejection_time(&self, base: Duration) -> Duration {
        (base * self.ejections.max(1)).min(MAX_EJECTION.max(base))
    }

    /// Ends an ejection whose time is up and decays the multiplier; whether it is ejected.
    fn refresh(&mut self, policy: &OutlierPolicy, now: Instant) -> bool {
        if let Some(at) = self.ejected_at {
            let until = at + self.ejection_time(policy.base_ejection);
            if now < until {
                return true;
            }
            self.ejected_at = None;
            self.healthy_since = Some(until);
        }
        if let Some(since) = self.healthy_since
            && self.ejections > 0
        {
            let intervals = now.duration_since(since).as_nanos() / policy.interval.as_nanos();
            let decay = u32::try_from(intervals)
                .unwrap_or(u32::MAX)
                .min(self.ejections);
            if decay > 0 {
                self.ejections -= decay;
                self.healthy_since = Some(since + policy.interval * decay);
            }
        }
        false
    }
}

impl ClusterHealth {
    /// The endpoints of `addrs` to balance over: the ones not ejected, or all of them when
    /// fewer than `minHealthPercent` are healthy.
    pub fn healthy(&self, addrs: &[SocketAddr]) -> Vec<SocketAddr> {
        let now = Instant::now();
        let mut hosts = self.hosts.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = Vec::with_capacity(addrs.len());
        for a in addrs {
            if !hosts.entry(*a).or_default().refresh(&self.policy, now) {
                out.push(*a);
            }
        }
        // Endpoints gone from the cluster no longer count against the ejection cap.
        if hosts.len() > addrs.len() {
            hosts.retain(|a, _| addrs.contains(a));
        }
        let min = u64::from(self.policy.min_health_percent);
        if min > 0 && (out.len() as u64) * 100 < min * addrs.len() as u64 {
            return addrs.to_vec();
        }
        out
    }

    /// Records what `addr` answered, ejecting it when that makes too many failures in a row.
    pub fn record(&self, addr: SocketAddr, outcome: Outcome) {
        let p = &self.policy;
        let (is_5xx, is_gateway, is_local) = match outcome {
            Outcome::LocalFailure => (!p.split_local, !p.split_local, true),
            Outcome::Status(code) => (code >= 500, matches!(code, 502..=504), false),
        };
        let now = Instant::now();
        let mut hosts = self.hosts.lock().unwrap_or_else(|e| e.into_inner());
        let host = hosts.entry(addr).or_default();
        if host.refresh(p, now) {
            return; // answers of a request sent before the ejection
        }
        host.consecutive_5xx = if is_5xx { host.consecutive_5xx + 1 } else { 0 };
        host.consecutive_gateway = if is_gateway {
            host.consecutive_gateway + 1
        } else {
            0
        };
        host.consecutive_local = if is_local {
            host.consecutive_local + 1
        } else {
            0
        };
        let tripped = (p.consecutive_5xx > 0 && host.consecutive_5xx >= p.consecutive_5xx)
            || (p.consecutive_gateway > 0 && host.consecutive_gateway >= p.consecutive_gateway)
            || (p.consecutive_local > 0 && host.consecutive_local >= p.consecutive_local);
        if !tripped {
            return;
        }
        host.consecutive_5xx = 0;
        host.consecutive_gateway = 0;
        host.consecutive_local = 0;
        // Envoy's cap: this ejection included, no more than maxEjectionPercent.
        let total = hosts.len() as u64;
        let ejected = hosts
            .values_mut()
            .map(|h| h.refresh(p, now))
            .filter(|ejected| *ejected)
            .count() as u64;
        if (ejected + 1) * 100 > u64::from(p.max_ejection_percent) * total {
            self.ejections_overflow.fetch_add(1, Relaxed);
            return;
        }
        let Some(host) = hosts.get_mut(&addr) else {
            return;
        };
        host.ejections = host.ejections.saturating_add(1);
        host.ejected_at = Some(now);
        host.healthy_since = None;
        self.ejections_total.fetch_add(1, Relaxed);
        tracing::info!(
            "outlier detection: {addr} ejected from {} for {:?} ({:?})",
            p.cluster,
            host.ejection_time(p.base_ejection),
            outcome
        );
    }

    /// The cluster's endpoints and counters now.
    pub fn snapshot(&self) -> HealthSnapshot {
        let now = Instant::now();
        let mut hosts = self.hosts.lock().unwrap_or_else(|e| e.into_inner());
        let mut endpoints: Vec<(SocketAddr, bool)> = hosts
            .iter_mut()
            .map(|(a, h)| (*a, h.refresh(&self.policy, now)))
            .collect();
        endpoints.sort();
        HealthSnapshot {
            ejections_active: endpoints.iter().filter(|(_, e)| *e).count(),
            endpoints,
            ejections_total: self.ejections_total.load(Relaxed),
            ejections_overflow: self.ejections_overflow.load(Relaxed),
        }
    }
}

/// A cluster's outlier state at one moment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthSnapshot {
    /// Each endpoint seen, and whether it is ejected.
    pub endpoints: Vec<(SocketAddr, bool)>,
    /// Endpoints ejected now.
    pub ejections_active: usize,
    /// Ejections so far.
    pub ejections_total: u64,
    /// Ejections not made: the cap (maxEjectionPercent) was reached.
    pub ejections_overflow: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(
        consecutive_5xx: u32,
        max_ejection_percent: u32,
        min_health: u32,
    ) -> Arc<OutlierPolicy> {
        Arc::new(OutlierPolicy {
            cluster: "outbound|8080||shipping".into(),
            consecutive_5xx,
            consecutive_gateway: 0,
            consecutive_local: 0,
            split_local: false,
            interval: Duration::from_secs(1),
            base_ejection: Duration::from_secs(30),
            max_ejection_percent,
            min_health_percent: min_health,
        })
    }

    fn eps(n: u16) -> Vec<SocketAddr> {
        (1..=n)
            .map(|i| SocketAddr::from(([10, 0, 0, 1], 8000 + i)))
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn split_local_failures_count_apart_from_answers() {
        let mut p = (*policy(2, 100, 0)).clone();
        p.split_local = true;
        p.consecutive_local = 3;
        let c = Outliers::default().cluster(&Arc::new(p));
        let all = eps(2);
        let bad = all[0];
        // Local failures are not 5xx here: two of them with a 500 between eject nothing.
        c.record(bad, Outcome::LocalFailure);
        c.record(bad, Outcome::Status(500));
        c.record(bad, Outcome::LocalFailure);
        assert_eq!(c.healthy(&all), all);
        // ... but an answer ends a run of local failures, so three more in a row are needed.
        for _ in 0..3 {
            c.record(bad, Outcome::LocalFailure);
        }
        assert_eq!(c.healthy(&all), vec![all[1]], "ejected by local failures");
        // Answers still count on their own: two 500s eject the other one too.
        let other = all[1];
        c.record(other, Outcome::Status(500));
        c.record(other, Outcome::Status(500));
        assert_eq!(c.healthy(&all), Vec::<SocketAddr>::new());
    }

    #[tokio::test(start_paused = true)]
    async fn consecutive_5xx_eject_for_base_time_times_ejections() {
        let c = Outliers::default().cluster(&policy(3, 100, 0));
        let all = eps(2);
        assert_eq!(c.healthy(&all), all);
        let bad = all[0];
        c.record(bad, Outcome::Status(500));
        c.record(bad, Outcome::Status(200)); // a success resets the count
        c.record(bad, Outcome::Status(503));
        c.record(bad, Outcome::LocalFailure);
        assert_eq!(c.healthy(&all), all, "two in a row are not three");
        c.record(bad, Outcome::Status(500));
        assert_eq!(c.healthy(&all), vec![all[1]], "ejected");
        tokio::time::advance(Duration::from_secs(30)).await;
        assert_eq!(c.healthy(&all), all, "back after 30 s");
        // Ejected again at once: twice as long.
        for _ in 0..3 {
            c.record(bad, Outcome::Status(502));
        }
        tokio::time::advance(Duration::from_secs(59)).await;
        assert_eq!(c.healthy(&all), vec![all[1]]);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(c.healthy(&all), all);
        // Healthy for two intervals: the multiplier is back to zero, the next lasts 30 s.
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(c.healthy(&all), all);
        for _ in 0..3 {
            c.record(bad, Outcome::Status(500));
        }
        tokio::time::advance(Duration::from_secs(30)).await;
        assert_eq!(c.healthy(&all), all);
        let s = c.snapshot();
        assert_eq!((s.ejections_total, s.ejections_active), (3, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn gateway_errors_count_only_502_to_504() {
        let mut p = (*policy(0, 100, 0)).clone();
        p.consecutive_gateway = 2;
        let c = Outliers::default().cluster(&Arc::new(p));
        let all = eps(2);
        c.healthy(&all);
        c.record(all[0], Outcome::Status(500));
        c.record(all[0], Outcome::Status(500));
        assert_eq!(c.healthy(&all), all, "500 is not a gateway error");
        c.record(all[0], Outcome::Status(504));
        c.record(all[0], Outcome::LocalFailure);
        assert_eq!(c.healthy(&all), vec![all[1]]);
    }

    #[tokio::test(start_paused = true)]
    async fn the_ejection_cap_keeps_endpoints_in_and_istios_default_ejects_none_of_two() {
        let c = Outliers::default().cluster(&policy(1, 10, 0));
        let all = eps(2);
        c.healthy(&all);
        c.record(all[0], Outcome::Status(500));
        assert_eq!(
            c.healthy(&all),
            all,
            "10% of two endpoints is less than one"
        );
        assert_eq!(c.snapshot().ejections_overflow, 1);
        let c = Outliers::default().cluster(&policy(1, 50, 0));
        c.healthy(&all);
        c.record(all[0], Outcome::Status(500));
        c.record(all[1], Outcome::Status(500));
        assert_eq!(c.healthy(&all), vec![all[1]], "one of two at 50%");
    }

    #[tokio::test(start_paused = true)]
    async fn all_ejected_leaves_none_unless_panic_is_allowed() {
        let all = eps(2);
        let strict = Outliers::default().cluster(&policy(1, 100, 0));
        strict.healthy(&all);
        strict.record(all[0], Outcome::Status(500));
        strict.record(all[1], Outcome::Status(500));
        assert!(strict.healthy(&all).is_empty(), "no healthy upstream");
        let panics = Outliers::default().cluster(&policy(1, 100, 60));
        panics.healthy(&all);
        panics.record(all[0], Outcome::Status(500));
        assert_eq!(
            panics.healthy(&all),
            all,
            "50% healthy is under 60%: all in use"
        );
    }
}
