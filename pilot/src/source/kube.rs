//! The Kubernetes source: reflectors over Services, EndpointSlices, Pods, Namespaces and the
//! Istio kinds, folded into the same [`Snapshot`] the folder source makes.
//!
//! Istio resources are read as `v1`: their CRDs (Istio's own since 1.22, and ours) serve every
//! version with one schema and no conversion, so an object written as `v1alpha3` or `v1beta1`
//! is listed through `v1` as well. Each one passes the same strict parse and validation as a
//! file; a refused one keeps its last good version in the snapshot. Its reason, its fields not
//! enforced yet and the analyzers' messages are written into its `status.validationMessages`
//! (cleared again once they no longer hold) by [`super::kube_status`], as istiod's analysis
//! does. The first snapshot is published only when every reflector has
//! listed, so pilot never pushes a half-read mesh.
//!
//! The mesh configuration is read as Istio keeps it: the ConfigMap `istio` in the root
//! namespace (key `mesh`). A version that does not validate is logged and the last good one
//! kept. Secrets are watched too, and only those a Gateway names in `credentialName` (or their
//! `-cacert` companions) are passed on, as istiod reads gateway credentials.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use mesh_api::load;
use mesh_api::{Diagnostic, Kind, Resource};
use tokio::sync::{Notify, watch};

use super::kube_status::{self, Checked};
use super::{Snapshot, key_of};

/// The custom kinds pilot reads: Istio's, the mesh's own RateLimitPolicy, and the Gateway
/// API's (installed separately, as for Istio; when they are not, they are left out).
pub const CUSTOM_KINDS: [Kind; 17] = [
    Kind::VirtualService,
    Kind::DestinationRule,
    Kind::Gateway,
    Kind::ServiceEntry,
    Kind::WorkloadEntry,
    Kind::WorkloadGroup,
    Kind::Sidecar,
    Kind::PeerAuthentication,
    Kind::AuthorizationPolicy,
    Kind::RequestAuthentication,
    Kind::Telemetry,
    Kind::RateLimitPolicy,
    Kind::GatewayClass,
    Kind::KubeGateway,
    Kind::HttpRoute,
    Kind::GrpcRoute,
    Kind::ReferenceGrant,
];

/// How the source behaves.
#[derive(Clone, Debug)]
pub struct KubeOptions {
    /// Write refusals into the resources' status.
    pub write_status: bool,
    /// Field manager name for status writes.
    pub field_manager: String,
    /// The root namespace, where the mesh configuration (ConfigMap `istio`) lives.
    pub root_namespace: String,
}

impl Default for KubeOptions {
    fn default() -> Self {
        KubeOptions {
            write_status: true,
            field_manager: "mesh-pilot".into(),
            root_namespace: crate::model::peer_authentication::DEFAULT_ROOT_NAMESPACE.into(),
        }
    }
}

/// The API resource of a custom kind, in the version pilot reads it.
pub fn api_resource(kind: Kind) -> ApiResource {
    // Istio's kinds are read in v1; the mesh's own in their newest (only) version; the
    // Gateway API's ReferenceGrant in v1beta1, where the standard channel serves it.
    let version = match kind {
        Kind::ReferenceGrant => "v1beta1",
        _ => kind.versions()[0],
    };
    let gvk = GroupVersionKind::gvk(kind.group(), version, kind.name());
    let plural = format!("{}s", kind.name().to_ascii_lowercase());
    let plural = match kind {
        Kind::WorkloadEntry => "workloadentries".to_string(),
        Kind::AuthorizationPolicy => "authorizationpolicies".to_string(),
        Kind::RateLimitPolicy => "ratelimitpolicies".to_string(),
        Kind::Telemetry => "telemetries".to_string(),
        Kind::GatewayClass => "gatewayclasses".to_string(),
        _ => plural,
    };
    ApiResource::from_gvk_with_plural(&gvk, &plural)
}

/// Reflectors and what the source remembers between snapshots.
struct Stores {
    services: Store<Service>,
    slices: Store<EndpointSlice>,
    pods: Store<Pod>,
    namespaces: Store<Namespace>,
    mesh: Store<ConfigMap>,
    /// Secrets, of which only those Gateways name in `credentialName` are passed on.
    secrets: Store<Secret>,
    istio: Vec<(Kind, Store<DynamicObject>)>,
}

/// Last good versions and the status last written, by key.
#[derive(Default)]
struct Memory {
    accepted: BTreeMap<(String, String), Resource>,
    written: BTreeMap<(String, String), Option<String>>,
    /// The last mesh configuration that validated.
    mesh: Option<Resource>,
}

