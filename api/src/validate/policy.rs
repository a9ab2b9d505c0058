//! `policy.mesh.dev` resources: RateLimitPolicy.

use std::collections::BTreeSet;
use std::time::Duration;

use super::Findings;
use super::checks::{
    header_matches, is_dns1123_label, labels, opt_port, parse_duration, string_match,
};
use crate::policy::{RateLimitPolicySpec, TokenBucket};

/// Envoy's shortest fill interval for a local rate limit's bucket.
pub const MIN_FILL_INTERVAL: Duration = Duration::from_millis(50);

pub(crate) fn rate_limit_policy(f: &mut Findings, spec: &RateLimitPolicySpec) {
    if let Some(s) = &spec.selector {
        labels(f, "spec.selector.matchLabels", &s.match_labels);
    }
    if spec.limits.is_empty() {
        f.error(
            "spec.limits",
            "Required value: a RateLimitPolicy needs at least one limit (a tokenBucket, and a \
             match to count only some requests)",
        );
    }
    let mut names = BTreeSet::new();
    for (i, limit) in spec.limits.iter().enumerate() {
        let at = format!("spec.limits[{i}]");
        if !limit.name.is_empty() {
            if !is_dns1123_label(&limit.name) {
                f.error(
                    format!("{at}.name"),
                    format!(
                        "{:?} is not a DNS label (lower-case letters, digits and '-')",
                        limit.name
                    ),
                );
            } else if !names.insert(limit.name.as_str()) {
                f.error(
                    format!("{at}.name"),
                    format!("{:?} names another limit of this policy too", limit.name),
                );
            }
        }
        match &limit.token_bucket {
            None => f.error(
                format!("{at}.tokenBucket"),
                "Required value: each limit needs a tokenBucket (maxTokens and fillInterval)",
            ),
            Some(b) => bucket(f, &format!("{at}.tokenBucket"), b),
        }
        for (j, m) in limit.matches.iter().enumerate() {
            let mat = format!("{at}.match[{j}]");
            for (name, sm) in [("uri", &m.uri), ("method", &m.method)] {
                if let Some(sm) = sm {
                    string_match(f, &format!("{mat}.{name}"), sm, false);
                }
            }
            header_matches(f, &format!("{mat}.headers"), &m.headers);
            for (k, sm) in &m.query_params {
                string_match(f, &format!("{mat}.queryParams.{k}"), sm, true);
            }
            opt_port(f, &format!("{mat}.port"), m.port);
        }
    }
}

fn bucket(f: &mut Findings, at: &str, b: &TokenBucket) {
    if b.max_tokens == 0 {
        f.error(
            format!("{at}.maxTokens"),
            "Required value: maxTokens must be at least 1 (the largest burst allowed)",
        );
    }
    if b.tokens_per_fill == Some(0) {
        f.error(
            format!("{at}.tokensPerFill"),
            "must be at least 1 (leave it out for 1)",
        );
    }
    let field = format!("{at}.fillInterval");
    if b.fill_interval.is_empty() {
        f.error(
            field,
            "Required value: how often the bucket fills, e.g. \"1s\" or \"1m\"",
        );
        return;
    }
    match parse_duration(&b.fill_interval) {
        Ok(d) if d < MIN_FILL_INTERVAL => f.error(
            field,
            format!("{:?}: must be at least 50ms", b.fill_interval),
        ),
        Ok(d) if d.subsec_nanos() % 1_000_000 != 0 => f.error(
            field,
            format!(
                "{:?}: only durations to millisecond precision are supported",
                b.fill_interval
            ),
        ),
        Ok(_) => {}
        Err(why) => f.error(field, format!("{why}: must be a duration such as \"1s\"")),
    }
}
