//! Whether a pod gets a sidecar, as Istio decides: the namespace's label
//! (`istio-injection=enabled`, or `mesh-injection=enabled`), overridden either way by the
//! pod's `sidecar.istio.io/inject` label or annotation; never for pods on the host's network,
//! in the system namespaces, or already injected.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;

use crate::config::InjectConfig;
use crate::inject::PROXY_NAME;

/// The namespace labels that turn injection on (Istio's and ours).
pub const NAMESPACE_LABELS: [&str; 2] = ["istio-injection", "mesh-injection"];
/// The pod label or annotation that overrides the namespace.
pub const POD_OVERRIDE: &str = "sidecar.istio.io/inject";

/// The injector's verdict on a pod, with why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Inject it.
    Inject(&'static str),
    /// Leave it as it is.
    Skip(&'static str),
}

impl Decision {
    /// True for [`Decision::Inject`].
    pub fn inject(&self) -> bool {
        matches!(self, Decision::Inject(_))
    }
}

fn truthy(v: &str) -> Option<bool> {
    match v.trim().to_ascii_lowercase().as_str() {
        "true" | "enabled" | "yes" | "y" => Some(true),
        "false" | "disabled" | "no" | "n" => Some(false),
        _ => None,
    }
}

/// Decides for `pod` in namespace `namespace` whose labels are `namespace_labels`.
pub fn decide(
    pod: &Pod,
    namespace: &str,
    namespace_labels: &BTreeMap<String, String>,
    cfg: &InjectConfig,
) -> Decision {
    let spec = pod.spec.as_ref();
    if spec.and_then(|s| s.host_network) == Some(true) {
        return Decision::Skip("the pod uses the host's network");
    }
    if cfg.excluded_namespaces.iter().any(|n| n == namespace) {
        return Decision::Skip("a system namespace");
    }
    let has_proxy = spec.is_some_and(|s| {
        s.containers.iter().any(|c| c.name == PROXY_NAME)
            || s.init_containers
                .iter()
                .flatten()
                .any(|c| c.name == PROXY_NAME)
    });
    if has_proxy {
        return Decision::Skip("already injected");
    }
    let meta = &pod.metadata;
    let pod_says = meta
        .labels
        .as_ref()
        .and_then(|l| l.get(POD_OVERRIDE))
        .or_else(|| meta.annotations.as_ref().and_then(|a| a.get(POD_OVERRIDE)))
        .and_then(|v| truthy(v));
    let namespace_says = NAMESPACE_LABELS
        .iter()
        .filter_map(|k| namespace_labels.get(*k))
        .find_map(|v| truthy(v));
    match (pod_says, namespace_says) {
        (Some(false), _) => Decision::Skip("the pod says sidecar.istio.io/inject: false"),
        (Some(true), Some(false)) => {
            Decision::Skip("the namespace turns injection off (istio-injection=disabled)")
        }
        (Some(true), _) => Decision::Inject("the pod says sidecar.istio.io/inject: true"),
        (None, Some(true)) => Decision::Inject("the namespace is labelled for injection"),
        (None, _) => Decision::Skip("the namespace is not labelled istio-injection=enabled"),
    }
}
