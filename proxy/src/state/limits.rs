//! A cluster's circuit breakers as DestinationRule `connectionPool` sets them, worked out once
//! per service, subset and port when a state arrives. The most specific policy wins, as in
//! Istio: the subset's port-level settings, the subset's, the service's port-level settings,
//! then the service's. What is left unset has Envoy's default (no limit), and the connect
//! timeout Istio's (10 s).

use std::sync::Arc;
use std::time::Duration;

use super::proto;

/// Istio's connect timeout when a policy sets none.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The limits of one cluster (service, subset, port), as the proxy applies them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolLimits {
    /// Envoy's name for the cluster (`outbound|port|subset|host`), in stats and logs.
    pub cluster: String,
    /// Connections to the cluster's endpoints, open or being opened (TCP and HTTP).
    pub max_connections: u32,
    /// Requests waiting for a connection.
    pub max_pending: u32,
    /// Active requests.
    pub max_requests: u32,
    /// Retries in flight.
    pub max_retries: u32,
    /// Requests a connection carries before it is closed (`None`: no limit).
    pub max_requests_per_connection: Option<u32>,
    /// How long a connection may take to open.
    pub connect_timeout: Duration,
    /// How long an HTTP connection may stay unused (`None`: the proxy's default).
    pub idle_timeout: Option<Duration>,
}

impl PoolLimits {
    fn new(cluster: String, p: &proto::ConnectionPool) -> Self {
        let or_max = |v: u32| if v == 0 { u32::MAX } else { v };
        Self {
            cluster,
            max_connections: or_max(p.max_connections),
            max_pending: or_max(p.http1_max_pending_requests),
            max_requests: or_max(p.http2_max_requests),
            max_retries: or_max(p.max_retries),
            max_requests_per_connection: (p.max_requests_per_connection > 0)
                .then_some(p.max_requests_per_connection),
            connect_timeout: match p.connect_timeout_ms {
                0 => DEFAULT_CONNECT_TIMEOUT,
                ms => Duration::from_millis(ms),
            },
            idle_timeout: (p.idle_timeout_ms > 0).then(|| Duration::from_millis(p.idle_timeout_ms)),
        }
    }
}

/// The connection pool settings of `policy` for `port`: its port-level ones, else its own.
fn pool_of(policy: Option<&proto::TrafficPolicy>, port: u16) -> Option<&proto::ConnectionPool> {
    let policy = policy?;
    policy
        .port_policies
        .iter()
        .find(|p| p.port == u32::from(port))
        .and_then(|p| p.policy.as_ref()?.connection_pool.as_ref())
        .or(policy.connection_pool.as_ref())
}

/// The limits of every cluster of `spec` that has any: by subset (`""` for the service as a
/// whole) and port.
pub(super) fn clusters(spec: &proto::Service) -> Vec<(String, u16, Arc<PoolLimits>)> {
    let mut out = Vec::new();
    let subsets = std::iter::once(("", None)).chain(
        spec.subsets
            .iter()
            .map(|s| (s.name.as_str(), s.traffic_policy.as_ref())),
    );
    for (subset, own) in subsets {
        for p in &spec.ports {
            let Ok(port) = u16::try_from(p.port) else {
                continue;
            };
            let Some(pool) =
                pool_of(own, port).or_else(|| pool_of(spec.traffic_policy.as_ref(), port))
            else {
                continue;
            };
            let cluster = format!("outbound|{port}|{subset}|{}", spec.hostname);
            out.push((
                subset.to_string(),
                port,
                Arc::new(PoolLimits::new(cluster, pool)),
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(max_connections: u32) -> proto::ConnectionPool {
        proto::ConnectionPool {
            max_connections,
            ..Default::default()
        }
    }

    fn policy(max_connections: u32, port_level: Option<(u32, u32)>) -> proto::TrafficPolicy {
        proto::TrafficPolicy {
            connection_pool: Some(pool(max_connections)),
            port_policies: port_level
                .map(|(port, max)| proto::PortTrafficPolicy {
                    port,
                    policy: Some(proto::TrafficPolicy {
                        connection_pool: Some(pool(max)),
                        ..Default::default()
                    }),
                })
                .into_iter()
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn the_most_specific_policy_wins_and_unset_limits_are_unlimited() {
        let spec = proto::Service {
            hostname: "inventory.shop.svc.cluster.local".into(),
            ports: vec![
                proto::ServicePort {
                    port: 80,
                    ..Default::default()
                },
                proto::ServicePort {
                    port: 9090,
                    ..Default::default()
                },
            ],
            traffic_policy: Some(policy(1, Some((9090, 2)))),
            subsets: vec![
                proto::Subset {
                    name: "v1".into(),
                    ..Default::default()
                },
                proto::Subset {
                    name: "v2".into(),
                    traffic_policy: Some(policy(3, None)),
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        let found: Vec<(String, u16, u32)> = clusters(&spec)
            .into_iter()
            .map(|(s, p, l)| (s, p, l.max_connections))
            .collect();
        let want = [
            ("", 80, 1),
            ("", 9090, 2),
            ("v1", 80, 1),
            ("v1", 9090, 2),
            ("v2", 80, 3),
            ("v2", 9090, 3),
        ];
        let want: Vec<(String, u16, u32)> = want
            .iter()
            .map(|(s, p, m)| (s.to_string(), *p, *m))
            .collect();
        assert_eq!(found, want);
        let limits = &clusters(&spec)[0].2;
        assert_eq!(
            limits.cluster,
            "outbound|80||inventory.shop.svc.cluster.local"
        );
        assert_eq!(limits.max_pending, u32::MAX);
        assert_eq!(limits.max_requests_per_connection, None);
        assert_eq!(limits.connect_timeout, DEFAULT_CONNECT_TIMEOUT);
    }

    #[test]
    fn a_service_without_pool_settings_has_no_clusters_with_limits() {
        let spec = proto::Service {
            hostname: "a".into(),
            ports: vec![proto::ServicePort {
                port: 80,
                ..Default::default()
            }],
            ..Default::default()
        };
        assert!(clusters(&spec).is_empty());
    }
}