/// Runs the source until `tx` has no receivers.
pub async fn run(client: Client, tx: watch::Sender<Arc<Snapshot>>, options: KubeOptions) {
    let changed = Arc::new(Notify::new());
    let mut tasks = Vec::new();
    // One reflector task; `config` narrows what it watches (the mesh ConfigMap by name).
    fn start<K>(
        api: Api<K>,
        config: watcher::Config,
        writer: reflector::store::Writer<K>,
        changed: Arc<Notify>,
    ) -> tokio::task::JoinHandle<()>
    where
        K: kube::Resource
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug
            + Send
            + Sync
            + 'static,
        K::DynamicType: Eq + std::hash::Hash + Clone + Send + Sync,
    {
        tokio::spawn(async move {
            let stream = reflector::reflector(writer, watcher(api, config))
                .default_backoff()
                .touched_objects();
            futures_util::pin_mut!(stream);
            while let Some(item) = stream.next().await {
                match item {
                    Ok(_) => changed.notify_one(),
                    Err(e) => tracing::warn!("kubernetes watch: {e}"),
                }
            }
        })
    }
    let (services, w) = reflector::store();
    tasks.push(start(
        Api::<Service>::all(client.clone()),
        watcher::Config::default(),
        w,
        changed.clone(),
    ));
    let (slices, w) = reflector::store();
    tasks.push(start(
        Api::<EndpointSlice>::all(client.clone()),
        watcher::Config::default(),
        w,
        changed.clone(),
    ));
    let (pods, w) = reflector::store();
    tasks.push(start(
        Api::<Pod>::all(client.clone()),
        watcher::Config::default(),
        w,
        changed.clone(),
    ));
    let (namespaces, w) = reflector::store();
    tasks.push(start(
        Api::<Namespace>::all(client.clone()),
        watcher::Config::default(),
        w,
        changed.clone(),
    ));
    let (mesh, w) = reflector::store();
    tasks.push(start(
        Api::<ConfigMap>::namespaced(client.clone(), &options.root_namespace),
        watcher::Config::default().fields(&format!(
            "metadata.name={}",
            mesh_api::mesh_config::CONFIG_MAP
        )),
        w,
        changed.clone(),
    ));
    let (secrets, w) = reflector::store();
    tasks.push(start(
        Api::<Secret>::all(client.clone()),
        watcher::Config::default(),
        w,
        changed.clone(),
    ));
    let mut istio = Vec::new();
    for kind in CUSTOM_KINDS {
        let ar = api_resource(kind);
        let api = Api::<DynamicObject>::all_with(client.clone(), &ar);
        // A kind whose CRD is not installed would keep its reflector from ever listing, and
        // nothing would be published: it is left out, and said so.
        if let Err(kube::Error::Api(status)) = api.list(&ListParams::default().limit(1)).await
            && status.is_not_found()
        {
            let fix = if kind.is_gateway_api() {
                "install the Gateway API's CRDs (its standard-install.yaml, as for Istio)"
            } else {
                "install the mesh's CRDs (`meshctl manifest crds`)"
            };
            tracing::warn!(
                "{kind}: the API server does not serve {}/{} {}: its CRD is not installed, so no {kind} is read; {fix} and restart pilot",
                ar.group,
                ar.version,
                ar.plural
            );
            continue;
        }
        let writer = reflector::store::Writer::new(ar.clone());
        istio.push((kind, writer.as_reader()));
        tasks.push(start(
            api,
            watcher::Config::default(),
            writer,
            changed.clone(),
        ));
    }
    let stores = Stores {
        services,
        slices,
        pods,
        namespaces,
        mesh,
        secrets,
        istio,
    };
    // Nothing is published before every reflector has listed once.
    let ready = async {
        stores.services.wait_until_ready().await.ok()?;
        stores.slices.wait_until_ready().await.ok()?;
        stores.pods.wait_until_ready().await.ok()?;
        stores.namespaces.wait_until_ready().await.ok()?;
        stores.mesh.wait_until_ready().await.ok()?;
        stores.secrets.wait_until_ready().await.ok()?;
        for (_, s) in &stores.istio {
            s.wait_until_ready().await.ok()?;
        }
        Some(())
    };
    tokio::select! {
        r = ready => if r.is_none() { return },
        () = tx.closed() => return,
    }
    let memory = Mutex::new(Memory::default());
    let (analysis_tx, analysis_rx) = watch::channel(None);
    if options.write_status {
        tasks.push(tokio::spawn(kube_status::run(
            client.clone(),
            options.clone(),
            analysis_rx,
        )));
    }
    let mut revision = 0;
    loop {
        revision += 1;
        let (snapshot, writes, mut analysis) = snapshot(&stores, &memory, revision);
        tx.send_replace(Arc::new(snapshot));
        if options.write_status {
            analysis.root_namespace = options.root_namespace.clone();
            analysis_tx.send_replace(Some(Arc::new(analysis)));
            for w in writes {
                write_status(&client, &options, w).await;
            }
        }
        tokio::select! {
            () = changed.notified() => {}
            () = tx.closed() => break,
        }
        // Let a burst of events (a `kubectl apply` of many objects) settle.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for t in tasks {
        t.abort();
    }
}

