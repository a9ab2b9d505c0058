//! Pooled upstream connections shared by every request of the proxy: light pools of our own
//! for plaintext HTTP/1.1 (`h1pool`) and for HTTP/2 between sidecars and to ports that speak
//! it (`h2pool`), and hyper-util's client for TLS origination, HTTP/1.1 over mTLS and
//! upgrades; towards other services and towards the local application from 127.0.0.6.

pub mod breaker;
pub(crate) mod h1pool;
pub(crate) mod h2pool;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::{Request, Response};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::body::{Body, boxed};

/// How long a pooled upstream connection may idle before it is closed, unless a
/// DestinationRule's `connectionPool.http.idleTimeout` says otherwise. Envoy's default (and
/// Istio's) is an hour; apps commonly close theirs sooner (60 s is common), and a pool that
/// outlives the app's own timeout sends requests into connections the app is closing.
pub const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);
use crate::socket::PASSTHROUGH_SOURCE;
use crate::state::PoolLimits;
use crate::tls::connect::{MeshConnector, MtlsClient, Originations};

/// One pool of upstream connections.
type Upstream = Client<MeshConnector, Body>;

/// A pool of HTTP/1.1 (keep-alive) connections and one of HTTP/2 connections, and for mesh
/// mTLS one such pair per identity the peers must prove: a connection verified for one
/// identity is never reused once the destination must prove another (pilot moved the address
/// to another workload, or the workload's identity changed).
pub struct Clients {
    h1: Client<MeshConnector, Body>,
    h2: Client<MeshConnector, Body>,
    connectors: (MeshConnector, MeshConnector),
    by_identity: std::sync::RwLock<HashMap<(bool, Arc<str>), Upstream>>,
}

impl Clients {
    fn new(
        local: Option<std::net::IpAddr>,
        mtls: Option<Arc<MtlsClient>>,
        originations: &Originations,
    ) -> Self {
        let c1 = MeshConnector::new(local, mtls.clone(), originations.clone(), ALPN_HTTP1);
        let c2 = MeshConnector::new(
            local,
            mtls,
            originations.clone(),
            crate::tls::mtls::ALPN_MESH_H2,
        );
        Self {
            h1: Self::client(c1.clone(), false),
            h2: Self::client(c2.clone(), true),
            connectors: (c1, c2),
            by_identity: std::sync::RwLock::default(),
        }
    }

    fn client(connector: MeshConnector, h2: bool) -> Client<MeshConnector, Body> {
        let mut builder = Client::builder(TokioExecutor::new());
        builder
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .pool_max_idle_per_host(usize::MAX)
            // With a timer, the pool closes connections idle past the timeout by itself (else
            // it only skips them when it next looks for one).
            .pool_timer(hyper_util::rt::TokioTimer::new());
        if h2 {
            builder.http2_only(true);
        }
        builder.build(connector)
    }

    pub(crate) fn pick(&self, h2: bool) -> &Client<MeshConnector, Body> {
        if h2 { &self.h2 } else { &self.h1 }
    }

    /// The pool whose connections proved `identity` (mesh mTLS).
    pub(crate) fn pick_for(&self, h2: bool, identity: &Arc<str>) -> Client<MeshConnector, Body> {
        let key = (h2, identity.clone());
        let map = self.by_identity.read().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = map.get(&key) {
            return c.clone();
        }
        drop(map);
        let mut map = self.by_identity.write().unwrap_or_else(|e| e.into_inner());
        let identity = identity.clone();
        map.entry(key)
            .or_insert_with(|| {
                let base = if h2 {
                    &self.connectors.1
                } else {
                    &self.connectors.0
                };
                Self::client(base.clone().with_identity(identity), h2)
            })
            .clone()
    }
}

/// ALPN of HTTP/1.1 (kept for upgrades, e.g. WebSocket, between proxies).
pub const ALPN_HTTP1: &[u8] = b"http/1.1";

/// Pooled upstream connections shared by every request of the proxy: towards other services
/// (outbound, with mesh mTLS where asked), and towards the local application from 127.0.0.6
/// (inbound).
pub struct Upstreams {
    pub(crate) outbound: Clients,
    app: Clients,
    /// Plaintext HTTP/1.1 to destinations without a sidecar.
    pub(crate) outbound_h1: Arc<h1pool::H1Pool>,
    /// HTTP/2 to other sidecars (mesh mTLS) and to ports that speak it.
    pub(crate) outbound_h2: h2pool::H2Pool,
    /// Plaintext HTTP/1.1 to the local app, from 127.0.0.6.
    app_h1: Arc<h1pool::H1Pool>,
    /// Clusters with circuit breakers, each with pools of its own.
    limited: Clusters,
    mtls: Option<Arc<MtlsClient>>,
    originations: Originations,
}

impl Upstreams {
    /// Pools for a proxy; `mtls` carries the workload's identity when it has one.
    pub fn new(mtls: Option<Arc<MtlsClient>>) -> Self {
        let originations = Originations::default();
        Self {
            outbound: Clients::new(None, mtls.clone(), &originations),
            app: Clients::new(
                Some(PASSTHROUGH_SOURCE.into()),
                None,
                &Originations::default(),
            ),
            outbound_h1: h1pool::H1Pool::new(None),
            outbound_h2: h2pool::H2Pool::new(None, mtls.clone()),
            app_h1: h1pool::H1Pool::new(Some(PASSTHROUGH_SOURCE.into())),
            limited: Clusters::default(),
            mtls,
            originations,
        }
    }

