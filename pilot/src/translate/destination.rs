//! DestinationRule → a service's subsets and traffic policies for one proxy. Which rule
//! applies follows Istio: the most specific host, then a rule in the proxy's own namespace,
//! then in the service's namespace, then in the root namespace; rules of that namespace for the
//! same host merge (subsets add up, the oldest rule's policy wins).

use mesh_api::networking::{
    ClientTlsMode, ClientTlsSettings, ConnectionPoolSettings, DestinationRule,
    LoadBalancerSettings, LocalityLbSetting, OutlierDetection, SimpleLb, TrafficPolicy,
};
use mesh_api::proto::state::v1 as state;

use super::ProxyNode;
use super::routes::duration_ms;
use crate::model::host::{self, Visibility};
use crate::model::{MeshService, Model, Rejection, Selector, describe, namespace_of};

/// The rules that apply to `svc` for `node`, best first.
pub fn rules_for<'a>(
    model: &'a Model,
    svc: &MeshService,
    node: &ProxyNode,
) -> Vec<&'a DestinationRule> {
    let domain = &model.config.domain;
    let mut best: Option<(usize, u8)> = None;
    let mut picked: Vec<(&DestinationRule, usize, u8)> = Vec::new();
    for dr in &model.destination_rules {
        let ns = namespace_of(&dr.metadata);
        if !Visibility::from_export_to(&dr.spec.export_to, ns).visible_to(&node.namespace) {
            continue;
        }
        // A selector (even an empty one) limits the rule to its own namespace's workloads.
        if dr.spec.workload_selector.as_ref().is_some_and(|sel| {
            ns != node.namespace || !Selector::new(&sel.match_labels).matches(&node.labels)
        }) {
            continue;
        }
        let pattern = host::fqdn(&dr.spec.host, ns, domain);
        if !host::matches(&pattern, &svc.hostname) {
            continue;
        }
        let rank = if ns == node.namespace {
            0
        } else if ns == svc.namespace {
            1
        } else if ns == model.config.root_namespace {
            2
        } else {
            3
        };
        let key = (host::specificity(&pattern), rank);
        picked.push((dr, key.0, key.1));
        best = Some(match best {
            None => key,
            Some(b) if key.0 > b.0 || (key.0 == b.0 && key.1 < b.1) => key,
            Some(b) => b,
        });
    }
    let Some(best) = best else { return Vec::new() };
    picked
        .into_iter()
        .filter(|(_, s, r)| (*s, *r) == best)
        .map(|(dr, _, _)| dr)
        .collect()
}

/// Applies `rules` to the service being built: its policy and subsets.
pub fn apply(
    model: &Model,
    rules: &[&DestinationRule],
    out: &mut state::Service,
) -> Result<(), Rejection> {
    for dr in rules {
        let what = describe("DestinationRule", &dr.metadata);
        if let (None, Some(tp)) = (&out.traffic_policy, &dr.spec.traffic_policy) {
            out.traffic_policy = Some(traffic_policy(model, tp, &what, "spec.trafficPolicy")?);
        }
        for (i, s) in dr.spec.subsets.iter().enumerate() {
            if out.subsets.iter().any(|have| have.name == s.name) {
                continue;
            }
            let field = format!("spec.subsets[{i}].trafficPolicy");
            out.subsets.push(state::Subset {
                name: s.name.clone(),
                labels: s.labels.clone().into_iter().collect(),
                traffic_policy: s
                    .traffic_policy
                    .as_ref()
                    .map(|tp| traffic_policy(model, tp, &what, &field))
                    .transpose()?,
            });
        }
    }
    Ok(())
}

fn traffic_policy(
    model: &Model,
    tp: &TrafficPolicy,
    what: &str,
    field: &str,
) -> Result<state::TrafficPolicy, Rejection> {
    let mut out = policy_parts(
        model,
        tp.load_balancer.as_ref(),
        tp.connection_pool.as_ref(),
        tp.outlier_detection.as_ref(),
        tp.tls.as_ref(),
        what,
        field,
    )?;
    out.retry_budget = tp.retry_budget.as_ref().map(|b| state::RetryBudget {
        percent: b.percent.unwrap_or(20.0),
        min_retry_concurrency: b.min_retry_concurrency.unwrap_or(3),
    });
    for (i, p) in tp.port_level_settings.iter().enumerate() {
        let Some(port) = p.port.as_ref().and_then(|p| p.number) else {
            continue;
        };
        let policy = policy_parts(
            model,
            p.load_balancer.as_ref(),
            p.connection_pool.as_ref(),
            p.outlier_detection.as_ref(),
            p.tls.as_ref(),
            what,
            &format!("{field}.portLevelSettings[{i}]"),
        )?;
        out.port_policies.push(state::PortTrafficPolicy {
            port,
            policy: Some(policy),
        });
    }
    Ok(out)
}

