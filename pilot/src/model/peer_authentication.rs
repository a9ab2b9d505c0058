//! Which mutual TLS a workload accepts, from every PeerAuthentication in the mesh, with Istio's
//! precedence: a workload policy (selector matching the workload, in its namespace) over the
//! namespace policy (no selector, in its namespace) over the mesh policy (no selector, in the
//! root namespace); per-port settings of the workload policy over all of them. A level that
//! leaves the mode UNSET inherits from the level above; with nothing set the mode is
//! PERMISSIVE. When a level has several policies, the oldest wins (then the name), as in Istio.

use std::collections::BTreeMap;

use mesh_api::proto::state::v1 as state;
use mesh_api::security::{MtlsMode, PeerAuthentication};

/// The root namespace Istio uses by default.
pub const DEFAULT_ROOT_NAMESPACE: &str = "istio-system";

fn mode_name(m: MtlsMode) -> Option<&'static str> {
    match m {
        MtlsMode::Unset => None,
        MtlsMode::Disable => Some("DISABLE"),
        MtlsMode::Permissive => Some("PERMISSIVE"),
        MtlsMode::Strict => Some("STRICT"),
    }
}

fn mode_of(p: &PeerAuthentication) -> Option<&'static str> {
    p.spec
        .mtls
        .as_ref()
        .and_then(|m| m.mode)
        .and_then(mode_name)
}

fn has_selector(p: &PeerAuthentication) -> bool {
    p.spec
        .selector
        .as_ref()
        .is_some_and(|s| !s.match_labels.is_empty())
}

fn selects(p: &PeerAuthentication, labels: &BTreeMap<String, String>) -> bool {
    p.spec.selector.as_ref().is_some_and(|s| {
        !s.match_labels.is_empty() && s.match_labels.iter().all(|(k, v)| labels.get(k) == Some(v))
    })
}

/// The oldest policy (by creation time, then name) among `candidates`.
fn oldest<'a>(
    candidates: impl Iterator<Item = &'a PeerAuthentication>,
) -> Option<&'a PeerAuthentication> {
    candidates.min_by(|a, b| {
        let key = |p: &'a PeerAuthentication| {
            (
                p.metadata.creation_timestamp.as_ref().map(|t| t.0),
                p.metadata.name.clone(),
            )
        };
        // A policy without a timestamp (read from a file) sorts after dated ones.
        let (ta, na) = key(a);
        let (tb, nb) = key(b);
        match (ta, tb) {
            (Some(x), Some(y)) => x.cmp(&y).then(na.cmp(&nb)),
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (None, None) => na.cmp(&nb),
        }
    })
}

/// The effective PeerAuthentication of a workload in `namespace` with `labels`.
pub fn effective(
    policies: &[PeerAuthentication],
    root_namespace: &str,
    namespace: &str,
    labels: &BTreeMap<String, String>,
) -> state::PeerAuthentication {
    let ns_of = |p: &PeerAuthentication| {
        p.metadata
            .namespace
            .as_deref()
            .unwrap_or("default")
            .to_string()
    };
    let mesh = oldest(
        policies
            .iter()
            .filter(|p| ns_of(p) == root_namespace && !has_selector(p)),
    );
    let ns = oldest(
        policies
            .iter()
            .filter(|p| ns_of(p) == namespace && namespace != root_namespace && !has_selector(p)),
    );
    let workload = oldest(
        policies
            .iter()
            .filter(|p| ns_of(p) == namespace && selects(p, labels)),
    );
    let mode = workload
        .and_then(mode_of)
        .or_else(|| ns.and_then(mode_of))
        .or_else(|| mesh.and_then(mode_of))
        .unwrap_or("PERMISSIVE");
    let port_modes = workload
        .map(|w| {
            w.spec
                .port_level_mtls
                .iter()
                .filter_map(|(port, m)| {
                    let port: u32 = port.parse().ok()?;
                    let mode = m.mode.and_then(mode_name).unwrap_or(mode);
                    Some((port, mode.to_string()))
                })
                .collect()
        })
        .unwrap_or_default();
    state::PeerAuthentication {
        mode: mode.to_string(),
        port_modes,
    }
}
