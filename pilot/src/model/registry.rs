//! The service registry: services (Kubernetes Services and ServiceEntries) and the endpoints
//! behind them (Pods, EndpointSlices, WorkloadEntries and a ServiceEntry's own endpoints).

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use mesh_api::networking::{Location, Resolution, ServiceEntry, WorkloadEntry, WorkloadEntrySpec};
use mesh_api::proto::state::v1 as state;

use super::host::Visibility;

/// The label Istio puts on workloads that have a sidecar (and so accept mesh mTLS).
pub const TLS_MODE_LABEL: &str = "security.istio.io/tlsMode";
/// The annotation that sets a Kubernetes Service's `exportTo`.
pub const EXPORT_TO_ANNOTATION: &str = "networking.istio.io/exportTo";
/// The label that ties an EndpointSlice to its Service.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// A workload instance: a Pod or a WorkloadEntry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Workload {
    /// `Pod` or `WorkloadEntry`.
    pub kind: &'static str,
    /// Name.
    pub name: String,
    /// Namespace.
    pub namespace: String,
    /// Its address.
    pub address: String,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// Service account (its identity).
    pub service_account: String,
    /// Named ports (container ports of a Pod, `ports` of a WorkloadEntry).
    pub ports: BTreeMap<String, u32>,
    /// Relative weight.
    pub weight: u32,
    /// Where it runs, `region/zone/subzone` (empty: unknown).
    pub locality: String,
}

impl Workload {
    /// True when the workload has a sidecar.
    pub fn mesh(&self) -> bool {
        self.labels
            .get(TLS_MODE_LABEL)
            .is_some_and(|v| v == "istio")
    }

    fn from_pod(pod: &Pod) -> Option<Self> {
        let status = pod.status.as_ref()?;
        if matches!(status.phase.as_deref(), Some("Succeeded" | "Failed")) {
            return None;
        }
        let address = status.pod_ip.clone().filter(|a| !a.is_empty())?;
        let spec = pod.spec.as_ref();
        let ports = spec
            .map(|s| s.containers.iter())
            .into_iter()
            .flatten()
            .flat_map(|c| c.ports.iter().flatten())
            .filter_map(|p| Some((p.name.clone()?, u32::try_from(p.container_port).ok()?)))
            .collect();
        let labels = pod.metadata.labels.clone().unwrap_or_default();
        Some(Workload {
            kind: "Pod",
            name: pod.metadata.name.clone().unwrap_or_default(),
            namespace: namespace_of(pod.metadata.namespace.as_deref()),
            address,
            locality: mesh_api::locality::of_workload("", &labels),
            labels,
            service_account: spec
                .and_then(|s| s.service_account_name.clone())
                .unwrap_or_default(),
            ports,
            weight: 1,
        })
    }

    fn from_entry(name: &str, namespace: &str, spec: &WorkloadEntrySpec) -> Self {
        Workload {
            kind: "WorkloadEntry",
            name: name.to_string(),
            namespace: namespace.to_string(),
            address: spec.address.clone(),
            labels: spec.labels.clone(),
            service_account: spec.service_account.clone(),
            ports: spec.ports.clone(),
            weight: spec.weight.unwrap_or(1).max(1),
            locality: mesh_api::locality::of_workload(&spec.locality, &spec.labels),
        }
    }

    /// The workload's SPIFFE identity in `trust_domain`.
    pub fn identity(&self, trust_domain: &str) -> String {
        let sa = if self.service_account.is_empty() {
            "default"
        } else {
            &self.service_account
        };
        mesh_api::identity::Identity::new(trust_domain, &self.namespace, sa).uri()
    }

    fn endpoint(&self, trust_domain: &str, ports: BTreeMap<String, u32>) -> state::Endpoint {
        state::Endpoint {
            address: self.address.clone(),
            ports: ports.into_iter().collect(),
            labels: self.labels.clone().into_iter().collect(),
            identity: self.identity(trust_domain),
            weight: self.weight,
            mesh: self.mesh(),
            locality: self.locality.clone(),
        }
    }
}

fn namespace_of(ns: Option<&str>) -> String {
    super::select::namespace_or_default(ns).to_string()
}

fn selects(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    super::select::Selector::new(selector).matches(labels)
}