fn policy_parts(
    model: &Model,
    lb: Option<&LoadBalancerSettings>,
    pool: Option<&ConnectionPoolSettings>,
    outlier: Option<&OutlierDetection>,
    tls: Option<&ClientTlsSettings>,
    what: &str,
    field: &str,
) -> Result<state::TrafficPolicy, Rejection> {
    let mut out = state::TrafficPolicy::default();
    if let Some(l) = lb.and_then(|lb| lb.locality_lb_setting.as_ref()) {
        out.locality_lb = Some(locality_lb(l));
    }
    if let Some(lb) = lb {
        out.set_load_balancer(match lb.simple {
            Some(SimpleLb::RoundRobin) => state::LoadBalancer::RoundRobin,
            Some(SimpleLb::Random) => state::LoadBalancer::Random,
            Some(SimpleLb::Passthrough) => state::LoadBalancer::Passthrough,
            Some(SimpleLb::LeastRequest | SimpleLb::LeastConn) => state::LoadBalancer::LeastRequest,
            Some(SimpleLb::Unspecified) | None => state::LoadBalancer::Unspecified,
        });
        if let Some(h) = &lb.consistent_hash {
            use state::consistent_hash::Key;
            let key = if let Some(n) = &h.http_header_name {
                Some(Key::HttpHeaderName(n.clone()))
            } else if let Some(c) = &h.http_cookie {
                Some(Key::HttpCookie(c.name.clone()))
            } else if h.use_source_ip == Some(true) {
                Some(Key::UseSourceIp(true))
            } else {
                h.http_query_parameter_name
                    .clone()
                    .map(Key::HttpQueryParameterName)
            };
            out.consistent_hash = Some(state::ConsistentHash { key });
        }
    }
    if let Some(pool) = pool {
        let tcp = pool.tcp.as_ref();
        let http = pool.http.as_ref();
        let u = |v: Option<i32>| v.and_then(|v| u32::try_from(v).ok()).unwrap_or(0);
        out.connection_pool = Some(state::ConnectionPool {
            max_connections: u(tcp.and_then(|t| t.max_connections)),
            http1_max_pending_requests: u(http.and_then(|h| h.http1_max_pending_requests)),
            max_requests_per_connection: u(http.and_then(|h| h.max_requests_per_connection)),
            connect_timeout_ms: tcp
                .and_then(|t| t.connect_timeout.as_deref())
                .and_then(duration_ms)
                .unwrap_or(0),
            http2_max_requests: u(http.and_then(|h| h.http2_max_requests)),
            max_retries: u(http.and_then(|h| h.max_retries)),
            idle_timeout_ms: http
                .and_then(|h| h.idle_timeout.as_deref())
                .and_then(duration_ms)
                .unwrap_or(0),
        });
    }
    if let Some(o) = outlier {
        // Istio's defaults (Envoy's, as Istio configures it): 5 consecutive 5xx, gateway
        // errors off, a 10 s interval, 30 s base ejection, at most 10% ejected, no panic.
        let pct =
            |v: Option<i32>, default: u32| v.and_then(|v| u32::try_from(v).ok()).unwrap_or(default);
        let split = o.split_external_local_origin_errors == Some(true);
        out.outlier_detection = Some(state::OutlierDetection {
            consecutive_5xx_errors: o
                .consecutive_5xx_errors
                .or(o.consecutive_errors.and_then(|v| u32::try_from(v).ok()))
                .unwrap_or(5),
            consecutive_gateway_errors: o.consecutive_gateway_errors.unwrap_or(0),
            interval_ms: o
                .interval
                .as_deref()
                .and_then(duration_ms)
                .unwrap_or(10_000),
            base_ejection_time_ms: o
                .base_ejection_time
                .as_deref()
                .and_then(duration_ms)
                .unwrap_or(30_000),
            max_ejection_percent: pct(o.max_ejection_percent, 10),
            min_health_percent: pct(o.min_health_percent, 0),
            split_local_origin: split,
            // Envoy's default when split: 5; not split, local failures count as 5xx.
            consecutive_local_origin_failures: if split {
                o.consecutive_local_origin_failures.unwrap_or(5)
            } else {
                0
            },
        });
    }
    if let Some(tls) = tls {
        let mode = tls.mode.unwrap_or(ClientTlsMode::Disable);
        out.set_tls_mode(match mode {
            ClientTlsMode::Disable => state::TlsMode::Disable,
            ClientTlsMode::Simple => state::TlsMode::Simple,
            ClientTlsMode::Mutual => state::TlsMode::Mutual,
            ClientTlsMode::IstioMutual => state::TlsMode::IstioMutual,
        });
        if matches!(mode, ClientTlsMode::Simple | ClientTlsMode::Mutual) {
            out.originate = Some(originate(model, tls, mode, what, field)?);
        }
    }
    Ok(out)
}

