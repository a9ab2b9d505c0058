//! Which AuthorizationPolicies and RequestAuthentications apply to a workload, as Istio selects
//! them: policies in the root namespace without a selector apply to the whole mesh, policies
//! without a selector to their namespace, and policies with a selector to the matching
//! workloads of their namespace. Policies attached by `targetRef(s)` bind to gateways and
//! waypoints, not to sidecars, so they do not apply here.

use std::collections::BTreeMap;

use mesh_api::common::WorkloadSelector;
use mesh_api::security::{AuthorizationPolicy, RequestAuthentication};

use super::namespace_of;

fn applies(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    selector: Option<&WorkloadSelector>,
    targeted: bool,
    root_namespace: &str,
    namespace: &str,
    labels: &BTreeMap<String, String>,
) -> bool {
    if targeted {
        return false;
    }
    let ns = namespace_of(meta);
    match selector.filter(|s| !s.match_labels.is_empty()) {
        None => ns == root_namespace || ns == namespace,
        Some(s) => ns == namespace && s.match_labels.iter().all(|(k, v)| labels.get(k) == Some(v)),
    }
}

/// The AuthorizationPolicies that apply to a workload in `namespace` with `labels`.
pub fn authorization_for<'a>(
    policies: &'a [AuthorizationPolicy],
    root_namespace: &str,
    namespace: &str,
    labels: &BTreeMap<String, String>,
) -> Vec<&'a AuthorizationPolicy> {
    policies
        .iter()
        .filter(|p| {
            let targeted = p.spec.target_ref.is_some() || !p.spec.target_refs.is_empty();
            applies(
                &p.metadata,
                p.spec.selector.as_ref(),
                targeted,
                root_namespace,
                namespace,
                labels,
            )
        })
        .collect()
}

/// The RequestAuthentications that apply to a workload in `namespace` with `labels`.
pub fn request_authentication_for<'a>(
    policies: &'a [RequestAuthentication],
    root_namespace: &str,
    namespace: &str,
    labels: &BTreeMap<String, String>,
) -> Vec<&'a RequestAuthentication> {
    policies
        .iter()
        .filter(|p| {
            let targeted = p.spec.target_ref.is_some() || !p.spec.target_refs.is_empty();
            applies(
                &p.metadata,
                p.spec.selector.as_ref(),
                targeted,
                root_namespace,
                namespace,
                labels,
            )
        })
        .collect()
}
