//! `mesh-injector` adds the sidecar to Kubernetes pods: a pure function from a pod (and its
//! namespace's labels) to the JSON patch that injects it ([`patch`]), the same mutation on the
//! pod templates of workload manifests offline ([`template::inject_manifests`], behind
//! `meshctl kube-inject`), and the HTTPS admission webhook around it ([`webhook`]).

pub mod config;
pub mod decide;
pub mod inject;
pub mod template;
pub mod webhook;

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;

pub use config::InjectConfig;
pub use decide::{Decision, decide};
pub use inject::{PROMETHEUS_ANNOTATIONS_ENV, inject, original_prometheus_annotations};

/// The JSON patch that injects `pod` (in `namespace`, labelled `namespace_labels`), with the
/// decision; no patch when the decision is to leave it.
pub fn patch(
    pod: &Pod,
    namespace: &str,
    namespace_labels: &BTreeMap<String, String>,
    cfg: &InjectConfig,
) -> (Decision, Option<json_patch::Patch>) {
    let decision = decide(pod, namespace, namespace_labels, cfg);
    if !decision.inject() {
        return (decision, None);
    }
    let injected = inject(pod, workload_of(pod).as_deref(), cfg);
    let (Ok(before), Ok(after)) = (serde_json::to_value(pod), serde_json::to_value(&injected))
    else {
        return (Decision::Skip("the pod could not be read"), None);
    };
    (decision, Some(json_patch::diff(&before, &after)))
}

/// The workload a pod belongs to, as Istio names it for metrics: its Deployment (the
/// ReplicaSet's name without its hash), else its owner, else its `generateName`.
pub fn workload_of(pod: &Pod) -> Option<String> {
    let meta = &pod.metadata;
    let owner = meta
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true))
        .or_else(|| meta.owner_references.iter().flatten().next());
    if let Some(o) = owner {
        if o.kind == "ReplicaSet"
            && let Some((deployment, hash)) = o.name.rsplit_once('-')
            && !hash.is_empty()
            && hash.bytes().all(|b| b.is_ascii_alphanumeric())
        {
            return Some(deployment.to_string());
        }
        if o.kind == "Job"
            && let Some((cron, stamp)) = o.name.rsplit_once('-')
            && stamp.bytes().all(|b| b.is_ascii_digit())
        {
            return Some(cron.to_string());
        }
        return Some(o.name.clone());
    }
    meta.generate_name
        .as_deref()
        .map(|g| g.trim_end_matches('-').to_string())
        .filter(|g| !g.is_empty())
}
