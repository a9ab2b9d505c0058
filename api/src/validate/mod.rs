//! Semantic validation, with the rules Istio's validating webhook and CRD schemas apply: ranges,
//! formats, required and mutually exclusive fields, regular expressions (RE2 syntax) and
//! durations. Each finding names the field path and what is expected; positions are added by
//! the loader.

mod checks;
mod enforced;
mod gateway_api;
mod kube;
mod networking;
mod policy;
mod security;
mod telemetry;
mod virtual_service;

use crate::diagnostic::Diagnostic;
use crate::resource::Resource;

pub use checks::parse_duration;
pub use enforced::{NOT_ENFORCED, not_enforced};
pub use gateway_api::parse_gateway_duration;
pub(crate) use networking::locality_lb_findings;
pub use policy::MIN_FILL_INTERVAL;
/// The same inventory per resource kind, for the spec alone (pilot's per-proxy report).
pub mod not_enforced_in {
    pub use super::enforced::{
        in_authorization_policy as authorization_policy, in_destination_rule as destination_rule,
        in_request_authentication as request_authentication, in_sidecar as sidecar,
        in_telemetry as telemetry, in_virtual_service as virtual_service,
    };
}

/// Collects findings, each at a field path.
#[derive(Default)]
pub(crate) struct Findings {
    pub(crate) out: Vec<Diagnostic>,
}

impl Findings {
    /// An error at `field`.
    pub(crate) fn error(&mut self, field: impl AsRef<str>, message: impl Into<String>) {
        self.out
            .push(Diagnostic::error(message).at_field(field.as_ref()));
    }

    /// A warning at `field`.
    pub(crate) fn warning(&mut self, field: impl AsRef<str>, message: impl Into<String>) {
        self.out
            .push(Diagnostic::warning(message).at_field(field.as_ref()));
    }
}

/// Validates one resource on its own (references to other resources are checked by analysis,
/// not here). Returns errors and warnings; the resource is valid when there is no error.
pub fn validate(resource: &Resource) -> Vec<Diagnostic> {
    let mut f = Findings::default();
    kube::metadata(&mut f, resource);
    let ns = resource.namespace().unwrap_or("default");
    match resource {
        Resource::VirtualService(r) => networking::virtual_service(&mut f, &r.spec),
        Resource::DestinationRule(r) => networking::destination_rule(&mut f, &r.spec),
        Resource::Gateway(r) => networking::gateway(&mut f, &r.spec),
        Resource::ServiceEntry(r) => networking::service_entry(&mut f, &r.spec),
        Resource::WorkloadEntry(r) => networking::workload_entry(&mut f, "spec", &r.spec, true),
        Resource::WorkloadGroup(r) => networking::workload_group(&mut f, &r.spec),
        Resource::Sidecar(r) => networking::sidecar(&mut f, &r.spec),
        Resource::PeerAuthentication(r) => security::peer_authentication(&mut f, &r.spec),
        Resource::AuthorizationPolicy(r) => security::authorization_policy(&mut f, ns, &r.spec),
        Resource::RequestAuthentication(r) => security::request_authentication(&mut f, ns, &r.spec),
        Resource::Telemetry(r) => telemetry::telemetry(&mut f, ns, &r.spec),
        Resource::RateLimitPolicy(r) => policy::rate_limit_policy(&mut f, &r.spec),
        Resource::Service(r) => kube::service(&mut f, r),
        Resource::Deployment(r) => kube::deployment(&mut f, r),
        Resource::ConfigMap(r) => kube::config_map(&mut f, r),
        Resource::GatewayClass(r) => gateway_api::gateway_class(&mut f, &r.spec),
        Resource::KubeGateway(r) => gateway_api::gateway(&mut f, &r.spec),
        Resource::HttpRoute(r) => gateway_api::http_route(&mut f, &r.spec),
        Resource::GrpcRoute(r) => gateway_api::grpc_route(&mut f, &r.spec),
        Resource::ReferenceGrant(r) => gateway_api::reference_grant(&mut f, &r.spec),
        Resource::Secret(_) => {}
        Resource::Namespace(_)
        | Resource::ServiceAccount(_)
        | Resource::Pod(_)
        | Resource::EndpointSlice(_) => {}
    }
    f.out
}
