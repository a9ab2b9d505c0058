//! VirtualServices by the hosts they route, so finding the one for a service looks at the few
//! that can match it instead of every VirtualService in the mesh (once per service and proxy
//! view, this was the translation's inner loop).

use std::collections::HashMap;

use mesh_api::networking::VirtualService;

use super::host;
use super::select::namespace_of;

/// Positions in `Model::virtual_services` (oldest first), by host.
#[derive(Clone, Debug, Default)]
pub struct VirtualServiceIndex {
    /// Exact hosts (fully qualified, lower case) → mesh-bound VirtualServices naming them.
    by_host: HashMap<String, Vec<usize>>,
    /// Mesh-bound VirtualServices with at least one wildcard host.
    wildcard: Vec<usize>,
    /// Delegates (no hosts) by namespace and name; the oldest of a name wins.
    delegates: HashMap<(String, String), usize>,
}

/// True when a VirtualService applies to sidecars (`gateways` empty or naming `mesh`).
pub fn mesh_bound(vs: &VirtualService) -> bool {
    vs.spec.gateways.is_empty() || vs.spec.gateways.iter().any(|g| g == "mesh")
}

impl VirtualServiceIndex {
    /// Indexes `virtual_services` (already oldest first) with short hosts completed in `domain`.
    pub fn build(virtual_services: &[VirtualService], domain: &str) -> Self {
        let mut index = Self::default();
        for (i, vs) in virtual_services.iter().enumerate() {
            let ns = namespace_of(&vs.metadata);
            if vs.spec.hosts.is_empty() {
                if let Some(name) = vs.metadata.name.clone() {
                    index.delegates.entry((ns.to_string(), name)).or_insert(i);
                }
                continue;
            }
            if !mesh_bound(vs) {
                continue;
            }
            let mut wild = false;
            for h in &vs.spec.hosts {
                let pattern = host::fqdn(h, ns, domain);
                if pattern.starts_with('*') {
                    wild = true;
                } else {
                    let list = index
                        .by_host
                        .entry(pattern.to_ascii_lowercase())
                        .or_default();
                    if list.last() != Some(&i) {
                        list.push(i);
                    }
                }
            }
            if wild {
                index.wildcard.push(i);
            }
        }
        index
    }

    /// The mesh-bound VirtualServices that may route `hostname`, oldest first (each once).
    pub fn candidates(&self, hostname: &str) -> Vec<usize> {
        let exact = self
            .by_host
            .get(hostname)
            .or_else(|| self.by_host.get(&hostname.to_ascii_lowercase()));
        let mut out: Vec<usize> = exact
            .into_iter()
            .flatten()
            .chain(&self.wildcard)
            .copied()
            .collect();
        out.sort_unstable();
        out.dedup();
        out
    }

    /// The delegate VirtualService `namespace/name`.
    pub fn delegate(&self, namespace: &str, name: &str) -> Option<usize> {
        self.delegates
            .get(&(namespace.to_string(), name.to_string()))
            .copied()
    }
}
