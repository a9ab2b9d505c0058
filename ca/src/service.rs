//! The gRPC signing service (`mesh.ca.v1.Certificates`): authenticate, then sign exactly the
//! proven identity.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use mesh_api::proto::ca::v1::certificates_server::Certificates;
use mesh_api::proto::ca::v1::{CertificateRequest, CertificateResponse};
use tonic::{Request, Response, Status};

use crate::auth::{AuthError, Authenticator};
use crate::authority::{Authority, SignError};
use crate::identity::Identity;

/// Counts of the signing service, named as Istio's CA counts them (`citadel_server_*`).
#[derive(Debug, Default)]
pub struct CaMetrics {
    /// Certificate requests received.
    pub requests: AtomicU64,
    /// Certificates issued.
    pub issued: AtomicU64,
    /// Requests whose caller could not be authenticated.
    pub auth_failures: AtomicU64,
    /// Requests authenticated but not signed (a bad CSR, another identity, an internal error).
    pub sign_errors: AtomicU64,
}

/// The signing service.
pub struct CaService {
    authority: Arc<Authority>,
    auth: Arc<dyn Authenticator>,
    metrics: CaMetrics,
}

impl CaService {
    /// A service signing with `authority` for callers `auth` accepts.
    pub fn new(authority: Arc<Authority>, auth: Arc<dyn Authenticator>) -> Self {
        Self {
            authority,
            auth,
            metrics: CaMetrics::default(),
        }
    }

    /// Its counts.
    pub fn metrics(&self) -> &CaMetrics {
        &self.metrics
    }

    /// Its counts and the root certificate's expiry (Unix seconds), as Prometheus text.
    pub fn render_metrics(&self) -> String {
        use rustls_pki_types::pem::PemObject;
        let m = &self.metrics;
        let root_expiry = self
            .authority
            .roots()
            .first()
            .and_then(|p| rustls_pki_types::CertificateDer::from_pem_slice(p.as_bytes()).ok())
            .and_then(|der| {
                x509_parser::parse_x509_certificate(&der)
                    .ok()
                    .map(|(_, c)| c.validity().not_after.timestamp())
            })
            .unwrap_or(0);
        let mut out = String::new();
        for (name, help, value) in [
            (
                "citadel_server_csr_count",
                "Certificate requests received.",
                m.requests.load(Relaxed),
            ),
            (
                "citadel_server_success_cert_issuance_count",
                "Certificates issued.",
                m.issued.load(Relaxed),
            ),
            (
                "citadel_server_authentication_failure_count",
                "Requests whose caller could not be authenticated.",
                m.auth_failures.load(Relaxed),
            ),
            (
                "citadel_server_csr_sign_err_count",
                "Requests authenticated but not signed.",
                m.sign_errors.load(Relaxed),
            ),
        ] {
            out += &format!("# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}\n");
        }
        out += "# HELP citadel_server_root_cert_expiry_timestamp When the mesh's root certificate expires (Unix seconds).\n# TYPE citadel_server_root_cert_expiry_timestamp gauge\n";
        out += &format!("citadel_server_root_cert_expiry_timestamp {root_expiry}\n");
        out
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
        self.metrics.requests.fetch_add(1, Relaxed);
        let credential = req.credential.unwrap_or_default();
        let proven = match &credential.kind {
            Some(mesh_api::proto::ca::v1::credential::Kind::Renewal(renewal)) => {
                crate::auth::renewal::verify(
                    renewal,
                    &req.csr_pem,
                    self.authority.roots(),
                    &self.authority.config().trust_domain,
                )
            }
            _ => self.auth.authenticate(&credential).await,
        }
        .inspect_err(|_| {
            self.metrics.auth_failures.fetch_add(1, Relaxed);
        })?;
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
            .inspect_err(|_| {
                self.metrics.sign_errors.fetch_add(1, Relaxed);
            })
            .map_err(|e| match e {
                SignError::BadCsr(_) => Status::invalid_argument(e.to_string()),
                SignError::WrongIdentity { .. } => Status::permission_denied(e.to_string()),
                SignError::Internal(_) => Status::internal(e.to_string()),
            })?;
        self.metrics.issued.fetch_add(1, Relaxed);
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
