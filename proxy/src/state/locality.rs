//! Locality load balancing (DestinationRule `localityLbSetting`), worked out once per subset
//! when a state arrives, from where the proxy's workload runs and where each endpoint runs.
//!
//! - **Failover** (the default): endpoints are ranked as Istio ranks them: same region, zone
//!   and subzone first, then same zone, then same region, then the region `failover` names for
//!   the proxy's region, then the rest. With `failoverPriority`, ranks come from how many of
//!   the listed labels (in order) the endpoint shares with the proxy (`key=value` compares
//!   with that value instead).
//! - **Distribute**: the first rule whose `from` matches the proxy's locality gives each
//!   endpoint locality a weight (a `to` pattern's weight shared among the localities it
//!   matches, by their endpoints' weights); localities no `to` names get nothing.
//!
//! Each request then picks a rank (or a locality) as Envoy does: a rank takes as much of the
//! traffic as its healthy share allows, 1.4 times its healthy fraction (Envoy's
//! overprovisioning factor), and the rest spills to the next rank; a locality's weight is
//! scaled the same way. "Healthy" is what outlier detection says, so traffic fails over as
//! endpoints are ejected or leave the registry.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;

use super::proto;

/// Envoy's overprovisioning factor, in percent.
const OVERPROVISION: u64 = 140;
/// The group of endpoints a `distribute` rule sends nothing to.
const DROPPED: u16 = u16::MAX;

/// How one subset's endpoints share traffic by locality.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalityPlan {
    /// Per member of the subset (in `subset_members` order): its rank or locality group.
    group_of: Vec<u16>,
    /// Locality weights by group (`distribute`); empty for ranks (lower first).
    weights: Vec<u64>,
    groups: usize,
}

/// A locality's three parts (missing ones empty).
fn parts(locality: &str) -> [&str; 3] {
    let mut it = locality.split('/');
    [
        it.next().unwrap_or(""),
        it.next().unwrap_or(""),
        it.next().unwrap_or(""),
    ]
}

/// Istio's `LocalityMatch`: a rule's region must match (or be `*`); its zone and subzone
/// match when equal, `*`, or left out.
pub fn locality_matches(locality: &str, rule: &str) -> bool {
    let [r, z, s] = parts(locality);
    let [rr, rz, rs] = parts(rule);
    let region = rr == "*" || rr == r;
    let zone = matches!(rz, "*" | "") || rz == z;
    let subzone = matches!(rs, "*" | "") || rs == s;
    region && zone && subzone
}

/// Istio's rank of an endpoint's locality as seen from `own`.
fn locality_rank(own: &str, endpoint: &str, failover: &[proto::LocalityFailover]) -> u16 {
    let [r, z, s] = parts(own);
    let [er, ez, es] = parts(endpoint);
    if er == r && ez == z && es == s {
        0
    } else if er == r && ez == z {
        1
    } else if er == r {
        2
    } else {
        match failover.iter().find(|f| f.from == r) {
            Some(f) if f.to != er => 4,
            _ => 3,
        }
    }
}

/// The rank `failoverPriority` gives an endpoint: 0 when it shares every label with the proxy,
/// else the number of labels from the first one it does not share.
fn label_rank(
    keys: &[String],
    own: (&str, &BTreeMap<String, String>),
    endpoint: (&str, &BTreeMap<String, String>),
) -> u16 {
    let value = |(locality, labels): (&'_ str, &'_ BTreeMap<String, String>), key: &str| {
        mesh_api::locality::part_for_label(locality, key)
            .map(str::to_string)
            .or_else(|| labels.get(key).cloned())
    };
    for (i, k) in keys.iter().enumerate() {
        let (key, want) = match k.split_once('=') {
            Some((key, v)) => (key, Some(v.to_string())),
            None => (k.as_str(), value(own, k)),
        };
        let have = value(endpoint, key);
        if want.is_none() || have != want {
            return (keys.len() - i) as u16;
        }
    }
    0
}

