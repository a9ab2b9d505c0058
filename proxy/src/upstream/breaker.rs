//! Circuit breaking: a cluster's DestinationRule `connectionPool` applied as Envoy applies it,
//! so that Istio's circuit-breaking task behaves the same here.
//!
//! - Connections (open, or being opened) to the cluster's endpoints are counted against
//!   `maxConnections`, TCP and HTTP alike. An endpoint with no connection at all may always
//!   open one, as in Envoy, so that one busy endpoint cannot starve the others.
//! - A request with no connection at hand is *pending* until it has one: while it waits for a
//!   connection to free up, and while the connection made for it is being opened. More than
//!   `http1MaxPendingRequests` pending, and the next is refused at once (503, flag UO).
//! - Active requests are counted against `http2MaxRequests`, retries in flight against
//!   `maxRetries` (a retry over the limit is not made; the answer goes back as it is).
//!
//! A cluster with limits has pools of its own (see [`super::Clusters`]), so that these counts
//! are exact and traffic to clusters without limits pays nothing for them.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use crate::state::PoolLimits;

/// A cluster's live counts against its limits.
pub struct Breaker {
    /// The limits.
    pub limits: Arc<PoolLimits>,
    counts: Mutex<Counts>,
    /// Woken when a connection closes or comes back idle, or a new one is open.
    freed: Notify,
    requests: AtomicU32,
    retries: AtomicU32,
    stats: Stats,
}

#[derive(Default)]
struct Counts {
    connections: u32,
    pending: u32,
    per_endpoint: HashMap<SocketAddr, u32>,
}

/// What overflowed, as Envoy's stats name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Overflow {
    /// `http1MaxPendingRequests` (`upstream_rq_pending_overflow`).
    Pending,
    /// `http2MaxRequests` (`upstream_rq_overflow`).
    Requests,
    /// `maxConnections` for a TCP connection (`upstream_cx_overflow`).
    Connections,
}

impl std::fmt::Display for Overflow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Overflow::Pending => "too many requests waiting for a connection (connectionPool.http.http1MaxPendingRequests)",
            Overflow::Requests => "too many active requests (connectionPool.http.http2MaxRequests)",
            Overflow::Connections => "too many connections (connectionPool.tcp.maxConnections)",
        })
    }
}

impl std::error::Error for Overflow {}

/// Counters shown in the admin stats, under Envoy's names.
#[derive(Default)]
struct Stats {
    cx_overflow: AtomicU64,
    rq_pending_overflow: AtomicU64,
    rq_overflow: AtomicU64,
    retry_overflow: AtomicU64,
}

/// What a request without a connection at hand gets.
pub(crate) enum Room<C> {
    /// A connection that was free.
    Ready(C),
    /// Room to open a connection: the permit goes with the connection until it closes; the
    /// request stays pending until the connection is open.
    Open(ConnPermit, Pending),
}

/// One connection counted against the cluster's limit until dropped.
pub struct ConnPermit {
    breaker: Arc<Breaker>,
    endpoint: SocketAddr,
}

impl Drop for ConnPermit {
    fn drop(&mut self) {
        {
            let mut counts = self.breaker.lock();
            counts.connections -= 1;
            if let Some(n) = counts.per_endpoint.get_mut(&self.endpoint) {
                *n -= 1;
                if *n == 0 {
                    counts.per_endpoint.remove(&self.endpoint);
                }
            }
        }
        self.breaker.freed.notify_waiters();
    }
}

/// One pending request, counted until dropped.
pub(crate) struct Pending(Arc<Breaker>);

impl Drop for Pending {
    fn drop(&mut self) {
        self.0.lock().pending -= 1;
    }
}

/// One active request (or retry), counted until dropped.
pub struct RequestPermit {
    breaker: Arc<Breaker>,
    retry: bool,
}

impl Drop for RequestPermit {
    fn drop(&mut self) {
        let counter = if self.retry {
            &self.breaker.retries
        } else {
            &self.breaker.requests
        };
        counter.fetch_sub(1, Relaxed);
    }
}

