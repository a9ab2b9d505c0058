//! Generated protocol code: the discovery stream (pilot ⇄ proxy) and certificate signing
//! (proxy → CA). Messages are prost types; services have tonic client and server halves.

#![allow(missing_docs, clippy::all, clippy::pedantic)]

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
            type_url: "type.mesh.dev/mesh.state.v1.Service".into(),
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
}
