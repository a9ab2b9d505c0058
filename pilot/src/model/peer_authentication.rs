//! Which mutual TLS a workload accepts, from every PeerAuthentication in the mesh, with Istio's
//! precedence: a workload policy (selector matching the workload, in its namespace) over the
//! namespace policy (no selector, in its namespace) over the mesh policy (no selector, in the
//! root namespace); per-port settings of the workload policy over all of them. A level that
//! leaves the mode UNSET inherits from the level above; with nothing set the mode is
//! PERMISSIVE. When a level has several policies, the oldest wins (then the name), as in Istio.

use std::collections::BTreeMap;

use mesh_api::proto::state::v1 as state;
use mesh_api::security::{MtlsMode, PeerAuthentication};

use super::select::oldest_per_level;

/// The root namespace Istio uses by default.
pub const DEFAULT_ROOT_NAMESPACE: &str = "istio-system";

fn mode_name(m: MtlsMode) -> Option<state::PeerMode> {
    match m {
        MtlsMode::Unset => None,
        MtlsMode::Disable => Some(state::PeerMode::Disable),
        MtlsMode::Permissive => Some(state::PeerMode::Permissive),
        MtlsMode::Strict => Some(state::PeerMode::Strict),
    }
}

fn mode_of(p: &PeerAuthentication) -> Option<state::PeerMode> {
    p.spec
        .mtls
        .as_ref()
        .and_then(|m| m.mode)
        .and_then(mode_name)
}

/// The effective PeerAuthentication of a workload in `namespace` with `labels`.
pub fn effective(
    policies: &[PeerAuthentication],
    root_namespace: &str,
    namespace: &str,
    labels: &BTreeMap<String, String>,
) -> state::PeerAuthentication {
    let [mesh, ns, workload] = oldest_per_level(policies, root_namespace, namespace, labels);
    let mode = workload
        .and_then(mode_of)
        .or_else(|| ns.and_then(mode_of))
        .or_else(|| mesh.and_then(mode_of))
        .unwrap_or(state::PeerMode::Permissive);
    let port_modes = workload
        .map(|w| {
            w.spec
                .port_level_mtls
                .iter()
                .filter_map(|(port, m)| {
                    let port: u32 = port.parse().ok()?;
                    let mode = m.mode.and_then(mode_name).unwrap_or(mode);
                    Some((port, mode.into()))
                })
                .collect()
        })
        .unwrap_or_default();
    state::PeerAuthentication {
        mode: mode.into(),
        port_modes,
    }
}
