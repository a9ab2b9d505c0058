//! The mesh model: Istio's semantics applied to validated resources. [`Model::build`] indexes
//! everything once per configuration change; the per-proxy translation (`crate::translate`)
//! then only reads it.

pub mod gateway_api;
pub mod host;
pub mod peer_authentication;
pub mod policy;
pub mod registry;
pub mod select;
pub mod vs_index;

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use mesh_api::Resource;
use mesh_api::mesh_config::{self, MeshConfigSpec};
use mesh_api::networking::{DestinationRule, Sidecar, VirtualService};
use mesh_api::policy::RateLimitPolicy;
use mesh_api::security::{AuthorizationPolicy, PeerAuthentication, RequestAuthentication};

pub use registry::{MeshService, Registry, Workload};

/// Mesh-wide settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MeshConfig {
    /// The cluster domain (`cluster.local`).
    pub domain: String,
    /// The trust domain of identities (`cluster.local`).
    pub trust_domain: String,
    /// The root namespace, where mesh-wide policies live (`istio-system`).
    pub root_namespace: String,
}

impl Default for MeshConfig {
    fn default() -> Self {
        MeshConfig {
            domain: "cluster.local".into(),
            trust_domain: "cluster.local".into(),
            root_namespace: peer_authentication::DEFAULT_ROOT_NAMESPACE.into(),
        }
    }
}

/// A resource the model could not use, with the reason.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Rejection {
    /// `Kind namespace/name`.
    pub resource: String,
    /// The field at fault.
    pub field: String,
    /// What is wrong and what to do.
    pub message: String,
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}: {}", self.resource, self.field, self.message)
    }
}

/// Everything pilot knows, indexed.
#[derive(Clone, Debug, Default)]
pub struct Model {
    /// Mesh-wide settings.
    pub config: MeshConfig,
    /// Services and workloads.
    pub registry: Registry,
    /// VirtualServices, oldest first.
    pub virtual_services: Vec<VirtualService>,
    /// `virtual_services` by host.
    pub virtual_service_index: vs_index::VirtualServiceIndex,
    /// DestinationRules, oldest first.
    pub destination_rules: Vec<DestinationRule>,
    /// Sidecars.
    pub sidecars: Vec<Sidecar>,
    /// Istio Gateways, oldest first.
    pub gateways: Vec<mesh_api::networking::Gateway>,
    /// Secrets (those Gateways name in `credentialName`), by `namespace/name`.
    pub secrets: BTreeMap<String, k8s_openapi::api::core::v1::Secret>,
    /// PeerAuthentications.
    pub peer_authentications: Vec<PeerAuthentication>,
    /// AuthorizationPolicies.
    pub authorization_policies: Vec<AuthorizationPolicy>,
    /// RequestAuthentications.
    pub request_authentications: Vec<RequestAuthentication>,
    /// RateLimitPolicies (policy.mesh.dev).
    pub rate_limit_policies: Vec<RateLimitPolicy>,
    /// Telemetry resources.
    pub telemetries: Vec<mesh_api::telemetry::Telemetry>,
    /// Contents of files that DestinationRules name (CA certificates, client certificates and
    /// keys for TLS origination), read by the source; absent files are rejections.
    pub files: BTreeMap<String, String>,
    /// Istio's mesh configuration, from the ConfigMap `istio` in the root namespace (its
    /// extension providers: the external authorizers CUSTOM policies name).
    pub mesh: MeshConfigSpec,
    /// The status of every Gateway API object the mesh answers for.
    pub gateway_api_status: Vec<gateway_api::status::ObjectStatus>,
    /// The gateways Gateway API Gateways ask to be deployed.
    pub gateway_deployments: Vec<gateway_api::GatewayDeployment>,
}

pub use select::{Selector, namespace_of, oldest_first};

