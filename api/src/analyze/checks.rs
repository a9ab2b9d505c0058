//! The analyzers, each named and judged as Istio's (`pkg/config/analysis/analyzers`), in our
//! own code and words.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use super::{Analyzer, Code, Level, Message, Object, Snapshot, string_map};
use crate::proto::state::v1::Protocol;

/// Every analyzer.
pub(super) const ALL: &[Analyzer] = &[
    Analyzer {
        name: "schema.ValidationAnalyzer",
        about: "each resource against the mesh's schema and Istio's validation rules",
        run: schema,
    },
    Analyzer {
        name: "service.PortNameAnalyzer",
        about: "Service port names that say no protocol",
        run: port_names,
    },
    Analyzer {
        name: "gateway.ConflictingGatewayAnalyzer",
        about: "Gateways on the same workloads and port claiming the same hosts",
        run: conflicting_gateways,
    },
    Analyzer {
        name: "deployment.ApplicationUIDAnalyzer",
        about: "applications running as the proxy's user id 1337",
        run: application_uid,
    },
];

const IST0106: Code = Code {
    code: "IST0106",
    name: "SchemaValidationError",
    level: Level::Error,
};
const IST0118: Code = Code {
    code: "IST0118",
    name: "PortNameIsNotUnderNamingConvention",
    level: Level::Info,
};
const IST0150: Code = Code {
    code: "IST0150",
    name: "ExternalNameServiceTypeInvalidPortName",
    level: Level::Warning,
};
const IST0145: Code = Code {
    code: "IST0145",
    name: "ConflictingGateways",
    level: Level::Error,
};
const IST0144: Code = Code {
    code: "IST0144",
    name: "InvalidApplicationUID",
    level: Level::Warning,
};

/// Namespaces whose Services Istio's analyzers leave alone.
fn system_namespace(ns: &str, snapshot: &Snapshot) -> bool {
    matches!(
        ns,
        "kube-system" | "kube-public" | "kube-node-lease" | "local-path-storage"
    ) || ns == snapshot.root_namespace
}

/// IST0106: what the mesh's loader refuses, field by field.
fn schema(snapshot: &Snapshot, out: &mut Vec<Message>) {
    for o in &snapshot.objects {
        let Ok(text) = serde_json::to_string(&o.value) else {
            continue;
        };
        let report = crate::load::load_str(&text, None);
        for d in report.errors() {
            let text = match &d.field {
                Some(field) => format!("{field}: {}", d.message),
                None => d.message.clone(),
            };
            out.push(o.message(
                IST0106,
                text,
                "fix the field as the message says; `meshctl validate -f FILE` checks a file",
            ));
        }
    }
}

/// IST0118 and IST0150: a Service port's protocol is what its `appProtocol` or its name's
/// prefix says; without one the mesh sniffs it (IST0118, in namespaces not the system's). An
/// ExternalName Service's port that says TCP or nothing cannot be told apart from other
/// traffic to the same port (IST0150).
fn port_names(snapshot: &Snapshot, out: &mut Vec<Message>) {
    for svc in snapshot.of_kind("Service") {
        if system_namespace(svc.ns(), snapshot) {
            continue;
        }
        let spec = svc.spec();
        let external = spec["type"].as_str() == Some("ExternalName");
        for (i, port) in spec["ports"].as_array().into_iter().flatten().enumerate() {
            let name = port["name"].as_str().unwrap_or("");
            let app_protocol = port["appProtocol"].as_str().filter(|p| !p.is_empty());
            let number = port["port"].as_u64().unwrap_or(0);
            let said = Protocol::from_istio_name(app_protocol.unwrap_or(name));
            if external {
                if matches!(said, None | Some(Protocol::Detect | Protocol::Tcp)) {
                    out.push(svc.message(
                        IST0150,
                        format!(
                            "spec.ports[{i}] (port {number}, name {name:?}) of an ExternalName service says TCP or no protocol: its traffic cannot be routed by name"
                        ),
                        "name the port for its protocol (http-, https-, tls-, grpc-, ...) or set appProtocol",
                    ));
                }
                continue;
            }
            if app_protocol.is_some() {
                continue;
            }
            if matches!(said, None | Some(Protocol::Detect)) {
                out.push(svc.message(
                    IST0118,
                    format!(
                        "spec.ports[{i}] (port {number}) is named {name:?}, which says no protocol: the mesh sniffs it"
                    ),
                    "name it <protocol>[-suffix] (http, http2, grpc, tcp, tls, https, mongo, mysql, redis) or set appProtocol",
                ));
            }
        }
    }
}

