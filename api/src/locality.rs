//! Localities: where a workload runs, `region/zone/subzone`, as Istio reads them for locality
//! load balancing. A WorkloadEntry's (or ServiceEntry endpoint's) `locality` wins; else the
//! `istio-locality` label (`region.zone.subzone`, since labels cannot hold `/`); else the
//! topology labels Kubernetes puts on nodes, here read from the workload's own labels.

use std::collections::BTreeMap;

/// The region label.
pub const REGION_LABEL: &str = "topology.kubernetes.io/region";
/// The zone label.
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";
/// Istio's subzone label.
pub const SUBZONE_LABEL: &str = "topology.istio.io/subzone";
/// Istio's whole-locality label (`region.zone.subzone`).
pub const LOCALITY_LABEL: &str = "istio-locality";

/// The locality of a workload, `region/zone/subzone` with missing trailing parts left out;
/// empty when nothing says.
pub fn of_workload(explicit: &str, labels: &BTreeMap<String, String>) -> String {
    if !explicit.is_empty() {
        return explicit.trim_matches('/').to_string();
    }
    if let Some(l) = labels.get(LOCALITY_LABEL).filter(|l| !l.is_empty()) {
        return l.replace('.', "/");
    }
    let part = |k: &str| labels.get(k).map_or("", String::as_str);
    let parts = [part(REGION_LABEL), part(ZONE_LABEL), part(SUBZONE_LABEL)];
    let used = parts
        .iter()
        .rposition(|p| !p.is_empty())
        .map_or(0, |i| i + 1);
    parts[..used].join("/")
}

/// The part of `locality` a topology label names (`None` for other labels).
pub fn part_for_label<'a>(locality: &'a str, label: &str) -> Option<&'a str> {
    let index = match label {
        REGION_LABEL => 0,
        ZONE_LABEL => 1,
        SUBZONE_LABEL => 2,
        _ => return None,
    };
    Some(locality.split('/').nth(index).unwrap_or(""))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn the_explicit_locality_then_istio_locality_then_topology_labels() {
        let topo = labels(&[(REGION_LABEL, "us-west"), (ZONE_LABEL, "zone1")]);
        assert_eq!(of_workload("", &topo), "us-west/zone1");
        assert_eq!(of_workload("eu/a/b", &topo), "eu/a/b");
        let both = labels(&[(LOCALITY_LABEL, "eu.a.b"), (REGION_LABEL, "us-west")]);
        assert_eq!(of_workload("", &both), "eu/a/b");
        assert_eq!(of_workload("", &labels(&[])), "");
        assert_eq!(part_for_label("us-west/zone1", ZONE_LABEL), Some("zone1"));
        assert_eq!(part_for_label("us-west/zone1", SUBZONE_LABEL), Some(""));
        assert_eq!(part_for_label("us-west", "app"), None);
    }
}
