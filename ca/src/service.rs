//! The gRPC signing service (`mesh.ca.v1.Certificates`): authenticate, then sign exactly the
//! proven identity.

use std::sync::Arc;
use std::time::Duration;

use mesh_api::proto::ca::v1::certificates_server::Certificates;
use mesh_api::proto::ca::v1::{CertificateRequest, CertificateResponse};
use tonic::{Request, Response, Status};

use crate::auth::{AuthError, Authenticator};
use crate::authority::{Authority, SignError};
use crate::identity::Identity;

/// The signing service.
pub struct CaService {
    authority: Arc<Authority>,
    auth: Arc<dyn Authenticator>,
}

impl CaService {
    /// A service signing with `authority` for callers `auth` accepts.
    pub fn new(authority: Arc<Authority>, auth: Arc<dyn Authenticator>) -> Self {
        Self { authority, auth }
    }

    /// The tonic server for this service.
    pub fn into_server(
        self,
    ) -> mesh_api::proto::ca::v1::certificates_server::CertificatesServer<Self> {
        mesh_api::proto::ca::v1::certificates_server::CertificatesServer::new(self)
    }
}

impl From<AuthError> for Status {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::Unauthenticated(m) => Status::unauthenticated(m),
            AuthError::PermissionDenied(m) => Status::permission_denied(m),
            AuthError::Unavailable(m) => Status::unavailable(m),
        }
    }
}

#[tonic::async_trait]
impl Certificates for CaService {
    async fn create_certificate(
        &self,
        request: Request<CertificateRequest>,
    ) -> Result<Response<CertificateResponse>, Status> {
        let req = request.into_inner();
        let credential = req.credential.unwrap_or_default();
        let proven = match &credential.kind {
            Some(mesh_api::proto::ca::v1::credential::Kind::Renewal(renewal)) => {
                crate::auth::renewal::verify(
                    renewal,
                    &req.csr_pem,
                    self.authority.roots(),
                    &self.authority.config().trust_domain,
                )?
            }
            _ => self.auth.authenticate(&credential).await?,
        };
        let identity = Identity::new(
            &self.authority.config().trust_domain,
            &proven.namespace,
            &proven.service_account,
        );
        let ttl = match req.validity_seconds {
            0 => None,
            s if s < 0 => {
                return Err(Status::invalid_argument(
                    "validity_seconds cannot be negative",
                ));
            }
            s => Some(Duration::from_secs(s.unsigned_abs())),
        };
        let signed = self
            .authority
            .sign(&req.csr_pem, &identity, ttl)
            .map_err(|e| match e {
                SignError::BadCsr(_) => Status::invalid_argument(e.to_string()),
                SignError::WrongIdentity { .. } => Status::permission_denied(e.to_string()),
                SignError::Internal(_) => Status::internal(e.to_string()),
            })?;
        tracing::info!(identity = %identity, expires = %signed.not_after, "signed a workload certificate");
        Ok(Response::new(CertificateResponse {
            cert_chain_pem: signed.chain,
            root_certs_pem: signed.roots,
        }))
    }
}

/// Serves `service` over HTTP/2 (gRPC) on `listener` until `shutdown` resolves, one task per
/// connection. (tonic's router would bring axum; the generated server is a tower service that
/// hyper serves directly.)
pub async fn serve(
    listener: tokio::net::TcpListener,
    service: CaService,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let server = service.into_server();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((conn, peer)) = accepted else { continue };
                let _ = conn.set_nodelay(true);
                let svc = hyper_util::service::TowerToHyperService::new(server.clone());
                tokio::spawn(async move {
                    let builder = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new()).http2_only();
                    if let Err(e) = builder.serve_connection(hyper_util::rt::TokioIo::new(conn), svc).await {
                        tracing::debug!("ca connection from {peer}: {e}");
                    }
                });
            }
            () = &mut shutdown => return,
        }
    }
}
