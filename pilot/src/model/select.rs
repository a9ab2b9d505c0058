//! Which resources apply to a workload: label selectors, Istio's mesh → namespace → workload
//! levels for policies, and the oldest-first order that breaks ties among peers. Every part of
//! pilot that asks "does this select that workload?" asks here.

use std::cmp::Ordering;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use mesh_api::common::{LabelSelector, StringMap, WorkloadSelector};
use mesh_api::policy::RateLimitPolicy;
use mesh_api::security::{AuthorizationPolicy, PeerAuthentication, RequestAuthentication};
use mesh_api::telemetry::Telemetry;

/// Labels a workload must all carry.
#[derive(Clone, Copy, Debug)]
pub struct Selector<'a> {
    labels: &'a StringMap,
}

impl<'a> Selector<'a> {
    /// A selector of exactly these labels (an empty one matches every workload).
    pub fn new(labels: &'a StringMap) -> Self {
        Selector { labels }
    }

    /// A policy's `selector.matchLabels`; `None` when absent or empty, which Istio reads as
    /// "no selector" (the policy applies by namespace).
    pub fn of_policy(selector: Option<&'a WorkloadSelector>) -> Option<Self> {
        selector
            .map(|s| &s.match_labels)
            .filter(|l| !l.is_empty())
            .map(Selector::new)
    }

    /// A networking resource's `workloadSelector.labels`; `None` when absent or empty.
    pub fn of_workloads(selector: Option<&'a LabelSelector>) -> Option<Self> {
        selector
            .map(|s| &s.labels)
            .filter(|l| !l.is_empty())
            .map(Selector::new)
    }

    /// True when `labels` carry every label of the selector.
    pub fn matches(&self, labels: &StringMap) -> bool {
        self.labels.iter().all(|(k, v)| labels.get(k) == Some(v))
    }
}

/// The namespace of a resource, `default` when unset or empty.
pub fn namespace_of(meta: &ObjectMeta) -> &str {
    namespace_or_default(meta.namespace.as_deref())
}

/// A namespace as written, `default` when unset or empty.
pub fn namespace_or_default(namespace: Option<&str>) -> &str {
    namespace.filter(|n| !n.is_empty()).unwrap_or("default")
}

/// Istio's order among peers: the oldest first (by creation time; undated resources, read from
/// files, after dated ones), then by namespace and name.
pub fn oldest_first(a: &ObjectMeta, b: &ObjectMeta) -> Ordering {
    let key = |m: &ObjectMeta| {
        (
            m.creation_timestamp.is_none(),
            m.creation_timestamp.as_ref().map(|t| t.0),
        )
    };
    key(a)
        .cmp(&key(b))
        .then_with(|| namespace_of(a).cmp(namespace_of(b)))
        .then_with(|| a.name.cmp(&b.name))
}

/// Where a security policy applies from, narrowest last.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// No selector, in the root namespace: the whole mesh.
    Mesh,
    /// No selector, in the workload's namespace.
    Namespace,
    /// A selector matching the workload, in its namespace.
    Workload,
}

/// A security policy that selects sidecars Istio's way.
pub trait WorkloadPolicy {
    /// The resource's metadata.
    fn meta(&self) -> &ObjectMeta;
    /// `selector`, if any.
    fn selector(&self) -> Option<&WorkloadSelector>;
    /// Attached with `targetRef(s)`: bound to gateways and waypoints, never to sidecars.
    fn targeted(&self) -> bool {
        false
    }
}

/// `WorkloadPolicy` for kinds with a `selector`: PeerAuthentication and RateLimitPolicy;
/// after `targetable:`, kinds with `targetRef(s)` too (AuthorizationPolicy,
/// RequestAuthentication, Telemetry).
macro_rules! workload_policies {
    ($($kind:ty),+; targetable: $($targetable:ty),+) => {
        $(impl WorkloadPolicy for $kind {
            fn meta(&self) -> &ObjectMeta {
                &self.metadata
            }
            fn selector(&self) -> Option<&WorkloadSelector> {
                self.spec.selector.as_ref()
            }
        })+
        $(impl WorkloadPolicy for $targetable {
            fn meta(&self) -> &ObjectMeta {
                &self.metadata
            }
            fn selector(&self) -> Option<&WorkloadSelector> {
                self.spec.selector.as_ref()
            }
            fn targeted(&self) -> bool {
                self.spec.target_ref.is_some() || !self.spec.target_refs.is_empty()
            }
        })+
    };
}

workload_policies!(PeerAuthentication, RateLimitPolicy; targetable: AuthorizationPolicy, RequestAuthentication, Telemetry);

/// The level from which `policy` applies to a workload in `namespace` with `labels`, or
/// `None` when it does not apply to it.
pub fn level_of<P: WorkloadPolicy>(
    policy: &P,
    root_namespace: &str,
    namespace: &str,
    labels: &StringMap,
) -> Option<Level> {
    if policy.targeted() {
        return None;
    }
    let ns = namespace_of(policy.meta());
    match Selector::of_policy(policy.selector()) {
        Some(s) => (ns == namespace && s.matches(labels)).then_some(Level::Workload),
        None if ns == root_namespace => Some(Level::Mesh),
        None if ns == namespace => Some(Level::Namespace),
        None => None,
    }
}

/// The policies that apply to a workload in `namespace` with `labels`, in their given order.
pub fn policies_for<'a, P: WorkloadPolicy>(
    policies: &'a [P],
    root_namespace: &str,
    namespace: &str,
    labels: &StringMap,
) -> Vec<&'a P> {
    policies
        .iter()
        .filter(|p| level_of(*p, root_namespace, namespace, labels).is_some())
        .collect()
}

/// The oldest policy of each level that applies to the workload.
pub fn oldest_per_level<'a, P: WorkloadPolicy>(
    policies: &'a [P],
    root_namespace: &str,
    namespace: &str,
    labels: &StringMap,
) -> [Option<&'a P>; 3] {
    let mut out: [Option<&'a P>; 3] = [None; 3];
    for p in policies {
        let Some(level) = level_of(p, root_namespace, namespace, labels) else {
            continue;
        };
        let slot = &mut out[level as usize];
        if slot.is_none_or(|held| oldest_first(p.meta(), held.meta()) == Ordering::Less) {
            *slot = Some(p);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(ns: &str, name: &str, ts: Option<&str>) -> ObjectMeta {
        ObjectMeta {
            namespace: Some(ns.into()),
            name: Some(name.into()),
            creation_timestamp: ts
                .map(|t| k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(t.parse().unwrap())),
            ..Default::default()
        }
    }

    #[test]
    fn selectors_need_every_label() {
        let sel: StringMap = [("app".into(), "a".into())].into();
        let have: StringMap = [("app".into(), "a".into()), ("v".into(), "1".into())].into();
        assert!(Selector::new(&sel).matches(&have));
        assert!(!Selector::new(&have).matches(&sel));
        assert!(Selector::new(&StringMap::new()).matches(&sel));
        assert!(Selector::of_policy(Some(&WorkloadSelector::default())).is_none());
    }

    #[test]
    fn dated_resources_come_before_undated_ones_then_by_name() {
        let old = meta("b", "z", Some("2026-01-01T00:00:00Z"));
        let new = meta("a", "a", Some("2026-02-01T00:00:00Z"));
        let undated = meta("a", "a", None);
        assert_eq!(oldest_first(&old, &new), Ordering::Less);
        assert_eq!(oldest_first(&new, &undated), Ordering::Less);
        assert_eq!(
            oldest_first(&meta("a", "b", None), &meta("a", "c", None)),
            Ordering::Less
        );
    }
}
