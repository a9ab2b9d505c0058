//! `mesh-pilot` is the control plane: config sources (a local folder, Kubernetes), the mesh
//! model, per-proxy translation into `mesh.state.v1` and the delta discovery server. Loading
//! and validating single resources lives in `mesh-api`; pilot applies Istio's semantics across
//! them (which VirtualService routes a host, which DestinationRule and policies apply to a
//! workload) and decides what each proxy receives.

pub mod certs;
pub mod cluster;
pub mod debug;
pub mod discovery;
pub mod gateway_deploy;
pub mod gateway_status;
pub mod kube_publish;
pub mod model;
pub mod run;
pub mod source;
#[cfg(feature = "test-util")]
pub mod testing;
pub mod translate;
