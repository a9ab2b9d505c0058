//! A typed resource of any kind the mesh reads.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Secret, Service, ServiceAccount};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Serialize;

use crate::gateway_api as gw;
use crate::kinds::Kind;
use crate::networking::{
    DestinationRule, Gateway, ServiceEntry, Sidecar, VirtualService, WorkloadEntry, WorkloadGroup,
};
use crate::policy::RateLimitPolicy;
use crate::security::{AuthorizationPolicy, PeerAuthentication, RequestAuthentication};
use crate::telemetry::Telemetry;

macro_rules! resources {
    ($($variant:ident($ty:ty)),* $(,)?) => {
        /// One resource, typed by kind. Boxed: Kubernetes objects are kilobytes wide, and a
        /// mesh holds tens of thousands of resources, most of them small.
        #[derive(Clone, Debug, PartialEq, Serialize)]
        #[serde(untagged)]
        pub enum Resource {
            $(
                #[doc = concat!("A ", stringify!($variant), ".")]
                $variant(Box<$ty>),
            )*
        }

        impl Resource {
            /// The kind.
            pub fn kind(&self) -> Kind {
                match self {
                    $(Resource::$variant(_) => Kind::$variant,)*
                }
            }

            /// The object's metadata.
            pub fn metadata(&self) -> &ObjectMeta {
                match self {
                    $(Resource::$variant(r) => &r.metadata,)*
                }
            }

            /// The object's metadata, mutable.
            pub fn metadata_mut(&mut self) -> &mut ObjectMeta {
                match self {
                    $(Resource::$variant(r) => &mut r.metadata,)*
                }
            }
        }
    };
}

resources! {
    VirtualService(VirtualService),
    DestinationRule(DestinationRule),
    Gateway(Gateway),
    ServiceEntry(ServiceEntry),
    WorkloadEntry(WorkloadEntry),
    WorkloadGroup(WorkloadGroup),
    Sidecar(Sidecar),
    PeerAuthentication(PeerAuthentication),
    AuthorizationPolicy(AuthorizationPolicy),
    RequestAuthentication(RequestAuthentication),
    Telemetry(Telemetry),
    RateLimitPolicy(RateLimitPolicy),
    GatewayClass(gw::GatewayClass),
    KubeGateway(gw::Gateway),
    HttpRoute(gw::HTTPRoute),
    GrpcRoute(gw::GRPCRoute),
    ReferenceGrant(gw::ReferenceGrant),
    Namespace(Namespace),
    Service(Service),
    ServiceAccount(ServiceAccount),
    Pod(Pod),
    Deployment(Deployment),
    EndpointSlice(EndpointSlice),
    ConfigMap(ConfigMap),
    Secret(Secret),
}

impl Resource {
    /// The name (`metadata.name`), empty when unset.
    pub fn name(&self) -> &str {
        self.metadata().name.as_deref().unwrap_or("")
    }

    /// The namespace (`metadata.namespace`), when set.
    pub fn namespace(&self) -> Option<&str> {
        self.metadata().namespace.as_deref()
    }

    /// `namespace/name` as shown to users; the namespace reads `default` when unset, as
    /// `kubectl apply` would place it.
    pub fn display_name(&self) -> String {
        if self.kind().is_namespaced() {
            format!("{}/{}", self.namespace().unwrap_or("default"), self.name())
        } else {
            self.name().to_string()
        }
    }
}
