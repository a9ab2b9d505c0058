//! `mesh-ca` is the mesh's certificate authority. It keeps a root and an intermediate
//! (self-generated on first start, or plugged in from Istio's `cacerts` layout), checks who a
//! caller is (a local bootstrap token, and, as they land, a Kubernetes service-account token or
//! the caller's own valid certificate), and signs the caller's CSR for exactly that identity:
//! an X.509 SVID `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>` with a bounded
//! lifetime, returned with its chain and the trust bundle. It never sees a workload's private
//! key. The gRPC service is `mesh.ca.v1.Certificates` from `mesh-api`.

pub mod auth;
pub mod authority;
pub mod service;
#[cfg(feature = "test-util")]
pub mod testing;

pub use authority::{Authority, CaConfig, CaError, SignError, Signed};
/// Workload identities, shared with pilot and the proxy.
pub use mesh_api::identity::{self, Identity, IdentityError};
