//! Choosing an endpoint: least request by power of two choices (the default), round robin,
//! random. Active-request counts (and outlier detection's ejections) are shared by every
//! connection of the proxy.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::state::Balancer;

/// Per-endpoint active request counts and per-pool round-robin cursors.
#[derive(Default)]
pub struct Loads {
    /// Looked up for every request: a fast hasher (the keys are endpoints pilot sent).
    active: Mutex<HashMap<SocketAddr, Arc<AtomicUsize>, foldhash::fast::RandomState>>,
    cursors: Mutex<HashMap<String, Arc<AtomicUsize>, foldhash::fast::RandomState>>,
    /// Endpoints ejected by outlier detection, by cluster.
    pub outliers: super::outlier::Outliers,
    /// Retry budgets, by cluster.
    pub retry_budgets: super::budget::RetryBudgets,
}

/// Counts one request against an endpoint until dropped.
pub struct Active(Arc<AtomicUsize>);

impl Drop for Active {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Loads {
    fn counter(&self, addr: SocketAddr) -> Arc<AtomicUsize> {
        let mut map = self.active.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = map.get(&addr) {
            return c.clone();
        }
        map.entry(addr).or_default().clone()
    }

    /// Requests in flight to `addr`.
    pub fn active(&self, addr: SocketAddr) -> usize {
        self.counter(addr).load(Ordering::Relaxed)
    }

    /// Marks a request to `addr` as started.
    pub fn start(&self, addr: SocketAddr) -> Active {
        let c = self.counter(addr);
        c.fetch_add(1, Ordering::Relaxed);
        Active(c)
    }

    /// Picks one of `candidates` (non-empty) for the pool named `pool` (a round-robin cursor is
    /// kept per pool name).
    pub fn pick(
        &self,
        pool: std::fmt::Arguments<'_>,
        balancer: Balancer,
        candidates: &[SocketAddr],
    ) -> Option<SocketAddr> {
        match candidates.len() {
            0 => return None,
            1 => return Some(candidates[0]),
            _ => {}
        }
        Some(match balancer {
            Balancer::RoundRobin => {
                let cursor = {
                    // The pool's name is written only here: the other balancers need none.
                    let pool = pool.to_string();
                    let mut map = self.cursors.lock().unwrap_or_else(|e| e.into_inner());
                    map.entry(pool).or_default().clone()
                };
                candidates[cursor.fetch_add(1, Ordering::Relaxed) % candidates.len()]
            }
            Balancer::Random | Balancer::Passthrough => {
                candidates[fastrand::usize(..candidates.len())]
            }
            Balancer::LeastRequest => {
                let a = fastrand::usize(..candidates.len());
                let mut b = fastrand::usize(..candidates.len() - 1);
                if b >= a {
                    b += 1;
                }
                let (ea, eb) = (candidates[a], candidates[b]);
                if self.active(eb) < self.active(ea) {
                    eb
                } else {
                    ea
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(n: u16) -> Vec<SocketAddr> {
        (0..n)
            .map(|i| SocketAddr::from(([10, 0, 0, 1], 8000 + i)))
            .collect()
    }

    #[test]
    fn round_robin_cycles_evenly() {
        let loads = Loads::default();
        let eps = addrs(3);
        let picks: Vec<_> = (0..6)
            .map(|_| {
                loads
                    .pick(format_args!("p"), Balancer::RoundRobin, &eps)
                    .unwrap()
            })
            .collect();
        assert_eq!(picks, [eps[0], eps[1], eps[2], eps[0], eps[1], eps[2]]);
    }

    #[test]
    fn random_spreads_within_bounds() {
        let loads = Loads::default();
        let eps = addrs(4);
        let mut counts = HashMap::new();
        for _ in 0..8000 {
            *counts
                .entry(
                    loads
                        .pick(format_args!("p"), Balancer::Random, &eps)
                        .unwrap(),
                )
                .or_insert(0) += 1;
        }
        // Each endpoint expects 2000; 5 standard deviations is about ±200.
        for ep in &eps {
            let n = counts[ep];
            assert!((1800..=2200).contains(&n), "{ep}: {n}");
        }
    }

    #[test]
    fn least_request_avoids_the_busy_endpoint() {
        let loads = Loads::default();
        let eps = addrs(2);
        let _busy: Vec<Active> = (0..5).map(|_| loads.start(eps[0])).collect();
        for _ in 0..100 {
            assert_eq!(
                loads.pick(format_args!("p"), Balancer::LeastRequest, &eps),
                Some(eps[1])
            );
        }
    }

    #[test]
    fn least_request_prefers_the_less_loaded_of_two_choices() {
        let loads = Loads::default();
        let eps = addrs(3);
        let _busy: Vec<Active> = (0..3).map(|_| loads.start(eps[0])).collect();
        let mut to_busy = 0;
        for _ in 0..3000 {
            if loads.pick(format_args!("p"), Balancer::LeastRequest, &eps) == Some(eps[0]) {
                to_busy += 1;
            }
        }
        // The busiest endpoint wins only when it is drawn against itself, which P2C excludes.
        assert_eq!(to_busy, 0);
    }
}
