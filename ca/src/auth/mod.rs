//! Who is asking: a credential in, a proven identity out. Pluggable: the local runtime's
//! bootstrap tokens now; Kubernetes service-account tokens (TokenReview) and renewal with a
//! valid workload certificate as they land.

mod bootstrap;
mod kubernetes;
pub mod renewal;

use std::future::Future;
use std::pin::Pin;

pub use bootstrap::{BootstrapTokens, TokenFileError};
pub use kubernetes::KubernetesTokens;
use mesh_api::proto::ca::v1::Credential;

/// Namespace and service account a credential proves (the CA adds its trust domain).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Proven {
    /// Namespace.
    pub namespace: String,
    /// Service account.
    pub service_account: String,
}

/// A credential that does not prove an identity.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    /// No credential, or one of a kind this CA does not accept: UNAUTHENTICATED.
    #[error("{0}")]
    Unauthenticated(String),
    /// A valid credential that may not have what it asks: PERMISSION_DENIED.
    #[error("{0}")]
    PermissionDenied(String),
    /// The authority that checks credentials is unreachable: UNAVAILABLE.
    #[error("{0}")]
    Unavailable(String),
}

/// The future an authenticator returns.
pub type AuthFuture<'a> = Pin<Box<dyn Future<Output = Result<Proven, AuthError>> + Send + 'a>>;

/// Checks credentials.
pub trait Authenticator: Send + Sync + 'static {
    /// The identity `credential` proves.
    fn authenticate<'a>(&'a self, credential: &'a Credential) -> AuthFuture<'a>;
}