impl LocalityPlan {
    /// The plan for a subset's `members` (indices into `endpoints`) seen from a proxy at
    /// `own_locality` with `own_labels`; `None` when locality changes nothing for it (the
    /// proxy's locality is unknown, a `distribute` has no rule for it, or every endpoint
    /// ranks the same).
    pub fn new(
        lb: &proto::LocalityLb,
        own_locality: &str,
        own_labels: &BTreeMap<String, String>,
        endpoints: &[proto::Endpoint],
        members: &[usize],
    ) -> Option<Self> {
        let member = |i: &usize| endpoints.get(*i);
        if !lb.distribute.is_empty() {
            return Self::distribute(lb, own_locality, endpoints, members);
        }
        if lb.failover_priority.is_empty() && own_locality.is_empty() {
            return None;
        }
        let ranks: Vec<u16> = members
            .iter()
            .map(|i| {
                let Some(e) = member(i) else { return DROPPED };
                if lb.failover_priority.is_empty() {
                    return locality_rank(own_locality, &e.locality, &lb.failover);
                }
                let by_label = label_rank(
                    &lb.failover_priority,
                    (own_locality, own_labels),
                    (&e.locality, &e.labels),
                );
                // With `failover` too, its regions order endpoints of the same label rank.
                if lb.failover.is_empty() {
                    by_label
                } else {
                    by_label * 8 + locality_rank(own_locality, &e.locality, &lb.failover)
                }
            })
            .collect();
        // Ranks made consecutive (as Envoy needs priorities), lowest first.
        let mut distinct: Vec<u16> = ranks.iter().copied().filter(|r| *r != DROPPED).collect();
        distinct.sort_unstable();
        distinct.dedup();
        if distinct.len() < 2 {
            return None;
        }
        let group_of = ranks
            .iter()
            .map(|r| distinct.binary_search(r).map_or(DROPPED, |g| g as u16))
            .collect();
        Some(LocalityPlan {
            group_of,
            weights: Vec::new(),
            groups: distinct.len(),
        })
    }

    fn distribute(
        lb: &proto::LocalityLb,
        own_locality: &str,
        endpoints: &[proto::Endpoint],
        members: &[usize],
    ) -> Option<Self> {
        if own_locality.is_empty() {
            return None;
        }
        let rule = lb
            .distribute
            .iter()
            .find(|d| locality_matches(own_locality, &d.from))?;
        // Each endpoint locality goes to the first `to` pattern (in order) that matches it.
        let to: BTreeMap<&str, u32> = rule.to.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        let mut localities: BTreeMap<&str, (Option<&str>, u64)> = BTreeMap::new();
        for e in members.iter().filter_map(|i| endpoints.get(*i)) {
            let entry = localities.entry(e.locality.as_str()).or_insert_with(|| {
                let pattern = to
                    .keys()
                    .copied()
                    .find(|p| locality_matches(&e.locality, p));
                (pattern, 0)
            });
            entry.1 += u64::from(e.weight.max(1));
        }
        // A pattern's weight shared among its localities by their endpoints' weights.
        let mut pattern_total: HashMap<&str, u64> = HashMap::new();
        for (pattern, w) in localities.values() {
            if let Some(p) = pattern {
                *pattern_total.entry(p).or_default() += *w;
            }
        }
        let mut index: HashMap<&str, u16> = HashMap::new();
        let mut weights = Vec::new();
        for (locality, (pattern, w)) in &localities {
            let Some(p) = pattern else { continue };
            let share = u64::from(to[p]) * 1000 * w / pattern_total[p].max(1);
            if share == 0 {
                continue;
            }
            index.insert(locality, weights.len() as u16);
            weights.push(share);
        }
        let group_of = members
            .iter()
            .map(|i| {
                endpoints
                    .get(*i)
                    .and_then(|e| index.get(e.locality.as_str()).copied())
                    .unwrap_or(DROPPED)
            })
            .collect();
        Some(LocalityPlan {
            group_of,
            groups: weights.len(),
            weights,
        })
    }