/// A service of the mesh.
#[derive(Clone, Debug, PartialEq)]
pub struct MeshService {
    /// What defined it: `Service ns/name` or `ServiceEntry ns/name`.
    pub origin: String,
    /// Fully qualified host name (may be a wildcard for ServiceEntries).
    pub hostname: String,
    /// Namespace of the defining resource.
    pub namespace: String,
    /// Virtual IPs.
    pub addresses: Vec<String>,
    /// Ports.
    pub ports: Vec<state::ServicePort>,
    /// Endpoints.
    pub endpoints: Vec<state::Endpoint>,
    /// Who may see it.
    pub visibility: Visibility,
    /// Traffic goes to the address the caller asked for (resolution NONE, or DNS names the
    /// proxy does not resolve itself).
    pub passthrough: bool,
    /// Selector (Kubernetes Service selector, ServiceEntry workloadSelector), for finding which
    /// services a workload serves.
    pub selector: Option<BTreeMap<String, String>>,
}

/// Istio's protocol for a port: `appProtocol`, else the port name's prefix; DETECT for names
/// the mesh does not tell apart. `None` for ports the mesh does not carry (UDP, SCTP).
pub fn protocol_of(
    l4: Option<&str>,
    app_protocol: Option<&str>,
    name: &str,
) -> Option<state::Protocol> {
    if matches!(l4, Some(p) if !p.eq_ignore_ascii_case("TCP")) {
        return None;
    }
    let declared = app_protocol.filter(|p| !p.is_empty()).unwrap_or(name);
    Some(state::Protocol::from_istio_name(declared).unwrap_or(state::Protocol::Detect))
}

/// Builds the registry from the resources of the mesh. Findings that make a resource unusable
/// are returned as `(resource, field, message)`.
pub struct RegistryInput<'a> {
    /// Kubernetes Services.
    pub services: Vec<&'a Service>,
    /// ServiceEntries.
    pub service_entries: Vec<&'a ServiceEntry>,
    /// Pods.
    pub pods: Vec<&'a Pod>,
    /// EndpointSlices.
    pub slices: Vec<&'a EndpointSlice>,
    /// WorkloadEntries.
    pub workload_entries: Vec<&'a WorkloadEntry>,
}

/// Lookups the registry build needs, so it stays linear in the size of the mesh.
struct Index<'a> {
    by_namespace: HashMap<&'a str, Vec<&'a Workload>>,
    pods: HashMap<(&'a str, &'a str), &'a Workload>,
    /// EndpointSlices by (namespace, service name).
    slices: HashMap<(String, String), Vec<&'a EndpointSlice>>,
}

impl<'a> Index<'a> {
    fn new(workloads: &'a [Workload], slices: &[&'a EndpointSlice]) -> Self {
        let mut by_namespace: HashMap<&str, Vec<&Workload>> = HashMap::new();
        let mut pods = HashMap::new();
        for w in workloads {
            by_namespace
                .entry(w.namespace.as_str())
                .or_default()
                .push(w);
            if w.kind == "Pod" {
                pods.insert((w.namespace.as_str(), w.name.as_str()), w);
            }
        }
        let mut by_service: HashMap<(String, String), Vec<&EndpointSlice>> = HashMap::new();
        for s in slices {
            if let Some(svc) = s
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(SERVICE_NAME_LABEL))
            {
                let ns = namespace_of(s.metadata.namespace.as_deref());
                by_service.entry((ns, svc.clone())).or_default().push(s);
            }
        }
        Index {
            by_namespace,
            pods,
            slices: by_service,
        }
    }

    fn in_namespace(&self, ns: &str) -> impl Iterator<Item = &'a Workload> + '_ {
        self.by_namespace.get(ns).into_iter().flatten().copied()
    }
}

/// The registry: services by host, and the workloads.
#[derive(Clone, Debug, Default)]
pub struct Registry {
    /// Services, by host name; when two resources define one host, the Kubernetes Service
    /// wins, then the oldest ServiceEntry (then by namespace/name).
    pub services: BTreeMap<String, MeshService>,
    /// Every workload.
    pub workloads: Vec<Workload>,
    /// Host names of the services of each namespace.
    pub by_namespace: BTreeMap<String, Vec<String>>,
    /// Host name of the service at each virtual IP.
    pub by_address: BTreeMap<String, String>,
    /// Host names of the services each endpoint address serves.
    pub by_endpoint: HashMap<String, Vec<String>>,
}

