//! Local rate limits (RateLimitPolicy, `policy.mesh.dev`): token buckets on the requests the
//! workload receives, kept by its sidecar as Envoy's local rate limit filter keeps them. A
//! bucket starts full with `max_tokens`; each request it counts takes a token; every fill
//! interval adds `tokens_per_fill`, up to `max_tokens`. A request that finds a bucket empty is
//! answered 429 (flag RL) and never reaches the application.
//!
//! Buckets are filled lazily, when a request looks at them, from the time elapsed since their
//! last fill: the same tokens as Envoy's timer, with no task per bucket. They live outside the
//! state, by limit name, so a push that leaves a limit unchanged keeps its bucket (and a
//! workload cannot get a fresh burst from unrelated configuration changes).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use crate::route::http::{RequestFacts, SourceFacts, any_matches};
use crate::state::{State, proto};

/// Every limit's bucket, by name.
#[derive(Default)]
pub struct RateLimits {
    buckets: Mutex<HashMap<String, Arc<Bucket>>>,
}

/// One token bucket and what it decided.
#[derive(Debug)]
pub struct Bucket {
    params: Params,
    level: Mutex<Level>,
    ok: AtomicU64,
    limited: AtomicU64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Params {
    max_tokens: u32,
    tokens_per_fill: u32,
    fill_interval: Duration,
}

#[derive(Debug)]
struct Level {
    tokens: u32,
    /// When the bucket was last filled (fills happen at whole intervals from its creation).
    filled: Instant,
}

/// A request refused by a limit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limited {
    /// The limit's name (`<namespace>/<policy>/<limit>`).
    pub limit: String,
    /// How long until the bucket has a token again.
    pub retry_after: Duration,
}

/// A bucket's counts at one moment (admin `/stats`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BucketSnapshot {
    /// Tokens left (as of the last request; fills since are not counted).
    pub tokens: u32,
    /// The bucket's size.
    pub max_tokens: u32,
    /// Requests it let through.
    pub ok: u64,
    /// Requests it refused.
    pub limited: u64,
}

impl Params {
    fn of(l: &proto::RateLimit) -> Self {
        Params {
            max_tokens: l.max_tokens.max(1),
            tokens_per_fill: l.tokens_per_fill.max(1),
            fill_interval: Duration::from_millis(l.fill_interval_ms.max(1)),
        }
    }
}

impl Bucket {
    fn new(params: Params, now: Instant) -> Self {
        Bucket {
            params,
            level: Mutex::new(Level {
                tokens: params.max_tokens,
                filled: now,
            }),
            ok: AtomicU64::new(0),
            limited: AtomicU64::new(0),
        }
    }

    /// Takes a token, or says how long until there is one.
    fn take(&self, now: Instant) -> Result<(), Duration> {
        let p = self.params;
        let mut level = self.level.lock().unwrap_or_else(|e| e.into_inner());
        let elapsed = now.saturating_duration_since(level.filled);
        let interval = p.fill_interval.as_nanos();
        let fills = elapsed.as_nanos() / interval;
        if fills > 0 {
            let added = u128::from(p.tokens_per_fill) * fills;
            let tokens = (u128::from(level.tokens) + added).min(u128::from(p.max_tokens));
            level.tokens = tokens as u32;
            // Whole intervals only: the part of one already elapsed counts toward the next.
            let rest = Duration::from_nanos((elapsed.as_nanos() % interval) as u64);
            level.filled = now - rest;
        }
        if level.tokens > 0 {
            level.tokens -= 1;
            Ok(())
        } else {
            Err(p.fill_interval - now.saturating_duration_since(level.filled))
        }
    }

    /// Gives back a token taken for a request another limit refused.
    fn give_back(&self) {
        let mut level = self.level.lock().unwrap_or_else(|e| e.into_inner());
        level.tokens = (level.tokens + 1).min(self.params.max_tokens);
    }

    fn snapshot(&self) -> BucketSnapshot {
        let level = self.level.lock().unwrap_or_else(|e| e.into_inner());
        BucketSnapshot {
            tokens: level.tokens,
            max_tokens: self.params.max_tokens,
            ok: self.ok.load(Relaxed),
            limited: self.limited.load(Relaxed),
        }
    }
}

