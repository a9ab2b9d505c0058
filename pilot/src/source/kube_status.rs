//! What pilot says of each Istio object in a cluster, in the object's own
//! `status.validationMessages` (as istiod's analysis writes them), so that nothing applied is
//! silently ignored and `kubectl get virtualservice x -o yaml` shows it:
//!
//! - IST0106 (Error): the object is refused; the last good version is served;
//! - MESH0003 (Warning): a field accepted but not enforced yet, by its path;
//! - every message of the analyzers `meshctl analyze` runs (mesh_api::analyze), over what the
//!   cluster holds: a VirtualService naming a Gateway that does not exist, a DestinationRule
//!   whose selector matches no pod, ...
//!
//! The analysis runs in a task of its own on the latest of the source's snapshots (those that
//! arrive while one runs are folded into the next), so pushes to proxies never wait on it; after
//! each it rests as long as it took, so that it takes at most half a core.
//! Only what changed is written; a message that no longer holds is cleared. Gateway API objects
//! are left to `crate::gateway_status`: their status has a schema of its own.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Secret, Service};
use kube::api::{DynamicObject, Patch, PatchParams};
use kube::{Api, Client};
use mesh_api::Kind;
use mesh_api::analyze::{self, Level, Message};
use serde_json::Value;
use tokio::sync::watch;

use super::kube::{KubeOptions, api_resource};

/// What the loader said of one Istio object.
#[derive(Clone, Debug)]
pub struct Checked {
    /// Its kind.
    pub kind: Kind,
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// `metadata.generation`.
    pub generation: Option<i64>,
    /// Whether its status already holds messages (a restarted pilot clears stale ones).
    pub had_messages: bool,
    /// Why it is refused, when it is.
    pub refusal: Option<String>,
    /// Its fields accepted but not enforced yet: `path: what`.
    pub not_enforced: Vec<String>,
}

/// What one analysis looks at: the cluster's objects as the API serves them, and the loader's
/// verdict on each Istio object.
#[derive(Debug, Default)]
pub struct Input {
    /// Istio's (and the Gateway API's) objects, with `apiVersion` and `kind` set.
    pub objects: Vec<Value>,
    /// Services.
    pub services: Vec<Arc<Service>>,
    /// Pods.
    pub pods: Vec<Arc<Pod>>,
    /// Namespaces.
    pub namespaces: Vec<Arc<Namespace>>,
    /// The mesh configuration's ConfigMap.
    pub mesh: Option<Arc<ConfigMap>>,
    /// The Secrets Gateways name as credentials (no other Secret is read).
    pub secrets: Vec<Arc<Secret>>,
    /// The root namespace.
    pub root_namespace: String,
    /// One per Istio object whose status pilot owns.
    pub checked: Vec<Checked>,
}

const IST0106: analyze::Code = analyze::Code {
    code: "IST0106",
    name: "SchemaValidationError",
    level: Level::Error,
};

/// One message as a `validationMessages` entry: Istio's `level`, `type` and
/// `documentationUrl`, with the text and what to do.
fn entry(m: &Message) -> Value {
    let mut e = serde_json::json!({
        "level": m.level.to_string().to_ascii_uppercase(),
        "type": {"code": m.code, "name": m.name},
        "description": m.text,
    });
    if !m.hint.is_empty() {
        e["hint"] = Value::from(m.hint.clone());
    }
    if m.code.starts_with("IST") {
        e["documentationUrl"] = Value::from(format!(
            "https://istio.io/latest/docs/reference/config/analysis/{}/",
            m.code.to_ascii_lowercase()
        ));
    }
    e
}

fn key(kind: &str, namespace: &str, name: &str) -> String {
    format!("{kind} {namespace}/{name}")
}