impl Registry {
    /// Builds the registry.
    pub fn build(input: RegistryInput<'_>, domain: &str, trust_domain: &str) -> Self {
        let mut workloads: Vec<Workload> = input
            .pods
            .iter()
            .filter_map(|p| Workload::from_pod(p))
            .collect();
        workloads.extend(input.workload_entries.iter().map(|we| {
            Workload::from_entry(
                we.metadata.name.as_deref().unwrap_or(""),
                &namespace_of(we.metadata.namespace.as_deref()),
                &we.spec,
            )
        }));
        let index = Index::new(&workloads, &input.slices);
        let mut services = BTreeMap::new();
        for svc in &input.services {
            if let Some(s) = from_service(svc, &index, domain, trust_domain) {
                services.insert(s.hostname.clone(), s);
            }
        }
        let mut entries = input.service_entries.clone();
        entries.sort_by_key(|e| {
            (
                e.metadata.creation_timestamp.as_ref().map(|t| t.0),
                e.metadata.namespace.clone(),
                e.metadata.name.clone(),
            )
        });
        for se in entries {
            for s in from_service_entry(se, &index, trust_domain) {
                services.entry(s.hostname.clone()).or_insert(s);
            }
        }
        drop(index);
        let mut by_namespace: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut by_address = BTreeMap::new();
        let mut by_endpoint: HashMap<String, Vec<String>> = HashMap::new();
        for s in services.values() {
            for e in &s.endpoints {
                by_endpoint
                    .entry(e.address.clone())
                    .or_default()
                    .push(s.hostname.clone());
            }
            by_namespace
                .entry(s.namespace.clone())
                .or_default()
                .push(s.hostname.clone());
            for a in &s.addresses {
                by_address
                    .entry(a.clone())
                    .or_insert_with(|| s.hostname.clone());
            }
        }
        Registry {
            services,
            workloads,
            by_namespace,
            by_address,
            by_endpoint,
        }
    }
}

fn from_service(
    svc: &Service,
    index: &Index<'_>,
    domain: &str,
    trust_domain: &str,
) -> Option<MeshService> {
    let name = svc.metadata.name.clone()?;
    let namespace = namespace_of(svc.metadata.namespace.as_deref());
    let spec = svc.spec.clone().unwrap_or_default();
    let addresses: Vec<String> = spec
        .cluster_ips
        .clone()
        .filter(|ips| !ips.is_empty())
        .or_else(|| spec.cluster_ip.clone().map(|ip| vec![ip]))
        .unwrap_or_default()
        .into_iter()
        .filter(|ip| ip.parse::<IpAddr>().is_ok())
        .collect();
    let mut ports = Vec::new();
    // Named target ports, resolved per endpoint below.
    let mut named_targets = BTreeMap::new();
    for p in spec.ports.iter().flatten() {
        let pname = p.name.clone().unwrap_or_default();
        let Some(protocol) = protocol_of(p.protocol.as_deref(), p.app_protocol.as_deref(), &pname)
        else {
            continue;
        };
        let port = u32::try_from(p.port).unwrap_or(0);
        let target_port = match &p.target_port {
            Some(IntOrString::Int(t)) => u32::try_from(*t).unwrap_or(port),
            Some(IntOrString::String(s)) => {
                named_targets.insert(pname.clone(), s.clone());
                port
            }
            None => port,
        };
        ports.push(state::ServicePort {
            port,
            name: pname,
            protocol: protocol.into(),
            target_port,
        });
    }
    let annotations = svc.metadata.annotations.clone().unwrap_or_default();
    let export_to: Vec<String> = annotations
        .get(EXPORT_TO_ANNOTATION)
        .map(|v| v.split(',').map(|s| s.trim().to_string()).collect())
        .unwrap_or_default();
    let selector = spec.selector.clone().filter(|s| !s.is_empty());
    let own_slices = index
        .slices
        .get(&(namespace.clone(), name.clone()))
        .cloned()
        .unwrap_or_default();
    let mut endpoints = Vec::new();
    let mut passthrough = false;
    if spec.type_.as_deref() == Some("ExternalName") {
        passthrough = true;
    } else if !own_slices.is_empty() {
        for slice in own_slices {
            endpoints.extend(slice_endpoints(
                slice,
                &namespace,
                &ports,
                index,
                trust_domain,
            ));
        }
    } else if let Some(sel) = &selector {
        for w in index
            .in_namespace(&namespace)
            .filter(|w| selects(sel, &w.labels))
        {
            let mut eports = BTreeMap::new();
            for (pname, target) in &named_targets {
                if let Some(p) = w.ports.get(target) {
                    eports.insert(pname.clone(), *p);
                }
            }
            if w.kind == "WorkloadEntry" {
                // A WorkloadEntry names its ports by the service port name.
                for p in &ports {
                    if let Some(n) = w.ports.get(&p.name) {
                        eports.insert(p.name.clone(), *n);
                    }
                }
            }
            endpoints.push(w.endpoint(trust_domain, eports));
        }
    }
    Some(MeshService {
        origin: format!("Service {namespace}/{name}"),
        hostname: format!("{name}.{namespace}.svc.{domain}"),
        visibility: Visibility::from_export_to(&export_to, &namespace),
        namespace,
        addresses,
        ports,
        endpoints,
        passthrough,
        selector,
    })
}