impl Model {
    /// Indexes `resources` (already validated).
    pub fn build<'a>(
        config: MeshConfig,
        resources: impl IntoIterator<Item = &'a Resource>,
        files: BTreeMap<String, String>,
    ) -> Self {
        let mut input = registry::RegistryInput {
            services: Vec::new(),
            service_entries: Vec::new(),
            pods: Vec::new(),
            slices: Vec::new(),
            workload_entries: Vec::new(),
        };
        let mut gateway_api_input = gateway_api::Input::default();
        let mut model = Model {
            config,
            files,
            ..Model::default()
        };
        for r in resources {
            match r {
                Resource::Service(s) => input.services.push(s),
                Resource::ServiceEntry(s) => input.service_entries.push(s),
                Resource::Pod(p) => input.pods.push(p),
                Resource::EndpointSlice(s) => input.slices.push(s),
                Resource::WorkloadEntry(w) => input.workload_entries.push(w),
                Resource::VirtualService(v) => model.virtual_services.push((**v).clone()),
                Resource::DestinationRule(d) => model.destination_rules.push((**d).clone()),
                Resource::Sidecar(s) => model.sidecars.push((**s).clone()),
                Resource::PeerAuthentication(p) => model.peer_authentications.push((**p).clone()),
                Resource::AuthorizationPolicy(p) => {
                    model.authorization_policies.push((**p).clone())
                }
                Resource::RequestAuthentication(p) => {
                    model.request_authentications.push((**p).clone());
                }
                Resource::RateLimitPolicy(p) => model.rate_limit_policies.push((**p).clone()),
                Resource::Telemetry(t) => model.telemetries.push((**t).clone()),
                Resource::ConfigMap(c) => {
                    if c.metadata.name.as_deref() == Some(mesh_config::CONFIG_MAP)
                        && c.metadata.namespace.as_deref() == Some(&model.config.root_namespace)
                        && let Some(text) = c.data.as_ref().and_then(|d| d.get(mesh_config::KEY))
                    {
                        // Validated on the way in; a config that cannot be read is refused
                        // there, so none is kept here.
                        model.mesh = MeshConfigSpec::parse(text).unwrap_or_default();
                    }
                }
                Resource::Gateway(g) => model.gateways.push((**g).clone()),
                Resource::Secret(s) => {
                    let key = format!(
                        "{}/{}",
                        namespace_of(&s.metadata),
                        s.metadata.name.as_deref().unwrap_or("")
                    );
                    model.secrets.insert(key, (**s).clone());
                }
                Resource::GatewayClass(c) => gateway_api_input.classes.push(c),
                Resource::KubeGateway(g) => gateway_api_input.gateways.push(g),
                Resource::HttpRoute(r) => gateway_api_input.http_routes.push(r),
                Resource::GrpcRoute(r) => gateway_api_input.grpc_routes.push(r),
                Resource::ReferenceGrant(g) => gateway_api_input.grants.push(g),
                Resource::Namespace(n) => {
                    gateway_api_input.namespaces.insert(
                        n.metadata.name.clone().unwrap_or_default(),
                        n.metadata.labels.clone().unwrap_or_default(),
                    );
                }
                Resource::WorkloadGroup(_)
                | Resource::ServiceAccount(_)
                | Resource::Deployment(_) => {}
            }
        }
        model.registry = Registry::build(input, &model.config.domain, &model.config.trust_domain);
        let converted = gateway_api::convert(
            &gateway_api_input,
            &model.registry,
            &model.config.domain,
            &model.secrets,
        );
        model.gateways.extend(converted.gateways);
        model.virtual_services.extend(converted.virtual_services);
        model.gateway_api_status = converted.statuses;
        model.gateway_deployments = converted.deployments;
        model
            .virtual_services
            .sort_by(|a, b| oldest_first(&a.metadata, &b.metadata));
        model.virtual_service_index =
            vs_index::VirtualServiceIndex::build(&model.virtual_services, &model.config.domain);
        model
            .destination_rules
            .sort_by(|a, b| oldest_first(&a.metadata, &b.metadata));
        model
            .sidecars
            .sort_by(|a, b| oldest_first(&a.metadata, &b.metadata));
        model
            .gateways
            .sort_by(|a, b| oldest_first(&a.metadata, &b.metadata));
        model
    }

    /// The workload at `address`, if the registry knows it.
    pub fn workload_at(&self, address: &str) -> Option<&Workload> {
        self.registry
            .workloads
            .iter()
            .find(|w| w.address == address)
    }
}

/// `Kind namespace/name` of a resource's metadata.
pub fn describe(kind: &str, meta: &ObjectMeta) -> String {
    format!(
        "{kind} {}/{}",
        namespace_of(meta),
        meta.name.as_deref().unwrap_or("")
    )
}
