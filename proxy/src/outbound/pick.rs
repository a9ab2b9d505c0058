//! From a service and the port the workload used to one endpoint address: TCP routes (weighted
//! destinations, subsets), then the load balancer.

use std::net::SocketAddr;
use std::sync::Arc;

use super::balance::Loads;
use crate::state::{Port, Service, State, proto};

/// Where a connection or request goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// The service host name (`-` for passthrough).
    pub service: String,
    /// The subset, if any.
    pub subset: String,
    /// The endpoint.
    pub addr: SocketAddr,
}

impl Target {
    /// Straight to where the workload connected.
    pub fn passthrough(addr: SocketAddr) -> Self {
        Self {
            service: "PassthroughCluster".into(),
            subset: String::new(),
            addr,
        }
    }
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
fn port_for(svc: &Service, dst: SocketAddr) -> Option<&Port> {
    svc.port(dst.port())
        .or_else(|| svc.ports.iter().find(|p| p.target_port == dst.port()))
}

/// Chooses the endpoint for a TCP connection to `svc` at `dst`.
pub fn pick_endpoint(
    state: &State,
    svc: &Arc<Service>,
    dst: SocketAddr,
    loads: &Loads,
) -> Option<Target> {
    let port = port_for(svc, dst)?;
    let route = svc
        .spec
        .tcp_routes
        .iter()
        .find(|r| r.port == 0 || r.port == u32::from(port.port));
    match route.and_then(|r| choose_weighted(&r.destinations, |d| d.weight)) {
        Some(dest) => to_destination(state, svc, port, dest, loads),
        None => endpoint_in(svc, port, "", loads),
    }
}

/// Resolves a weighted destination (another service, a subset, a port) to an endpoint.
pub fn to_destination(
    state: &State,
    from: &Arc<Service>,
    in_port: &Port,
    dest: &proto::WeightedDestination,
    loads: &Loads,
) -> Option<Target> {
    let svc = if dest.host.is_empty() {
        from
    } else {
        state.service_by_host(&dest.host, &from.spec.namespace)?
    };
    let port = match dest.port {
        0 => svc.port(in_port.port).or_else(|| svc.ports.first())?,
        p => svc.port(u16::try_from(p).ok()?)?,
    };
    endpoint_in(svc, port, &dest.subset, loads)
}

/// Picks an endpoint of `svc` (optionally of one subset) for `port`.
pub fn endpoint_in(svc: &Service, port: &Port, subset: &str, loads: &Loads) -> Option<Target> {
    let members = svc.subset_members(subset);
    let addrs: Vec<SocketAddr> = members
        .iter()
        .filter_map(|i| svc.endpoint_addr(*i, port))
        .collect();
    let balancer = svc
        .spec
        .subsets
        .iter()
        .find(|s| s.name == subset)
        .and_then(|s| s.traffic_policy.as_ref())
        .and_then(|t| crate::state::Balancer::parse_name(&t.load_balancer))
        .unwrap_or(svc.balancer);
    let pool = format!("{}|{}|{}", svc.spec.hostname, subset, port.port);
    let addr = loads.pick(&pool, balancer, &addrs)?;
    Some(Target {
        service: svc.spec.hostname.clone(),
        subset: subset.to_string(),
        addr,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