/// The `validationMessages` of every checked object (by `Kind namespace/name`; empty when it
/// has none), sorted Errors first.
pub fn messages(input: &Input) -> BTreeMap<String, Vec<Value>> {
    let mut snapshot = analyze::Snapshot::new();
    snapshot.root_namespace = input.root_namespace.clone();
    let mut add = |v: Result<Value, serde_json::Error>| {
        if let Ok(v) = v {
            snapshot.add_value(v, None, 0);
        }
    };
    input
        .services
        .iter()
        .for_each(|s| add(serde_json::to_value(&**s)));
    input
        .pods
        .iter()
        .for_each(|p| add(serde_json::to_value(&**p)));
    input
        .namespaces
        .iter()
        .for_each(|n| add(serde_json::to_value(&**n)));
    input
        .mesh
        .iter()
        .for_each(|m| add(serde_json::to_value(&**m)));
    input
        .secrets
        .iter()
        .for_each(|s| add(serde_json::to_value(&**s)));
    for o in &input.objects {
        snapshot.add_value(o.clone(), None, 0);
    }
    let mut found: BTreeMap<String, Vec<Message>> = BTreeMap::new();
    for c in &input.checked {
        let list = found
            .entry(key(c.kind.name(), &c.namespace, &c.name))
            .or_default();
        if let Some(refusal) = &c.refusal {
            list.push(Message {
                code: IST0106.code,
                name: IST0106.name,
                level: IST0106.level,
                origin: String::new(),
                text: format!("refused by mesh-pilot: {refusal}"),
                hint:
                    "fix the field as the message says; until then the last good version is served"
                        .into(),
                file: None,
                line: None,
            });
        }
        for n in &c.not_enforced {
            list.push(Message {
                code: analyze::MESH0003.code,
                name: analyze::MESH0003.name,
                level: analyze::MESH0003.level,
                origin: String::new(),
                text: n.clone(),
                hint: "the mesh keeps the field but does not act on it yet (docs/api-coverage.md)"
                    .into(),
                file: None,
                line: None,
            });
        }
    }
    // The loader's refusals are the schema check's messages already.
    for a in analyze::analyzers()
        .iter()
        .filter(|a| a.name != "schema.ValidationAnalyzer")
    {
        for m in a.check(&snapshot) {
            // Istio objects only: the others have no status of ours to write.
            if let Some(list) = found.get_mut(&m.origin) {
                list.push(m);
            }
        }
    }
    found
        .into_iter()
        .map(|(k, mut list)| {
            list.sort_by(|a, b| (a.level, a.code, &a.text).cmp(&(b.level, b.code, &b.text)));
            list.dedup_by(|a, b| a.code == b.code && a.text == b.text);
            (k, list.iter().map(entry).collect())
        })
        .collect()
}

/// Writes the messages of the latest input on `rx` into the objects' status, until the sender
/// is dropped.
pub async fn run(
    client: Client,
    options: KubeOptions,
    mut rx: watch::Receiver<Option<Arc<Input>>>,
) {
    // What was last written, by `Kind namespace/name`.
    let mut written: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    loop {
        let input = rx.borrow_and_update().clone();
        if let Some(input) = input {
            let started = tokio::time::Instant::now();
            let analysed = {
                let input = input.clone();
                tokio::task::spawn_blocking(move || messages(&input)).await
            };
            let Ok(found) = analysed else { return };
            // In a cluster whose endpoints keep changing, analysis takes at most half a core.
            let pause = started.elapsed();
            let mut next = BTreeMap::new();
            for c in &input.checked {
                let k = key(c.kind.name(), &c.namespace, &c.name);
                let list = found.get(&k).cloned().unwrap_or_default();
                let unchanged = match written.get(&k) {
                    Some(before) => *before == list,
                    None => list.is_empty() && !c.had_messages,
                };
                if unchanged || write(&client, &options, c, &list).await {
                    next.insert(k, list);
                }
            }
            written = next;
            tokio::time::sleep(pause).await;
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
}

/// Writes `list` as `c`'s `validationMessages` (none clears them); whether it was written.
async fn write(client: &Client, options: &KubeOptions, c: &Checked, list: &[Value]) -> bool {
    let ar = api_resource(c.kind);
    let api: Api<DynamicObject> = if c.kind.is_namespaced() {
        Api::namespaced_with(client.clone(), &c.namespace, &ar)
    } else {
        Api::all_with(client.clone(), &ar)
    };
    let messages = if list.is_empty() {
        Value::Null
    } else {
        Value::from(list.to_vec())
    };
    let patch = serde_json::json!({
        "status": {
            "validationMessages": messages,
            "observedGeneration": c.generation.map(|g| g.to_string()),
        }
    });
    let params = PatchParams {
        field_manager: Some(options.field_manager.clone()),
        ..PatchParams::default()
    };
    match api
        .patch_status(&c.name, &params, &Patch::Merge(&patch))
        .await
    {
        Ok(_) => true,
        Err(e) => {
            tracing::warn!(
                "cannot write the status of {} {}/{}: {e}",
                c.kind.name(),
                c.namespace,
                c.name
            );
            false
        }
    }
}
