//! One proxy's discovery stream, as a state machine without IO: requests and new generations
//! go in, responses come out. The stream task in `server.rs` only moves messages.
//!
//! Per resource type the session remembers what the client holds (name → version), what it
//! last acknowledged, and whether a response is waiting for its ACK. At most one response per
//! type is in flight: changes that arrive meanwhile are coalesced into the next one. After a
//! NACK the client is taken to hold what it last acknowledged, and nothing is re-sent until the
//! model or the subscription changes (re-sending what was just refused would loop).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use mesh_api::proto::discovery::v1 as pb;
use prost::Message;

use super::generation::{
    Built, Generation, SERVICE_TYPE, WORKLOAD_NAME, WORKLOAD_TYPE, parse_version,
};
use super::status::Status;
use crate::model::host;
use crate::translate::{self, ProxyNode};

/// A request the session refuses; the stream ends with it.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    /// A type this server does not serve.
    #[error("unknown resource type {0:?}; this server serves {SERVICE_TYPE} and {WORKLOAD_TYPE}")]
    UnknownType(String),
}

pub use mesh_api::proto::names::WILDCARD;

/// Resources per response are cut at about this many bytes (a lone larger one still goes).
pub const MAX_RESPONSE_BYTES: usize = 8 * 1024;

#[derive(Debug, Default)]
struct TypeState {
    subscribed: bool,
    /// The default view (the first request named nothing).
    wildcard: bool,
    /// Names subscribed explicitly or found on demand.
    names: BTreeSet<String>,
    /// Lookups that found nothing, answered as removed names in the next response.
    not_found: Vec<String>,
    /// Name → version the client holds (assumed as soon as a response is sent). Names are
    /// shared with the generation's resources and versions are numbers: a pilot holds this
    /// for every resource of every proxy.
    client: BTreeMap<Arc<str>, Option<u64>>,
    /// Name → version the client last acknowledged.
    acked: BTreeMap<Arc<str>, Option<u64>>,
    /// The nonce waiting for its ACK or NACK, and the generation it carried.
    pending: Option<(String, u64)>,
    /// Something changed since the last response.
    dirty: bool,
    /// The last response was refused; wait for a change.
    refused: bool,
    /// The proxy's last word on this type was a NACK (cleared by an ACK, or once the proxy
    /// already holds what pilot wants: a change that undoes the refused one sends nothing).
    nacked: bool,
    /// A first response was sent.
    answered: bool,
}

/// One proxy's stream.
pub struct Session {
    node: ProxyNode,
    generation: Arc<Generation>,
    types: BTreeMap<&'static str, TypeState>,
    status: Status,
    nonces: u64,
}

impl Session {
    /// A session for `node`, starting at `generation`.
    pub fn new(node: ProxyNode, generation: Arc<Generation>, status: Status) -> Self {
        status.register(&node);
        status.update(&node.id, |s| s.connected = true);
        Session {
            node,
            generation,
            types: BTreeMap::new(),
            status,
            nonces: 0,
        }
    }

    /// The proxy.
    pub fn node(&self) -> &ProxyNode {
        &self.node
    }

    /// Takes one request from the proxy.
    pub fn request(&mut self, req: &pb::DeltaDiscoveryRequest) -> Result<(), SessionError> {
        let type_url = match req.type_url.as_str() {
            SERVICE_TYPE => SERVICE_TYPE,
            WORKLOAD_TYPE => WORKLOAD_TYPE,
            other => return Err(SessionError::UnknownType(other.to_string())),
        };
        let generation = self.generation.clone();
        let t = self.types.entry(type_url).or_default();
        let answered = t
            .pending
            .as_ref()
            .filter(|(nonce, _)| !req.response_nonce.is_empty() && *nonce == req.response_nonce)
            .map(|(_, version)| *version);
        if let Some(carried) = answered {
            t.pending = None;
            let id = self.node.id.clone();
            match &req.error_detail {
                Some(err) => {
                    t.client = t.acked.clone();
                    t.refused = true;
                    t.nacked = true;
                    self.status
                        .metrics
                        .rejects
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    self.status.update(&id, |s| {
                        s.nack = Some(format!("{}: {}", short(type_url), err.message));
                    });
                }
                None => {
                    t.acked = t.client.clone();
                    t.nacked = false;
                    self.status.update(&id, |s| {
                        s.acked_version = Some(carried);
                        s.nack = None;
                    });
                }
            }
        }
        let mut changed = false;
        if !t.subscribed {
            t.subscribed = true;
            // The default view: nothing named on the first request, or `*` among the names
            // (how a reconnecting client asks for it beside the names it had added).
            t.wildcard = (req.resource_names_subscribe.is_empty() && req.on_demand.is_empty())
                || req.resource_names_subscribe.iter().any(|n| n == WILDCARD);
            t.client = req
                .initial_resource_versions
                .iter()
                .map(|(k, v)| (Arc::from(k.as_str()), parse_version(v)))
                .collect();
            t.acked = t.client.clone();
            changed = true;
        }
        for name in req
            .resource_names_subscribe
            .iter()
            .filter(|n| *n != WILDCARD)
        {
            changed |= t.names.insert(name.clone());
        }
        for name in &req.resource_names_unsubscribe {
            changed |= t.names.remove(name);
        }
        for lookup in &req.on_demand {
            changed = true;
            match resolve(&generation, &self.node, lookup) {
                Some(host) => {
                    // Already held: answer anyway, so the waiting connection is released.
                    t.client.remove(host.as_str());
                    t.names.insert(host);
                }
                None => t.not_found.push(lookup_key(lookup)),
            }
        }
        if changed {
            t.dirty = true;
            t.refused = false;
        }
        Ok(())
    }

