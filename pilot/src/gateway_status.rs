//! Writes the status pilot computes for Gateway API objects (`model::gateway_api::status`) into
//! the cluster, as the specification expects of a controller: GatewayClasses and Gateways of
//! ours get their whole status; routes get one `parents` entry per parent we answer for, next
//! to those other controllers wrote (which are kept). Only what changed is written.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{DynamicObject, Patch, PatchParams};
use kube::{Api, Client};
use mesh_api::Kind;
use serde_json::Value;
use tokio::sync::watch;

use crate::discovery::generation::Generation;
use crate::kube_publish::PublishError;
use crate::model::gateway_api::CONTROLLER;
use crate::model::gateway_api::status::ObjectStatus;

/// `status` with `lastTransitionTime` on every condition: when a condition of the same type
/// (and place) had the same status in `before`, its time is kept, else it is `now`.
fn with_times(status: &Value, before: Option<&Value>, now: &str) -> Value {
    let mut out = status.clone();
    let stamp = |list: &mut Value, old: Option<&Value>| {
        for c in list.as_array_mut().into_iter().flatten() {
            let kept = old
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .find(|o| o["type"] == c["type"] && o["status"] == c["status"])
                .and_then(|o| o["lastTransitionTime"].as_str())
                .map(str::to_string);
            c["lastTransitionTime"] = Value::from(kept.unwrap_or_else(|| now.to_string()));
        }
    };
    stamp(&mut out["conditions"], before.map(|b| &b["conditions"]));
    if let Some(listeners) = out["listeners"].as_array_mut() {
        for l in listeners {
            let old = before
                .and_then(|b| b["listeners"].as_array())
                .and_then(|ls| ls.iter().find(|o| o["name"] == l["name"]))
                .map(|o| &o["conditions"]);
            stamp(&mut l["conditions"], old);
        }
    }
    if let Some(parents) = out["parents"].as_array_mut() {
        for p in parents {
            let old = before
                .and_then(|b| b["parents"].as_array())
                .and_then(|ps| ps.iter().find(|o| o["parentRef"] == p["parentRef"]))
                .map(|o| &o["conditions"]);
            stamp(&mut p["conditions"], old);
        }
    }
    out
}

fn api(client: &Client, s: &ObjectStatus) -> Api<DynamicObject> {
    let ar = crate::source::kube::api_resource(s.kind);
    match &s.namespace {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &ar),
        None => Api::all_with(client.clone(), &ar),
    }
}

/// Writes the statuses that differ from `written` (the last written, by object), and
/// remembers them; the writes that failed, each with why.
pub async fn publish(
    client: &Client,
    manager: &str,
    statuses: &[ObjectStatus],
    written: &mut BTreeMap<String, Value>,
) -> Vec<PublishError> {
    let mut failed = Vec::new();
    let now = serde_json::to_value(Time(k8s_openapi::jiff::Timestamp::now()))
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    let params = PatchParams {
        field_manager: Some(manager.to_string()),
        ..PatchParams::default()
    };
    for s in statuses {
        let key = s.describe();
        if written.get(&key) == Some(&s.status) {
            continue;
        }
        let api = api(client, s);
        let current = match api.get(&s.name).await {
            Ok(obj) => obj.data.get("status").cloned(),
            Err(source) => {
                failed.push(PublishError {
                    what: format!("status of {key}"),
                    source,
                });
                continue;
            }
        };
        let mut status = with_times(&s.status, current.as_ref(), &now);
        if matches!(s.kind, Kind::HttpRoute | Kind::GrpcRoute) {
            // Other controllers' parents stay as they wrote them.
            let mut parents: Vec<Value> = current
                .as_ref()
                .and_then(|c| c["parents"].as_array())
                .into_iter()
                .flatten()
                .filter(|p| p["controllerName"] != CONTROLLER)
                .cloned()
                .collect();
            parents.extend(status["parents"].as_array().cloned().unwrap_or_default());
            status = serde_json::json!({ "parents": parents });
        }
        let patch = serde_json::json!({ "status": status });
        match api
            .patch_status(&s.name, &params, &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {
                written.insert(key, s.status.clone());
            }
            Err(source) => failed.push(PublishError {
                what: format!("status of {key}"),
                source,
            }),
        }
    }
    failed
}

/// Writes the Gateway API statuses of every new generation until `generations` closes.
pub async fn keep_published(
    client: Client,
    manager: String,
    mut generations: watch::Receiver<Arc<Generation>>,
) {
    let mut written = BTreeMap::new();
    loop {
        let generation = generations.borrow_and_update().clone();
        for e in publish(
            &client,
            &manager,
            &generation.model.gateway_api_status,
            &mut written,
        )
        .await
        {
            tracing::warn!("writing Gateway API status: {e}");
        }
        if generations.changed().await.is_err() {
            return;
        }
    }
}
