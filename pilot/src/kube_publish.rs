//! What pilot writes into a Kubernetes cluster as its control plane, beside the statuses of
//! refused resources: the mesh's root certificate as the ConfigMap `istio-ca-root-cert` in
//! every namespace (what injected proxies mount to check pilot and the CA before they send
//! their token, as istiod publishes it), the injector webhook's `caBundle` (so the API
//! server trusts the webhook's certificate, which the mesh CA signs), and the CA's own files
//! in a Secret, so that a restarted control plane keeps the mesh's root (as istiod keeps
//! `istio-ca-secret`). Writes are server-side
//! applies (or JSON patches of one field) under pilot's field manager, so they never take
//! fields another manager owns.

use std::collections::BTreeMap;
use std::path::Path;

use base64::Engine;
use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use mesh_injector::inject::ROOT_CONFIG_MAP;

/// The key of the root certificate in the ConfigMap (what the injector mounts).
pub const ROOT_KEY: &str = "root-cert.pem";

/// A write pilot could not make.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {source}")]
pub struct PublishError {
    /// What was being written.
    pub what: String,
    /// The API server's answer.
    #[source]
    pub source: kube::Error,
}

/// Writes `roots` (PEM) as the ConfigMap `istio-ca-root-cert` in `namespace`.
pub async fn publish_root(
    client: &Client,
    namespace: &str,
    roots: &str,
    manager: &str,
) -> Result<(), PublishError> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let cm = serde_json::json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": ROOT_CONFIG_MAP,
            "namespace": namespace,
            "labels": {"istio.io/config": "true", "app.kubernetes.io/part-of": "mesh"},
        },
        "data": {ROOT_KEY: roots},
    });
    api.patch(
        ROOT_CONFIG_MAP,
        &PatchParams::apply(manager).force(),
        &Patch::Apply(&cm),
    )
    .await
    .map(|_| ())
    .map_err(|source| PublishError {
        what: format!("ConfigMap {namespace}/{ROOT_CONFIG_MAP}"),
        source,
    })
}

/// Writes `roots` into every namespace of `namespaces` except `excluded` ones; the writes
/// that failed, each with why (the others are made regardless).
pub async fn publish_roots<'a>(
    client: &Client,
    namespaces: impl IntoIterator<Item = &'a str>,
    excluded: &[String],
    roots: &str,
    manager: &str,
) -> Vec<PublishError> {
    let mut failed = Vec::new();
    for ns in namespaces {
        if excluded.iter().any(|e| e == ns) {
            continue;
        }
        if let Err(e) = publish_root(client, ns, roots, manager).await {
            failed.push(e);
        }
    }
    failed
}

/// Sets the `caBundle` of every webhook of the MutatingWebhookConfiguration `name` to `roots`
/// (PEM), one JSON-patch operation per webhook; nothing when it already holds them.
pub async fn set_webhook_ca_bundle(
    client: &Client,
    name: &str,
    roots: &str,
    manager: &str,
) -> Result<usize, PublishError> {
    let what = || format!("MutatingWebhookConfiguration {name}");
    let api: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let current = api.get(name).await.map_err(|source| PublishError {
        what: what(),
        source,
    })?;
    let bundle = base64::engine::general_purpose::STANDARD.encode(roots);
    let ops: Vec<serde_json::Value> = current
        .webhooks
        .iter()
        .flatten()
        .enumerate()
        .filter(|(_, w)| {
            w.client_config
                .ca_bundle
                .as_ref()
                .is_none_or(|b| b.0 != roots.as_bytes())
        })
        .map(|(i, _)| {
            serde_json::json!({
                "op": "add",
                "path": format!("/webhooks/{i}/clientConfig/caBundle"),
                "value": bundle,
            })
        })
        .collect();
    if ops.is_empty() {
        return Ok(0);
    }
    let patch: json_patch::Patch =
        serde_json::from_value(serde_json::Value::Array(ops)).map_err(|e| PublishError {
            what: what(),
            source: kube::Error::SerdeError(e),
        })?;
    let count = patch.0.len();
    let params = PatchParams {
        field_manager: Some(manager.to_string()),
        ..PatchParams::default()
    };
    api.patch(name, &params, &Patch::Json::<()>(patch))
        .await
        .map(|_| count)
        .map_err(|source| PublishError {
            what: what(),
            source,
        })
}

/// The CA's files kept in its Secret.
const CA_FILES: [&str; 5] = [
    "root-cert.pem",
    "root-key.pem",
    "ca-cert.pem",
    "ca-key.pem",
    "cert-chain.pem",
];

/// Where the CA's files came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CaFiles {
    /// The Secret held them: written into the folder (a restart keeps the mesh's root).
    Restored,
    /// The Secret did not exist: the folder's files (made by `create` when it had none) were
    /// stored in a new Secret.
    Stored,
}

/// Keeps the CA's files in the Secret `name` of `namespace`: restores them into `dir` when
/// it exists; otherwise calls `create` to make them in `dir` (when the folder has none) and
/// stores them. When another replica stored its own first, those are restored instead.
pub async fn sync_ca_secret(
    client: &Client,
    namespace: &str,
    name: &str,
    dir: &Path,
    create: impl FnOnce(&Path) -> Result<(), String>,
) -> Result<CaFiles, PublishError> {
    let what = || format!("Secret {namespace}/{name}");
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let failed = |source| PublishError {
        what: what(),
        source,
    };
    let io = |e: std::io::Error| PublishError {
        what: format!("{} (in {})", what(), dir.display()),
        source: kube::Error::Service(Box::new(e)),
    };
    if let Some(secret) = api.get_opt(name).await.map_err(failed)? {
        restore(&secret, dir).map_err(io)?;
        return Ok(CaFiles::Restored);
    }
    create(dir).map_err(|e| io(std::io::Error::other(e)))?;
    let mut data = BTreeMap::new();
    for f in CA_FILES {
        if let Ok(bytes) = std::fs::read(dir.join(f)) {
            data.insert(f.to_string(), ByteString(bytes));
        }
    }
    let secret = Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(namespace.to_string()),
            labels: Some(BTreeMap::from([(
                "app.kubernetes.io/part-of".to_string(),
                "mesh".to_string(),
            )])),
            ..Default::default()
        },
        data: Some(data),
        type_: Some("Opaque".into()),
        ..Default::default()
    };
    match api.create(&PostParams::default(), &secret).await {
        Ok(_) => Ok(CaFiles::Stored),
        Err(kube::Error::Api(status)) if status.is_already_exists() => {
            let theirs = api.get(name).await.map_err(failed)?;
            restore(&theirs, dir).map_err(io)?;
            Ok(CaFiles::Restored)
        }
        Err(e) => Err(failed(e)),
    }
}

/// Writes the CA files of `secret` into `dir` (keys readable by the owner only).
fn restore(secret: &Secret, dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::create_dir_all(dir)?;
    let data = secret.data.clone().unwrap_or_default();
    for f in CA_FILES {
        let Some(bytes) = data.get(f) else { continue };
        let path = dir.join(f);
        let _ = std::fs::remove_file(&path);
        let mode = if f.ends_with("-key.pem") {
            0o600
        } else {
            0o644
        };
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&path)?;
        std::io::Write::write_all(&mut file, &bytes.0)?;
    }
    Ok(())
}
