//! `RateLimitPolicy`: local rate limits on requests arriving at the selected workloads, each a
//! token bucket kept by the workload's own sidecar (Envoy's local rate limit filter, which
//! Istio's rate-limiting task configures through an EnvoyFilter).

use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{StringMatch, WorkloadSelector};

/// Token buckets on the requests the selected workloads receive: mesh-wide in the root
/// namespace without a selector, namespace-wide without one elsewhere, else for the workloads
/// whose labels match. A request takes a token from every limit that matches it; when one of
/// them has none left, it is answered 429 (flag RL) by the receiving sidecar and never reaches
/// the application. HTTP requests are counted (HTTP/1.1, HTTP/2, gRPC); connections to ports
/// served as opaque TCP are not.
#[derive(
    CustomResource, Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema,
)]
#[kube(
    group = "policy.mesh.dev",
    version = "v1alpha1",
    kind = "RateLimitPolicy",
    plural = "ratelimitpolicies",
    shortname = "rlp",
    namespaced,
    derive = "PartialEq"
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RateLimitPolicySpec {
    /// Workloads this applies to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<WorkloadSelector>,
    /// The limits, each with its own bucket; at least one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub limits: Vec<RateLimit>,
}

/// One token bucket and the requests it counts.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RateLimit {
    /// A name for logs and statistics (DNS label); the limit's index when unset.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// The requests counted: any of these matches (a route's matches). Every request the
    /// workload receives when empty (a per-workload limit).
    #[serde(default, rename = "match", skip_serializing_if = "Vec::is_empty")]
    pub matches: Vec<RateLimitMatch>,
    /// The bucket; required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_bucket: Option<TokenBucket>,
}

/// Envoy's token bucket: it starts full with `maxTokens`, each request takes one, and every
/// `fillInterval` adds `tokensPerFill` up to `maxTokens`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TokenBucket {
    /// The bucket's size (the largest burst); at least 1.
    #[serde(default)]
    pub max_tokens: u32,
    /// Tokens added at each fill; 1 when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_fill: Option<u32>,
    /// How often the bucket fills (a duration, at least 50ms); required.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub fill_interval: String,
}

/// Which requests a limit counts: all the conditions set must hold (VirtualService's match
/// fields of the same names).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RateLimitMatch {
    /// The request path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<StringMatch>,
    /// The method.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<StringMatch>,
    /// Headers (lower-case names); `{}` matches a header that is present.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, StringMatch>,
    /// Query parameters.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub query_params: BTreeMap<String, StringMatch>,
    /// The workload's port the request arrived on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u32>,
}