/// Istio's `localityLbSetting` as the proxy reads it.
fn locality_lb(l: &LocalityLbSetting) -> state::LocalityLb {
    state::LocalityLb {
        distribute: l
            .distribute
            .iter()
            .map(|d| state::LocalityDistribute {
                from: d.from.clone(),
                to: d.to.clone().into_iter().collect(),
            })
            .collect(),
        failover: l
            .failover
            .iter()
            .map(|f| state::LocalityFailover {
                from: f.from.clone(),
                to: f.to.clone(),
            })
            .collect(),
        failover_priority: l.failover_priority.clone(),
        disabled: l.enabled == Some(false),
    }
}

/// Locality load balancing for the service being built: its DestinationRule's setting, else
/// the mesh configuration's, else Istio's default (on, ranking endpoints by locality) when any
/// endpoint has a locality to rank by. A setting that turns it off leaves none.
pub fn apply_locality(model: &Model, out: &mut state::Service) {
    let own = out
        .traffic_policy
        .as_ref()
        .and_then(|t| t.locality_lb.clone());
    let effective = own.or_else(|| model.mesh.locality_lb_setting.as_ref().map(locality_lb));
    let effective = match effective {
        Some(l) => Some(l),
        None if out.endpoints.iter().any(|e| !e.locality.is_empty()) => {
            Some(state::LocalityLb::default())
        }
        None => None,
    };
    let effective = effective.filter(|l| !l.disabled);
    match (effective, out.traffic_policy.as_mut()) {
        (Some(l), Some(tp)) => tp.locality_lb = Some(l),
        (Some(l), None) => {
            out.traffic_policy = Some(state::TrafficPolicy {
                locality_lb: Some(l),
                ..Default::default()
            });
        }
        (None, Some(tp)) => tp.locality_lb = None,
        (None, None) => {}
    }
}

fn originate(
    model: &Model,
    tls: &ClientTlsSettings,
    mode: ClientTlsMode,
    what: &str,
    field: &str,
) -> Result<state::OriginatedTls, Rejection> {
    let read = |path: &str, name: &str| -> Result<String, Rejection> {
        model.files.get(path).cloned().ok_or_else(|| Rejection {
            resource: what.to_string(),
            field: format!("{field}.tls.{name}"),
            message: format!(
                "file {path:?} could not be read by pilot; give a readable PEM file (credentialName is not supported yet)"
            ),
        })
    };
    if tls.ca_certificates.is_empty() {
        return Err(Rejection {
            resource: what.to_string(),
            field: format!("{field}.tls.caCertificates"),
            message: "TLS origination needs the CA certificates that verify the server".into(),
        });
    }
    let mut out = state::OriginatedTls {
        ca_certificates_pem: read(&tls.ca_certificates, "caCertificates")?,
        sni: tls.sni.clone(),
        ..Default::default()
    };
    if mode == ClientTlsMode::Mutual {
        out.client_certificate_pem = read(&tls.client_certificate, "clientCertificate")?;
        out.private_key_pem = read(&tls.private_key, "privateKey")?;
    }
    Ok(out)
}