/// A Gateway API object's refusal to write into its status.
struct StatusWrite {
    kind: Kind,
    namespace: String,
    name: String,
    generation: Option<i64>,
    message: String,
    /// A Gateway API route's `parentRefs`, whose status entries say it is refused.
    parent_refs: Vec<serde_json::Value>,
}

fn snapshot(
    stores: &Stores,
    memory: &Mutex<Memory>,
    revision: u64,
) -> (Snapshot, Vec<StatusWrite>, kube_status::Input) {
    let mut resources: Vec<Arc<Resource>> = Vec::new();
    resources.extend(
        stores
            .services
            .state()
            .iter()
            .map(|s| Arc::new(Resource::Service(Box::new((**s).clone())))),
    );
    resources.extend(
        stores
            .slices
            .state()
            .iter()
            .map(|s| Arc::new(Resource::EndpointSlice(Box::new((**s).clone())))),
    );
    resources.extend(
        stores
            .pods
            .state()
            .iter()
            .map(|s| Arc::new(Resource::Pod(Box::new((**s).clone())))),
    );
    resources.extend(
        stores
            .namespaces
            .state()
            .iter()
            .map(|s| Arc::new(Resource::Namespace(Box::new((**s).clone())))),
    );
    let mut findings = Vec::new();
    let mut writes = Vec::new();
    let mut analysis = kube_status::Input {
        services: stores.services.state(),
        pods: stores.pods.state(),
        namespaces: stores.namespaces.state(),
        mesh: stores.mesh.state().first().cloned(),
        ..kube_status::Input::default()
    };
    let mut mem = memory.lock().unwrap_or_else(|e| e.into_inner());
    let mut accepted = BTreeMap::new();
    for (kind, store) in &stores.istio {
        for obj in store.state() {
            let mut value = serde_json::to_value(&*obj).unwrap_or_default();
            if let Some(map) = value.as_object_mut() {
                // List items may omit their type; the store knows it.
                map.insert("apiVersion".into(), kind.api_version().into());
                map.insert("kind".into(), kind.name().into());
            }
            let name = obj.metadata.name.clone().unwrap_or_default();
            let namespace = obj
                .metadata
                .namespace
                .clone()
                .unwrap_or_else(|| "default".into());
            let key = (kind.name().to_string(), format!("{namespace}/{name}"));
            let report = load::load_str(&value.to_string(), Some("kubernetes"));
            let errors: Vec<&Diagnostic> = report.errors().collect();
            let message = if errors.is_empty() {
                None
            } else {
                Some(
                    errors
                        .iter()
                        .map(|d| match &d.field {
                            Some(f) => format!("{f}: {}", d.message),
                            None => d.message.clone(),
                        })
                        .collect::<Vec<_>>()
                        .join("; "),
                )
            };
            if !kind.is_gateway_api() {
                analysis.checked.push(Checked {
                    kind: *kind,
                    namespace: namespace.clone(),
                    name: name.clone(),
                    generation: obj.metadata.generation,
                    had_messages: obj
                        .data
                        .get("status")
                        .and_then(|s| s.get("validationMessages"))
                        .is_some_and(|m| !m.is_null()),
                    refusal: message.clone(),
                    not_enforced: report
                        .diagnostics
                        .iter()
                        .filter(|d| d.severity == mesh_api::Severity::Warning)
                        .filter(|d| d.message.starts_with(mesh_api::validate::NOT_ENFORCED))
                        .map(|d| match &d.field {
                            Some(f) => format!("{f}: {}", d.message),
                            None => d.message.clone(),
                        })
                        .collect(),
                });
            }
            match report.documents.into_iter().next() {
                Some(doc) if message.is_none() => {
                    accepted.insert(key.clone(), doc.resource);
                }
                _ => {
                    findings.extend(report.diagnostics.clone());
                    if let Some(old) = mem.accepted.get(&key) {
                        findings.push(Diagnostic::warning(format!(
                            "{} {}: the new version is refused; serving the last good version",
                            key.0, key.1
                        )));
                        accepted.insert(key.clone(), old.clone());
                    }
                }
            }
            // A Gateway API object's status is written from the model once it is accepted
            // (crate::gateway_status); here only its refusal is. Istio objects' statuses are
            // written by kube_status.
            if kind.is_gateway_api() && mem.written.get(&key) != Some(&message) {
                if let Some(message) = &message {
                    writes.push(StatusWrite {
                        kind: *kind,
                        namespace,
                        name,
                        generation: obj.metadata.generation,
                        message: message.clone(),
                        parent_refs: obj
                            .data
                            .get("spec")
                            .and_then(|s| s.get("parentRefs"))
                            .and_then(|p| p.as_array())
                            .cloned()
                            .unwrap_or_default(),
                    });
                }
                mem.written.insert(key, message);
            }
            analysis.objects.push(value);
        }
    }
    resources.extend(accepted.values().cloned().map(Arc::new));
    mem.accepted = accepted;
    // The certificates of Gateways' HTTPS servers: only the Secrets they name.
    let named = crate::translate::gateway::credential_names(&resources);
    analysis.secrets = stores
        .secrets
        .state()
        .into_iter()
        .filter(|s| s.metadata.name.as_ref().is_some_and(|n| named.contains(n)))
        .collect();
    resources.extend(
        analysis
            .secrets
            .iter()
            .map(|s| Arc::new(Resource::Secret(Box::new((**s).clone())))),
    );
    let mesh = stores.mesh.state().first().map(|cm| (**cm).clone());
    match mesh {
        None => mem.mesh = None,
        Some(cm) => {
            let resource = Resource::ConfigMap(Box::new(cm));
            let errors: Vec<Diagnostic> = mesh_api::validate::validate(&resource)
                .into_iter()
                .filter(|d| d.severity == mesh_api::Severity::Error)
                .map(|d| Diagnostic {
                    kind: Some("ConfigMap".into()),
                    resource: Some(resource.display_name()),
                    ..d
                })
                .collect();
            if errors.is_empty() {
                mem.mesh = Some(resource);
            } else {
                findings.extend(errors);
                if mem.mesh.is_some() {
                    findings.push(Diagnostic::warning(format!(
                        "ConfigMap {}: the new mesh configuration is refused; serving the last good version",
                        resource.display_name()
                    )));
                }
            }
        }
    }
    resources.extend(mem.mesh.clone().map(Arc::new));
    resources.sort_by_key(|r| key_of(r));
    let files = BTreeMap::new();
    (
        Snapshot {
            revision,
            resources,
            files,
            findings,
        },
        writes,
        analysis,
    )
}

