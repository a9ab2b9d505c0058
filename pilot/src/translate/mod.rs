//! Per-proxy translation: from the [`Model`] to the `mesh.state.v1` view of one proxy, with only
//! what its workload may call (exportTo, the Sidecar's egress hosts) and the policies that
//! select it.

pub mod destination;
pub mod gateway;
pub mod rate_limits;
pub mod routes;
pub mod telemetry;
pub mod unenforced;

use std::collections::{BTreeMap, BTreeSet};

use mesh_api::networking::{OutboundTrafficMode, Sidecar, VirtualService};
use mesh_api::proto::state::v1 as state;
use serde::Serialize;

use crate::model::host::{self, Visibility};
use crate::model::{
    MeshService, Model, Rejection, Selector, namespace_of, peer_authentication, policy,
};

/// Who a proxy is, from its node metadata (and, over mTLS, its certificate).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ProxyNode {
    /// Proxy id.
    pub id: String,
    /// Namespace of the workload.
    pub namespace: String,
    /// Service account of the workload.
    pub service_account: String,
    /// Labels of the workload.
    pub labels: BTreeMap<String, String>,
    /// Addresses of the workload.
    pub ip_addresses: Vec<String>,
    /// The proxy's version (`mesh-proxy`'s package version; empty from proxies too old to say).
    pub proxy_version: String,
    /// A gateway (`mesh-proxy run --mode gateway`), not a sidecar.
    pub is_gateway: bool,
    /// While a gateway's routes are translated: the Gateway (`namespace/name`) they are for,
    /// which the `gateways` of VirtualService matches are held against. Empty otherwise.
    #[serde(skip)]
    pub bound_gateway: String,
}

/// The Sidecar resource that scopes a workload: one selecting it in its namespace, else its
/// namespace's default, else the mesh default in the root namespace.
pub fn sidecar_for<'a>(model: &'a Model, node: &ProxyNode) -> Option<&'a Sidecar> {
    fn selected(s: &Sidecar) -> Option<Selector<'_>> {
        Selector::of_workloads(s.spec.workload_selector.as_ref())
    }
    let in_ns = |s: &&&Sidecar| namespace_of(&s.metadata) == node.namespace;
    model
        .sidecars
        .iter()
        .filter(|s| namespace_of(&s.metadata) == node.namespace)
        .find(|s| selected(s).is_some_and(|sel| sel.matches(&node.labels)))
        .or_else(|| {
            model
                .sidecars
                .iter()
                .filter(|s| selected(s).is_none())
                .find(|s| in_ns(&s))
        })
        .or_else(|| {
            model.sidecars.iter().find(|s| {
                selected(s).is_none() && namespace_of(&s.metadata) == model.config.root_namespace
            })
        })
}

/// The egress scope of a Sidecar: `(namespace, host)` patterns; `None` means everything.
fn egress_scope(sidecar: Option<&Sidecar>) -> Option<Vec<(String, String)>> {
    let sc = sidecar?;
    let own = namespace_of(&sc.metadata);
    if sc.spec.egress.is_empty() {
        return None;
    }
    Some(
        sc.spec
            .egress
            .iter()
            .flat_map(|e| e.hosts.iter())
            .filter_map(|h| {
                let (ns, dns) = h.split_once('/')?;
                let ns = match ns {
                    "." => own.to_string(),
                    other => other.to_string(),
                };
                Some((ns, dns.to_string()))
            })
            .collect(),
    )
}

fn in_scope(scope: &Option<Vec<(String, String)>>, svc: &MeshService) -> bool {
    match scope {
        None => true,
        Some(entries) => entries.iter().any(|(ns, dns)| {
            ns != "~" && (ns == "*" || *ns == svc.namespace) && host::matches(dns, &svc.hostname)
        }),
    }
}

/// The VirtualService that routes `hostname` for `node`: the most specific host, then one in
/// the proxy's own namespace, then the oldest. VirtualServices bound only to gateways do not
/// apply to sidecars, nor do delegates (they are reached through their root).
pub fn virtual_service_for<'a>(
    model: &'a Model,
    hostname: &str,
    node: &ProxyNode,
) -> Option<&'a VirtualService> {
    let mut best: Option<(&VirtualService, (usize, bool))> = None;
    for i in model.virtual_service_index.candidates(hostname) {
        let vs = &model.virtual_services[i];
        let ns = namespace_of(&vs.metadata);
        if !Visibility::from_export_to(&vs.spec.export_to, ns).visible_to(&node.namespace) {
            continue;
        }
        let Some(spec) = vs
            .spec
            .hosts
            .iter()
            .map(|h| host::fqdn(h, ns, &model.config.domain))
            .filter(|p| host::matches(p, hostname))
            .map(|p| host::specificity(&p))
            .max()
        else {
            continue;
        };
        let key = (spec, ns == node.namespace);
        if best.as_ref().is_none_or(|(_, b)| key > *b) {
            best = Some((vs, key));
        }
    }
    best.map(|(vs, _)| vs)
}

