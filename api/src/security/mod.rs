//! `security.istio.io` resources. Istio serves v1beta1 and v1 with one schema, so one Rust type
//! per kind reads both versions.

mod authorization_policy;
mod peer_authentication;
mod request_authentication;

pub use authorization_policy::*;
pub use peer_authentication::*;
pub use request_authentication::*;