    /// Moves to a new generation of the model.
    pub fn generation(&mut self, generation: Arc<Generation>) {
        self.generation = generation;
        for t in self.types.values_mut() {
            t.dirty = true;
            t.refused = false;
        }
    }

    /// The responses due now (at most one per type).
    pub fn responses(&mut self) -> Vec<pb::DeltaDiscoveryResponse> {
        let mut out = Vec::new();
        let types: Vec<&'static str> = self.types.keys().copied().collect();
        for type_url in types {
            if let Some(r) = self.response_for(type_url) {
                out.push(r);
            }
        }
        out
    }

    fn response_for(&mut self, type_url: &'static str) -> Option<pb::DeltaDiscoveryResponse> {
        let started = std::time::Instant::now();
        let generation = self.generation.clone();
        let scope = translate::scope(&generation.model, &self.node);
        let t = self.types.get(type_url)?;
        if !t.subscribed || !t.dirty || t.pending.is_some() || t.refused {
            return None;
        }
        // What the proxy should hold, shared with the generation's cache: a resource is copied
        // only when it is sent.
        let mut desired: BTreeMap<String, Arc<Built>> = BTreeMap::new();
        let mut rejections = Vec::new();
        let mut unenforced = Vec::new();
        let mut missing = Vec::new();
        if type_url == WORKLOAD_TYPE {
            let mut w = generation.workload(&self.node, &scope);
            unenforced = std::mem::take(&mut w.unenforced);
            desired.insert(WORKLOAD_NAME.to_string(), Arc::new(w));
        } else {
            let mut queue: Vec<String> = t.names.iter().cloned().collect();
            let own = generation
                .model
                .registry
                .by_namespace
                .get(&self.node.namespace);
            if let (true, Some(hosts)) = (t.wildcard, own) {
                queue.extend(hosts.iter().cloned());
            }
            if t.wildcard && self.node.is_gateway {
                // A gateway's view: what its routes name, wherever it lives.
                queue.extend(crate::translate::gateway::destinations(
                    &generation.model,
                    &self.node,
                ));
            }
            while let Some(host) = queue.pop() {
                if desired.contains_key(&host) {
                    continue;
                }
                match generation.service(&host, &self.node, &scope) {
                    Some(b) => {
                        queue.extend(b.destinations.iter().cloned());
                        rejections.extend(b.rejections.iter().map(ToString::to_string));
                        unenforced.extend(b.unenforced.iter().cloned());
                        desired.insert(host, b);
                    }
                    None if t.names.contains(&host) => missing.push(host),
                    None => {}
                }
            }
        }
        let t = self.types.get_mut(type_url)?;
        // Responses stay small: gRPC keeps a stream's encode buffer at the size of the largest
        // message it sent, so one full view per stream would pin ~150 KB per proxy. What does
        // not fit follows in the next response, after this one is acknowledged.
        let mut budget = MAX_RESPONSE_BYTES;
        let mut sent: Vec<&Arc<Built>> = Vec::new();
        let mut more = false;
        for b in desired
            .values()
            .filter(|b| t.client.get(b.name.as_ref()) != Some(&Some(b.version)))
        {
            let len = b.resource.encoded_len();
            if !sent.is_empty() && len > budget {
                more = true;
                break;
            }
            budget = budget.saturating_sub(len);
            sent.push(b);
        }
        let mut removed: Vec<String> = t
            .client
            .keys()
            .filter(|k| !desired.contains_key(k.as_ref()))
            .map(|k| k.to_string())
            .collect();
        removed.extend(
            missing
                .into_iter()
                .filter(|m| !t.client.contains_key(m.as_str())),
        );
        removed.append(&mut t.not_found);
        t.dirty = more;
        // What the proxy will not enforce can change while the resources sent do not (a field
        // no layer reads): recorded whether or not a response goes.
        let is_services = type_url == SERVICE_TYPE;
        unenforced.sort();
        unenforced.dedup();
        self.status.update(&self.node.id, |s| {
            if is_services {
                s.not_enforced_services = unenforced;
            } else {
                s.not_enforced_workload = unenforced;
            }
        });
        let t = self.types.get_mut(type_url)?;
        if sent.is_empty() && removed.is_empty() && t.answered {
            if std::mem::take(&mut t.nacked) {
                // The proxy holds what pilot now wants: its refusal is no longer the latest word.
                let prefix = format!("{}: ", short(type_url));
                self.status.update(&self.node.id, |s| {
                    if s.nack.as_deref().is_some_and(|n| n.starts_with(&prefix)) {
                        s.nack = None;
                    }
                });
            }
            return None;
        }
        t.answered = true;
        for name in &removed {
            t.client.remove(name.as_str());
        }
        for b in &sent {
            t.client.insert(b.name.clone(), Some(b.version));
        }
        let resources = sent.iter().map(|b| b.resource.clone()).collect();
        self.nonces += 1;
        let nonce = format!("{}-{}", generation.version, self.nonces);
        t.pending = Some((nonce.clone(), generation.version));
        let version = generation.version;
        let count = desired.len();
        self.status
            .metrics
            .pushed(is_services, generation.built.elapsed(), started.elapsed());
        self.status.update(&self.node.id, |s| {
            s.sent_version = Some(version);
            if is_services {
                s.services = count;
                s.rejections = rejections;
            }
        });
        Some(pb::DeltaDiscoveryResponse {
            system_version_info: version.to_string(),
            type_url: type_url.to_string(),
            resources,
            removed_resources: removed,
            nonce,
        })
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.status.update(&self.node.id, |s| s.connected = false);
    }
}

