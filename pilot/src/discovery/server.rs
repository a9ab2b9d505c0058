//! The debounced model builder and the tonic service that runs one [`Session`] per stream.

use std::sync::Arc;
use std::time::Duration;

use mesh_api::proto::discovery::v1 as pb;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;

use super::generation::Generation;
use super::session::Session;
use super::status::Status;
use crate::model::{MeshConfig, Model};
use crate::source::Snapshot;
use crate::translate::ProxyNode;

/// How configuration changes are coalesced into pushes.
#[derive(Clone, Copy, Debug)]
pub struct Debounce {
    /// A push waits until nothing changed for this long...
    pub quiet: Duration,
    /// ...but never longer than this after the first change.
    pub max: Duration,
}

impl Default for Debounce {
    fn default() -> Self {
        Debounce {
            quiet: Duration::from_millis(100),
            max: Duration::from_secs(1),
        }
    }
}

/// Builds a model generation from the first snapshot at once, then one per burst of changes,
/// until `snapshots` closes.
pub async fn build_generations(
    config: MeshConfig,
    mut snapshots: watch::Receiver<Arc<Snapshot>>,
    out: watch::Sender<Arc<Generation>>,
    debounce: Debounce,
) {
    let mut version = out.borrow().version;
    let mut build = |snap: &Snapshot| {
        version += 1;
        let model = Model::build(
            config.clone(),
            snap.resources.iter().map(|r| &**r),
            snap.files.clone(),
        );
        out.send_replace(Arc::new(Generation::new(version, model)));
    };
    let first = snapshots.borrow_and_update().clone();
    build(&first);
    while snapshots.changed().await.is_ok() {
        let deadline = Instant::now() + debounce.max;
        loop {
            let quiet = tokio::time::sleep(debounce.quiet);
            tokio::select! {
                changed = snapshots.changed() => if changed.is_err() { break },
                () = quiet => break,
                () = tokio::time::sleep_until(deadline) => break,
            }
        }
        let snap = snapshots.borrow_and_update().clone();
        build(&snap);
    }
}

/// The SPIFFE identity of the peer, put in each request's extensions by the mTLS listener;
/// absent on the plaintext development port.
#[derive(Clone, Debug)]
pub struct PeerIdentity(pub String);

/// The gRPC service.
#[derive(Clone)]
pub struct DiscoveryService {
    generations: watch::Receiver<Arc<Generation>>,
    status: Status,
}

impl DiscoveryService {
    /// A service pushing the generations of `generations`, recording into `status`.
    pub fn new(generations: watch::Receiver<Arc<Generation>>, status: Status) -> Self {
        DiscoveryService {
            generations,
            status,
        }
    }

    /// The tonic server around this service.
    pub fn into_server(self) -> pb::discovery_server::DiscoveryServer<Self> {
        pb::discovery_server::DiscoveryServer::new(self)
    }
}

fn node_of(node: Option<pb::Node>) -> Result<ProxyNode, tonic::Status> {
    let n = node.ok_or_else(|| {
        tonic::Status::invalid_argument("the first request of a stream must carry the node")
    })?;
    if n.id.is_empty() || n.namespace.is_empty() {
        return Err(tonic::Status::invalid_argument(
            "node.id and node.namespace are required",
        ));
    }
    Ok(ProxyNode {
        id: n.id,
        namespace: n.namespace,
        service_account: n.service_account,
        labels: n.labels.into_iter().collect(),
        is_gateway: n.kind == pb::ProxyKind::Gateway as i32,
        ip_addresses: n.ip_addresses,
        proxy_version: n.proxy_version,
        bound_gateway: String::new(),
    })
}

type Responses = ReceiverStream<Result<pb::DeltaDiscoveryResponse, tonic::Status>>;

#[tonic::async_trait]
impl pb::discovery_server::Discovery for DiscoveryService {
    type DeltaResourcesStream = Responses;

    async fn delta_resources(
        &self,
        request: tonic::Request<tonic::Streaming<pb::DeltaDiscoveryRequest>>,
    ) -> Result<tonic::Response<Responses>, tonic::Status> {
        let peer = request.extensions().get::<PeerIdentity>().cloned();
        let mut inbound = request.into_inner();
        let first = inbound
            .message()
            .await?
            .ok_or_else(|| tonic::Status::invalid_argument("the stream ended before a request"))?;
        let node = node_of(first.node.clone())?;
        let mut generations = self.generations.clone();
        let generation = generations.borrow_and_update().clone();
        if let Some(PeerIdentity(id)) = peer {
            let sa = if node.service_account.is_empty() {
                "default"
            } else {
                &node.service_account
            };
            let want = mesh_api::identity::Identity::new(
                &generation.model.config.trust_domain,
                &node.namespace,
                sa,
            )
            .uri();
            if id != want {
                return Err(tonic::Status::permission_denied(format!(
                    "certificate identity {id} may not ask for the view of {want}"
                )));
            }
        }
        let mut session = Session::new(node, generation, self.status.clone());
        session
            .request(&first)
            .map_err(|e| tonic::Status::invalid_argument(e.to_string()))?;
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(async move {
            loop {
                for r in session.responses() {
                    if tx.send(Ok(r)).await.is_err() {
                        return;
                    }
                }
                tokio::select! {
                    msg = inbound.message() => match msg {
                        Ok(Some(req)) => {
                            if let Err(e) = session.request(&req) {
                                let _ = tx.send(Err(tonic::Status::invalid_argument(e.to_string()))).await;
                                return;
                            }
                        }
                        Ok(None) | Err(_) => return,
                    },
                    changed = generations.changed() => {
                        if changed.is_err() {
                            return;
                        }
                        session.generation(generations.borrow_and_update().clone());
                    }
                    () = tx.closed() => return,
                }
            }
        });
        Ok(tonic::Response::new(ReceiverStream::new(rx)))
    }
}

/// The HTTP/2 server settings of discovery connections: per-connection buffers stay small,
/// since a pilot holds thousands of them and each carries little at a time.
pub fn http2_builder() -> hyper_util::server::conn::auto::Builder<hyper_util::rt::TokioExecutor> {
    let mut builder =
        hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new())
            .http2_only();
    builder
        .http2()
        .max_send_buf_size(32 * 1024)
        .initial_stream_window_size(64 * 1024)
        .initial_connection_window_size(128 * 1024);
    builder
}

/// Serves discovery on `listener` (plaintext HTTP/2) until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    service: DiscoveryService,
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
                    let builder = crate::discovery::server::http2_builder();
                    if let Err(e) = builder.serve_connection(hyper_util::rt::TokioIo::new(conn), svc).await {
                        tracing::debug!("discovery connection from {peer}: {e}");
                    }
                });
            }
            () = &mut shutdown => return,
        }
    }
}
