//! From a service and the port the workload used to one endpoint address: TCP routes (weighted
//! destinations, subsets), then the load balancer.

use std::net::SocketAddr;
use std::sync::Arc;

use smallvec::SmallVec;

use super::balance::Loads;
use crate::state::{Port, Service, State, proto};

/// The service name of destinations outside the registry (Envoy's cluster name for them).
pub const PASSTHROUGH: &str = "PassthroughCluster";

/// Where a connection or request goes.
#[derive(Clone, Debug)]
pub struct Target {
    /// The service host name ([`PASSTHROUGH`] for destinations outside the registry).
    pub service: Arc<str>,
    /// The subset, if any.
    pub subset: String,
    /// The endpoint.
    pub addr: SocketAddr,
    /// The endpoint has a sidecar: HTTP to it rides the mesh's HTTP/2.
    pub mesh: bool,
    /// Connect with mutual TLS (DestinationRule mode, or auto for endpoints with a sidecar).
    pub mtls: bool,
    /// mTLS was asked for explicitly (ISTIO_MUTUAL): without an identity the call fails
    /// rather than falling back to plaintext as auto mTLS does.
    pub mtls_required: bool,
    /// The identity the endpoint must prove over mTLS (any mesh identity when empty).
    pub identity: Arc<str>,
    /// TLS the proxy originates to this endpoint (DestinationRule SIMPLE / MUTUAL).
    pub originate: Option<Arc<crate::tls::originate::Originate>>,
    /// The cluster's circuit breakers (DestinationRule connectionPool), when it has any.
    pub limits: Option<Arc<crate::state::PoolLimits>>,
    /// The cluster's outlier detection, told what the endpoint answers, when it has one.
    pub outlier: Option<Arc<super::outlier::ClusterHealth>>,
}

impl Target {
    /// Straight to where the workload connected.
    pub fn passthrough(addr: SocketAddr) -> Self {
        static NAME: std::sync::LazyLock<Arc<str>> =
            std::sync::LazyLock::new(|| Arc::from(PASSTHROUGH));
        Self {
            service: NAME.clone(),
            subset: String::new(),
            addr,
            mesh: false,
            mtls: false,
            mtls_required: false,
            identity: no_identity(),
            originate: None,
            limits: None,
            outlier: None,
        }
    }
}

/// The empty identity (any mesh identity), shared.
pub fn no_identity() -> Arc<str> {
    static EMPTY: std::sync::LazyLock<Arc<str>> = std::sync::LazyLock::new(|| Arc::from(""));
    EMPTY.clone()
}

/// Turns a consistent-hash policy into a request's hash, when the request has the key.
pub type HashKey<'a> = &'a dyn Fn(&proto::ConsistentHash) -> Option<u64>;

/// Rendezvous (highest random weight) hashing: the same key picks the same endpoint, and an
/// endpoint leaving moves only the keys that were on it.
pub fn rendezvous(key: u64, addrs: &[SocketAddr]) -> Option<SocketAddr> {
    use std::hash::{Hash, Hasher};
    addrs.iter().copied().max_by_key(|a| {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        key.hash(&mut h);
        a.hash(&mut h);
        h.finish()
    })
}

/// Hashes a string key (header, cookie, query parameter or source IP value).
pub fn hash_str(value: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    value.hash(&mut h);
    h.finish()
}

/// Picks one of `items` with probability proportional to its weight (all equal when every
/// weight is zero).
pub fn choose_weighted<T>(items: &[T], weight: impl Fn(&T) -> u32) -> Option<&T> {
    let total: u64 = items.iter().map(|i| u64::from(weight(i))).sum();
    if total == 0 {
        return items
            .get(fastrand::usize(..items.len().max(1)))
            .filter(|_| !items.is_empty());
    }
    let mut roll = fastrand::u64(..total);
    for item in items {
        let w = u64::from(weight(item));
        if roll < w {
            return Some(item);
        }
        roll -= w;
    }
    items.last()
}

/// The service port a connection to `dst` used: by number, or by target port when the
/// workload connected to an endpoint directly.
pub fn port_for(svc: &Service, dst: SocketAddr) -> Option<&Port> {
    svc.port(dst.port())
        .or_else(|| svc.ports.iter().find(|p| p.target_port == dst.port()))
}

/// Chooses the endpoint for a TCP connection to `svc` at `dst`.
pub fn pick_endpoint(
    state: &State,
    svc: &Arc<Service>,
    dst: SocketAddr,
    loads: &Loads,
    key: Option<HashKey<'_>>,
) -> Option<Target> {
    let port = port_for(svc, dst)?;
    let route = svc
        .spec
        .tcp_routes
        .iter()
        .find(|r| r.port == 0 || r.port == u32::from(port.port));
    match route.and_then(|r| choose_weighted(&r.destinations, |d| d.weight)) {
        Some(dest) => to_destination(state, svc, port, dest, loads, key),
        None => endpoint_in(svc, port, "", loads, key),
    }
}

