//! `meshctl kube-inject`: the webhook's mutation applied offline to manifests, on every pod
//! template they hold (Pod, Deployment, StatefulSet, DaemonSet, ReplicaSet, Job, CronJob,
//! ReplicationController). Other documents pass through unchanged. With no namespace labels
//! to read, a template is injected unless it opts out (`sidecar.istio.io/inject: "false"`),
//! uses the host's network, or is already injected, as `istioctl kube-inject` does.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;
use serde_json::Value;

use crate::config::InjectConfig;
use crate::decide::{Decision, decide};
use crate::inject::inject;

/// A manifest that could not be injected.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    /// The YAML does not parse.
    #[error("document {index}: {message}")]
    Yaml {
        /// The document's position (from 1).
        index: usize,
        /// The parser's words.
        message: String,
    },
    /// A pod template is not a pod template.
    #[error("{kind} {name}: {path}: {message}")]
    Template {
        /// The document's kind.
        kind: String,
        /// Its name.
        name: String,
        /// Where its pod template is.
        path: String,
        /// What is wrong.
        message: String,
    },
}

/// What happened to one document.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// `Kind namespace/name`.
    pub resource: String,
    /// The decision on its pod template; `None` for documents without one.
    pub decision: Option<Decision>,
}

/// The pod template of a workload kind, as a path of keys.
fn template_path(kind: &str) -> Option<&'static [&'static str]> {
    Some(match kind {
        "Pod" => &[],
        "Deployment"
        | "StatefulSet"
        | "DaemonSet"
        | "ReplicaSet"
        | "Job"
        | "ReplicationController" => &["spec", "template"],
        "CronJob" => &["spec", "jobTemplate", "spec", "template"],
        _ => return None,
    })
}

/// Injects every pod template of the YAML documents in `text`; the documents (injected or as
/// they were) and what happened to each.
pub fn inject_manifests(
    text: &str,
    cfg: &InjectConfig,
) -> Result<(Vec<Value>, Vec<Outcome>), TemplateError> {
    let docs: Vec<Value> = serde_saphyr::from_multiple(text).map_err(|e| TemplateError::Yaml {
        index: 0,
        message: e.to_string(),
    })?;
    let mut out = Vec::new();
    let mut outcomes = Vec::new();
    for mut doc in docs.into_iter().filter(|d| !d.is_null()) {
        let outcome = inject_document(&mut doc, cfg)?;
        outcomes.push(outcome);
        out.push(doc);
    }
    Ok((out, outcomes))
}

fn inject_document(doc: &mut Value, cfg: &InjectConfig) -> Result<Outcome, TemplateError> {
    let kind = doc["kind"].as_str().unwrap_or("").to_string();
    let name = doc["metadata"]["name"].as_str().unwrap_or("").to_string();
    let namespace = doc["metadata"]["namespace"]
        .as_str()
        .unwrap_or("default")
        .to_string();
    let resource = format!("{kind} {namespace}/{name}");
    let Some(path) = template_path(&kind) else {
        return Ok(Outcome {
            resource,
            decision: None,
        });
    };
    let mut at = &mut *doc;
    for key in path {
        at = &mut at[*key];
    }
    let pod_value = serde_json::json!({
        "metadata": at.get("metadata").cloned().unwrap_or(Value::Null),
        "spec": at.get("spec").cloned().unwrap_or(Value::Null),
    });
    let bad = |message: String| TemplateError::Template {
        kind: kind.clone(),
        name: name.clone(),
        path: if path.is_empty() {
            ".".into()
        } else {
            path.join(".")
        },
        message,
    };
    let pod: Pod = serde_json::from_value(pod_value).map_err(|e| bad(e.to_string()))?;
    // Offline there is no namespace to read: as if it were labelled.
    let labelled: BTreeMap<String, String> =
        [("istio-injection".to_string(), "enabled".to_string())].into();
    let decision = decide(&pod, &namespace, &labelled, cfg);
    if decision.inject() {
        let workload = (kind != "Pod").then_some(name.as_str());
        let injected = inject(&pod, workload, cfg);
        let v = serde_json::to_value(&injected).map_err(|e| bad(e.to_string()))?;
        at["metadata"] = v["metadata"].clone();
        at["spec"] = v["spec"].clone();
    }
    Ok(Outcome {
        resource,
        decision: Some(decision),
    })
}

/// The documents as YAML, separated by `---`.
pub fn to_yaml(docs: &[Value]) -> Result<String, serde_saphyr::ser_error::Error> {
    let mut out = String::new();
    for (i, d) in docs.iter().enumerate() {
        if i > 0 {
            out.push_str("---\n");
        }
        out.push_str(&serde_saphyr::to_string(d)?);
    }
    Ok(out)
}

/// Reads one YAML document into JSON values (for callers without a YAML reader of their own).
pub fn from_yaml(text: &str) -> Result<Value, String> {
    serde_saphyr::from_str(text).map_err(|e| e.to_string())
}

/// Reads every YAML document of `text` into JSON values, leaving out empty ones.
pub fn documents(text: &str) -> Result<Vec<Value>, String> {
    let docs: Vec<Value> = serde_saphyr::from_multiple(text).map_err(|e| e.to_string())?;
    Ok(docs.into_iter().filter(|d| !d.is_null()).collect())
}