    /// The endpoints one request is balanced over: of `candidates` (a member's position in
    /// the subset, its address), the healthy ones of the rank or locality chosen, by `roll`
    /// when given (a consistent-hash key keeps its choice), else at random. The groups of the
    /// endpoints already `tried` are left out while others can take the request (a retry
    /// with `retryRemoteLocalities`). Empty when no candidate is healthy.
    pub fn choose(
        &self,
        candidates: &[(usize, SocketAddr)],
        healthy: &dyn Fn(SocketAddr) -> bool,
        roll: Option<u64>,
        tried: &[SocketAddr],
    ) -> Vec<SocketAddr> {
        let mut total = vec![0u64; self.groups];
        let mut up = vec![0u64; self.groups];
        for (pos, addr) in candidates {
            let Some(g) = self.group(*pos) else { continue };
            total[g] += 1;
            if healthy(*addr) {
                up[g] += 1;
            }
        }
        // Each group's availability in percent: 1.4 times its healthy share, at most 100.
        let available = |g: usize| {
            (OVERPROVISION * up[g])
                .checked_div(total[g])
                .map_or(0, |a| a.min(100))
        };
        // Envoy's previous_priorities: the groups of endpoints already tried count as having
        // no healthy endpoint, while another group has one.
        let tried_group: Vec<bool> = (0..self.groups)
            .map(|g| {
                candidates
                    .iter()
                    .any(|(pos, addr)| self.group(*pos) == Some(g) && tried.contains(addr))
            })
            .collect();
        let others_up = (0..self.groups).any(|g| !tried_group[g] && available(g) > 0);
        let usable = |g: usize| {
            if tried_group[g] && others_up {
                0
            } else {
                available(g)
            }
        };
        let loads: Vec<u64> = if self.weights.is_empty() {
            let mut left = 100;
            (0..self.groups)
                .map(|g| {
                    let load = usable(g).min(left);
                    left -= load;
                    load
                })
                .collect()
        } else {
            (0..self.groups)
                .map(|g| self.weights[g] * usable(g))
                .collect()
        };
        let sum: u64 = loads.iter().sum();
        if sum == 0 {
            return Vec::new();
        }
        let mut at = roll.unwrap_or_else(|| fastrand::u64(..sum)) % sum;
        let chosen = loads
            .iter()
            .position(|l| {
                if at < *l {
                    true
                } else {
                    at -= l;
                    false
                }
            })
            .unwrap_or(0);
        candidates
            .iter()
            .filter(|(pos, addr)| self.group(*pos) == Some(chosen) && healthy(*addr))
            .map(|(_, addr)| *addr)
            .collect()
    }