/// Chooses the endpoint for a TLS connection by its SNI: the first TLS route (for this port)
/// naming the server, else the service's own endpoints.
pub fn pick_tls_endpoint(
    state: &State,
    svc: &Arc<Service>,
    dst: SocketAddr,
    sni: &str,
    loads: &Loads,
) -> Option<Target> {
    let port = port_for(svc, dst)?;
    let route = svc.spec.tls_routes.iter().find(|r| {
        (r.port == 0 || r.port == u32::from(port.port))
            && r.sni_hosts.iter().any(|h| crate::tls::sni_matches(h, sni))
    });
    match route.and_then(|r| choose_weighted(&r.destinations, |d| d.weight)) {
        Some(dest) => to_destination(state, svc, port, dest, loads, None),
        None => endpoint_in(svc, port, "", loads, None),
    }
}

/// Resolves a weighted destination (another service, a subset, a port) to an endpoint.
pub fn to_destination(
    state: &State,
    from: &Arc<Service>,
    in_port: &Port,
    dest: &proto::WeightedDestination,
    loads: &Loads,
    key: Option<HashKey<'_>>,
) -> Option<Target> {
    let (svc, port) = service_port(state, from, in_port, dest)?;
    endpoint_in(svc, port, &dest.subset, loads, key)
}

/// [`to_destination`] for a retry with `retryRemoteLocalities`: away from the locality ranks
/// (or weighted localities) of the endpoints already `tried`, when another has healthy ones.
pub fn to_destination_after(
    state: &State,
    from: &Arc<Service>,
    in_port: &Port,
    dest: &proto::WeightedDestination,
    loads: &Loads,
    tried: &[SocketAddr],
) -> Option<Target> {
    let (svc, port) = service_port(state, from, in_port, dest)?;
    pick_in(svc, port, &dest.subset, loads, None, tried)
}

/// The service and port `dest` names (from `from`'s port `in_port`).
fn service_port<'a>(
    state: &'a State,
    from: &'a Arc<Service>,
    in_port: &Port,
    dest: &proto::WeightedDestination,
) -> Option<(&'a Service, &'a Port)> {
    let svc = if dest.host.is_empty() {
        from
    } else {
        state.service_by_host(&dest.host, &from.spec.namespace)?
    };
    let port = match dest.port {
        0 => svc.port(in_port.port).or_else(|| svc.ports.first())?,
        p => svc.port(u16::try_from(p).ok()?)?,
    };
    Some((svc, port))
}

/// What a retry budget needs of the cluster `dest` names: Envoy's name for it, the requests
/// in flight to its endpoints, and its budget (DestinationRule `retryBudget`, else Envoy's
/// default). Worked out only when a retry is considered.
pub fn retry_budget_of(
    state: &State,
    from: &Arc<Service>,
    in_port: &Port,
    dest: &proto::WeightedDestination,
    loads: &Loads,
) -> Option<(String, usize, (f64, u32))> {
    let (svc, port) = service_port(state, from, in_port, dest)?;
    let in_flight = svc
        .subset_members(&dest.subset)
        .iter()
        .filter_map(|i| svc.endpoint_addr(*i, port))
        .map(|a| loads.active(a))
        .sum();
    let budget = svc
        .spec
        .subsets
        .iter()
        .find(|s| s.name == dest.subset)
        .and_then(|s| s.traffic_policy.as_ref()?.retry_budget.as_ref())
        .or_else(|| svc.spec.traffic_policy.as_ref()?.retry_budget.as_ref())
        .map_or(
            (
                super::budget::DEFAULT_PERCENT,
                super::budget::DEFAULT_MIN_CONCURRENCY,
            ),
            |b| (b.percent, b.min_retry_concurrency),
        );
    let name = format!(
        "outbound|{}|{}|{}",
        port.port, dest.subset, svc.spec.hostname
    );
    Some((name, in_flight, budget))
}

/// Picks an endpoint of `svc` (optionally of one subset) for `port`.
pub fn endpoint_in(
    svc: &Service,
    port: &Port,
    subset: &str,
    loads: &Loads,
    key: Option<HashKey<'_>>,
) -> Option<Target> {
    pick_in(svc, port, subset, loads, key, &[])
}