/// Whether Gateway host `a` and `b` can name the same host (`ns/` prefixes aside; `*` and
/// `*.suffix` wildcards).
fn hosts_overlap(a: &str, b: &str) -> bool {
    let strip = |h: &str| h.rsplit('/').next().unwrap_or(h).to_ascii_lowercase();
    let (a, b) = (strip(a), strip(b));
    let matches = |wild: &str, host: &str| match wild.strip_prefix('*') {
        Some(suffix) => host.ends_with(suffix) || host == "*",
        None => wild == host,
    };
    matches(&a, &b) || matches(&b, &a)
}

/// IST0145: two Gateways that select the same workloads (the same selector, or a pod both
/// select) with servers on the same port number and hosts in common: which one a request
/// meets is undefined.
fn conflicting_gateways(snapshot: &Snapshot, out: &mut Vec<Message>) {
    let gateways: Vec<&Object> = snapshot.of_kind("Gateway").collect();
    let pods: Vec<BTreeMap<String, String>> = snapshot.of_kind("Pod").map(|p| p.labels()).collect();
    let selects = |sel: &BTreeMap<String, String>, labels: &BTreeMap<String, String>| {
        sel.iter().all(|(k, v)| labels.get(k) == Some(v))
    };
    let servers = |g: &Object| -> Vec<(u64, Vec<String>)> {
        g.spec()["servers"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| {
                let port = s["port"]["number"].as_u64()?;
                let hosts = s["hosts"]
                    .as_array()?
                    .iter()
                    .filter_map(|h| h.as_str().map(str::to_string))
                    .collect();
                Some((port, hosts))
            })
            .collect()
    };
    let mut conflicting: BTreeMap<usize, BTreeSet<String>> = BTreeMap::new();
    for (i, a) in gateways.iter().enumerate() {
        for (j, b) in gateways.iter().enumerate().skip(i + 1) {
            let (sa, sb) = (
                string_map(&a.spec()["selector"]),
                string_map(&b.spec()["selector"]),
            );
            let same_workloads = sa == sb
                || pods.iter().any(|p| {
                    !sa.is_empty() && !sb.is_empty() && selects(&sa, p) && selects(&sb, p)
                });
            if !same_workloads {
                continue;
            }
            for (pa, ha) in servers(a) {
                for (pb, hb) in servers(b) {
                    if pa != pb {
                        continue;
                    }
                    for x in &ha {
                        for y in hb.iter().filter(|y| hosts_overlap(x, y)) {
                            conflicting
                                .entry(i)
                                .or_default()
                                .insert(format!("{} (port {pa}, host {x} and {y})", b.origin()));
                            conflicting
                                .entry(j)
                                .or_default()
                                .insert(format!("{} (port {pa}, host {y} and {x})", a.origin()));
                        }
                    }
                }
            }
        }
    }
    for (i, with) in conflicting {
        let g = gateways[i];
        out.push(g.message(
            IST0145,
            format!(
                "it claims what another Gateway on the same workloads claims: {}",
                with.into_iter().collect::<Vec<_>>().join("; ")
            ),
            "give the servers different ports or hosts, or merge the Gateways",
        ));
    }
}

/// IST0144: an application (pod or Deployment template) that runs as user id 1337, the proxy's:
/// its traffic would never be captured.
fn application_uid(snapshot: &Snapshot, out: &mut Vec<Message>) {
    const PROXY_UID: u64 = 1337;
    let runs_as_proxy = |pod_spec: &Value| -> bool {
        pod_spec["securityContext"]["runAsUser"].as_u64() == Some(PROXY_UID)
            || pod_spec["containers"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|c| c["name"].as_str() != Some("istio-proxy"))
                .any(|c| c["securityContext"]["runAsUser"].as_u64() == Some(PROXY_UID))
    };
    for o in &snapshot.objects {
        let pod_spec = match o.kind.as_str() {
            "Pod" => o.spec(),
            "Deployment" => &o.spec()["template"]["spec"],
            _ => continue,
        };
        if runs_as_proxy(pod_spec) {
            out.push(o.message(
                IST0144,
                "it runs as user id 1337, the proxy's: the mesh never captures that user's traffic".into(),
                "run the application as another user (securityContext.runAsUser)",
            ));
        }
    }
}
