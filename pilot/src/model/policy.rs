//! Which AuthorizationPolicies, RequestAuthentications (and RateLimitPolicies, the mesh's own,
//! selected the same way) apply to a workload, as Istio selects
//! them: policies in the root namespace without a selector apply to the whole mesh, policies
//! without a selector to their namespace, and policies with a selector to the matching
//! workloads of their namespace. Policies attached by `targetRef(s)` bind to gateways and
//! waypoints, not to sidecars, so they do not apply here.

use std::collections::BTreeMap;

use mesh_api::policy::RateLimitPolicy;
use mesh_api::security::{AuthorizationPolicy, RequestAuthentication};

use super::select::policies_for;

/// The AuthorizationPolicies that apply to a workload in `namespace` with `labels`.
pub fn authorization_for<'a>(
    policies: &'a [AuthorizationPolicy],
    root_namespace: &str,
    namespace: &str,
    labels: &BTreeMap<String, String>,
) -> Vec<&'a AuthorizationPolicy> {
    policies_for(policies, root_namespace, namespace, labels)
}

/// The RequestAuthentications that apply to a workload in `namespace` with `labels`.
pub fn request_authentication_for<'a>(
    policies: &'a [RequestAuthentication],
    root_namespace: &str,
    namespace: &str,
    labels: &BTreeMap<String, String>,
) -> Vec<&'a RequestAuthentication> {
    policies_for(policies, root_namespace, namespace, labels)
}

/// The RateLimitPolicies that apply to a workload in `namespace` with `labels`, oldest first.
pub fn rate_limits_for<'a>(
    policies: &'a [RateLimitPolicy],
    root_namespace: &str,
    namespace: &str,
    labels: &BTreeMap<String, String>,
) -> Vec<&'a RateLimitPolicy> {
    let mut out = policies_for(policies, root_namespace, namespace, labels);
    out.sort_by(|a, b| super::oldest_first(&a.metadata, &b.metadata));
    out
}
