//! Config sources: where the resources of the mesh come from. Every source produces the same
//! [`Snapshot`] on a watch channel, so the model and discovery do not care whether the mesh
//! runs from a folder of YAML or on Kubernetes.

pub mod folder;
pub mod kube;
pub mod kube_status;

use std::collections::BTreeMap;
use std::sync::Arc;

use mesh_api::{Diagnostic, Resource};

/// Everything a source currently holds.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// Increases with every change.
    pub revision: u64,
    /// Accepted resources: every valid one, and the last good version of any that became
    /// invalid.
    pub resources: Vec<Arc<Resource>>,
    /// Contents of the files DestinationRules name for TLS origination.
    pub files: BTreeMap<String, String>,
    /// What was refused or skipped, and why.
    pub findings: Vec<Diagnostic>,
}

/// The key of a resource across versions: kind and `namespace/name` (or the name of a
/// cluster-scoped kind), as diagnostics name it.
pub fn key_of(resource: &Resource) -> (String, String) {
    let name = resource.name().to_string();
    let id = if resource.kind().is_namespaced() {
        format!("{}/{name}", resource.namespace().unwrap_or("default"))
    } else {
        name
    };
    (resource.kind().name().to_string(), id)
}

/// Paths of the files that DestinationRules ask pilot to read (CA certificates, client
/// certificates and keys for TLS origination).
pub fn referenced_files(resources: &[Arc<Resource>]) -> Vec<String> {
    let mut out = Vec::new();
    for r in resources {
        if let Resource::Gateway(gw) = &**r {
            // HTTPS servers' certificate files (the gateway serves them as pilot sends them).
            for t in gw.spec.servers.iter().filter_map(|s| s.tls.as_ref()) {
                for f in [&t.server_certificate, &t.private_key, &t.ca_certificates] {
                    if !f.is_empty() && !out.contains(f) {
                        out.push(f.clone());
                    }
                }
            }
            continue;
        }
        let Resource::DestinationRule(dr) = &**r else {
            continue;
        };
        let mut policies: Vec<&mesh_api::networking::TrafficPolicy> = Vec::new();
        policies.extend(dr.spec.traffic_policy.as_ref());
        policies.extend(
            dr.spec
                .subsets
                .iter()
                .filter_map(|s| s.traffic_policy.as_ref()),
        );
        let mut tls: Vec<&mesh_api::networking::ClientTlsSettings> = Vec::new();
        for p in policies {
            tls.extend(p.tls.as_ref());
            tls.extend(p.port_level_settings.iter().filter_map(|s| s.tls.as_ref()));
        }
        for t in tls {
            for f in [&t.ca_certificates, &t.client_certificate, &t.private_key] {
                if !f.is_empty() && !out.contains(f) {
                    out.push(f.clone());
                }
            }
        }
    }
    out
}