/// [`endpoint_in`], leaving the locality groups of `tried` when others can take the request.
fn pick_in(
    svc: &Service,
    port: &Port,
    subset: &str,
    loads: &Loads,
    key: Option<HashKey<'_>>,
    tried: &[SocketAddr],
) -> Option<Target> {
    let members = svc.subset_members(subset);
    // On the stack for the usual handful of endpoints: this runs for every request.
    let mut addrs: SmallVec<[SocketAddr; 8]> = members
        .iter()
        .filter_map(|i| svc.endpoint_addr(*i, port))
        .collect();
    let cluster = svc.cluster_policy(subset, port.port);
    // Outlier detection leaves ejected endpoints out (all of them: no healthy upstream).
    let outlier = cluster
        .and_then(|c| c.outlier.as_ref())
        .map(|o| loads.outliers.cluster(o));
    if let Some(health) = &outlier {
        addrs = SmallVec::from_vec(health.healthy(&addrs));
    }
    let subset_policy = svc
        .spec
        .subsets
        .iter()
        .find(|s| s.name == subset)
        .and_then(|s| s.traffic_policy.as_ref());
    let balancer = svc.balancer_for(subset);
    let hash_policy = subset_policy
        .and_then(|t| t.consistent_hash.as_ref())
        .or_else(|| {
            svc.spec
                .traffic_policy
                .as_ref()
                .and_then(|t| t.consistent_hash.as_ref())
        });
    let hash = match (hash_policy, key) {
        (Some(policy), Some(key)) => key(policy),
        _ => None,
    };
    // Locality: the healthy endpoints of one rank (or weighted locality) of the subset.
    if let Some(plan) = cluster.and_then(|c| c.locality.as_ref()) {
        addrs = SmallVec::from_vec(by_locality(plan, svc, members, port, &addrs, hash, tried));
    }
    let hashed = hash.and_then(|h| rendezvous(h, &addrs));
    let addr = match hashed {
        Some(a) => a,
        None => {
            let pool = format_args!("{}|{}|{}", svc.spec.hostname, subset, port.port);
            loads.pick(pool, balancer, &addrs)?
        }
    };
    let index = members
        .iter()
        .copied()
        .find(|i| svc.endpoint_addr(*i, port) == Some(addr));
    let endpoint = index.map(|i| &svc.spec.endpoints[i]);
    let mesh = endpoint.is_some_and(|e| e.mesh);
    let tls_mode = svc.tls_mode(subset);
    let mtls = match tls_mode {
        crate::state::TlsMode::IstioMutual => true,
        crate::state::TlsMode::Disable => false,
        crate::state::TlsMode::Auto => mesh,
        crate::state::TlsMode::Simple | crate::state::TlsMode::Mutual => false,
    };
    let originate = match tls_mode {
        crate::state::TlsMode::Simple | crate::state::TlsMode::Mutual => svc
            .originations
            .get(subset)
            .or_else(|| svc.originations.get(""))
            .cloned(),
        _ => None,
    };
    let mtls_required = tls_mode == crate::state::TlsMode::IstioMutual;
    let identity = index
        .and_then(|i| svc.endpoint_identities.get(i).cloned())
        .unwrap_or_else(no_identity);
    Some(Target {
        service: svc.host.clone(),
        subset: subset.to_string(),
        addr,
        mesh,
        mtls,
        mtls_required,
        identity,
        originate,
        limits: cluster.and_then(|c| c.limits.clone()),
        outlier,
    })
}

/// The endpoints of the rank or locality `plan` picks for one request, of the subset's
/// `members`, `healthy` being the ones outlier detection leaves in.
fn by_locality(
    plan: &crate::state::LocalityPlan,
    svc: &Service,
    members: &[usize],
    port: &Port,
    healthy: &[SocketAddr],
    hash: Option<u64>,
    tried: &[SocketAddr],
) -> Vec<SocketAddr> {
    let candidates: Vec<(usize, SocketAddr)> = members
        .iter()
        .enumerate()
        .filter_map(|(pos, i)| Some((pos, svc.endpoint_addr(*i, port)?)))
        .collect();
    let up: std::collections::HashSet<SocketAddr> = healthy.iter().copied().collect();
    let chosen = plan.choose(&candidates, &|a| up.contains(&a), hash, tried);
    if chosen.is_empty() {
        healthy.to_vec()
    } else {
        chosen
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendezvous_is_stable_and_moves_only_lost_keys() {
        let addrs: Vec<SocketAddr> = (0..5)
            .map(|i| SocketAddr::from(([10, 0, 0, i], 80)))
            .collect();
        let before: Vec<_> = (0..1000u64)
            .map(|k| rendezvous(k, &addrs).unwrap())
            .collect();
        assert_eq!(
            before,
            (0..1000u64)
                .map(|k| rendezvous(k, &addrs).unwrap())
                .collect::<Vec<_>>()
        );
        let fewer = &addrs[..4];
        for (k, was) in before.iter().enumerate() {
            let now = rendezvous(k as u64, fewer).unwrap();
            if *was != addrs[4] {
                assert_eq!(now, *was, "key {k} moved although its endpoint stayed");
            }
        }
        let used: std::collections::HashSet<_> = before.iter().collect();
        assert_eq!(used.len(), 5, "keys spread over every endpoint");
    }

    #[test]
    fn weighted_choice_follows_weights() {
        let items = [("a", 90u32), ("b", 10u32)];
        let mut b = 0;
        for _ in 0..10_000 {
            if choose_weighted(&items, |i| i.1).unwrap().0 == "b" {
                b += 1;
            }
        }
        // Expect 1000; the standard deviation is 30, so ±150 is five of them.
        assert!((850..=1150).contains(&b), "b chosen {b} times of 10000");
        let none: [(&str, u32); 0] = [];
        assert!(choose_weighted(&none, |i| i.1).is_none());
    }
}
