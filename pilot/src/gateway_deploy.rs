//! Deploys the gateway a Gateway API Gateway asks for, as istiod does: a ServiceAccount,
//! Deployment and Service named `NAME-istio` in the Gateway's namespace, the pods labelled
//! `gateway.networking.k8s.io/gateway-name: NAME` (which the Gateway's generated configuration
//! selects), the Service exposing its listeners' ports. Each is owned by the Gateway, so
//! Kubernetes removes them with it. Writes are server-side applies under pilot's field
//! manager; a deployment already applied as it is changes nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use kube::api::{DynamicObject, GroupVersionKind, Patch, PatchParams};
use kube::discovery::ApiResource;
use kube::{Api, Client};
use mesh_injector::config::InjectConfig;
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::discovery::generation::Generation;
use crate::kube_publish::PublishError;
use crate::model::gateway_api::{GATEWAY_NAME_LABEL, GatewayDeployment};

/// The objects of one gateway deployment.
pub fn objects(d: &GatewayDeployment, inject: &InjectConfig) -> Vec<Value> {
    let name = d.name();
    let labels: BTreeMap<String, String> =
        [(GATEWAY_NAME_LABEL.to_string(), d.gateway.clone())].into();
    let owner = json!([{
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "Gateway",
        "name": d.gateway,
        "uid": d.uid,
    }]);
    let meta = |kind_labels: &BTreeMap<String, String>| {
        json!({
            "name": name,
            "namespace": d.namespace,
            "labels": kind_labels,
            "ownerReferences": owner,
        })
    };
    let pod = mesh_injector::inject::gateway_pod(&labels, &name, &name, inject);
    let mut ports: Vec<Value> = d
        .ports
        .iter()
        .map(
            |p| json!({"name": format!("port-{p}"), "port": p, "targetPort": p, "protocol": "TCP"}),
        )
        .collect();
    ports.push(
        json!({"name": "status-port", "port": 15021, "targetPort": 15021, "protocol": "TCP"}),
    );
    vec![
        json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta(&labels)}),
        json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": meta(&labels),
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels, "annotations": {"sidecar.istio.io/inject": "false"}},
                    "spec": pod,
                },
            },
        }),
        json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": meta(&labels),
            "spec": {"type": "LoadBalancer", "selector": labels, "ports": ports},
        }),
    ]
}

fn api(client: &Client, obj: &Value) -> (Api<DynamicObject>, String) {
    let (group, version) =
        mesh_api::kinds::split_api_version(obj["apiVersion"].as_str().unwrap_or(""));
    let kind = obj["kind"].as_str().unwrap_or("");
    let plural = format!("{}s", kind.to_ascii_lowercase());
    let ar =
        ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), &plural);
    let ns = obj["metadata"]["namespace"].as_str().unwrap_or("default");
    (
        Api::namespaced_with(client.clone(), ns, &ar),
        obj["metadata"]["name"].as_str().unwrap_or("").to_string(),
    )
}

/// Applies the deployments not applied yet (`applied` remembers them); the writes that failed.
pub async fn apply(
    client: &Client,
    manager: &str,
    inject: &InjectConfig,
    deployments: &[GatewayDeployment],
    applied: &mut BTreeSet<(String, String, Vec<u16>)>,
) -> Vec<PublishError> {
    let mut failed = Vec::new();
    for d in deployments {
        let key = (d.namespace.clone(), d.gateway.clone(), d.ports.clone());
        if applied.contains(&key) {
            continue;
        }
        let mut ok = true;
        for obj in objects(d, inject) {
            let (api, name) = api(client, &obj);
            if let Err(source) = api
                .patch(
                    &name,
                    &PatchParams::apply(manager).force(),
                    &Patch::Apply(&obj),
                )
                .await
            {
                ok = false;
                failed.push(PublishError {
                    what: format!(
                        "{} {}/{name} for Gateway {}/{}",
                        obj["kind"].as_str().unwrap_or(""),
                        d.namespace,
                        d.namespace,
                        d.gateway
                    ),
                    source,
                });
            }
        }
        if ok {
            applied.insert(key);
        }
    }
    failed
}

/// Applies the gateway deployments of every new generation until `generations` closes.
pub async fn keep_deployed(
    client: Client,
    manager: String,
    inject: InjectConfig,
    mut generations: watch::Receiver<Arc<Generation>>,
) {
    let mut applied = BTreeSet::new();
    loop {
        let generation = generations.borrow_and_update().clone();
        for e in apply(
            &client,
            &manager,
            &inject,
            &generation.model.gateway_deployments,
            &mut applied,
        )
        .await
        {
            tracing::warn!("deploying a Gateway's gateway: {e}");
        }
        if generations.changed().await.is_err() {
            return;
        }
    }
}
