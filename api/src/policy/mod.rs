//! `policy.mesh.dev` resources: the mesh's own API for what Istio has no first-class resource
//! for. Served as `v1alpha1`; the shapes borrow Istio's (workload selectors, string matches)
//! and Envoy's (token buckets) so that nothing here is new to an Istio user.

mod rate_limit_policy;

pub use rate_limit_policy::*;
