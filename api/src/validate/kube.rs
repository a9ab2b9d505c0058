//! Rules for object metadata and the Kubernetes objects the mesh reads.

use std::collections::BTreeSet;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::Findings;
use super::checks::{is_dns1123_label, is_dns1123_subdomain, label_key, labels, port, port_name};
use crate::resource::Resource;

pub(crate) fn metadata(f: &mut Findings, r: &Resource) {
    let m = r.metadata();
    match m.name.as_deref() {
        None | Some("") => f.error("metadata.name", "Required value: every resource needs a name"),
        Some(name) if !is_dns1123_subdomain(name) => f.error(
            "metadata.name",
            format!("{name:?} is not a valid name: lower-case letters, digits, '-' and '.', starting and ending with a letter or digit"),
        ),
        _ => {}
    }
    if let Some(ns) = m.namespace.as_deref()
        && !is_dns1123_label(ns)
    {
        f.error(
            "metadata.namespace",
            format!("{ns:?} is not a valid namespace name"),
        );
    }
    if let Some(l) = &m.labels {
        labels(f, "metadata.labels", l);
    }
    for key in m.annotations.iter().flatten().map(|(k, _)| k) {
        if let Err(why) = label_key(key) {
            f.error(
                format!("metadata.annotations.{key}"),
                format!("invalid annotation key: {why}"),
            );
        }
    }
}

/// Port name prefixes that declare a protocol (Istio's naming convention).
const PROTOCOL_PREFIXES: [&str; 12] = [
    "http", "http2", "https", "grpc", "grpc-web", "tcp", "tls", "mongo", "redis", "mysql", "udp",
    "h2c",
];

pub(crate) fn service(f: &mut Findings, svc: &Service) {
    let Some(spec) = &svc.spec else { return };
    let ports = spec.ports.as_deref().unwrap_or_default();
    let mut names = BTreeSet::new();
    for (i, p) in ports.iter().enumerate() {
        let at = format!("spec.ports[{i}]");
        if p.port <= 0 {
            f.error(
                format!("{at}.port"),
                format!("port must be between 1-65535, got {}", p.port),
            );
        } else {
            port(f, &format!("{at}.port"), p.port.unsigned_abs());
        }
        match &p.name {
            Some(name) => {
                port_name(f, &format!("{at}.name"), name);
                if !names.insert(name.as_str()) {
                    f.error(
                        format!("{at}.name"),
                        format!("Duplicate value: port name {name:?}"),
                    );
                }
            }
            None if ports.len() > 1 => {
                f.error(
                    format!("{at}.name"),
                    "Required value: a Service with several ports must name each",
                );
            }
            None => {}
        }
        let named = p.name.as_deref().unwrap_or("");
        let prefix = named.split('-').next().unwrap_or("");
        if p.app_protocol.is_none() && !named.is_empty() && !PROTOCOL_PREFIXES.contains(&prefix) {
            f.warning(
                format!("{at}.name"),
                format!("port name {named:?} does not name a protocol, so the mesh will sniff it: name it <protocol>[-suffix] (http, http2, grpc, tcp, tls, ...) or set appProtocol"),
            );
        }
        if let Some(IntOrString::Int(t)) = p.target_port
            && !(1..=65535).contains(&t)
        {
            f.error(
                format!("{at}.targetPort"),
                format!("port must be between 1-65535, got {t}"),
            );
        }
    }
    if let Some(sel) = &spec.selector {
        labels(f, "spec.selector", sel);
    }
}

pub(crate) fn deployment(f: &mut Findings, d: &Deployment) {
    let Some(spec) = &d.spec else { return };
    let selector = spec.selector.match_labels.clone().unwrap_or_default();
    let template = spec
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    for (k, v) in &selector {
        if template.get(k) != Some(v) {
            f.error(
                format!("spec.selector.matchLabels.{k}"),
                format!("selector {k}={v} does not match the pod template's labels (spec.template.metadata.labels)"),
            );
        }
    }
}

/// The mesh configuration (ConfigMap `istio`, key `mesh`); other ConfigMaps are the
/// applications' own and have no rules here.
pub(crate) fn config_map(f: &mut Findings, cm: &ConfigMap) {
    if cm.metadata.name.as_deref() != Some(crate::mesh_config::CONFIG_MAP) {
        return;
    }
    let Some(text) = cm
        .data
        .as_ref()
        .and_then(|d| d.get(crate::mesh_config::KEY))
    else {
        return;
    };
    match crate::mesh_config::MeshConfigSpec::parse(text) {
        Ok(spec) => f.out.extend(spec.validate()),
        Err(d) => f.out.push(*d),
    }
}