/// The status that says a Gateway API object is refused, in the API's own terms (its schema
/// keeps no other fields): `Accepted=False` on the object, or on each parent of a route.
fn gateway_api_refusal(w: &StatusWrite, message: &str) -> serde_json::Value {
    let now = serde_json::to_value(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        k8s_openapi::jiff::Timestamp::now(),
    ))
    .unwrap_or_default();
    let condition = serde_json::json!({
        "type": "Accepted",
        "status": "False",
        "reason": if matches!(w.kind, Kind::HttpRoute | Kind::GrpcRoute) { "UnsupportedValue" } else { "Invalid" },
        "message": format!("refused by mesh-pilot: {message}"),
        "observedGeneration": w.generation.unwrap_or(0),
        "lastTransitionTime": now,
    });
    if matches!(w.kind, Kind::HttpRoute | Kind::GrpcRoute) {
        let parents: Vec<serde_json::Value> = w
            .parent_refs
            .iter()
            .map(|p| {
                serde_json::json!({
                    "parentRef": p,
                    "controllerName": crate::model::gateway_api::CONTROLLER,
                    "conditions": [condition],
                })
            })
            .collect();
        serde_json::json!({ "status": { "parents": parents } })
    } else {
        serde_json::json!({ "status": { "conditions": [condition] } })
    }
}

/// Writes a Gateway API object's refusal into its status.
async fn write_status(client: &Client, options: &KubeOptions, w: StatusWrite) {
    let ar = api_resource(w.kind);
    let api: Api<DynamicObject> = if w.kind.is_namespaced() {
        Api::namespaced_with(client.clone(), &w.namespace, &ar)
    } else {
        Api::all_with(client.clone(), &ar)
    };
    let params = PatchParams {
        field_manager: Some(options.field_manager.clone()),
        ..PatchParams::default()
    };
    let patch = gateway_api_refusal(&w, &w.message);
    if let Err(e) = api
        .patch_status(&w.name, &params, &Patch::Merge(&patch))
        .await
    {
        tracing::warn!(
            "cannot write the status of {} {}/{}: {e}",
            w.kind.name(),
            w.namespace,
            w.name
        );
    }
}
