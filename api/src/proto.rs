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

/// Certificate signing.
pub mod ca {
    /// Version 1.
    pub mod v1 {
        tonic::include_proto!("mesh.ca.v1");
    }
}
