//! `mesh-pilot` is the control plane: config sources (a local folder, Kubernetes), the mesh
//! model, per-proxy translation into `mesh.state.v1` and the delta discovery server. So far it
//! holds the first piece of the model, Istio's precedence rules for PeerAuthentication; loading
//! and validating configuration lives in `mesh-api::load`. Sources, translation and discovery
//! are issue 5.

pub mod model;
