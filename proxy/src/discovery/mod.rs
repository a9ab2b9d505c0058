//! The discovery client: one delta stream to pilot, turned into the proxy's
//! `watch::Sender<Arc<State>>`, with reconnect and backoff.
//!
//! The client holds the resources pilot sent (the workload's own settings and one resource per
//! service). Each response is applied to a copy, compiled into a [`State`], and only then
//! published and acknowledged; a response that does not compile is refused (NACK, with the
//! reason) and the proxy keeps serving what it had. While pilot is away the last state stays
//! in force; on reconnect the client says which versions it holds, so pilot sends only what
//! changed meanwhile.

pub mod on_demand;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use mesh_api::proto::discovery::v1 as pb;
use mesh_api::proto::discovery::v1::discovery_client::DiscoveryClient;
use mesh_api::proto::state::v1 as proto;
use prost::Message;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;

pub use on_demand::OnDemand;

use crate::state::State;
use crate::tls::mtls::Svids;

use mesh_api::proto::names::WILDCARD;
pub use mesh_api::proto::names::{SERVICE_TYPE, WORKLOAD_NAME, WORKLOAD_TYPE};

/// Where pilot is and who this proxy is.
#[derive(Clone, Debug)]
pub struct DiscoveryConfig {
    /// Pilot's discovery address, e.g. `http://127.0.0.1:15010`.
    pub address: String,
    /// This proxy.
    pub node: pb::Node,
    /// First retry delay after a failure.
    pub backoff_min: Duration,
    /// Longest retry delay.
    pub backoff_max: Duration,
    /// Mutual TLS to pilot: the workload's certificates and the identity pilot must prove.
    /// Plaintext (development, loopback only) when absent.
    pub tls: Option<PilotTls>,
}

/// Mutual TLS towards pilot.
#[derive(Clone, Debug)]
pub struct PilotTls {
    /// The workload's certificates.
    pub svids: Svids,
    /// Pilot's SPIFFE identity, e.g. `spiffe://cluster.local/ns/istio-system/sa/istiod`.
    pub pilot_identity: String,
}

/// What the client holds from pilot.
#[derive(Clone, Debug, Default)]
struct Held {
    workload: Option<(String, proto::ProxyState)>,
    services: BTreeMap<String, (String, proto::Service)>,
    version: String,
}

impl Held {
    fn versions(&self, type_url: &str) -> std::collections::HashMap<String, String> {
        match type_url {
            WORKLOAD_TYPE => self
                .workload
                .iter()
                .map(|(v, _)| (WORKLOAD_NAME.to_string(), v.clone()))
                .collect(),
            _ => self
                .services
                .iter()
                .map(|(n, (v, _))| (n.clone(), v.clone()))
                .collect(),
        }
    }

    fn state(&self) -> proto::ProxyState {
        let mut s = self
            .workload
            .as_ref()
            .map(|(_, w)| w.clone())
            .unwrap_or_default();
        s.services = self.services.values().map(|(_, svc)| svc.clone()).collect();
        s.version.clone_from(&self.version);
        s
    }

    /// Applies a response to a copy; the copy and its compiled state, or why it was refused.
    fn apply(&self, r: &pb::DeltaDiscoveryResponse) -> Result<(Held, State), Refused> {
        let mut next = self.clone();
        for res in &r.resources {
            let bytes = res
                .resource
                .as_ref()
                .map(|a| a.value.as_slice())
                .unwrap_or_default();
            match r.type_url.as_str() {
                WORKLOAD_TYPE => {
                    let w = proto::ProxyState::decode(bytes).map_err(|source| Refused::Decode {
                        name: res.name.clone(),
                        source,
                    })?;
                    next.workload = Some((res.version.clone(), w));
                }
                SERVICE_TYPE => {
                    let s = proto::Service::decode(bytes).map_err(|source| Refused::Decode {
                        name: res.name.clone(),
                        source,
                    })?;
                    next.services
                        .insert(res.name.clone(), (res.version.clone(), s));
                }
                other => return Err(Refused::UnexpectedType(other.to_string())),
            }
        }
        for name in &r.removed_resources {
            match r.type_url.as_str() {
                WORKLOAD_TYPE => next.workload = None,
                _ => {
                    next.services.remove(name);
                }
            }
        }
        next.version.clone_from(&r.system_version_info);
        let state = State::compile(next.state())?;
        Ok((next, state))
    }
}

/// Why the proxy refused (NACKed) a discovery response; its text is the NACK's message.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    /// A resource that is not the message its type says.
    #[error("{name}: cannot decode: {source}")]
    Decode {
        /// The resource.
        name: String,
        /// What prost said.
        #[source]
        source: prost::DecodeError,
    },
    /// A type this proxy does not subscribe to.
    #[error("unexpected resource type {0}")]
    UnexpectedType(String),
    /// The state the resources add up to does not check.
    #[error(transparent)]
    Invalid(#[from] crate::state::StateError),
}

