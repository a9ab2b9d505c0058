//! Generated protocol code: the discovery stream (pilot ⇄ proxy) and certificate signing
//! (proxy → CA). Messages are prost types; services have tonic client and server halves.

#![allow(missing_docs, clippy::all, clippy::pedantic)]

pub mod enum_serde;

/// Discovery between pilot and proxies: a delta stream of typed, named resources.
pub mod discovery {
    /// Version 1.
    pub mod v1 {
        tonic::include_proto!("mesh.discovery.v1");
    }
}

/// The per-proxy state: what one proxy needs, computed by pilot or read from a file.
pub mod state {
    /// Version 1.
    pub mod v1 {
        tonic::include_proto!("mesh.state.v1");
    }
}

/// Envoy's external authorization protocol (a subset, with Envoy's field numbers), which
/// CUSTOM AuthorizationPolicies speak to `envoyExtAuthzGrpc` providers.
pub mod envoy {
    /// `envoy.service`.
    pub mod service {
        /// `envoy.service.auth`.
        pub mod auth {
            /// `envoy.service.auth.v3`.
            pub mod v3 {
                tonic::include_proto!("envoy.service.auth.v3");
            }
        }
    }
    /// `envoy.config`.
    pub mod config {
        /// `envoy.config.core`.
        pub mod core {
            /// `envoy.config.core.v3`.
            pub mod v3 {
                tonic::include_proto!("envoy.config.core.v3");
            }
        }
    }
    /// `envoy.type`.
    pub mod r#type {
        /// `envoy.type.v3`.
        pub mod v3 {
            tonic::include_proto!("envoy.r#type.v3");
        }
    }
}

/// `google.rpc`.
pub mod google {
    /// `google.rpc`: the status a gRPC service reports.
    pub mod rpc {
        tonic::include_proto!("google.rpc");
    }
}

/// Names both ends of the discovery stream use: resource types and the names with a meaning.
pub mod names {
    /// Type of the per-service resources (`mesh.state.v1.Service`, named by host).
    pub const SERVICE_TYPE: &str = "type.mesh.dev/mesh.state.v1.Service";
    /// Type of the proxy's own settings (a `mesh.state.v1.ProxyState` without services).
    pub const WORKLOAD_TYPE: &str = "type.mesh.dev/mesh.state.v1.ProxyState";
    /// Name of the one workload resource.
    pub const WORKLOAD_NAME: &str = "workload";
    /// The name a proxy subscribes with to ask for its default view.
    pub const WILDCARD: &str = "*";
}

impl state::v1::Protocol {
    /// Istio's protocol for a declared name: an `appProtocol` value or a port name, of which
    /// the part before the first `-` counts (`http-web` is HTTP, `grpc-web` is HTTP, `mongo` is
    /// TCP, `https` is TLS). An empty name is DETECT; `None` for a name Istio does not know,
    /// which callers treat as DETECT or refuse, as their input demands.
    pub fn from_istio_name(name: &str) -> Option<Self> {
        use state::v1::Protocol;
        let name = name.rsplit('/').next().unwrap_or(name);
        if name.eq_ignore_ascii_case("grpc-web") {
            return Some(Protocol::Http);
        }
        let prefix = name.split('-').next().unwrap_or("").to_ascii_lowercase();
        Some(match prefix.as_str() {
            "" | "detect" => Protocol::Detect,
            "http" | "http1" => Protocol::Http,
            "http2" | "h2c" => Protocol::Http2,
            "grpc" => Protocol::Grpc,
            "tcp" | "mongo" | "redis" | "mysql" => Protocol::Tcp,
            "tls" | "https" => Protocol::Tls,
            _ => return None,
        })
    }

    /// True for protocols carried as HTTP requests.
    pub fn is_http(self) -> bool {
        use state::v1::Protocol;
        matches!(self, Protocol::Http | Protocol::Http2 | Protocol::Grpc)
    }
}

/// Certificate signing.
pub mod ca {
    /// Version 1.
    pub mod v1 {
        tonic::include_proto!("mesh.ca.v1");
    }
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::discovery::v1::{
        DeltaDiscoveryRequest, ErrorDetail, OnDemandLookup, on_demand_lookup::Target,
    };

    #[test]
    fn a_nack_with_an_on_demand_lookup_round_trips() {
        let req = DeltaDiscoveryRequest {
            type_url: super::names::SERVICE_TYPE.into(),
            response_nonce: "7".into(),
            error_detail: Some(ErrorDetail {
                code: 3,
                message: "bad route".into(),
            }),
            on_demand: vec![OnDemandLookup {
                target: Some(Target::Address("10.96.0.12:8080".into())),
            }],
            ..Default::default()
        };
        let bytes = req.encode_to_vec();
        assert_eq!(
            DeltaDiscoveryRequest::decode(bytes.as_slice()).unwrap(),
            req
        );
    }

    #[test]
    fn protocols_follow_istios_names() {
        use super::state::v1::Protocol;
        for (name, want) in [
            ("http", Some(Protocol::Http)),
            ("http-web", Some(Protocol::Http)),
            ("grpc-web", Some(Protocol::Http)),
            ("GRPC", Some(Protocol::Grpc)),
            ("h2c", Some(Protocol::Http2)),
            ("kubernetes.io/h2c", Some(Protocol::Http2)),
            ("mongo-main", Some(Protocol::Tcp)),
            ("https", Some(Protocol::Tls)),
            ("", Some(Protocol::Detect)),
            ("web", None),
        ] {
            assert_eq!(Protocol::from_istio_name(name), want, "{name}");
        }
    }
}