/// One proxy's view, and the resources that could not be used for it.
#[derive(Clone, Debug, Default)]
pub struct View {
    /// The state for the proxy (its `version` is set by the discovery server).
    pub state: state::ProxyState,
    /// What was left out, with reasons.
    pub rejections: Vec<Rejection>,
}

/// What a proxy may see: exportTo, then its Sidecar's egress hosts.
#[derive(Clone, Debug, Default)]
pub struct Scope<'a> {
    /// The Sidecar resource that applies, if any.
    pub sidecar: Option<&'a Sidecar>,
    egress: Option<Vec<(String, String)>>,
    namespace: String,
}

impl Scope<'_> {
    /// True when the proxy may call `svc`.
    pub fn allows(&self, svc: &MeshService) -> bool {
        svc.visibility.visible_to(&self.namespace) && in_scope(&self.egress, svc)
    }
}

/// The scope of `node`.
pub fn scope<'a>(model: &'a Model, node: &ProxyNode) -> Scope<'a> {
    let sidecar = sidecar_for(model, node);
    Scope {
        sidecar,
        egress: egress_scope(sidecar),
        namespace: node.namespace.clone(),
    }
}

/// Computes the whole view of `node`: every service it may call.
pub fn view(model: &Model, node: &ProxyNode) -> View {
    let scope = scope(model, node);
    let mut rejections = Vec::new();
    let mut services = Vec::new();
    for svc in model.registry.services.values() {
        if scope.allows(svc) {
            services.push(service_view(model, svc, node, &mut rejections));
        }
    }
    let mut state = workload_state(model, node, &scope);
    state.services = services;
    View { state, rejections }
}

/// The proxy's own part of its state: everything but the services.
pub fn workload_state(model: &Model, node: &ProxyNode, scope: &Scope<'_>) -> state::ProxyState {
    let outbound = scope
        .sidecar
        .and_then(|s| s.spec.outbound_traffic_policy.as_ref())
        .and_then(|p| p.mode);
    let cfg = &model.config;
    state::ProxyState {
        version: String::new(),
        services: Vec::new(),
        outbound_traffic_policy: match outbound {
            Some(OutboundTrafficMode::RegistryOnly) => state::OutboundTrafficPolicy::RegistryOnly,
            _ => state::OutboundTrafficPolicy::AllowAny,
        }
        .into(),
        inbound_ports: inbound_ports(model, node),
        domain: cfg.domain.clone(),
        namespace: node.namespace.clone(),
        workload_labels: node.labels.clone().into_iter().collect(),
        peer_authentication: Some(peer_authentication::effective(
            &model.peer_authentications,
            &cfg.root_namespace,
            &node.namespace,
            &node.labels,
        )),
        authorization_policies: policy::authorization_for(
            &model.authorization_policies,
            &cfg.root_namespace,
            &node.namespace,
            &node.labels,
        )
        .into_iter()
        .map(|p| policy_ref(&p.metadata, &p.spec))
        .collect(),
        extension_providers: extension_providers(model, node),
        request_authentications: policy::request_authentication_for(
            &model.request_authentications,
            &cfg.root_namespace,
            &node.namespace,
            &node.labels,
        )
        .into_iter()
        .map(|p| policy_ref(&p.metadata, &p.spec))
        .collect(),
        locality: locality_of(model, node),
        gateway_listeners: if node.is_gateway {
            gateway::listeners(model, node)
        } else {
            Vec::new()
        },
        telemetry: Some(telemetry::resolve(model, node).telemetry),
        rate_limits: rate_limits::rate_limits(&policy::rate_limits_for(
            &model.rate_limit_policies,
            &cfg.root_namespace,
            &node.namespace,
            &node.labels,
        )),
    }
}

/// Where the proxy's workload runs: the locality its endpoints have in the registry (a
/// WorkloadEntry's `locality` counts), else what its own labels say.
fn locality_of(model: &Model, node: &ProxyNode) -> String {
    let registry = &model.registry;
    node.ip_addresses
        .iter()
        .filter_map(|ip| registry.by_endpoint.get(ip))
        .flatten()
        .filter_map(|host| registry.services.get(host))
        .flat_map(|svc| &svc.endpoints)
        .find(|e| !e.locality.is_empty() && node.ip_addresses.contains(&e.address))
        .map(|e| e.locality.clone())
        .unwrap_or_else(|| mesh_api::locality::of_workload("", &node.labels))
}