fn short(type_url: &str) -> &str {
    type_url.rsplit('.').next().unwrap_or(type_url)
}

/// How a lookup is named when it finds nothing.
pub fn lookup_key(lookup: &pb::OnDemandLookup) -> String {
    use pb::on_demand_lookup::Target;
    match &lookup.target {
        Some(Target::Host(h)) => h.clone(),
        Some(Target::Address(a)) => a.clone(),
        None => String::new(),
    }
}

/// The service a lookup names, if the proxy may see it: by host as the workload wrote it
/// (`svc`, `svc.ns`, `svc.ns.svc`, the full name), or by `VIP[:port]`.
fn resolve(
    generation: &Generation,
    node: &ProxyNode,
    lookup: &pb::OnDemandLookup,
) -> Option<String> {
    use pb::on_demand_lookup::Target;
    let model = &generation.model;
    let domain = &model.config.domain;
    let registry = &model.registry;
    let host = match lookup.target.as_ref()? {
        Target::Address(a) => {
            let ip = a
                .parse::<std::net::SocketAddr>()
                .map(|s| s.ip().to_string())
                .unwrap_or_else(|_| a.clone());
            registry.by_address.get(&ip)?.clone()
        }
        Target::Host(h) => {
            let h = h.trim_end_matches('.').to_ascii_lowercase();
            let parts = h.split('.').count();
            let candidates = [
                host::fqdn(&h, &node.namespace, domain),
                if parts == 2 {
                    format!("{h}.svc.{domain}")
                } else {
                    String::new()
                },
                if parts == 3 && h.ends_with(".svc") {
                    format!("{h}.{domain}")
                } else {
                    String::new()
                },
                h.clone(),
            ];
            candidates
                .into_iter()
                .find(|c| registry.services.contains_key(c))?
        }
    };
    let scope = translate::scope(model, node);
    registry
        .services
        .get(&host)
        .filter(|s| scope.allows(s))
        .map(|s| s.hostname.clone())
}