fn slice_endpoints(
    slice: &EndpointSlice,
    namespace: &str,
    ports: &[state::ServicePort],
    index: &Index<'_>,
    trust_domain: &str,
) -> Vec<state::Endpoint> {
    if slice.address_type == "FQDN" {
        return Vec::new();
    }
    let slice_ports: BTreeMap<String, u32> = slice
        .ports
        .iter()
        .flatten()
        .filter_map(|p| {
            Some((
                p.name.clone().unwrap_or_default(),
                u32::try_from(p.port?).ok()?,
            ))
        })
        .collect();
    let mut out = Vec::new();
    for ep in &slice.endpoints {
        if ep.conditions.as_ref().and_then(|c| c.ready) == Some(false) {
            continue;
        }
        let pod = ep
            .target_ref
            .as_ref()
            .filter(|r| r.kind.as_deref() == Some("Pod"))
            .and_then(|r| {
                let ns = namespace_of(r.namespace.as_deref().or(Some(namespace)));
                index
                    .pods
                    .get(&(ns.as_str(), r.name.as_deref().unwrap_or("")))
                    .copied()
            });
        for address in &ep.addresses {
            let eports = ports
                .iter()
                .filter_map(|p| Some((p.name.clone(), *slice_ports.get(&p.name)?)))
                .collect();
            let w = match pod {
                Some(w) => Workload {
                    address: address.clone(),
                    ..w.clone()
                },
                None => Workload {
                    kind: "Pod",
                    name: String::new(),
                    namespace: namespace.to_string(),
                    address: address.clone(),
                    labels: BTreeMap::new(),
                    service_account: String::new(),
                    ports: BTreeMap::new(),
                    weight: 1,
                    locality: String::new(),
                },
            };
            out.push(w.endpoint(trust_domain, eports));
        }
    }
    out
}

fn from_service_entry(
    se: &ServiceEntry,
    index: &Index<'_>,
    trust_domain: &str,
) -> Vec<MeshService> {
    let namespace = namespace_of(se.metadata.namespace.as_deref());
    let name = se.metadata.name.clone().unwrap_or_default();
    let spec = &se.spec;
    let external = spec.location == Some(Location::MeshExternal);
    let resolution = spec.resolution.unwrap_or(Resolution::None);
    let ports: Vec<state::ServicePort> = spec
        .ports
        .iter()
        .filter_map(|p| {
            let protocol = protocol_of(None, Some(&p.protocol), &p.name)?;
            Some(state::ServicePort {
                port: p.number,
                name: p.name.clone(),
                protocol: protocol.into(),
                target_port: p.target_port.unwrap_or(p.number),
            })
        })
        .collect();
    let mut members: Vec<Workload> = spec
        .endpoints
        .iter()
        .enumerate()
        .map(|(i, e)| Workload::from_entry(&format!("{name}[{i}]"), &namespace, e))
        .collect();
    if let Some(sel) = &spec.workload_selector {
        members.extend(
            index
                .in_namespace(&namespace)
                .filter(|w| selects(&sel.labels, &w.labels))
                .cloned(),
        );
    }
    let mut endpoints = Vec::new();
    let mut passthrough = resolution == Resolution::None && members.is_empty();
    for w in &members {
        if w.address.parse::<IpAddr>().is_err() {
            // A DNS name: the proxy forwards to the address the caller resolved itself.
            passthrough = true;
            continue;
        }
        let eports = ports
            .iter()
            .filter_map(|p| Some((p.name.clone(), *w.ports.get(&p.name)?)))
            .collect();
        let mut ep = w.endpoint(trust_domain, eports);
        if external {
            ep.mesh = false;
        }
        if !spec.subject_alt_names.is_empty() && w.service_account.is_empty() {
            ep.identity = spec.subject_alt_names[0].clone();
        }
        endpoints.push(ep);
    }
    if resolution == Resolution::Dns && endpoints.is_empty() {
        passthrough = true;
    }
    spec.hosts
        .iter()
        .map(|host| MeshService {
            origin: format!("ServiceEntry {namespace}/{name}"),
            hostname: host.clone(),
            namespace: namespace.clone(),
            addresses: spec
                .addresses
                .iter()
                .filter(|a| a.parse::<IpAddr>().is_ok())
                .cloned()
                .collect(),
            ports: ports.clone(),
            endpoints: endpoints.clone(),
            visibility: Visibility::from_export_to(&spec.export_to, &namespace),
            passthrough,
            selector: spec.workload_selector.as_ref().map(|s| s.labels.clone()),
        })
        .collect()
}
