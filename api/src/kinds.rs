//! The kinds of resource the mesh reads, with the API groups and versions each is served in.

use std::fmt;

/// A kind of resource the mesh understands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// networking.istio.io VirtualService.
    VirtualService,
    /// networking.istio.io DestinationRule.
    DestinationRule,
    /// networking.istio.io Gateway.
    Gateway,
    /// networking.istio.io ServiceEntry.
    ServiceEntry,
    /// networking.istio.io WorkloadEntry.
    WorkloadEntry,
    /// networking.istio.io WorkloadGroup.
    WorkloadGroup,
    /// networking.istio.io Sidecar.
    Sidecar,
    /// security.istio.io PeerAuthentication.
    PeerAuthentication,
    /// security.istio.io AuthorizationPolicy.
    AuthorizationPolicy,
    /// security.istio.io RequestAuthentication.
    RequestAuthentication,
    /// telemetry.istio.io Telemetry.
    Telemetry,
    /// policy.mesh.dev RateLimitPolicy (the mesh's own).
    RateLimitPolicy,
    /// gateway.networking.k8s.io GatewayClass (cluster-scoped).
    GatewayClass,
    /// gateway.networking.k8s.io Gateway (the Kubernetes Gateway API's, not Istio's).
    KubeGateway,
    /// gateway.networking.k8s.io HTTPRoute.
    HttpRoute,
    /// gateway.networking.k8s.io GRPCRoute.
    GrpcRoute,
    /// gateway.networking.k8s.io ReferenceGrant.
    ReferenceGrant,
    /// core/v1 Namespace.
    Namespace,
    /// core/v1 Service.
    Service,
    /// core/v1 ServiceAccount.
    ServiceAccount,
    /// core/v1 Pod.
    Pod,
    /// apps/v1 Deployment.
    Deployment,
    /// discovery.k8s.io/v1 EndpointSlice.
    EndpointSlice,
    /// core/v1 ConfigMap (of which the mesh reads only `istio` in the root namespace).
    ConfigMap,
    /// core/v1 Secret (of which the mesh reads those Gateways name in `credentialName`).
    Secret,
}

const NETWORKING: &str = "networking.istio.io";
const SECURITY: &str = "security.istio.io";
const NETWORKING_VERSIONS: &[&str] = &["v1", "v1beta1", "v1alpha3"];
const SECURITY_VERSIONS: &[&str] = &["v1", "v1beta1"];
const TELEMETRY: &str = "telemetry.istio.io";
const TELEMETRY_VERSIONS: &[&str] = &["v1", "v1alpha1"];
const POLICY: &str = "policy.mesh.dev";
const POLICY_VERSIONS: &[&str] = &["v1alpha1"];
const GATEWAY_API: &str = "gateway.networking.k8s.io";
const GATEWAY_API_VERSIONS: &[&str] = &["v1", "v1beta1", "v1alpha2"];

impl Kind {
    /// Every kind, Istio's first.
    pub const ALL: [Kind; 25] = [
        Kind::VirtualService,
        Kind::DestinationRule,
        Kind::Gateway,
        Kind::ServiceEntry,
        Kind::WorkloadEntry,
        Kind::WorkloadGroup,
        Kind::Sidecar,
        Kind::PeerAuthentication,
        Kind::AuthorizationPolicy,
        Kind::RequestAuthentication,
        Kind::Telemetry,
        Kind::RateLimitPolicy,
        Kind::GatewayClass,
        Kind::KubeGateway,
        Kind::HttpRoute,
        Kind::GrpcRoute,
        Kind::ReferenceGrant,
        Kind::Namespace,
        Kind::Service,
        Kind::ServiceAccount,
        Kind::Pod,
        Kind::Deployment,
        Kind::EndpointSlice,
        Kind::ConfigMap,
        Kind::Secret,
    ];

