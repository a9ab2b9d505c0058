//! What the injector adds, as an install profile sets it: images, where pilot and the CA are,
//! the proxy's resources, and how the proxy starts before the application.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The injector's settings (`values.sidecarInjector` of a profile).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct InjectConfig {
    /// The image of the proxy and of the capture init container.
    pub image: String,
    /// Pilot's discovery address, as the proxy dials it.
    pub discovery_address: String,
    /// The CA's address (pilot's, when the CA is embedded).
    pub ca_address: String,
    /// The mesh's trust domain.
    pub trust_domain: String,
    /// The identity pilot (and the CA it embeds) must prove.
    pub pilot_identity: String,
    /// The proxy's user and group id; its traffic is never captured.
    pub proxy_uid: i64,
    /// Resource requests of the proxy container (`cpu`, `memory`).
    pub requests: BTreeMap<String, String>,
    /// Resource limits of the proxy container.
    pub limits: BTreeMap<String, String>,
    /// Run the proxy as a native sidecar (an init container with `restartPolicy: Always`,
    /// Kubernetes 1.29 and later): it starts, and is ready, before the application, and a
    /// Job completes when its application exits. Otherwise the proxy is the first container
    /// and holds the application until it is ready.
    pub native_sidecar: bool,
    /// Namespaces never injected.
    pub excluded_namespaces: Vec<String>,
}

impl Default for InjectConfig {
    fn default() -> Self {
        let quantity = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
                .collect()
        };
        InjectConfig {
            image: format!("mesh/proxy:{}", env!("CARGO_PKG_VERSION")),
            discovery_address: "https://mesh-pilot.mesh-system.svc:15012".into(),
            ca_address: "https://mesh-pilot.mesh-system.svc:15012".into(),
            trust_domain: "cluster.local".into(),
            pilot_identity: "spiffe://cluster.local/ns/mesh-system/sa/mesh-pilot".into(),
            proxy_uid: 1337,
            // Istio's defaults for the sidecar.
            requests: quantity(&[("cpu", "100m"), ("memory", "128Mi")]),
            limits: quantity(&[("cpu", "2"), ("memory", "1Gi")]),
            native_sidecar: true,
            excluded_namespaces: [
                "kube-system",
                "kube-public",
                "kube-node-lease",
                "mesh-system",
            ]
            .map(String::from)
            .to_vec(),
        }
    }
}

impl InjectConfig {
    /// Reads settings from YAML; fields left out keep their defaults, unknown ones are refused.
    pub fn from_yaml(text: &str) -> Result<Self, String> {
        serde_saphyr::from_str(text).map_err(|e| e.to_string())
    }
}