/// The mesh configuration's authorizers that this workload's CUSTOM policies name, each with
/// its service resolved in the registry.
pub fn extension_providers(model: &Model, node: &ProxyNode) -> Vec<state::ExtensionProvider> {
    let cfg = &model.config;
    let mut names: Vec<&str> = policy::authorization_for(
        &model.authorization_policies,
        &cfg.root_namespace,
        &node.namespace,
        &node.labels,
    )
    .into_iter()
    .filter(|p| p.spec.action == Some(mesh_api::security::AuthorizationAction::Custom))
    .filter_map(|p| p.spec.provider.as_ref().map(|x| x.name.as_str()))
    .collect();
    names.sort_unstable();
    names.dedup();
    names
        .into_iter()
        .filter_map(|name| model.mesh.provider(name))
        .filter(|p| p.is_authorizer())
        .map(|p| state::ExtensionProvider {
            name: p.name.clone(),
            spec_json: serde_json::to_string(p).unwrap_or_default(),
            host: authorizer_host(model, p).unwrap_or_default(),
        })
        .collect()
}

/// The registry host of a provider's `[<namespace>/]<hostname>`.
pub fn authorizer_host(
    model: &Model,
    p: &mesh_api::mesh_config::ExtensionProvider,
) -> Option<String> {
    let service = p
        .envoy_ext_authz_http
        .as_ref()
        .map(|h| h.service.as_str())
        .or_else(|| p.envoy_ext_authz_grpc.as_ref().map(|g| g.service.as_str()))?;
    service_host(model, service)
}

/// The registry host of a provider's service, written `[<namespace>/]<hostname>`.
pub fn service_host(model: &Model, service: &str) -> Option<String> {
    let (namespace, host) = match service.split_once('/') {
        Some((ns, h)) => (Some(ns), h),
        None => (None, service),
    };
    let svc = model.registry.services.get(host)?;
    if namespace.is_some_and(|ns| ns != svc.namespace) {
        return None;
    }
    Some(svc.hostname.clone())
}

fn policy_ref(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    spec: &impl Serialize,
) -> state::Policy {
    state::Policy {
        name: meta.name.clone().unwrap_or_default(),
        namespace: namespace_of(meta).to_string(),
        spec_json: serde_json::to_string(spec).unwrap_or_default(),
        // Istio reads the annotation's value as a boolean.
        dry_run: meta
            .annotations
            .as_ref()
            .and_then(|a| a.get("istio.io/dry-run"))
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("true")),
    }
}

/// The state of one service as `node` sees it.
pub fn service_view(
    model: &Model,
    svc: &MeshService,
    node: &ProxyNode,
    rejections: &mut Vec<Rejection>,
) -> state::Service {
    let mut out = state::Service {
        hostname: svc.hostname.clone(),
        namespace: svc.namespace.clone(),
        addresses: svc.addresses.clone(),
        ports: svc.ports.clone(),
        endpoints: svc.endpoints.clone(),
        ..Default::default()
    };
    let rules = destination::rules_for(model, svc, node);
    if let Err(r) = destination::apply(model, &rules, &mut out) {
        rejections.push(r);
        out.traffic_policy = None;
        out.subsets.clear();
    }
    destination::apply_locality(model, &mut out);
    if svc.passthrough {
        let tp = out.traffic_policy.get_or_insert_with(Default::default);
        if tp.load_balancer() == state::LoadBalancer::Unspecified {
            tp.set_load_balancer(state::LoadBalancer::Passthrough);
        }
    }
    if let Some(vs) = virtual_service_for(model, &svc.hostname, node) {
        out.http_routes = routes::http_routes(model, vs, node);
        out.tcp_routes = routes::tcp_routes(model, vs, node);
        out.tls_routes = routes::tls_routes(model, vs, node);
    }
    out
}

/// Ports the workload serves: the target ports of every service that has it as an endpoint.
fn inbound_ports(model: &Model, node: &ProxyNode) -> Vec<state::WorkloadPort> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    let hosts = node
        .ip_addresses
        .iter()
        .filter_map(|ip| model.registry.by_endpoint.get(ip))
        .flatten();
    for svc in hosts.filter_map(|h| model.registry.services.get(h)) {
        for ep in svc
            .endpoints
            .iter()
            .filter(|e| node.ip_addresses.contains(&e.address))
        {
            for p in &svc.ports {
                let port = ep.ports.get(&p.name).copied().unwrap_or(p.target_port);
                if seen.insert(port) {
                    out.push(state::WorkloadPort {
                        port,
                        protocol: p.protocol,
                    });
                }
            }
        }
    }
    out.sort_by_key(|p| p.port);
    out
}