    /// Records that the proxy originates TLS to `addr` as `o` says.
    pub fn originate_to(
        &self,
        addr: std::net::SocketAddr,
        o: &Arc<crate::tls::originate::Originate>,
    ) {
        let mut map = self.originations.write().unwrap_or_else(|e| e.into_inner());
        if !map.get(&addr).is_some_and(|known| Arc::ptr_eq(known, o)) {
            map.insert(addr, o.clone());
        }
    }

    /// The pools and circuit breaker of the cluster `limits` describes: the ones it had while
    /// its limits stay the same, new ones when they change (connections already open finish
    /// under the old counts).
    pub fn cluster(&self, limits: &Arc<PoolLimits>) -> Arc<LimitedCluster> {
        let mut map = self
            .limited
            .by_name
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(c) = map.get(&limits.cluster)
            && (Arc::ptr_eq(&c.breaker.limits, limits) || *c.breaker.limits == **limits)
        {
            return c.clone();
        }
        let breaker = breaker::Breaker::new(limits.clone());
        let cluster = Arc::new(LimitedCluster {
            h1: h1pool::H1Pool::limited(breaker.clone()),
            h2: h2pool::H2Pool::limited(self.mtls.clone(), breaker.clone()),
            breaker,
        });
        map.insert(limits.cluster.clone(), cluster.clone());
        cluster
    }

    /// Every cluster with a circuit breaker the proxy has sent to, by name, with its counts.
    pub fn breakers(&self) -> Vec<(String, Arc<breaker::Breaker>)> {
        let map = self
            .limited
            .by_name
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<_> = map
            .iter()
            .map(|(name, c)| (name.clone(), c.breaker.clone()))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Closes the pooled connections that have idled past their pool's idle timeout (90 s,
    /// or a DestinationRule's `idleTimeout`): the pools skip them anyway, and this lets their
    /// sockets go.
    pub fn close_idle(&self) {
        self.outbound_h1.close_idle();
        self.outbound_h2.close_idle();
        self.app_h1.close_idle();
        let clusters: Vec<_> = self
            .limited
            .by_name
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        for c in clusters {
            c.h1.close_idle();
            c.h2.close_idle();
        }
    }

    /// Mesh mTLS, when the proxy has an identity.
    pub fn mtls(&self) -> Option<&Arc<MtlsClient>> {
        self.mtls.as_ref()
    }

    /// Hands a request to the local app at `addr` (from 127.0.0.6): plaintext HTTP/1.1 on the
    /// light pool, the rest on hyper-util's client.
    pub(crate) async fn send_to_app(
        &self,
        req: Request<Body>,
        addr: SocketAddr,
        h2: bool,
        plain_h1: bool,
    ) -> Result<Response<Body>, Failure> {
        if plain_h1 {
            self.app_h1.send(addr, req).await.map_err(Failure::from)
        } else {
            self.app
                .pick(h2)
                .request(req)
                .await
                .map(|r| r.map(boxed))
                .map_err(Failure::from)
        }
    }
}

impl Default for Upstreams {
    fn default() -> Self {
        Self::new(None)
    }
}

/// Clusters with circuit breakers by name.
#[derive(Default)]
struct Clusters {
    /// Looked up for every request to such a cluster: a fast hasher (names come from pilot).
    by_name: std::sync::Mutex<HashMap<String, Arc<LimitedCluster>, foldhash::fast::RandomState>>,
}

/// A cluster with a circuit breaker: its counts, and pools that only its requests use, so that
/// the counts are exact.
pub struct LimitedCluster {
    /// The counts and limits.
    pub breaker: Arc<breaker::Breaker>,
    pub(crate) h1: Arc<h1pool::H1Pool>,
    pub(crate) h2: h2pool::H2Pool,
}

/// An upstream exchange that failed: before anything was sent (`connect`, retryable), refused
/// by the cluster's circuit breaker (`overflow`), or after it was sent.
pub(crate) struct Failure {
    pub(crate) connect: bool,
    pub(crate) overflow: bool,
    pub(crate) error: Box<dyn std::error::Error + Send + Sync>,
}

impl From<h1pool::SendError> for Failure {
    fn from(e: h1pool::SendError) -> Self {
        Self {
            connect: matches!(e, h1pool::SendError::Connect(_)),
            overflow: matches!(e, h1pool::SendError::Overflow(_)),
            error: Box::new(e),
        }
    }
}

impl From<breaker::Overflow> for Failure {
    fn from(e: breaker::Overflow) -> Self {
        Self {
            connect: false,
            overflow: true,
            error: Box::new(e),
        }
    }
}

impl From<hyper_util::client::legacy::Error> for Failure {
    fn from(e: hyper_util::client::legacy::Error) -> Self {
        Self {
            connect: e.is_connect(),
            overflow: false,
            error: Box::new(e),
        }
    }
}