    /// The `kind:` string.
    pub fn name(self) -> &'static str {
        match self {
            Kind::VirtualService => "VirtualService",
            Kind::DestinationRule => "DestinationRule",
            Kind::Gateway => "Gateway",
            Kind::ServiceEntry => "ServiceEntry",
            Kind::WorkloadEntry => "WorkloadEntry",
            Kind::WorkloadGroup => "WorkloadGroup",
            Kind::Sidecar => "Sidecar",
            Kind::PeerAuthentication => "PeerAuthentication",
            Kind::AuthorizationPolicy => "AuthorizationPolicy",
            Kind::RequestAuthentication => "RequestAuthentication",
            Kind::Telemetry => "Telemetry",
            Kind::RateLimitPolicy => "RateLimitPolicy",
            Kind::GatewayClass => "GatewayClass",
            Kind::KubeGateway => "Gateway",
            Kind::HttpRoute => "HTTPRoute",
            Kind::GrpcRoute => "GRPCRoute",
            Kind::ReferenceGrant => "ReferenceGrant",
            Kind::Namespace => "Namespace",
            Kind::Service => "Service",
            Kind::ServiceAccount => "ServiceAccount",
            Kind::Pod => "Pod",
            Kind::Deployment => "Deployment",
            Kind::EndpointSlice => "EndpointSlice",
            Kind::ConfigMap => "ConfigMap",
            Kind::Secret => "Secret",
        }
    }

    /// The API group (empty for the core group).
    pub fn group(self) -> &'static str {
        match self {
            Kind::VirtualService
            | Kind::DestinationRule
            | Kind::Gateway
            | Kind::ServiceEntry
            | Kind::WorkloadEntry
            | Kind::WorkloadGroup
            | Kind::Sidecar => NETWORKING,
            Kind::PeerAuthentication | Kind::AuthorizationPolicy | Kind::RequestAuthentication => {
                SECURITY
            }
            Kind::Telemetry => TELEMETRY,
            Kind::RateLimitPolicy => POLICY,
            Kind::GatewayClass
            | Kind::KubeGateway
            | Kind::HttpRoute
            | Kind::GrpcRoute
            | Kind::ReferenceGrant => GATEWAY_API,
            Kind::Namespace
            | Kind::Service
            | Kind::ServiceAccount
            | Kind::Pod
            | Kind::ConfigMap
            | Kind::Secret => "",
            Kind::Deployment => "apps",
            Kind::EndpointSlice => "discovery.k8s.io",
        }
    }

    /// The versions served, newest first.
    pub fn versions(self) -> &'static [&'static str] {
        match self.group() {
            NETWORKING => NETWORKING_VERSIONS,
            SECURITY => SECURITY_VERSIONS,
            TELEMETRY => TELEMETRY_VERSIONS,
            POLICY => POLICY_VERSIONS,
            GATEWAY_API => GATEWAY_API_VERSIONS,
            _ => &["v1"],
        }
    }

    /// True for Istio's custom resources (as opposed to Kubernetes' own objects).
    pub fn is_istio(self) -> bool {
        matches!(self.group(), NETWORKING | SECURITY | TELEMETRY)
    }

    /// True when a resource of this kind lives in a namespace.
    pub fn is_namespaced(self) -> bool {
        !matches!(self, Kind::Namespace | Kind::GatewayClass)
    }

    /// True for the Kubernetes Gateway API's kinds.
    pub fn is_gateway_api(self) -> bool {
        self.group() == GATEWAY_API
    }

    /// True when the resource is invalid without a `spec` (as Istio's CRD schemas require).
    pub fn requires_spec(self) -> bool {
        matches!(
            self,
            Kind::ServiceEntry | Kind::WorkloadEntry | Kind::WorkloadGroup
        )
    }

    /// Finds a kind by its `kind:` string and API group.
    pub fn lookup(kind: &str, group: &str) -> Option<Kind> {
        Kind::ALL
            .into_iter()
            .find(|k| k.name() == kind && k.group() == group)
    }

    /// `group/version` for the newest version.
    pub fn api_version(self) -> String {
        api_version(self.group(), self.versions()[0])
    }
}

/// Joins a group and version the way `apiVersion:` spells them.
pub fn api_version(group: &str, version: &str) -> String {
    if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    }
}

/// Splits an `apiVersion:` into group and version.
pub fn split_api_version(api_version: &str) -> (&str, &str) {
    api_version.rsplit_once('/').unwrap_or(("", api_version))
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
