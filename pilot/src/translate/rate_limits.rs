//! RateLimitPolicy → the token buckets of one proxy's inbound side: every limit of every
//! policy that selects the workload, oldest policy first, each named
//! `<namespace>/<policy>/<limit name or index>` so the proxy keeps its bucket across pushes.

use mesh_api::policy::{RateLimit, RateLimitMatch, RateLimitPolicy};
use mesh_api::proto::state::v1 as state;

use super::routes::{duration_ms, string_match, string_matches};
use crate::model::namespace_of;

/// The buckets of `policies` (already selected for the proxy), in order.
pub fn rate_limits(policies: &[&RateLimitPolicy]) -> Vec<state::RateLimit> {
    let mut out = Vec::new();
    for p in policies {
        let prefix = format!(
            "{}/{}",
            namespace_of(&p.metadata),
            p.metadata.name.as_deref().unwrap_or("")
        );
        for (i, limit) in p.spec.limits.iter().enumerate() {
            // Validated on the way in: a limit without a bucket never reaches here.
            if let Some(l) = bucket(&prefix, i, limit) {
                out.push(l);
            }
        }
    }
    out
}

fn bucket(prefix: &str, index: usize, limit: &RateLimit) -> Option<state::RateLimit> {
    let b = limit.token_bucket.as_ref()?;
    let name = if limit.name.is_empty() {
        format!("{prefix}/{index}")
    } else {
        format!("{prefix}/{}", limit.name)
    };
    Some(state::RateLimit {
        name,
        matches: limit.matches.iter().map(http_match).collect(),
        max_tokens: b.max_tokens,
        tokens_per_fill: b.tokens_per_fill.unwrap_or(1),
        fill_interval_ms: duration_ms(&b.fill_interval)?,
    })
}

fn http_match(m: &RateLimitMatch) -> state::HttpMatch {
    state::HttpMatch {
        uri: m.uri.as_ref().map(string_match),
        method: m.method.as_ref().map(string_match),
        headers: string_matches(&m.headers, true),
        query_params: string_matches(&m.query_params, false),
        port: m.port.unwrap_or(0),
        ..state::HttpMatch::default()
    }
}
