//! `mesh-api` is the bottom layer of the mesh: the protocols spoken between pilot, proxies and
//! the CA (generated from `proto/` at build time), Rust types for every configuration resource
//! the mesh reads (Istio's networking and security APIs with their exact field names, plus the
//! Kubernetes objects it watches), loading of those resources from YAML or JSON with file and
//! line positions, validation that names the resource, field and fix, and generation of the
//! CustomResourceDefinitions. It does no IO of its own beyond reading the files it is asked to
//! load: no sockets, no runtime, no global state.

pub mod analyze;
pub mod common;
pub mod crd;
pub mod diagnostic;
pub mod gateway_api;
pub mod identity;
pub mod kinds;
pub mod load;
pub mod locality;
pub mod mesh_config;
pub mod networking;
pub mod policy;
pub mod proto;
pub mod resource;
pub mod security;
pub mod telemetry;
#[cfg(feature = "test-util")]
pub mod testing;
pub mod validate;
mod yaml_index;

pub use diagnostic::{Diagnostic, Severity};
pub use kinds::Kind;
pub use load::{Document, LoadReport, Origin};
pub use resource::Resource;