impl Breaker {
    /// A breaker with nothing counted yet.
    pub fn new(limits: Arc<PoolLimits>) -> Arc<Self> {
        Arc::new(Self {
            limits,
            counts: Mutex::default(),
            freed: Notify::new(),
            requests: AtomicU32::new(0),
            retries: AtomicU32::new(0),
            stats: Stats::default(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Tells waiting requests that a connection came back idle or was opened.
    pub(crate) fn freed(&self) {
        self.freed.notify_waiters();
    }

    /// A connection for a request to `endpoint`: one `take` finds free, else room to open one
    /// once the count allows, waiting as a pending request meanwhile.
    pub(crate) async fn room<C>(
        self: &Arc<Self>,
        endpoint: SocketAddr,
        mut take: impl FnMut() -> Option<C>,
    ) -> Result<Room<C>, Overflow> {
        // The common case first, without registering for wake-ups.
        if let Some(c) = take() {
            return Ok(Room::Ready(c));
        }
        let mut pending = None;
        let mut counted = false;
        loop {
            // Registered before looking, so that a connection freed in between still wakes us.
            let notified = self.freed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(c) = take() {
                return Ok(Room::Ready(c));
            }
            {
                let mut counts = self.lock();
                if pending.is_none() {
                    if counts.pending >= self.limits.max_pending {
                        drop(counts);
                        self.stats.rq_pending_overflow.fetch_add(1, Relaxed);
                        return Err(Overflow::Pending);
                    }
                    counts.pending += 1;
                    pending = Some(Pending(self.clone()));
                }
                let mine = counts.per_endpoint.get(&endpoint).copied().unwrap_or(0);
                if counts.connections < self.limits.max_connections || mine == 0 {
                    counts.connections += 1;
                    *counts.per_endpoint.entry(endpoint).or_default() += 1;
                    let permit = ConnPermit {
                        breaker: self.clone(),
                        endpoint,
                    };
                    if let Some(p) = pending.take() {
                        return Ok(Room::Open(permit, p));
                    }
                }
            }
            if !counted {
                counted = true;
                self.stats.cx_overflow.fetch_add(1, Relaxed);
            }
            notified.await;
        }
    }

    /// A TCP connection to `endpoint`, or the overflow that refuses it (TCP has no pending
    /// queue: Envoy's TCP proxy closes the connection at once).
    pub fn open_tcp(self: &Arc<Self>, endpoint: SocketAddr) -> Result<ConnPermit, Overflow> {
        let mut counts = self.lock();
        let mine = counts.per_endpoint.get(&endpoint).copied().unwrap_or(0);
        if counts.connections >= self.limits.max_connections && mine > 0 {
            drop(counts);
            self.stats.cx_overflow.fetch_add(1, Relaxed);
            return Err(Overflow::Connections);
        }
        counts.connections += 1;
        *counts.per_endpoint.entry(endpoint).or_default() += 1;
        Ok(ConnPermit {
            breaker: self.clone(),
            endpoint,
        })
    }

    /// Counts one active request, or refuses it over `http2MaxRequests`.
    pub fn start_request(self: &Arc<Self>) -> Result<RequestPermit, Overflow> {
        if self.requests.fetch_add(1, Relaxed) >= self.limits.max_requests {
            self.requests.fetch_sub(1, Relaxed);
            self.stats.rq_overflow.fetch_add(1, Relaxed);
            return Err(Overflow::Requests);
        }
        Ok(RequestPermit {
            breaker: self.clone(),
            retry: false,
        })
    }

    /// Counts one retry in flight; `None` over `maxRetries` (the retry is not made).
    pub fn start_retry(self: &Arc<Self>) -> Option<RequestPermit> {
        if self.retries.fetch_add(1, Relaxed) >= self.limits.max_retries {
            self.retries.fetch_sub(1, Relaxed);
            self.stats.retry_overflow.fetch_add(1, Relaxed);
            return None;
        }
        Some(RequestPermit {
            breaker: self.clone(),
            retry: true,
        })
    }

    /// The cluster's gauges and counters, under Envoy's stat names.
    pub fn snapshot(&self) -> Snapshot {
        let counts = self.lock();
        Snapshot {
            cx_active: counts.connections,
            rq_pending_active: counts.pending,
            rq_active: self.requests.load(Relaxed),
            rq_retry_active: self.retries.load(Relaxed),
            cx_overflow: self.stats.cx_overflow.load(Relaxed),
            rq_pending_overflow: self.stats.rq_pending_overflow.load(Relaxed),
            rq_overflow: self.stats.rq_overflow.load(Relaxed),
            retry_overflow: self.stats.retry_overflow.load(Relaxed),
        }
    }
}

/// A breaker's state at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Snapshot {
    /// Connections open or being opened.
    pub cx_active: u32,
    /// Requests waiting for a connection.
    pub rq_pending_active: u32,
    /// Active requests.
    pub rq_active: u32,
    /// Retries in flight.
    pub rq_retry_active: u32,
    /// Times a request found the connection limit reached (it then waited).
    pub cx_overflow: u64,
    /// Requests refused: too many pending.
    pub rq_pending_overflow: u64,
    /// Requests refused: too many active.
    pub rq_overflow: u64,
    /// Retries not made: too many in flight.
    pub retry_overflow: u64,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::time::Duration;

    use super::*;

    fn breaker(max_connections: u32, max_pending: u32) -> Arc<Breaker> {
        Breaker::new(Arc::new(PoolLimits {
            cluster: "outbound|80||inventory".into(),
            max_connections,
            max_pending,
            max_requests: 2,
            max_retries: 1,
            max_requests_per_connection: None,
            connect_timeout: Duration::from_secs(1),
            idle_timeout: None,
        }))
    }

    fn ep(port: u16) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, 1], port))
    }

    async fn open(b: &Arc<Breaker>, at: SocketAddr) -> ConnPermit {
        match b.room::<()>(at, || None).await.unwrap() {
            Room::Open(permit, _pending) => permit,
            Room::Ready(()) => unreachable!(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_over_the_pending_limit_is_refused_and_one_within_it_waits() {
        let b = breaker(1, 1);
        let first = open(&b, ep(1)).await;
        // The second waits for the only connection.
        let waiting = tokio::spawn({
            let b = b.clone();
            async move { matches!(b.room::<()>(ep(1), || None).await, Ok(Room::Open(..))) }
        });
        tokio::task::yield_now().await;
        assert_eq!(b.snapshot().rq_pending_active, 1);
        // The third finds one pending already.
        assert_eq!(
            b.room::<()>(ep(1), || None).await.err(),
            Some(Overflow::Pending)
        );
        drop(first);
        assert!(waiting.await.unwrap());
        let s = b.snapshot();
        assert_eq!((s.rq_pending_active, s.rq_pending_overflow), (0, 1));
        assert_eq!(s.cx_overflow, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_free_connection_is_taken_without_waiting_or_counting() {
        let b = breaker(1, 1);
        let _busy = open(&b, ep(1)).await;
        let room = b.room(ep(1), || Some("idle")).await.unwrap();
        assert!(matches!(room, Room::Ready("idle")));
        assert_eq!(b.snapshot().rq_pending_active, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn an_endpoint_without_connections_may_always_open_one() {
        let b = breaker(1, 1);
        let _a = open(&b, ep(1)).await;
        let _b = open(&b, ep(2)).await;
        assert_eq!(b.snapshot().cx_active, 2);
        assert_eq!(b.open_tcp(ep(1)).err(), Some(Overflow::Connections));
        assert!(b.open_tcp(ep(3)).is_ok());
    }

    #[test]
    fn requests_and_retries_are_capped() {
        let b = breaker(1, 1);
        let r1 = b.start_request().unwrap();
        let _r2 = b.start_request().unwrap();
        assert_eq!(b.start_request().err(), Some(Overflow::Requests));
        drop(r1);
        assert!(b.start_request().is_ok());
        let retry = b.start_retry().unwrap();
        assert!(b.start_retry().is_none());
        drop(retry);
        assert!(b.start_retry().is_some());
        let s = b.snapshot();
        assert_eq!((s.rq_overflow, s.retry_overflow), (1, 1));
    }
}