/// Why a discovery stream ended (the client reconnects with backoff).
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// `--discovery-address` is not a URI.
    #[error("bad discovery address {address}: {source}")]
    BadAddress {
        /// As given.
        address: String,
        /// What tonic said.
        #[source]
        source: tonic::transport::Error,
    },
    /// mTLS to pilot waits for the workload certificate.
    #[error("no workload certificate yet for mTLS to pilot")]
    NoCertificate,
    /// The mTLS client settings could not be built.
    #[error("mTLS to pilot: {0}")]
    Tls(#[from] crate::tls::mtls::ConfigError),
    /// Pilot is unreachable.
    #[error("cannot connect: {0}")]
    Connect(#[source] tonic::transport::Error),
    /// Pilot refused the stream.
    #[error("stream refused: {}", .0.message())]
    Refused(tonic::Status),
    /// The stream broke.
    #[error("stream failed: {}", .0.message())]
    Failed(tonic::Status),
    /// Pilot ended the stream.
    #[error("pilot closed the stream")]
    Closed,
    /// Our own request stream ended.
    #[error("request stream closed")]
    RequestsClosed,
}

/// Runs the client until `tx` has no receivers: connects, resyncs, applies responses,
/// forwards on-demand lookups, and reconnects with jittered exponential backoff.
pub async fn run(
    config: DiscoveryConfig,
    tx: watch::Sender<Arc<State>>,
    mut lookups: mpsc::UnboundedReceiver<pb::OnDemandLookup>,
    on_demand: Option<Arc<OnDemand>>,
) {
    let mut held = Held::default();
    let mut delay = config.backoff_min;
    loop {
        let started = tokio::time::Instant::now();
        match stream_once(&config, &tx, &mut held, &mut lookups, on_demand.as_deref()).await {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(address = %config.address, "discovery: {e}; retrying in {delay:?}")
            }
        }
        if tx.is_closed() {
            return;
        }
        // A stream that lived a while was healthy: start the backoff over.
        if started.elapsed() > Duration::from_secs(30) {
            delay = config.backoff_min;
        }
        let jitter = 0.8 + fastrand::f64() * 0.4;
        tokio::time::sleep(delay.mul_f64(jitter)).await;
        delay = (delay * 2).min(config.backoff_max);
    }
}

fn subscribe(type_url: &str, held: &Held, node: Option<pb::Node>) -> pb::DeltaDiscoveryRequest {
    let mut names = Vec::new();
    // On reconnect: the default view plus every service held (some came on demand).
    if type_url == SERVICE_TYPE && !held.services.is_empty() {
        names.push(WILDCARD.to_string());
        names.extend(held.services.keys().cloned());
    }
    pb::DeltaDiscoveryRequest {
        node,
        type_url: type_url.to_string(),
        resource_names_subscribe: names,
        initial_resource_versions: held.versions(type_url),
        ..Default::default()
    }
}

/// Connects to pilot as `config` says (plaintext, or mutual TLS with the workload
/// certificate, checking pilot's identity).
pub async fn channel(config: &DiscoveryConfig) -> Result<tonic::transport::Channel, StreamError> {
    let endpoint = tonic::transport::Endpoint::from_shared(config.address.clone())
        .map_err(|source| StreamError::BadAddress {
            address: config.address.clone(),
            source,
        })?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true);
    match &config.tls {
        None => endpoint.connect().await,
        Some(tls) => {
            if tls.svids.borrow().is_none() {
                return Err(StreamError::NoCertificate);
            }
            let client = crate::tls::mtls::client_config(
                tls.svids.clone(),
                vec![tls.pilot_identity.clone()],
                b"h2",
            )?;
            endpoint
                .connect_with_connector(crate::identity::TlsConnector { config: client })
                .await
        }
    }
    .map_err(StreamError::Connect)
}

/// One stream: returns `Ok` when the proxy stops, `Err` when the stream fails.
async fn stream_once(
    config: &DiscoveryConfig,
    tx: &watch::Sender<Arc<State>>,
    held: &mut Held,
    lookups: &mut mpsc::UnboundedReceiver<pb::OnDemandLookup>,
    on_demand: Option<&OnDemand>,
) -> Result<(), StreamError> {
    let channel = channel(config).await?;
    let (req_tx, req_rx) = mpsc::channel(64);
    req_tx
        .send(subscribe(WORKLOAD_TYPE, held, Some(config.node.clone())))
        .await
        .map_err(|_| StreamError::RequestsClosed)?;
    req_tx
        .send(subscribe(SERVICE_TYPE, held, None))
        .await
        .map_err(|_| StreamError::RequestsClosed)?;
    let mut responses = DiscoveryClient::new(channel)
        .delta_resources(ReceiverStream::new(req_rx))
        .await
        .map_err(StreamError::Refused)?
        .into_inner();
    loop {
        tokio::select! {
            msg = responses.message() => {
                let r = match msg {
                    Ok(Some(r)) => r,
                    Ok(None) => return Err(StreamError::Closed),
                    Err(e) => return Err(StreamError::Failed(e)),
                };
                let reply = match held.apply(&r) {
                    Ok((next, state)) => {
                        *held = next;
                        if held.workload.is_some() {
                            tx.send_replace(Arc::new(state));
                        }
                        None
                    }
                    Err(refused) => {
                        if let Some(od) = on_demand {
                            od.note_refused();
                        }
                        let message = refused.to_string();
                        tracing::warn!(nonce = %r.nonce, "discovery: refusing an update, keeping the current state: {message}");
                        Some(pb::ErrorDetail { code: 3, message })
                    }
                };
                if let Some(od) = on_demand {
                    for res in &r.resources {
                        od.found(&res.name);
                        res.aliases.iter().for_each(|a| od.found(a));
                    }
                    r.removed_resources.iter().for_each(|n| od.not_found(n));
                }
                let ack = pb::DeltaDiscoveryRequest {
                    type_url: r.type_url.clone(),
                    response_nonce: r.nonce.clone(),
                    error_detail: reply,
                    ..Default::default()
                };
                req_tx.send(ack).await.map_err(|_| StreamError::RequestsClosed)?;
            }
            lookup = lookups.recv() => {
                let Some(lookup) = lookup else { return Ok(()) };
                let req = pb::DeltaDiscoveryRequest {
                    type_url: SERVICE_TYPE.into(),
                    on_demand: vec![lookup],
                    ..Default::default()
                };
                req_tx.send(req).await.map_err(|_| StreamError::RequestsClosed)?;
            }
            () = tx.closed() => return Ok(()),
        }
    }
}
