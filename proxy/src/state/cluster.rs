//! A cluster's circuit breakers and outlier detection as DestinationRule `connectionPool` and
//! `outlierDetection` set them, worked out once per service, subset and port when a state
//! arrives. The most specific policy wins, as in Istio: the subset's port-level settings, the
//! subset's, the service's port-level settings, then the service's. Limits left unset have
//! Envoy's default (none), the connect timeout Istio's (10 s); pilot fills in outlier
//! detection's defaults.

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

/// A cluster's outlier detection, as the proxy applies it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutlierPolicy {
    /// Envoy's name for the cluster (`outbound|port|subset|host`).
    pub cluster: String,
    /// Consecutive 5xx (or local failures) before ejection; 0: off.
    pub consecutive_5xx: u32,
    /// Consecutive 502/503/504 (or local failures) before ejection; 0: off.
    pub consecutive_gateway: u32,
    /// Consecutive local failures (no connection, a reset, a timeout) before ejection; 0: off.
    pub consecutive_local: u32,
    /// Local failures count only towards `consecutive_local`, not as 5xx or gateway errors
    /// (`splitExternalLocalOriginErrors`).
    pub split_local: bool,
    /// The sweep interval: an ejection multiplier decays by one per healthy interval.
    pub interval: Duration,
    /// An ejection lasts this long times the endpoint's ejections (at most 300 s, or this).
    pub base_ejection: Duration,
    /// At most this share of the endpoints ejected at once.
    pub max_ejection_percent: u32,
    /// Below this share of healthy endpoints, all are used (panic); 0: never.
    pub min_health_percent: u32,
}

impl OutlierPolicy {
    fn new(cluster: String, o: &proto::OutlierDetection) -> Self {
        Self {
            cluster,
            consecutive_5xx: o.consecutive_5xx_errors,
            consecutive_gateway: o.consecutive_gateway_errors,
            consecutive_local: o.consecutive_local_origin_failures,
            split_local: o.split_local_origin,
            // A zero interval would make every instant a sweep: Envoy's minimum is 1 ms.
            interval: Duration::from_millis(o.interval_ms.max(1)),
            base_ejection: Duration::from_millis(o.base_ejection_time_ms),
            max_ejection_percent: o.max_ejection_percent.min(100),
            min_health_percent: o.min_health_percent.min(100),
        }
    }
}

impl OutlierPolicy {
    /// What a cluster with locality load balancing and no `outlierDetection` uses, so that
    /// traffic fails over from endpoints that cannot be reached without one: 5 connection
    /// failures (or resets, or timeouts) in a row eject an endpoint for 30 s, Envoy's default
    /// for local-origin failures; answers, whatever their status, never do.
    pub fn implicit(cluster: String) -> Self {
        Self {
            cluster,
            consecutive_5xx: 0,
            consecutive_gateway: 0,
            consecutive_local: 5,
            split_local: true,
            interval: Duration::from_secs(10),
            base_ejection: Duration::from_secs(30),
            max_ejection_percent: 100,
            min_health_percent: 0,
        }
    }
}

/// What applies to one cluster of a service: by subset (`""` for the whole service) and port.
#[derive(Clone, Debug)]
pub struct ClusterPolicy {
    /// The subset.
    pub subset: String,
    /// The service port.
    pub port: u16,
    /// Circuit breakers, when its DestinationRule sets a connectionPool.
    pub limits: Option<Arc<PoolLimits>>,
    /// Outlier detection, when its DestinationRule sets it (or locality needs it).
    pub outlier: Option<Arc<OutlierPolicy>>,
    /// Locality load balancing, when it tells the subset's endpoints apart.
    pub locality: Option<Arc<super::LocalityPlan>>,
}

/// The settings `pick` chooses from `policy` for `port`: its port-level ones, else its own.
fn part_of<'a, T>(
    policy: Option<&'a proto::TrafficPolicy>,
    port: u16,
    pick: impl Fn(&'a proto::TrafficPolicy) -> Option<&'a T>,
) -> Option<&'a T> {
    let policy = policy?;
    policy
        .port_policies
        .iter()
        .find(|p| p.port == u32::from(port))
        .and_then(|p| pick(p.policy.as_ref()?))
        .or_else(|| pick(policy))
}

fn pool_of(t: &proto::TrafficPolicy) -> Option<&proto::ConnectionPool> {
    t.connection_pool.as_ref()
}

fn outlier_of(t: &proto::TrafficPolicy) -> Option<&proto::OutlierDetection> {
    t.outlier_detection.as_ref()
}

/// The policies of every cluster of `spec` that has a connection pool, outlier detection or
/// a locality plan (`plans`, by subset).
pub(super) fn clusters(
    spec: &proto::Service,
    plans: &[(String, Arc<super::LocalityPlan>)],
) -> Vec<ClusterPolicy> {
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
            let service = spec.traffic_policy.as_ref();
            let pool = part_of(own, port, pool_of).or_else(|| part_of(service, port, pool_of));
            let outlier =
                part_of(own, port, outlier_of).or_else(|| part_of(service, port, outlier_of));
            let locality = plans
                .iter()
                .find(|(s, _)| s == subset)
                .map(|(_, p)| p.clone());
            if pool.is_none() && outlier.is_none() && locality.is_none() {
                continue;
            }
            let cluster = format!("outbound|{port}|{subset}|{}", spec.hostname);
            let outlier = match outlier {
                Some(o) => Some(OutlierPolicy::new(cluster.clone(), o)),
                None => locality
                    .as_ref()
                    .map(|_| OutlierPolicy::implicit(cluster.clone())),
            };
            out.push(ClusterPolicy {
                subset: subset.to_string(),
                port,
                limits: pool.map(|p| Arc::new(PoolLimits::new(cluster, p))),
                outlier: outlier.map(Arc::new),
                locality,
            });
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
        let found: Vec<(String, u16, u32)> = clusters(&spec, &[])
            .into_iter()
            .map(|c| (c.subset, c.port, c.limits.unwrap().max_connections))
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
        let limits = clusters(&spec, &[])[0].limits.clone().unwrap();
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
        assert!(clusters(&spec, &[]).is_empty());
    }
}

#[cfg(test)]
mod outlier_tests {
    use super::*;

    #[test]
    fn a_subset_without_outlier_detection_takes_the_services() {
        let spec = proto::Service {
            hostname: "shipping".into(),
            ports: vec![proto::ServicePort {
                port: 8080,
                ..Default::default()
            }],
            traffic_policy: Some(proto::TrafficPolicy {
                outlier_detection: Some(proto::OutlierDetection {
                    consecutive_5xx_errors: 1,
                    interval_ms: 0,
                    max_ejection_percent: 250,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            subsets: vec![proto::Subset {
                name: "v1".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let found = clusters(&spec, &[]);
        assert_eq!(found.len(), 2);
        let o = found[1].outlier.clone().unwrap();
        assert_eq!(o.cluster, "outbound|8080|v1|shipping");
        assert_eq!(o.consecutive_5xx, 1);
        assert_eq!(o.interval, Duration::from_millis(1));
        assert_eq!(o.max_ejection_percent, 100);
        assert!(found[1].limits.is_none());
    }
}
