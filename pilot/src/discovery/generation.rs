//! A generation: one build of the model, with a cache of translated resources shared by every
//! proxy that sees a service the same way (same namespace, same labels), so a push to a
//! thousand proxies translates each service a handful of times, not a thousand.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Arc, Mutex};

use mesh_api::proto::discovery::v1 as pb;
use mesh_api::proto::state::v1 as state;
use prost::Message;

use crate::model::{Model, Rejection};
use crate::translate::{self, ProxyNode};

pub use mesh_api::proto::names::{SERVICE_TYPE, WORKLOAD_NAME, WORKLOAD_TYPE};

/// A translated resource, encoded once.
#[derive(Debug)]
pub struct Built {
    /// The resource as sent.
    pub resource: pb::Resource,
    /// Its name, shared with every session that records having sent it.
    pub name: Arc<str>,
    /// Its version as a number (`resource.version` is the same in hex).
    pub version: u64,
    /// Hosts its routes send to (so the default view includes them).
    pub destinations: Vec<String>,
    /// What was left out of it, and why.
    pub rejections: Vec<Rejection>,
    /// What of it the proxy will not enforce yet (resource and field).
    pub unenforced: Vec<String>,
}

fn version_of(bytes: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}

/// A version as the proxy holds it (what `Built::version` is, in hex); `None` for one that
/// pilot did not write, which matches nothing.
pub fn parse_version(version: &str) -> Option<u64> {
    (version.len() == 16)
        .then(|| u64::from_str_radix(version, 16).ok())
        .flatten()
}

/// The resource, encoded once, with its name and version.
fn encode(
    type_url: &str,
    name: &str,
    aliases: Vec<String>,
    bytes: Vec<u8>,
) -> (pb::Resource, Arc<str>, u64) {
    let version = version_of(&bytes);
    let resource = pb::Resource {
        name: name.to_string(),
        aliases,
        version: format!("{version:016x}"),
        resource: Some(prost_types::Any {
            type_url: type_url.to_string(),
            value: bytes,
        }),
    };
    (resource, Arc::from(name), version)
}

/// Who sees a service the same way.
#[derive(Clone, PartialEq, Eq, Hash)]
struct ViewKey {
    hostname: String,
    namespace: String,
    labels: u64,
}

/// One build of the model.
pub struct Generation {
    /// Increases with every build.
    pub version: u64,
    /// When it was built (for the time to push it).
    pub built: std::time::Instant,
    /// The model.
    pub model: Arc<Model>,
    cache: Mutex<HashMap<ViewKey, Arc<Built>>>,
}

impl std::fmt::Debug for Generation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Generation")
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

impl Generation {
    /// Wraps a model.
    pub fn new(version: u64, model: Model) -> Self {
        Generation {
            version,
            built: std::time::Instant::now(),
            model: Arc::new(model),
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// The service `hostname` as `node` sees it, or `None` when it does not exist or the
    /// proxy may not see it.
    pub fn service(
        &self,
        hostname: &str,
        node: &ProxyNode,
        scope: &translate::Scope<'_>,
    ) -> Option<Arc<Built>> {
        let svc = self.model.registry.services.get(hostname)?;
        if !scope.allows(svc) {
            return None;
        }
        let mut h = DefaultHasher::new();
        node.labels.hash(&mut h);
        let key = ViewKey {
            hostname: hostname.to_string(),
            namespace: node.namespace.clone(),
            labels: h.finish(),
        };
        if let Some(hit) = self.cache.lock().ok()?.get(&key) {
            return Some(hit.clone());
        }
        let mut rejections = Vec::new();
        let out = translate::service_view(&self.model, svc, node, &mut rejections);
        let destinations = route_hosts(&out);
        let aliases = svc
            .addresses
            .iter()
            .flat_map(|a| {
                std::iter::once(a.clone())
                    .chain(out.ports.iter().map(move |p| format!("{a}:{}", p.port)))
            })
            .collect();
        let (resource, name, version) =
            encode(SERVICE_TYPE, hostname, aliases, out.encode_to_vec());
        let built = Arc::new(Built {
            resource,
            name,
            version,
            destinations,
            rejections,
            unenforced: translate::unenforced::in_service(&self.model, svc, node),
        });
        if let Ok(mut cache) = self.cache.lock() {
            cache.insert(key, built.clone());
        }
        Some(built)
    }

    /// The proxy's own settings.
    pub fn workload(&self, node: &ProxyNode, scope: &translate::Scope<'_>) -> Built {
        let state = translate::workload_state(&self.model, node, scope);
        let (resource, name, version) = encode(
            WORKLOAD_TYPE,
            WORKLOAD_NAME,
            Vec::new(),
            state.encode_to_vec(),
        );
        Built {
            resource,
            name,
            version,
            destinations: Vec::new(),
            rejections: Vec::new(),
            unenforced: translate::unenforced::in_workload(&self.model, node, scope),
        }
    }
}

fn route_hosts(s: &state::Service) -> Vec<String> {
    let mut out: Vec<String> = s
        .http_routes
        .iter()
        .flat_map(|r| r.destinations.iter())
        .chain(s.tcp_routes.iter().flat_map(|r| r.destinations.iter()))
        .chain(s.tls_routes.iter().flat_map(|r| r.destinations.iter()))
        .map(|d| d.host.clone())
        .filter(|h| *h != s.hostname)
        .collect();
    out.sort();
    out.dedup();
    out
}