impl RateLimits {
    /// Counts a request against every limit of `state` that matches it. `Err` names the first
    /// limit with no token left; the tokens the request took from the others are given back.
    pub fn admit(
        &self,
        state: &State,
        req: &RequestFacts<'_>,
        now: Instant,
    ) -> Result<(), Limited> {
        let limits = &state.source.rate_limits;
        if limits.is_empty() {
            return Ok(());
        }
        let src = SourceFacts::default();
        let mut taken: Vec<Arc<Bucket>> = Vec::new();
        for l in limits {
            if !l.matches.is_empty() && !any_matches(state, &l.matches, req, &src) {
                continue;
            }
            let bucket = self.bucket(limits, l, now);
            match bucket.take(now) {
                Ok(()) => taken.push(bucket),
                Err(retry_after) => {
                    bucket.limited.fetch_add(1, Relaxed);
                    for b in taken {
                        b.give_back();
                    }
                    return Err(Limited {
                        limit: l.name.clone(),
                        retry_after,
                    });
                }
            }
        }
        for b in taken {
            b.ok.fetch_add(1, Relaxed);
        }
        Ok(())
    }

    /// The bucket of `limit`: the one kept under its name while its parameters are the same,
    /// else a full new one (and the buckets of limits no longer in `current` go).
    fn bucket(
        &self,
        current: &[proto::RateLimit],
        limit: &proto::RateLimit,
        now: Instant,
    ) -> Arc<Bucket> {
        let params = Params::of(limit);
        let mut map = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(b) = map.get(&limit.name).filter(|b| b.params == params) {
            return b.clone();
        }
        map.retain(|name, _| current.iter().any(|l| &l.name == name));
        let b = Arc::new(Bucket::new(params, now));
        map.insert(limit.name.clone(), b.clone());
        b
    }

    /// Every bucket that has counted a request, by limit name.
    pub fn all(&self) -> Vec<(String, BucketSnapshot)> {
        let map = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<_> = map
            .iter()
            .map(|(name, b)| (name.clone(), b.snapshot()))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(name: &str, max: u32, per_fill: u32, ms: u64) -> proto::RateLimit {
        proto::RateLimit {
            name: name.into(),
            matches: Vec::new(),
            max_tokens: max,
            tokens_per_fill: per_fill,
            fill_interval_ms: ms,
        }
    }

    #[test]
    fn a_bucket_allows_its_burst_then_fills_at_whole_intervals() {
        let t0 = Instant::now();
        let b = Bucket::new(Params::of(&limit("l", 3, 2, 1000)), t0);
        for _ in 0..3 {
            assert_eq!(b.take(t0), Ok(()));
        }
        assert_eq!(b.take(t0), Err(Duration::from_millis(1000)));
        let t = t0 + Duration::from_millis(999);
        assert_eq!(b.take(t), Err(Duration::from_millis(1)));
        // One fill: two tokens.
        let t = t0 + Duration::from_millis(1500);
        assert_eq!(b.take(t), Ok(()));
        assert_eq!(b.take(t), Ok(()));
        assert_eq!(b.take(t), Err(Duration::from_millis(500)));
        // A long quiet time fills up to the size, no more.
        let t = t0 + Duration::from_secs(3600);
        for _ in 0..3 {
            assert_eq!(b.take(t), Ok(()));
        }
        assert!(b.take(t).is_err());
    }

    #[test]
    fn a_bucket_is_kept_across_pushes_while_its_parameters_stay() {
        let limits = RateLimits::default();
        let t0 = Instant::now();
        let one = [limit("ns/p/0", 1, 1, 60_000)];
        let a = limits.bucket(&one, &one[0], t0);
        a.take(t0).unwrap();
        let again = limits.bucket(&one, &one[0], t0);
        assert!(Arc::ptr_eq(&a, &again));
        assert!(again.take(t0).is_err(), "the same bucket, still empty");
        let five = [limit("ns/p/0", 5, 1, 60_000)];
        let changed = limits.bucket(&five, &five[0], t0);
        assert!(!Arc::ptr_eq(&a, &changed));
        assert_eq!(
            changed.take(t0),
            Ok(()),
            "new parameters, a new full bucket"
        );
    }
}
