//! `networking.istio.io` resources. Istio serves v1alpha3, v1beta1 and v1 with one schema, so
//! one Rust type per kind reads all three versions.

mod destination_rule;
mod gateway;
mod service_entry;
mod sidecar;
mod virtual_service;

pub use destination_rule::*;
pub use gateway::*;
pub use service_entry::*;
pub use sidecar::*;
pub use virtual_service::*;