    fn group(&self, pos: usize) -> Option<usize> {
        self.group_of
            .get(pos)
            .filter(|g| **g != DROPPED)
            .map(|g| usize::from(*g))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(locality: &str, labels: &[(&str, &str)]) -> proto::Endpoint {
        proto::Endpoint {
            address: "10.0.0.1".into(),
            locality: locality.into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        }
    }

    fn addr(i: usize) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, i as u8], 80))
    }

    fn plan(lb: &proto::LocalityLb, own: &str, eps: &[proto::Endpoint]) -> Option<LocalityPlan> {
        let members: Vec<usize> = (0..eps.len()).collect();
        LocalityPlan::new(lb, own, &BTreeMap::new(), eps, &members)
    }

    /// How often each endpoint position is among the chosen ones over `n` rolls.
    fn shares(p: &LocalityPlan, n: usize, healthy: &[bool]) -> Vec<usize> {
        let cands: Vec<_> = (0..healthy.len()).map(|i| (i, addr(i))).collect();
        let up = |a: SocketAddr| match a.ip() {
            std::net::IpAddr::V4(ip) => healthy[usize::from(ip.octets()[3])],
            std::net::IpAddr::V6(_) => false,
        };
        let mut out = vec![0; healthy.len()];
        for _ in 0..n {
            for a in p.choose(&cands, &up, None, &[]) {
                out[cands.iter().position(|c| c.1 == a).unwrap()] += 1;
            }
        }
        out
    }

    #[test]
    fn localities_match_as_istio_matches_them() {
        assert!(locality_matches("us-west/zone1/a", "us-west/zone1/*"));
        assert!(locality_matches("us-west/zone1/a", "us-west/*"));
        assert!(locality_matches("us-west/zone1/a", "us-west"));
        assert!(locality_matches("us-west/zone1/a", "*"));
        assert!(!locality_matches("us-west/zone2/a", "us-west/zone1/*"));
        assert!(!locality_matches("us-east/zone1", "us-west/*"));
    }

    #[test]
    fn endpoints_rank_by_subzone_zone_region_then_the_failover_region() {
        let eps = [
            ep("us-west/zone1/a", &[]),
            ep("us-west/zone1/b", &[]),
            ep("us-west/zone2", &[]),
            ep("eu-west/zone1", &[]),
            ep("us-east/zone1", &[]),
        ];
        let lb = proto::LocalityLb {
            failover: vec![proto::LocalityFailover {
                from: "us-west".into(),
                to: "us-east".into(),
            }],
            ..Default::default()
        };
        let p = plan(&lb, "us-west/zone1/a", &eps).unwrap();
        assert_eq!(p.group_of, [0, 1, 2, 4, 3]);
        // Without failover, every other region ranks the same.
        let p = plan(&proto::LocalityLb::default(), "us-west/zone1/a", &eps).unwrap();
        assert_eq!(p.group_of, [0, 1, 2, 3, 3]);
        assert!(
            plan(&proto::LocalityLb::default(), "", &eps).is_none(),
            "a proxy with no locality ranks nothing"
        );
    }

    #[test]
    fn traffic_stays_local_and_spills_as_local_endpoints_fail() {
        let eps = [
            ep("r/z1", &[]),
            ep("r/z1", &[]),
            ep("r/z1", &[]),
            ep("r/z2", &[]),
        ];
        let p = plan(&proto::LocalityLb::default(), "r/z1", &eps).unwrap();
        let all_up = shares(&p, 1000, &[true, true, true, true]);
        assert_eq!(
            all_up[3], 0,
            "all local endpoints healthy: none leaves the zone"
        );
        // One of three down: 1.4 × 2/3 = 93% stays, 7% spills.
        let one_down = shares(&p, 4000, &[false, true, true, true]);
        assert_eq!(one_down[0], 0);
        assert!((160..=400).contains(&one_down[3]), "{one_down:?}");
        // All local endpoints down: everything fails over.
        let none = shares(&p, 100, &[false, false, false, true]);
        assert_eq!(none, [0, 0, 0, 100]);
    }

    #[test]
    fn a_retry_leaves_the_ranks_already_tried_while_another_is_up() {
        let eps = [ep("r/z1", &[]), ep("r/z2", &[]), ep("other/z1", &[])];
        let p = plan(&proto::LocalityLb::default(), "r/z1", &eps).unwrap();
        let cands: Vec<_> = (0..3).map(|i| (i, addr(i))).collect();
        let up = |_: SocketAddr| true;
        assert_eq!(p.choose(&cands, &up, None, &[]), [addr(0)]);
        assert_eq!(
            p.choose(&cands, &up, None, &[addr(0)]),
            [addr(1)],
            "next rank"
        );
        assert_eq!(p.choose(&cands, &up, None, &[addr(0), addr(1)]), [addr(2)]);
        let all = [addr(0), addr(1), addr(2)];
        assert_eq!(
            p.choose(&cands, &up, None, &all),
            [addr(0)],
            "every rank tried: back to the first"
        );
    }

    #[test]
    fn failover_priority_ranks_by_shared_labels_in_order() {
        let eps = [
            ep("", &[("net", "n1"), ("cluster", "c1")]),
            ep("", &[("net", "n1"), ("cluster", "c2")]),
            ep("", &[("net", "n2"), ("cluster", "c1")]),
        ];
        let lb = proto::LocalityLb {
            failover_priority: vec!["net".into(), "cluster".into()],
            ..Default::default()
        };
        let own: BTreeMap<String, String> = [("net", "n1"), ("cluster", "c1")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let p = LocalityPlan::new(&lb, "", &own, &eps, &[0, 1, 2]).unwrap();
        assert_eq!(p.group_of, [0, 1, 2]);
        let pinned = proto::LocalityLb {
            failover_priority: vec!["net=n2".into()],
            ..Default::default()
        };
        let p = LocalityPlan::new(&pinned, "", &own, &eps, &[0, 1, 2]).unwrap();
        assert_eq!(p.group_of, [1, 1, 0], "key=value prefers that value");
    }

    #[test]
    fn distribute_weights_localities_and_drops_the_unnamed() {
        let eps = [
            ep("r/z1", &[]),
            ep("r/z2", &[]),
            ep("r/z2", &[]),
            ep("other/z9", &[]),
        ];
        let lb = proto::LocalityLb {
            distribute: vec![proto::LocalityDistribute {
                from: "r/z1/*".into(),
                to: [("r/z1".to_string(), 80), ("r/z2".to_string(), 20)].into(),
            }],
            ..Default::default()
        };
        let p = plan(&lb, "r/z1/a", &eps).unwrap();
        let s = shares(&p, 5000, &[true, true, true, true]);
        assert_eq!(s[3], 0, "a locality no `to` names gets nothing");
        assert!((3800..=4200).contains(&s[0]), "{s:?}");
        assert!(
            plan(&lb, "elsewhere/z1", &eps).is_none(),
            "no rule from there"
        );
    }
}
