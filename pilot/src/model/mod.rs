//! The mesh model: Istio's semantics applied to validated resources.

pub mod peer_authentication;
