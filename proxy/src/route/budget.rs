//! Retry budgets (Envoy's, DestinationRule `trafficPolicy.retryBudget`): retries in flight to
//! a cluster are capped at a share of the requests in flight to it, but a few are always
//! allowed, so that retries cannot multiply the load on a failing service. Every cluster has
//! one: 20% with at least 3 retries at once unless its DestinationRule says otherwise.
//!
//! Counted only when a retry is considered: the requests in flight come from the endpoints'
//! active counts least-request balancing keeps anyway, so requests that are not retried pay
//! nothing for the budget.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

/// Envoy's retry budget defaults: 20% of active requests, at least 3 retries.
pub const DEFAULT_PERCENT: f64 = 20.0;
/// See [`DEFAULT_PERCENT`].
pub const DEFAULT_MIN_CONCURRENCY: u32 = 3;

/// Every cluster's retry budget, by name.
#[derive(Default)]
pub struct RetryBudgets {
    clusters: Mutex<HashMap<String, Arc<Budget>>>,
}

/// One cluster's budget and what it allowed.
#[derive(Debug, Default)]
pub struct Budget {
    active: AtomicU32,
    made: AtomicU64,
    refused: AtomicU64,
    /// The share (percent) and minimum last applied.
    limits: Mutex<(f64, u32)>,
}

/// One retry in flight, counted until dropped.
pub struct RetryPermit(Arc<Budget>);

impl Drop for RetryPermit {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Relaxed);
    }
}

/// A budget's state at one moment.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BudgetSnapshot {
    /// The share of active requests retries may be.
    pub percent: f64,
    /// Retries always allowed.
    pub min_concurrency: u32,
    /// Retries in flight.
    pub active: u32,
    /// Retries made so far.
    pub made: u64,
    /// Retries the budget refused.
    pub refused: u64,
}

impl RetryBudgets {
    /// A retry for `cluster`, whose endpoints have `in_flight` requests (the one to retry
    /// among them), within `percent`% of them or `min_concurrency`; `None` over the budget.
    pub fn try_retry(
        &self,
        cluster: &str,
        (percent, min_concurrency): (f64, u32),
        in_flight: usize,
    ) -> Option<RetryPermit> {
        let budget = {
            let mut map = self.clusters.lock().unwrap_or_else(|e| e.into_inner());
            match map.get(cluster) {
                Some(b) => b.clone(),
                None => map.entry(cluster.to_string()).or_default().clone(),
            }
        };
        *budget.limits.lock().unwrap_or_else(|e| e.into_inner()) = (percent, min_concurrency);
        let allowed = ((in_flight as f64) * percent / 100.0).floor() as u64;
        let allowed = allowed.max(u64::from(min_concurrency));
        let before = budget.active.fetch_add(1, Relaxed);
        if u64::from(before) >= allowed {
            budget.active.fetch_sub(1, Relaxed);
            budget.refused.fetch_add(1, Relaxed);
            return None;
        }
        budget.made.fetch_add(1, Relaxed);
        Some(RetryPermit(budget))
    }

    /// Every cluster that has retried, by name.
    pub fn all(&self) -> Vec<(String, BudgetSnapshot)> {
        let map = self.clusters.lock().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<_> = map
            .iter()
            .map(|(name, b)| {
                let (percent, min_concurrency) =
                    *b.limits.lock().unwrap_or_else(|e| e.into_inner());
                (
                    name.clone(),
                    BudgetSnapshot {
                        percent,
                        min_concurrency,
                        active: b.active.load(Relaxed),
                        made: b.made.load(Relaxed),
                        refused: b.refused.load(Relaxed),
                    },
                )
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_are_capped_at_a_share_of_requests_in_flight_with_a_minimum() {
        let b = RetryBudgets::default();
        let defaults = (DEFAULT_PERCENT, DEFAULT_MIN_CONCURRENCY);
        // 10 in flight: 20% is 2, the minimum 3 wins.
        let held: Vec<_> = (0..3)
            .filter_map(|_| b.try_retry("c", defaults, 10))
            .collect();
        assert_eq!(held.len(), 3);
        assert!(b.try_retry("c", defaults, 10).is_none());
        // 100 in flight: 20 retries at once.
        let more: Vec<_> = (0..30)
            .filter_map(|_| b.try_retry("c", defaults, 100))
            .collect();
        assert_eq!(more.len(), 17);
        drop(held);
        drop(more);
        let s = &b.all()[0].1;
        assert_eq!((s.active, s.made, s.refused), (0, 20, 14));
        assert!(
            b.try_retry("other", (0.0, 0), 1000).is_none(),
            "a zero budget allows none"
        );
    }
}
