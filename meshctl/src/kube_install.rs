//! `meshctl install` and `meshctl uninstall` against a cluster: a profile's manifests applied
//! in order with server-side apply (field manager `meshctl`, taking over fields another
//! manager set, as `kubectl apply --server-side --force-conflicts` does), then the control
//! plane waited for with progress shown; and the same objects deleted in reverse order.

use std::time::Duration;

use kube::api::{ApiResource, DeleteParams, DynamicObject, GroupVersionKind, Patch, PatchParams};
use kube::{Api, Client};
use serde_json::Value;

/// The field manager of what meshctl applies.
pub const MANAGER: &str = "meshctl";

/// What could not be done, and to which object.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    /// A manifest of a kind meshctl does not know where to send.
    #[error("{0}: a kind meshctl cannot apply")]
    UnknownKind(String),
    /// The API server refused a write.
    #[error("{resource}: {source}")]
    Refused {
        /// `Kind namespace/name`.
        resource: String,
        /// Its answer.
        #[source]
        source: kube::Error,
    },
    /// The control plane did not become ready in time.
    #[error(
        "Deployment {namespace}/{name} is not ready after {within:?} ({last}); see `kubectl -n {namespace} describe deployment {name}` and its pods' logs"
    )]
    NotReady {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
        /// How long it was given.
        within: Duration,
        /// What it said last.
        last: String,
    },
}

/// The plural and scope of the Kubernetes kinds the mesh's manifests and tests apply.
fn builtin(kind: &str) -> Option<(&'static str, bool)> {
    Some(match kind {
        "Namespace" => ("namespaces", false),
        "CustomResourceDefinition" => ("customresourcedefinitions", false),
        "ClusterRole" => ("clusterroles", false),
        "ClusterRoleBinding" => ("clusterrolebindings", false),
        "MutatingWebhookConfiguration" => ("mutatingwebhookconfigurations", false),
        "ServiceAccount" => ("serviceaccounts", true),
        "Role" => ("roles", true),
        "RoleBinding" => ("rolebindings", true),
        "ConfigMap" => ("configmaps", true),
        "Secret" => ("secrets", true),
        "Service" => ("services", true),
        "Deployment" => ("deployments", true),
        "Pod" => ("pods", true),
        _ => return None,
    })
}

/// Where a manifest goes: its API resource and namespace (none for cluster-scoped kinds).
fn target(doc: &Value) -> Result<(ApiResource, Option<String>, String), InstallError> {
    let kind = doc["kind"].as_str().unwrap_or("");
    let api_version = doc["apiVersion"].as_str().unwrap_or("");
    let name = doc["metadata"]["name"].as_str().unwrap_or("").to_string();
    let (plural, namespaced) = match builtin(kind) {
        Some((plural, namespaced)) => (plural.to_string(), namespaced),
        None => {
            // The mesh's own kinds and Istio's, by the plural of their CRD.
            let (group, _) = api_version.rsplit_once('/').unwrap_or(("", api_version));
            mesh_api::kinds::Kind::lookup(kind, group)
                .and_then(|k| Some((mesh_api::crd::crd(k)?.spec.names.plural, k.is_namespaced())))
                .ok_or_else(|| InstallError::UnknownKind(format!("{kind} {name}")))?
        }
    };
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    let gvk = GroupVersionKind::gvk(group, version, kind);
    let namespace = namespaced.then(|| {
        doc["metadata"]["namespace"]
            .as_str()
            .unwrap_or("default")
            .to_string()
    });
    Ok((
        ApiResource::from_gvk_with_plural(&gvk, &plural),
        namespace,
        name,
    ))
}

fn describe(doc: &Value, namespace: Option<&str>, name: &str) -> String {
    let kind = doc["kind"].as_str().unwrap_or("?");
    match namespace {
        Some(ns) => format!("{kind} {ns}/{name}"),
        None => format!("{kind} {name}"),
    }
}

fn api_for(client: &Client, ar: &ApiResource, namespace: Option<&str>) -> Api<DynamicObject> {
    match namespace {
        Some(ns) => Api::namespaced_with(client.clone(), ns, ar),
        None => Api::all_with(client.clone(), ar),
    }
}

/// Applies `docs` in order; `progress` hears each object as it is applied.
pub async fn apply_all(
    client: &Client,
    docs: &[Value],
    progress: &mut dyn FnMut(&str),
) -> Result<usize, InstallError> {
    let params = PatchParams::apply(MANAGER).force();
    for doc in docs {
        let (ar, namespace, name) = target(doc)?;
        let what = describe(doc, namespace.as_deref(), &name);
        api_for(client, &ar, namespace.as_deref())
            .patch(&name, &params, &Patch::Apply(doc))
            .await
            .map_err(|source| InstallError::Refused {
                resource: what.clone(),
                source,
            })?;
        progress(&what);
    }
    Ok(docs.len())
}

/// Waits until Deployment `namespace/name` has all its replicas available, asking every
/// second; `progress` hears each change of what it says.
pub async fn wait_available(
    client: &Client,
    namespace: &str,
    name: &str,
    within: Duration,
    progress: &mut dyn FnMut(&str),
) -> Result<(), InstallError> {
    let api: Api<k8s_openapi::api::apps::v1::Deployment> =
        Api::namespaced(client.clone(), namespace);
    let deadline = tokio::time::Instant::now() + within;
    let mut pace = tokio::time::interval(Duration::from_secs(1));
    let mut last = String::new();
    while tokio::time::Instant::now() < deadline {
        pace.tick().await;
        let now = match api.get(name).await {
            Ok(d) => {
                let (have, want) = availability(&d);
                if have >= want {
                    progress(&format!("{name}: {have}/{want} available"));
                    return Ok(());
                }
                format!("{name}: {have}/{want} available")
            }
            Err(e) => format!("{name}: {e}"),
        };
        if now != last {
            progress(&now);
            last = now;
        }
    }
    Err(InstallError::NotReady {
        namespace: namespace.into(),
        name: name.into(),
        within,
        last,
    })
}

/// A Deployment's available replicas and the replicas it wants.
pub fn availability(d: &k8s_openapi::api::apps::v1::Deployment) -> (i32, i32) {
    let want = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let have = d
        .status
        .as_ref()
        .and_then(|s| s.available_replicas)
        .unwrap_or(0);
    (have, want)
}

/// Deletes `docs` in reverse order; objects already gone are skipped. CustomResourceDefinitions
/// (deleting them deletes every resource of their kinds) and objects annotated
/// [`crate::profile::PURGE_ONLY`] (the root namespace, with users' policies) only with `purge`.
pub async fn delete_all(
    client: &Client,
    docs: &[Value],
    purge: bool,
    progress: &mut dyn FnMut(&str),
) -> Result<usize, InstallError> {
    let mut deleted = 0;
    for doc in docs.iter().rev() {
        let purge_only = doc["kind"] == "CustomResourceDefinition"
            || doc["metadata"]["annotations"][crate::profile::PURGE_ONLY] == "true";
        if purge_only && !purge {
            continue;
        }
        let (ar, namespace, name) = target(doc)?;
        let what = describe(doc, namespace.as_deref(), &name);
        match api_for(client, &ar, namespace.as_deref())
            .delete(&name, &DeleteParams::background())
            .await
        {
            Ok(_) => {
                deleted += 1;
                progress(&what);
            }
            Err(kube::Error::Api(s)) if s.is_not_found() => {}
            Err(source) => {
                return Err(InstallError::Refused {
                    resource: what,
                    source,
                });
            }
        }
    }
    Ok(deleted)
}
