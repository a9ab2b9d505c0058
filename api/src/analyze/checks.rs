//! The analyzers, each named and judged as Istio's (`pkg/config/analysis/analyzers`), in our
//! own code and words.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use super::{Analyzer, Code, Level, Message, Object, Snapshot, fqdn, selects, string_map};
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
        name: "virtualservice.DestinationRuleAnalyzer",
        about: "VirtualService routes and mirrors naming subsets no DestinationRule defines",
        run: route_subsets,
    },
    Analyzer {
        name: "virtualservice.ConflictingMeshGatewayHostsAnalyzer",
        about: "VirtualServices for the mesh claiming the same host where both are visible",
        run: conflicting_mesh_hosts,
    },
    Analyzer {
        name: "virtualservice.GatewayAnalyzer",
        about: "VirtualServices bound to Gateways that do not exist or serve none of their hosts",
        run: route_gateways,
    },
    Analyzer {
        name: "destinationrule.CaCertificateAnalyzer",
        about: "DestinationRules originating TLS without verifying the server's certificate",
        run: unverified_tls,
    },
    Analyzer {
        name: "serviceentry.ProtocolAddressesAnalyzer",
        about: "ServiceEntries with TCP (or unsaid) ports and no addresses",
        run: service_entry_addresses,
    },
    Analyzer {
        name: "gateway.IngressGatewayPortAnalyzer",
        about: "Gateways selecting no pod, or listening on ports their Services do not expose",
        run: gateway_ports,
    },
    Analyzer {
        name: "sidecar.SelectorAnalyzer",
        about: "Sidecars selecting no workload, or the same workloads as another",
        run: sidecar_selectors,
    },
    Analyzer {
        name: "telemetry.SelectorAnalyzer",
        about: "Telemetries selecting no workload, or the same workloads as another",
        run: telemetry_selectors,
    },
    Analyzer {
        name: "telemetry.DefaultSelectorAnalyzer",
        about: "namespaces with more than one Telemetry without a selector",
        run: telemetry_defaults,
    },
    Analyzer {
        name: "telemetry.ProviderAnalyzer",
        about: "Telemetry access logging that names no provider when the mesh has no default",
        run: telemetry_providers,
    },
    Analyzer {
        name: "virtualservice.DestinationHostAnalyzer",
        about: "routes to hosts or ports nothing defines, gateway routes without a port to a host with several, and gateway routes bypassing the mesh's routes",
        run: destination_hosts,
    },
    Analyzer {
        name: "auth.AuthorizationPoliciesAnalyzer",
        about: "AuthorizationPolicies selecting no meshed workload, or naming namespaces that do not exist",
        run: authorization_policies,
    },
    Analyzer {
        name: "injection.Analyzer",
        about: "namespaces not labelled for injection or labelled twice, and pods of injected namespaces without a sidecar",
        run: injection,
    },
    Analyzer {
        name: "deprecation.FieldAnalyzer",
        about: "fields Istio has deprecated, with what replaces them",
        run: deprecated_fields,
    },
    Analyzer {
        name: "conditions.ConditionAnalyzer",
        about: "objects whose status holds a negative condition",
        run: negative_conditions,
    },
    Analyzer {
        name: "serviceentry.ConflictingServiceEntryProtocolAnalyzer",
        about: "ServiceEntries giving one host and port different protocols where both are visible",
        run: service_entry_protocols,
    },
    Analyzer {
        name: "gateway.SecretAnalyzer",
        about: "Gateway credentialName Secrets missing from the gateway's namespace, or holding no valid certificate and key",
        run: gateway_secrets,
    },
    Analyzer {
        name: "ratelimit.SelectorAnalyzer",
        about: "the mesh's RateLimitPolicies that apply to no workload with a sidecar",
        run: rate_limit_selectors,
    },
    Analyzer {
        name: "auth.MTLSAnalyzer",
        about: "DestinationRules sending without the mesh's mTLS to workloads whose PeerAuthentication is STRICT",
        run: mtls_conflicts,
    },
    Analyzer {
        name: "virtualservice.JWTClaimRouteAnalyzer",
        about: "routes on JWT claims at a gateway no RequestAuthentication applies to",
        run: jwt_claim_routes,
    },
    Analyzer {
        name: "schema.ValidationAnalyzer.VirtualService",
        about: "VirtualService rules no request can reach and matches earlier ones cover",
        run: unreachable_rules,
    },
    Analyzer {
        name: "destinationrule.PodNotSelectedAnalyzer",
        about: "DestinationRules for unknown hosts, and subsets that select no pod",
        run: subsets_select_pods,
    },
    Analyzer {
        name: "deployment.ServiceAssociationAnalyzer",
        about: "meshed Deployments whose Services give one port two protocols or one target two ports",
        run: service_association,
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
const IST0101: Code = Code {
    code: "IST0101",
    name: "ReferencedResourceNotFound",
    level: Level::Error,
};
const IST0109: Code = Code {
    code: "IST0109",
    name: "ConflictingMeshGatewayVirtualServiceHosts",
    level: Level::Error,
};
const IST0132: Code = Code {
    code: "IST0132",
    name: "VirtualServiceHostNotFoundInGateway",
    level: Level::Warning,
};
const IST0165: Code = Code {
    code: "IST0165",
    name: "ReferencedInternalGateway",
    level: Level::Warning,
};
const IST0128: Code = Code {
    code: "IST0128",
    name: "NoServerCertificateVerificationDestinationLevel",
    level: Level::Warning,
};
const IST0129: Code = Code {
    code: "IST0129",
    name: "NoServerCertificateVerificationPortLevel",
    level: Level::Warning,
};
const IST0134: Code = Code {
    code: "IST0134",
    name: "ServiceEntryAddressesRequired",
    level: Level::Warning,
};
const IST0162: Code = Code {
    code: "IST0162",
    name: "GatewayPortNotDefinedOnService",
    level: Level::Warning,
};
const IST0110: Code = Code {
    code: "IST0110",
    name: "ConflictingSidecarWorkloadSelectors",
    level: Level::Error,
};
const IST0111: Code = Code {
    code: "IST0111",
    name: "MultipleSidecarsWithoutWorkloadSelectors",
    level: Level::Error,
};
const IST0159: Code = Code {
    code: "IST0159",
    name: "ConflictingTelemetryWorkloadSelectors",
    level: Level::Error,
};
const IST0160: Code = Code {
    code: "IST0160",
    name: "MultipleTelemetriesWithoutWorkloadSelectors",
    level: Level::Error,
};
const IST0157: Code = Code {
    code: "IST0157",
    name: "InvalidTelemetryProvider",
    level: Level::Warning,
};
const IST0149: Code = Code {
    code: "IST0149",
    name: "JwtClaimBasedRoutingWithoutRequestAuthN",
    level: Level::Error,
};
const IST0130: Code = Code {
    code: "IST0130",
    name: "VirtualServiceUnreachableRule",
    level: Level::Warning,
};
const IST0131: Code = Code {
    code: "IST0131",
    name: "VirtualServiceIneffectiveMatch",
    level: Level::Info,
};
const IST0173: Code = Code {
    code: "IST0173",
    name: "DestinationRuleSubsetNotSelectPods",
    level: Level::Error,
};
const IST0174: Code = Code {
    code: "IST0174",
    name: "UnknownDestinationRuleHost",
    level: Level::Warning,
};
const IST0116: Code = Code {
    code: "IST0116",
    name: "DeploymentAssociatedToMultipleServices",
    level: Level::Warning,
};
const IST0137: Code = Code {
    code: "IST0137",
    name: "DeploymentConflictingPorts",
    level: Level::Warning,
};
const IST0140: Code = Code {
    code: "IST0140",
    name: "IngressRouteRulesNotAffected",
    level: Level::Warning,
};
const IST0112: Code = Code {
    code: "IST0112",
    name: "VirtualServiceDestinationPortSelectorRequired",
    level: Level::Error,
};
const IST0113: Code = Code {
    code: "IST0113",
    name: "MTLSPolicyConflict",
    level: Level::Error,
};
const IST0127: Code = Code {
    code: "IST0127",
    name: "NoMatchingWorkloadsFound",
    level: Level::Warning,
};
const IST0102: Code = Code {
    code: "IST0102",
    name: "NamespaceNotInjected",
    level: Level::Info,
};
const IST0103: Code = Code {
    code: "IST0103",
    name: "PodMissingProxy",
    level: Level::Warning,
};
const IST0123: Code = Code {
    code: "IST0123",
    name: "NamespaceMultipleInjectionLabels",
    level: Level::Warning,
};
const IST0148: Code = Code {
    code: "IST0148",
    name: "NamespaceInjectionEnabledByDefault",
    level: Level::Info,
};
const IST0002: Code = Code {
    code: "IST0002",
    name: "Deprecated",
    level: Level::Warning,
};
const IST0171: Code = Code {
    code: "IST0171",
    name: "NegativeConditionStatus",
    level: Level::Warning,
};
const IST0177: Code = Code {
    code: "IST0177",
    name: "ConflictingServiceEntryProtocol",
    level: Level::Warning,
};
const IST0161: Code = Code {
    code: "IST0161",
    name: "InvalidGatewayCredential",
    level: Level::Error,
};
/// The mesh's own: a RateLimitPolicy that applies to no workload.
const MESH0004: Code = Code {
    code: "MESH0004",
    name: "RateLimitPolicyNoMatchingWorkloads",
    level: Level::Warning,
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
    let pods: Vec<BTreeMap<String, String>> =
        snapshot.workloads().into_iter().map(|w| w.labels).collect();
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

/// The cluster's DNS domain.
const DOMAIN: &str = "svc.cluster.local";

/// Every `destination` (and mirror) a VirtualService routes to, with where it is.
fn destinations(vs: &Object) -> Vec<(String, &Value)> {
    let mut out = Vec::new();
    let spec = vs.spec();
    for (kind, key) in [("http", "route"), ("tcp", "route"), ("tls", "route")] {
        for (i, rule) in spec[kind].as_array().into_iter().flatten().enumerate() {
            for (j, r) in rule[key].as_array().into_iter().flatten().enumerate() {
                out.push((
                    format!("spec.{kind}[{i}].{key}[{j}].destination"),
                    &r["destination"],
                ));
            }
            if kind == "http" {
                if rule["mirror"].is_object() {
                    out.push((format!("spec.http[{i}].mirror"), &rule["mirror"]));
                }
                for (j, m) in rule["mirrors"].as_array().into_iter().flatten().enumerate() {
                    out.push((
                        format!("spec.http[{i}].mirrors[{j}].destination"),
                        &m["destination"],
                    ));
                }
            }
        }
    }
    out
}

/// IST0101: a route or mirror to a subset that no DestinationRule for its host defines.
fn route_subsets(snapshot: &Snapshot, out: &mut Vec<Message>) {
    let mut subsets: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for dr in snapshot.of_kind("DestinationRule") {
        let Some(host) = dr.spec()["host"].as_str() else {
            continue;
        };
        let names = subsets.entry(fqdn(host, dr.ns())).or_default();
        for s in dr.spec()["subsets"].as_array().into_iter().flatten() {
            if let Some(n) = s["name"].as_str() {
                names.insert(n.to_string());
            }
        }
    }
    for vs in snapshot.of_kind("VirtualService") {
        for (field, d) in destinations(vs) {
            let (Some(host), Some(subset)) = (d["host"].as_str(), d["subset"].as_str()) else {
                continue;
            };
            let host = fqdn(host, vs.ns());
            if subsets.get(&host).is_some_and(|s| s.contains(subset)) {
                continue;
            }
            out.push(vs.message(
                IST0101,
                format!("{field}: subset {subset:?} of {host} is defined by no DestinationRule"),
                format!("add subset {subset:?} to the DestinationRule for {host}, or route to a subset it has"),
            ));
        }
    }
}

/// The namespaces a resource is visible in (`exportTo`): `None` for every one.
fn visible_in(o: &Object) -> Option<BTreeSet<String>> {
    let export = o.spec()["exportTo"].as_array()?;
    if export.is_empty() {
        return None;
    }
    let mut set = BTreeSet::new();
    for e in export.iter().filter_map(Value::as_str) {
        match e {
            "*" => return None,
            "." => {
                set.insert(o.ns().to_string());
            }
            ns => {
                set.insert(ns.to_string());
            }
        }
    }
    Some(set)
}

fn scopes_meet(a: &Option<BTreeSet<String>>, b: &Option<BTreeSet<String>>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => !a.is_disjoint(b),
        _ => true,
    }
}

/// IST0109: two VirtualServices bound to the mesh (no `gateways`, or `mesh` among them) that
/// claim the same host where both are visible: which one a sidecar uses is undefined.
fn conflicting_mesh_hosts(snapshot: &Snapshot, out: &mut Vec<Message>) {
    /// A VirtualService for the mesh, its hosts and where it is visible.
    type Bound<'a> = (&'a Object, Vec<String>, Option<BTreeSet<String>>);
    let mesh_bound: Vec<Bound> = snapshot
        .of_kind("VirtualService")
        .filter(|vs| match vs.spec()["gateways"].as_array() {
            None => true,
            Some(g) => g.is_empty() || g.iter().any(|g| g.as_str() == Some("mesh")),
        })
        .map(|vs| {
            let hosts = vs.spec()["hosts"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .map(|h| fqdn(h, vs.ns()))
                .collect();
            (vs, hosts, visible_in(vs))
        })
        .collect();
    for (i, (vs, hosts, scope)) in mesh_bound.iter().enumerate() {
        let mut with = BTreeSet::new();
        for (j, (other, other_hosts, other_scope)) in mesh_bound.iter().enumerate() {
            if i == j || !scopes_meet(scope, other_scope) {
                continue;
            }
            for h in hosts {
                for o in other_hosts.iter().filter(|o| hosts_overlap(h, o)) {
                    with.insert(format!("{h} ({o} of {})", other.origin()));
                }
            }
        }
        if !with.is_empty() {
            out.push(vs.message(
                IST0109,
                format!(
                    "for the mesh it claims hosts another VirtualService claims: {}",
                    with.into_iter().collect::<Vec<_>>().join("; ")
                ),
                "merge the VirtualServices for a host into one, or narrow their exportTo",
            ));
        }
    }
}

/// Whether a Gateway's host (`[ns/]host`, as written in the Gateway in `gateway_ns`) takes
/// VirtualService host `vs_host` from namespace `vs_ns`.
fn gateway_host_takes(gw_host: &str, gateway_ns: &str, vs_host: &str, vs_ns: &str) -> bool {
    let (ns, host) = match gw_host.split_once('/') {
        Some((ns, host)) => (ns, host),
        None => ("*", gw_host),
    };
    let ns_ok = match ns {
        "*" => true,
        "." => vs_ns == gateway_ns,
        ns => ns == vs_ns,
    };
    let (host, vs_host) = (host.to_ascii_lowercase(), vs_host.to_ascii_lowercase());
    let host_ok = match host.strip_prefix('*') {
        Some(suffix) => vs_host.ends_with(suffix) && vs_host.len() > suffix.len() || host == "*",
        None => host == vs_host,
    };
    ns_ok && host_ok
}

/// IST0101, IST0132 and IST0165: each Gateway a VirtualService binds to (but `mesh`) must
/// exist, as an Istio Gateway or a Gateway API Gateway, and serve at least one of its hosts; a
/// Gateway generated from a Gateway API one is internal and is not to be named.
fn route_gateways(snapshot: &Snapshot, out: &mut Vec<Message>) {
    // Istio Gateways and Gateway API Gateways by namespace/name: their namespace and hosts.
    let mut gateways: BTreeMap<String, (String, Vec<String>)> = BTreeMap::new();
    for g in snapshot.of_kind("Gateway") {
        let api = g.value["apiVersion"].as_str().unwrap_or("");
        let hosts: Vec<String> = if api.starts_with("gateway.networking.k8s.io") {
            g.spec()["listeners"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|l| l["hostname"].as_str().unwrap_or("*").to_string())
                .collect()
        } else {
            g.spec()["servers"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|s| s["hosts"].as_array().into_iter().flatten())
                .filter_map(|h| h.as_str().map(str::to_string))
                .collect()
        };
        gateways
            .entry(format!("{}/{}", g.ns(), g.name))
            .or_insert_with(|| (g.ns().to_string(), Vec::new()))
            .1
            .extend(hosts);
    }
    for vs in snapshot.of_kind("VirtualService") {
        let hosts: Vec<&str> = vs.spec()["hosts"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        for (i, gw) in vs.spec()["gateways"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .enumerate()
        {
            if gw == "mesh" {
                continue;
            }
            if gw.contains("~istio-autogenerated-k8s-gateway") {
                out.push(vs.message(
                    IST0165,
                    format!("spec.gateways[{i}] names {gw:?}, a Gateway the mesh generates from a Gateway API Gateway"),
                    "bind to the Gateway API Gateway with an HTTPRoute, or to an Istio Gateway of your own",
                ));
                continue;
            }
            let key = match gw.split_once('/') {
                Some(_) => gw.to_string(),
                None => format!("{}/{gw}", vs.ns()),
            };
            let Some((gw_ns, gw_hosts)) = gateways.get(&key) else {
                out.push(vs.message(
                    IST0101,
                    format!("spec.gateways[{i}]: Gateway {key} does not exist"),
                    format!("create Gateway {key}, or name one that exists (namespace/name)"),
                ));
                continue;
            };
            let served = hosts.iter().any(|h| {
                gw_hosts
                    .iter()
                    .any(|g| gateway_host_takes(g, gw_ns, h, vs.ns()))
            });
            if !served {
                out.push(vs.message(
                    IST0132,
                    format!(
                        "none of its hosts ({}) is among those Gateway {key} serves ({})",
                        hosts.join(", "),
                        gw_hosts.join(", ")
                    ),
                    format!("add the host to a server of Gateway {key}, or change the VirtualService's hosts"),
                ));
            }
        }
    }
}

/// IST0128 and IST0129: TLS originated (SIMPLE or MUTUAL) with no `caCertificates`, so the
/// server's certificate is not verified; unless `insecureSkipVerify` says so on purpose, or a
/// gateway's DestinationRule (with a `workloadSelector`) takes its CA from `credentialName`.
fn unverified_tls(snapshot: &Snapshot, out: &mut Vec<Message>) {
    for dr in snapshot.of_kind("DestinationRule") {
        let spec = dr.spec();
        let selected = spec["workloadSelector"].is_object();
        let host = spec["host"].as_str().unwrap_or("");
        let unverified = |tls: &Value| -> Option<String> {
            let mode = tls["mode"].as_str()?;
            if !matches!(mode, "SIMPLE" | "MUTUAL") {
                return None;
            }
            let has_ca = tls["caCertificates"]
                .as_str()
                .is_some_and(|c| !c.is_empty());
            let from_secret = selected
                && tls["credentialName"]
                    .as_str()
                    .is_some_and(|c| !c.is_empty());
            let skip = tls["insecureSkipVerify"].as_bool() == Some(true);
            (!has_ca && !from_secret && !skip).then(|| mode.to_string())
        };
        if let Some(mode) = unverified(&spec["trafficPolicy"]["tls"]) {
            out.push(dr.message(
                IST0128,
                format!("spec.trafficPolicy.tls: {mode} TLS to {host} with no caCertificates: the server's certificate is not verified"),
                "set caCertificates (or credentialName with a workloadSelector, for a gateway)",
            ));
        }
        for (i, p) in spec["trafficPolicy"]["portLevelSettings"]
            .as_array()
            .into_iter()
            .flatten()
            .enumerate()
        {
            if let Some(mode) = unverified(&p["tls"]) {
                let port = p["port"]["number"].as_u64().unwrap_or(0);
                out.push(dr.message(
                    IST0129,
                    format!("spec.trafficPolicy.portLevelSettings[{i}].tls: {mode} TLS to {host} port {port} with no caCertificates: the server's certificate is not verified"),
                    "set caCertificates (or credentialName with a workloadSelector, for a gateway)",
                ));
            }
        }
    }
}

/// IST0134: a ServiceEntry with a TCP port (or one that says no protocol) and no addresses:
/// sidecars cannot tell its connections from others to the same port, unless addresses are
/// allocated for it (`ISTIO_META_DNS_AUTO_ALLOCATE`, or ones in its status).
fn service_entry_addresses(snapshot: &Snapshot, out: &mut Vec<Message>) {
    let auto_allocate =
        snapshot.mesh()["defaultConfig"]["proxyMetadata"]["ISTIO_META_DNS_AUTO_ALLOCATE"].as_str()
            == Some("true");
    if auto_allocate {
        return;
    }
    for se in snapshot.of_kind("ServiceEntry") {
        let has = |v: &Value| v.as_array().is_some_and(|a| !a.is_empty());
        if has(&se.spec()["addresses"]) || has(&se.value["status"]["addresses"]) {
            continue;
        }
        let tcp = se.spec()["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| {
                let proto = p["protocol"].as_str().unwrap_or("");
                proto.is_empty() || proto.eq_ignore_ascii_case("TCP")
            });
        if let Some(p) = tcp {
            out.push(se.message(
                IST0134,
                format!(
                    "port {} is TCP (or says no protocol) and the entry has no addresses: its connections cannot be told apart",
                    p["number"].as_u64().unwrap_or(0)
                ),
                "add spec.addresses, give the port its protocol (HTTP, HTTPS, TLS, ...), or set ISTIO_META_DNS_AUTO_ALLOCATE",
            ));
        }
    }
}

fn selector_text(selector: &BTreeMap<String, String>) -> String {
    selector
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// IST0101 and IST0162: an Istio Gateway whose selector matches no pod, or whose server port is
/// neither the port nor the target port of a Service in front of those pods: nothing reaches
/// that listener.
fn gateway_ports(snapshot: &Snapshot, out: &mut Vec<Message>) {
    let pods = snapshot.workloads();
    let services: Vec<&Object> = snapshot.of_kind("Service").collect();
    for gw in snapshot.of_kind("Gateway").filter(|g| {
        g.value["apiVersion"]
            .as_str()
            .is_some_and(|a| a.starts_with("networking.istio.io"))
    }) {
        let selector = string_map(&gw.spec()["selector"]);
        let mut matched = 0;
        let mut ports = BTreeSet::new();
        for pod in &pods {
            let labels = &pod.labels;
            if !selects(&selector, labels) {
                continue;
            }
            matched += 1;
            for svc in services.iter().filter(|s| s.ns() == pod.object.ns()) {
                let svc_selector = string_map(&svc.spec()["selector"]);
                if svc_selector.is_empty() || !selects(&svc_selector, labels) {
                    continue;
                }
                for p in svc.spec()["ports"].as_array().into_iter().flatten() {
                    if !p["protocol"]
                        .as_str()
                        .unwrap_or("TCP")
                        .eq_ignore_ascii_case("TCP")
                    {
                        continue;
                    }
                    let target = p["targetPort"]
                        .as_u64()
                        .or_else(|| p["targetPort"].as_str().and_then(|t| t.parse().ok()));
                    ports.extend(target);
                    ports.extend(p["port"].as_u64());
                }
            }
        }
        if matched == 0 {
            out.push(gw.message(
                IST0101,
                format!(
                    "spec.selector ({}) selects no pod: no gateway serves it",
                    selector_text(&selector)
                ),
                "deploy the gateway those labels name, or change the selector to its labels",
            ));
            continue;
        }
        for (i, server) in gw.spec()["servers"]
            .as_array()
            .into_iter()
            .flatten()
            .enumerate()
        {
            let Some(port) = server["port"]["number"].as_u64() else {
                continue;
            };
            if !ports.contains(&port) {
                out.push(gw.message(
                    IST0162,
                    format!(
                        "spec.servers[{i}] listens on {port}, which no Service in front of the pods selected by {} sends to",
                        selector_text(&selector)
                    ),
                    format!("add port {port} (as its targetPort) to the gateway's Service, or use a port it exposes"),
                ));
            }
        }
    }
}

/// Resources of `kind` that select workloads (`selector(spec)`; none for a namespace-wide one):
/// IST0101 when one selects no pod of its namespace, `conflict` on each of two or more that
/// select the same pod (which one applies is undefined).
fn workload_selectors(
    snapshot: &Snapshot,
    out: &mut Vec<Message>,
    kind: &str,
    selector: fn(&Value) -> Option<&Value>,
    conflict: Code,
) {
    let pods = snapshot.workloads();
    let mut selected_by: BTreeMap<usize, Vec<&Object>> = BTreeMap::new();
    for r in snapshot.of_kind(kind) {
        let Some(sel) = selector(r.spec()).map(string_map).filter(|s| !s.is_empty()) else {
            continue;
        };
        let mut any = false;
        for (i, pod) in pods.iter().enumerate() {
            if pod.object.ns() == r.ns() && selects(&sel, &pod.labels) {
                any = true;
                selected_by.entry(i).or_default().push(r);
            }
        }
        if !any {
            out.push(r.message(
                IST0101,
                format!(
                    "its selector ({}) selects no pod in namespace {}",
                    selector_text(&sel),
                    r.ns()
                ),
                "change the selector to the labels of a workload in this namespace",
            ));
        }
    }
    let mut reported = BTreeSet::new();
    for (i, rs) in selected_by.into_iter().filter(|(_, rs)| rs.len() > 1) {
        for r in &rs {
            if !reported.insert(r.origin()) {
                continue;
            }
            let others: Vec<String> = rs
                .iter()
                .filter(|o| o.origin() != r.origin())
                .map(|o| o.origin())
                .collect();
            out.push(r.message(
                conflict,
                format!(
                    "it selects {} {}, as {} does: which one applies is undefined",
                    pods[i].object.kind,
                    pods[i].object.name,
                    others.join(", ")
                ),
                format!(
                    "give each workload one {kind}: narrow the selectors or merge the resources"
                ),
            ));
        }
    }
}

/// Two or more resources of `kind` without a selector in one namespace: `code` on each.
fn namespace_defaults(
    snapshot: &Snapshot,
    out: &mut Vec<Message>,
    kind: &str,
    selector: fn(&Value) -> Option<&Value>,
    code: Code,
) {
    let mut by_ns: BTreeMap<&str, Vec<&Object>> = BTreeMap::new();
    for r in snapshot.of_kind(kind) {
        if selector(r.spec())
            .map(string_map)
            .is_none_or(|s| s.is_empty())
        {
            by_ns.entry(r.ns()).or_default().push(r);
        }
    }
    for (ns, rs) in by_ns.into_iter().filter(|(_, rs)| rs.len() > 1) {
        for r in &rs {
            out.push(r.message(
                code,
                format!("namespace {ns} has {} {kind}s without a selector: which one applies is undefined", rs.len()),
                format!("keep one {kind} without a selector per namespace; give the others selectors"),
            ));
        }
    }
}

fn sidecar_selector(spec: &Value) -> Option<&Value> {
    spec.get("workloadSelector").map(|w| &w["labels"])
}

fn telemetry_selector(spec: &Value) -> Option<&Value> {
    spec.get("selector").map(|s| &s["matchLabels"])
}

/// IST0101, IST0110 and IST0111 for Sidecars.
fn sidecar_selectors(snapshot: &Snapshot, out: &mut Vec<Message>) {
    workload_selectors(snapshot, out, "Sidecar", sidecar_selector, IST0110);
    namespace_defaults(snapshot, out, "Sidecar", sidecar_selector, IST0111);
}

/// IST0101 and IST0159 for Telemetries.
fn telemetry_selectors(snapshot: &Snapshot, out: &mut Vec<Message>) {
    workload_selectors(snapshot, out, "Telemetry", telemetry_selector, IST0159);
}

/// IST0160 for Telemetries.
fn telemetry_defaults(snapshot: &Snapshot, out: &mut Vec<Message>) {
    namespace_defaults(snapshot, out, "Telemetry", telemetry_selector, IST0160);
}

/// IST0157: an `accessLogging` entry of a Telemetry that names no provider and does not turn
/// logging off, where the mesh configuration names no default access log provider: it does
/// nothing.
fn telemetry_providers(snapshot: &Snapshot, out: &mut Vec<Message>) {
    let mesh = snapshot.mesh();
    let defaults = mesh["defaultProviders"]["accessLogging"]
        .as_array()
        .is_some_and(|d| !d.is_empty());
    if defaults {
        return;
    }
    for t in snapshot.of_kind("Telemetry") {
        let empty: Vec<usize> = t.spec()["accessLogging"]
            .as_array()
            .into_iter()
            .flatten()
            .enumerate()
            .filter(|(_, l)| {
                l["providers"].as_array().is_none_or(|p| p.is_empty())
                    && l["disabled"].as_bool() != Some(true)
            })
            .map(|(i, _)| i)
            .collect();
        if let Some(i) = empty.first() {
            out.push(t.message(
                IST0157,
                format!("spec.accessLogging[{i}] names no provider, and the mesh configuration has no defaultProviders.accessLogging: it is ignored"),
                "name a provider (envoy, or one of the mesh configuration's extensionProviders), or set defaultProviders.accessLogging",
            ));
        }
    }
}

/// Whether a VirtualService's HTTP matches route on JWT claims (`@request.auth.claims.`).
fn routes_on_claims(vs: &Object) -> bool {
    vs.spec()["http"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|r| r["match"].as_array().into_iter().flatten())
        .any(|m| {
            ["headers", "withoutHeaders"].iter().any(|k| {
                m[*k]
                    .as_object()
                    .is_some_and(|h| h.keys().any(|k| k.starts_with("@request.auth.claims")))
            })
        })
}

/// IST0149: a VirtualService that routes on JWT claims at a gateway whose pods no
/// RequestAuthentication applies to: the claims are never there, so the route never matches.
fn jwt_claim_routes(snapshot: &Snapshot, out: &mut Vec<Message>) {
    let pods = snapshot.workloads();
    let authn: Vec<(&Object, BTreeMap<String, String>)> = snapshot
        .of_kind("RequestAuthentication")
        .map(|r| (r, string_map(&r.spec()["selector"]["matchLabels"])))
        .collect();
    let covered = |pod: &super::Workload| {
        authn.iter().any(|(r, sel)| {
            let ns_ok = r.ns() == snapshot.root_namespace || r.ns() == pod.object.ns();
            ns_ok && (sel.is_empty() || selects(sel, &pod.labels))
        })
    };
    for vs in snapshot
        .of_kind("VirtualService")
        .filter(|v| routes_on_claims(v))
    {
        for gw in vs.spec()["gateways"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .filter(|g| *g != "mesh")
        {
            let (ns, name) = gw.split_once('/').unwrap_or((vs.ns(), gw));
            let Some(gateway) = snapshot
                .of_kind("Gateway")
                .find(|g| g.ns() == ns && g.name == name)
            else {
                continue;
            };
            let selector = string_map(&gateway.spec()["selector"]);
            let uncovered: Vec<&str> = pods
                .iter()
                .filter(|p| !selector.is_empty() && selects(&selector, &p.labels))
                .filter(|p| !covered(p))
                .map(|p| p.object.name.as_str())
                .collect();
            if !uncovered.is_empty() {
                out.push(vs.message(
                    IST0149,
                    format!(
                        "it routes on JWT claims at Gateway {ns}/{name}, but no RequestAuthentication applies to its pods ({}): the claims are never there",
                        uncovered.join(", ")
                    ),
                    "add a RequestAuthentication selecting the gateway's pods (or in the root namespace)",
                ));
                break;
            }
        }
    }
}

/// A rule's name for messages: its `name`, else its place.
fn rule_name(rule: &Value, kind: &str, i: usize) -> String {
    match rule["name"].as_str() {
        Some(n) if !n.is_empty() => format!("spec.{kind}[{i}] ({n:?})"),
        _ => format!("spec.{kind}[{i}]"),
    }
}

/// A match without its `name`: what it matches.
fn match_key(m: &Value) -> Value {
    let mut m = m.clone();
    if let Some(o) = m.as_object_mut() {
        o.remove("name");
    }
    m
}

/// Whether an earlier HTTP match takes every request a later one would: a URI prefix that
/// starts the later's URI prefix, and every other condition of the earlier one the same in the
/// later one.
fn http_match_covers(earlier: &Value, later: &Value) -> bool {
    let (Some(e), Some(l)) = (
        earlier["uri"]["prefix"].as_str(),
        later["uri"]["prefix"].as_str(),
    ) else {
        return false;
    };
    if !l.starts_with(e) {
        return false;
    }
    let (Some(eo), Some(lo)) = (earlier.as_object(), later.as_object()) else {
        return false;
    };
    eo.iter()
        .filter(|(k, _)| *k != "uri" && *k != "name")
        .all(|(k, v)| lo.get(k) == Some(v))
}

/// IST0130 and IST0131: in each list of rules (`http`, `tcp`, `tls`), a rule after one with no
/// match is never reached, a match that repeats an earlier one does nothing (and a rule whose
/// every match does is never reached), and an HTTP match an earlier URI prefix already takes
/// does nothing.
fn unreachable_rules(snapshot: &Snapshot, out: &mut Vec<Message>) {
    for vs in snapshot.of_kind("VirtualService") {
        for kind in ["http", "tcp", "tls"] {
            let Some(rules) = vs.spec()[kind].as_array() else {
                continue;
            };
            let mut seen: Vec<(Value, usize)> = Vec::new();
            let mut catch_all: Option<usize> = None;
            for (i, rule) in rules.iter().enumerate() {
                let matches = rule["match"].as_array().filter(|m| !m.is_empty());
                let Some(matches) = matches else {
                    if let Some(first) = catch_all {
                        out.push(vs.message(
                            IST0130,
                            format!("{} is never reached: {} before it has no match and takes every request", rule_name(rule, kind, i), rule_name(&rules[first], kind, first)),
                            "give the rules matches, or keep one rule without a match, last",
                        ));
                    }
                    catch_all = Some(i);
                    continue;
                };
                let mut repeated = 0;
                for (j, m) in matches.iter().enumerate() {
                    let key = match_key(m);
                    if let Some((_, at)) = seen.iter().find(|(k, _)| *k == key) {
                        repeated += 1;
                        out.push(vs.message(
                            IST0131,
                            format!(
                                "{}.match[{j}] repeats a match of {}: it does nothing",
                                rule_name(rule, kind, i),
                                rule_name(&rules[*at], kind, *at)
                            ),
                            "remove the repeated match, or change it",
                        ));
                        continue;
                    }
                    if kind == "http"
                        && let Some((_, at)) = seen.iter().find(|(k, _)| http_match_covers(k, &key))
                    {
                        out.push(vs.message(
                            IST0131,
                            format!("{}.match[{j}] takes only requests an earlier match of {} already takes: it does nothing", rule_name(rule, kind, i), rule_name(&rules[*at], kind, *at)),
                            "put the more specific match first, or remove it",
                        ));
                    }
                    seen.push((key, i));
                }
                if repeated == matches.len() {
                    out.push(vs.message(
                        IST0130,
                        format!(
                            "{} is never reached: every match of it is an earlier rule's",
                            rule_name(rule, kind, i)
                        ),
                        "remove the rule, or give it a match of its own",
                    ));
                }
            }
        }
    }
}

/// IST0174 and IST0173: a DestinationRule whose host is no Service and no ServiceEntry host;
/// and, for a Service's host, a subset whose labels select none of the Service's pods (a
/// pod's node gives it the `topology.kubernetes.io/*` labels; an empty value selects nothing).
fn subsets_select_pods(snapshot: &Snapshot, out: &mut Vec<Message>) {
    let services: BTreeMap<String, &Object> = snapshot
        .of_kind("Service")
        .map(|s| (format!("{}.{}.{DOMAIN}", s.name, s.ns()), s))
        .collect();
    let entries: Vec<String> = snapshot
        .of_kind("ServiceEntry")
        .flat_map(|se| se.spec()["hosts"].as_array().cloned().unwrap_or_default())
        .filter_map(|h| h.as_str().map(str::to_ascii_lowercase))
        .collect();
    let nodes: BTreeMap<&str, BTreeMap<String, String>> = snapshot
        .of_kind("Node")
        .map(|n| (n.name.as_str(), n.labels()))
        .collect();
    let workloads = snapshot.workloads();
    for dr in snapshot.of_kind("DestinationRule") {
        let Some(host) = dr.spec()["host"].as_str() else {
            continue;
        };
        if host.contains('*') {
            continue;
        }
        let host = fqdn(host, dr.ns());
        let Some(svc) = services.get(&host) else {
            if !entries.iter().any(|e| hosts_overlap(e, &host)) {
                out.push(dr.message(
                    IST0174,
                    format!("spec.host {host} is no Service and no ServiceEntry host: the rule applies to nothing"),
                    "correct the host (name.namespace.svc.cluster.local), or create the Service or ServiceEntry",
                ));
            }
            continue;
        };
        let selector = string_map(&svc.spec()["selector"]);
        let pods: Vec<BTreeMap<String, String>> = workloads
            .iter()
            .filter(|w| {
                w.object.ns() == svc.ns() && !selector.is_empty() && selects(&selector, &w.labels)
            })
            .map(|w| {
                let mut labels = w.labels.clone();
                let node = w.object.spec()["nodeName"]
                    .as_str()
                    .and_then(|n| nodes.get(n));
                for (k, v) in node.into_iter().flatten() {
                    if k.starts_with("topology.kubernetes.io/") {
                        labels.entry(k.clone()).or_insert_with(|| v.clone());
                    }
                }
                labels
            })
            .collect();
        for (i, subset) in dr.spec()["subsets"]
            .as_array()
            .into_iter()
            .flatten()
            .enumerate()
        {
            let labels = string_map(&subset["labels"]);
            if labels.is_empty() {
                continue;
            }
            let selected =
                !labels.values().any(String::is_empty) && pods.iter().any(|p| selects(&labels, p));
            if !selected {
                out.push(dr.message(
                    IST0173,
                    format!(
                        "spec.subsets[{i}] ({}) selects none of the pods of {host}: requests routed to it fail",
                        subset["name"].as_str().unwrap_or("")
                    ),
                    "correct the subset's labels to those of a version of the service that runs",
                ));
            }
        }
    }
}

/// Whether a Deployment's pods get a sidecar: not when its template says
/// `sidecar.istio.io/inject: "false"`; when it says `"true"`; else as its namespace is
/// labelled (a namespace the snapshot does not hold counts as injected).
fn meshed(snapshot: &Snapshot, d: &Object) -> bool {
    let meta = &d.spec()["template"]["metadata"];
    let said = meta["annotations"]["sidecar.istio.io/inject"]
        .as_str()
        .or_else(|| meta["labels"]["sidecar.istio.io/inject"].as_str());
    match said {
        Some("false") => return false,
        Some("true") => return true,
        _ => {}
    }
    match snapshot.of_kind("Namespace").find(|n| n.name == d.ns()) {
        None => true,
        Some(ns) => {
            let labels = ns.labels();
            labels.get("istio-injection").map(String::as_str) == Some("enabled")
                || labels.contains_key("istio.io/rev")
                || labels.get("mesh-injection").map(String::as_str) == Some("enabled")
        }
    }
}

/// IST0116 and IST0137: the Services in front of a meshed Deployment's pods must give each
/// port one protocol, and each target port one service port, or the sidecar cannot tell how
/// to treat the traffic.
fn service_association(snapshot: &Snapshot, out: &mut Vec<Message>) {
    let services: Vec<&Object> = snapshot.of_kind("Service").collect();
    for d in snapshot.of_kind("Deployment") {
        if system_namespace(d.ns(), snapshot) || !meshed(snapshot, d) {
            continue;
        }
        let labels = string_map(&d.spec()["template"]["metadata"]["labels"]);
        // port -> protocol -> services; target port -> port -> services
        let mut protocols: BTreeMap<u64, BTreeMap<String, Vec<String>>> = BTreeMap::new();
        let mut targets: BTreeMap<u64, BTreeMap<u64, Vec<String>>> = BTreeMap::new();
        for svc in services.iter().filter(|s| s.ns() == d.ns()) {
            let sel = string_map(&svc.spec()["selector"]);
            if sel.is_empty() || !selects(&sel, &labels) {
                continue;
            }
            for p in svc.spec()["ports"].as_array().into_iter().flatten() {
                let Some(port) = p["port"].as_u64() else {
                    continue;
                };
                let declared = p["appProtocol"]
                    .as_str()
                    .filter(|a| !a.is_empty())
                    .or_else(|| p["name"].as_str())
                    .unwrap_or("");
                let protocol = match Protocol::from_istio_name(declared) {
                    Some(Protocol::Detect) | None => {
                        p["protocol"].as_str().unwrap_or("TCP").to_ascii_uppercase()
                    }
                    Some(known) => format!("{known:?}").to_ascii_uppercase(),
                };
                protocols
                    .entry(port)
                    .or_default()
                    .entry(protocol)
                    .or_default()
                    .push(svc.name.clone());
                let target = p["targetPort"].as_u64().unwrap_or(port);
                targets
                    .entry(target)
                    .or_default()
                    .entry(port)
                    .or_default()
                    .push(svc.name.clone());
            }
        }
        for (port, by_protocol) in protocols.iter().filter(|(_, m)| m.len() > 1) {
            let services: Vec<String> = by_protocol
                .iter()
                .map(|(p, s)| format!("{} ({p})", s.join(", ")))
                .collect();
            out.push(d.message(
                IST0116,
                format!(
                    "its pods are behind Services that give port {port} different protocols: {}",
                    services.join("; ")
                ),
                format!("give port {port} one protocol in every Service that selects these pods"),
            ));
        }
        for (target, by_port) in targets.iter().filter(|(_, m)| m.len() > 1) {
            let services: Vec<String> = by_port
                .iter()
                .map(|(p, s)| format!("{} (port {p})", s.join(", ")))
                .collect();
            out.push(d.message(
                IST0137,
                format!(
                    "Services send target port {target} of its pods from different ports: {}",
                    services.join("; ")
                ),
                format!("use one service port for target port {target}"),
            ));
        }
    }
}

/// IST0140: a VirtualService for gateways only that sends to a host with no subset, where a
/// VirtualService for the mesh routes that host: the gateway's requests go to every endpoint,
/// and the mesh's rules (its subsets, its split) do not apply to them.
fn ingress_bypasses_mesh_routes(snapshot: &Snapshot, out: &mut Vec<Message>) {
    let mesh_routed: BTreeSet<String> = snapshot
        .of_kind("VirtualService")
        .filter(|vs| {
            vs.spec()["gateways"]
                .as_array()
                .is_none_or(|g| g.is_empty() || g.iter().any(|g| g.as_str() == Some("mesh")))
        })
        .flat_map(|vs| {
            vs.spec()["hosts"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .map(|h| fqdn(h, vs.ns()))
                .collect::<Vec<_>>()
        })
        .collect();
    for vs in snapshot.of_kind("VirtualService") {
        let Some(gateways) = vs.spec()["gateways"].as_array() else {
            continue;
        };
        if gateways.is_empty() || gateways.iter().any(|g| g.as_str() == Some("mesh")) {
            continue;
        }
        let bypassed: BTreeSet<String> = destinations(vs)
            .into_iter()
            .filter(|(_, d)| d["subset"].as_str().is_none_or(str::is_empty))
            .filter_map(|(_, d)| d["host"].as_str().map(|h| fqdn(h, vs.ns())))
            .filter(|h| mesh_routed.contains(h))
            .collect();
        if !bypassed.is_empty() {
            let hosts: Vec<String> = bypassed.into_iter().collect();
            out.push(vs.message(
                IST0140,
                format!(
                    "it sends gateway requests to {} with no subset: the mesh's VirtualService rules for it do not apply to them",
                    hosts.join(", ")
                ),
                "route to the subsets here too (or bind the mesh's VirtualService to the gateway as well)",
            ));
        }
    }
}

/// A host a VirtualService can send to: a Service's or a ServiceEntry's, its ports, and the
/// namespaces it is visible in (`None`: every one).
struct Destination {
    ports: BTreeSet<u64>,
    visible: Option<BTreeSet<String>>,
}

/// Every host Services and ServiceEntries define, by FQDN (wildcards as written).
fn defined_hosts(snapshot: &Snapshot) -> BTreeMap<String, Vec<Destination>> {
    let mut hosts: BTreeMap<String, Vec<Destination>> = BTreeMap::new();
    for svc in snapshot.of_kind("Service") {
        // A Service's visibility is its `networking.istio.io/exportTo` annotation.
        let visible = svc.value["metadata"]["annotations"]["networking.istio.io/exportTo"]
            .as_str()
            .and_then(|list| {
                let mut set = BTreeSet::new();
                for e in list.split(',').map(str::trim) {
                    match e {
                        "*" => return None,
                        "." => set.insert(svc.ns().to_string()),
                        ns => set.insert(ns.to_string()),
                    };
                }
                Some(set)
            });
        let ports = svc.spec()["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| p["port"].as_u64())
            .collect();
        hosts
            .entry(format!("{}.{}.{DOMAIN}", svc.name, svc.ns()))
            .or_default()
            .push(Destination { ports, visible });
    }
    for se in snapshot.of_kind("ServiceEntry") {
        let ports: BTreeSet<u64> = se.spec()["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| p["number"].as_u64())
            .collect();
        for h in se.spec()["hosts"].as_array().into_iter().flatten() {
            if let Some(h) = h.as_str() {
                hosts
                    .entry(fqdn(h, se.ns()))
                    .or_default()
                    .push(Destination {
                        ports: ports.clone(),
                        visible: visible_in(se),
                    });
            }
        }
    }
    hosts
}

/// The ports of `host` as seen from namespace `ns` (every definition visible there, exact
/// first, then wildcards); `None` when nothing visible there defines it.
fn ports_of(
    hosts: &BTreeMap<String, Vec<Destination>>,
    host: &str,
    ns: &str,
) -> Option<BTreeSet<u64>> {
    let visible = |d: &&Destination| d.visible.as_ref().is_none_or(|v| v.contains(ns));
    let found = |list: &Vec<Destination>| -> Option<BTreeSet<u64>> {
        let mut seen = list.iter().filter(visible).peekable();
        seen.peek()?;
        Some(seen.flat_map(|d| d.ports.iter().copied()).collect())
    };
    if let Some(ports) = hosts.get(host).and_then(found) {
        return Some(ports);
    }
    hosts
        .iter()
        .filter_map(|(h, list)| Some((h.strip_prefix('*')?, list)))
        .filter(|(suffix, _)| host.trim_start_matches('*').ends_with(suffix))
        .find_map(|(_, list)| found(list))
}

/// Whether a VirtualService is bound to gateways only (not to the mesh's sidecars).
fn gateways_only(vs: &Object) -> bool {
    vs.spec()["gateways"]
        .as_array()
        .is_some_and(|g| !g.is_empty() && !g.iter().any(|g| g.as_str() == Some("mesh")))
}

/// IST0101 and IST0112: a route or mirror to a host no Service or ServiceEntry visible in the
/// VirtualService's namespace defines, or to a port that host does not have; and a gateway's
/// route without a port to a host with several, which the gateway cannot choose between (a
/// sidecar sends to the port the request was made on, so the mesh's routes need none). Then
/// IST0140.
fn destination_hosts(snapshot: &Snapshot, out: &mut Vec<Message>) {
    let hosts = defined_hosts(snapshot);
    for vs in snapshot.of_kind("VirtualService") {
        for (field, d) in destinations(vs) {
            let Some(written) = d["host"].as_str() else {
                continue;
            };
            let host = fqdn(written, vs.ns());
            let Some(ports) = ports_of(&hosts, &host, vs.ns()) else {
                out.push(vs.message(
                    IST0101,
                    format!("{field}.host: {written:?} ({host}) is defined by no Service or ServiceEntry visible in namespace {}", vs.ns()),
                    "create the Service (or a ServiceEntry for a host outside the cluster), fix the name, or export it to this namespace",
                ));
                continue;
            };
            match d["port"]["number"].as_u64() {
                Some(port) if !ports.is_empty() && !ports.contains(&port) => {
                    out.push(vs.message(
                        IST0101,
                        format!(
                            "{field}.port: {host} has no port {port} (it has {})",
                            ports.iter().map(u64::to_string).collect::<Vec<_>>().join(", ")
                        ),
                        "route to one of the host's ports",
                    ));
                }
                None if ports.len() > 1 && gateways_only(vs) => out.push(vs.message(
                    IST0112,
                    format!(
                        "{field}: {host} has ports {}, and the route names none: which one the gateway sends to is undefined",
                        ports.iter().map(u64::to_string).collect::<Vec<_>>().join(", ")
                    ),
                    format!("add `port: {{number: N}}` to {field}"),
                )),
                _ => {}
            }
        }
    }
    ingress_bypasses_mesh_routes(snapshot, out);
}

/// Whether a workload gets (or has) a sidecar: a Pod with an `istio-proxy` container, or one
/// whose namespace or own annotation asks for injection; a pod template as [`meshed`] says.
fn workload_meshed(snapshot: &Snapshot, w: &super::Workload<'_>) -> bool {
    let o = w.object;
    if o.kind != "Pod" {
        return meshed(snapshot, o);
    }
    let has_proxy = o.spec()["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["name"].as_str() == Some("istio-proxy"));
    if has_proxy {
        return true;
    }
    // A pod as a file gives it, before injection: judged as its template would be.
    let as_template = serde_json::json!({"spec": {"template": {"metadata": o.value["metadata"]}}});
    let template = Object {
        kind: "Deployment".into(),
        namespace: o.namespace.clone(),
        name: o.name.clone(),
        value: as_template,
        file: None,
        line: 0,
    };
    o.value["status"].is_null() && meshed(snapshot, &template)
}

/// Whether an AuthorizationPolicy's `namespaces` entry names a namespace of the snapshot
/// (`*`, `prefix*` and `*suffix` as Istio matches them).
fn namespace_named(pattern: &str, namespaces: &BTreeSet<&str>) -> bool {
    if pattern == "*" {
        return true;
    }
    if let Some(prefix) = pattern.strip_suffix('*') {
        return namespaces.iter().any(|n| n.starts_with(prefix));
    }
    if let Some(suffix) = pattern.strip_prefix('*') {
        return namespaces.iter().any(|n| n.ends_with(suffix));
    }
    namespaces.contains(pattern)
}

/// IST0127 and IST0101: an AuthorizationPolicy that applies to no meshed workload (its
/// selector, in its namespace or the whole mesh from the root namespace; a namespace-wide one
/// in a namespace with none), and `from.source.namespaces` naming namespaces that do not exist
/// (when the snapshot holds Namespaces at all).
fn authorization_policies(snapshot: &Snapshot, out: &mut Vec<Message>) {
    let workloads = snapshot.workloads();
    let meshed: Vec<&super::Workload<'_>> = workloads
        .iter()
        .filter(|w| workload_meshed(snapshot, w))
        .collect();
    let namespaces: BTreeSet<&str> = snapshot
        .of_kind("Namespace")
        .map(|n| n.name.as_str())
        .collect();
    for ap in snapshot.of_kind("AuthorizationPolicy") {
        let spec = ap.spec();
        if let Some((what, hint)) = applies_to_nothing(snapshot, ap, &meshed) {
            out.push(ap.message(IST0127, what, hint));
        }
        if namespaces.is_empty() {
            continue;
        }
        for (i, rule) in spec["rules"].as_array().into_iter().flatten().enumerate() {
            for (j, from) in rule["from"].as_array().into_iter().flatten().enumerate() {
                for key in ["namespaces", "notNamespaces"] {
                    for ns in from["source"][key]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(Value::as_str)
                    {
                        if !namespace_named(ns, &namespaces) {
                            out.push(ap.message(
                                IST0101,
                                format!("spec.rules[{i}].from[{j}].source.{key}: namespace {ns:?} does not exist"),
                                "fix the namespace's name, or create the namespace",
                            ));
                        }
                    }
                }
            }
        }
    }
}

/// A PeerAuthentication's mode (`STRICT`, `PERMISSIVE`, `DISABLE`; `None` for `UNSET` or none).
fn pa_mode(v: &Value) -> Option<&str> {
    v["mode"]
        .as_str()
        .filter(|m| !m.is_empty() && *m != "UNSET")
}

/// The mTLS mode a workload in `ns` with `labels` accepts on target port `port`, and the
/// PeerAuthentication that decides it: the workload's own (and its port-level setting), else
/// its namespace's, else the mesh's; PERMISSIVE when none says.
fn server_mode<'a>(
    snapshot: &'a Snapshot,
    ns: &str,
    labels: &BTreeMap<String, String>,
    port: Option<u64>,
) -> (String, Option<&'a Object>) {
    let pas: Vec<&Object> = snapshot.of_kind("PeerAuthentication").collect();
    let workload = pas.iter().find(|p| {
        p.ns() == ns && {
            let sel = string_map(&p.spec()["selector"]["matchLabels"]);
            !sel.is_empty() && selects(&sel, labels)
        }
    });
    let unselected = |p: &&&Object| string_map(&p.spec()["selector"]["matchLabels"]).is_empty();
    let namespace = pas.iter().filter(unselected).find(|p| p.ns() == ns);
    let mesh = pas
        .iter()
        .filter(unselected)
        .find(|p| p.ns() == snapshot.root_namespace);
    if let Some(p) = workload {
        let port_level = port.and_then(|n| pa_mode(&p.spec()["portLevelMtls"][n.to_string()]));
        if let Some(m) = port_level.or_else(|| pa_mode(&p.spec()["mtls"])) {
            return (m.to_string(), Some(p));
        }
    }
    for p in [namespace, mesh].into_iter().flatten() {
        if let Some(m) = pa_mode(&p.spec()["mtls"]) {
            return (m.to_string(), Some(p));
        }
    }
    ("PERMISSIVE".into(), None)
}

/// IST0113: a DestinationRule that sends to a Service's port without the mesh's mutual TLS
/// (`tls.mode` DISABLE, SIMPLE or MUTUAL, for the host or that port), where a PeerAuthentication
/// makes a workload behind it (or, with none known, its namespace) accept only mutual TLS: those
/// requests are refused.
fn mtls_conflicts(snapshot: &Snapshot, out: &mut Vec<Message>) {
    let workloads = snapshot.workloads();
    for dr in snapshot.of_kind("DestinationRule") {
        let Some(host) = dr.spec()["host"].as_str().map(|h| fqdn(h, dr.ns())) else {
            continue;
        };
        let policy = &dr.spec()["trafficPolicy"];
        let Some(svc) = snapshot
            .of_kind("Service")
            .find(|s| format!("{}.{}.{DOMAIN}", s.name, s.ns()) == host)
        else {
            continue;
        };
        let selector = string_map(&svc.spec()["selector"]);
        let behind: Vec<&super::Workload<'_>> = workloads
            .iter()
            .filter(|w| {
                w.object.ns() == svc.ns()
                    && !selector.is_empty()
                    && selects(&selector, &w.labels)
                    && workload_meshed(snapshot, w)
            })
            .collect();
        let mut reported = false;
        for p in svc.spec()["ports"].as_array().into_iter().flatten() {
            let Some(number) = p["port"].as_u64() else {
                continue;
            };
            let target = p["targetPort"].as_u64().unwrap_or(number);
            let port_level = policy["portLevelSettings"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|s| s["port"]["number"].as_u64() == Some(number));
            let (mode, field) = match port_level.and_then(|s| s["tls"]["mode"].as_str()) {
                Some(m) => (m, "spec.trafficPolicy.portLevelSettings[].tls.mode"),
                None => match policy["tls"]["mode"].as_str() {
                    Some(m) => (m, "spec.trafficPolicy.tls.mode"),
                    None => continue,
                },
            };
            if !matches!(mode, "DISABLE" | "SIMPLE" | "MUTUAL") || reported {
                continue;
            }
            let strict = if behind.is_empty() {
                let (m, pa) = server_mode(snapshot, svc.ns(), &BTreeMap::new(), None);
                (m == "STRICT").then(|| (format!("namespace {}", svc.ns()), pa))
            } else {
                behind.iter().find_map(|w| {
                    let (m, pa) = server_mode(snapshot, svc.ns(), &w.labels, Some(target));
                    (m == "STRICT").then(|| (format!("{} {}", w.object.kind, w.object.name), pa))
                })
            };
            if let Some((who, pa)) = strict {
                reported = true;
                out.push(dr.message(
                    IST0113,
                    format!(
                        "{field} is {mode}: requests to {host} port {number} go without the mesh's mutual TLS, but {} makes {who} accept only mutual TLS (STRICT): they are refused",
                        pa.map_or_else(|| "a PeerAuthentication".to_string(), |p| format!("PeerAuthentication {}", p.origin().trim_start_matches("PeerAuthentication ")))
                    ),
                    "drop the tls setting (the mesh's mutual TLS is automatic) or set it to ISTIO_MUTUAL; or make the PeerAuthentication PERMISSIVE",
                ));
            }
        }
    }
}

/// Whether the injector's ConfigMap (`istio-sidecar-injector*` in the root namespace) injects
/// every namespace that says nothing (`sidecarInjectorWebhook.enableNamespacesByDefault`).
fn injects_by_default(snapshot: &Snapshot) -> bool {
    snapshot
        .of_kind("ConfigMap")
        .filter(|c| {
            c.ns() == snapshot.root_namespace && c.name.starts_with("istio-sidecar-injector")
        })
        .filter_map(|c| c.value["data"]["values"].as_str())
        .filter_map(|v| serde_json::from_str::<Value>(v).ok())
        .any(|v| v["sidecarInjectorWebhook"]["enableNamespacesByDefault"].as_bool() == Some(true))
}

/// IST0102, IST0148, IST0123 and IST0103: a namespace (not the system's) that says nothing of
/// injection is not injected (or is, by the injector's default); one labelled for more than one
/// data plane (`istio-injection`, `istio.io/rev`, ambient) is ambiguous; and a pod of an
/// injected namespace that does not opt out runs without a sidecar.
fn injection(snapshot: &Snapshot, out: &mut Vec<Message>) {
    let by_default = injects_by_default(snapshot);
    let mut injected = BTreeSet::new();
    for ns in snapshot.of_kind("Namespace") {
        let name = ns.name.as_str();
        if system_namespace(name, snapshot) {
            continue;
        }
        let labels = ns.labels();
        let legacy = labels
            .get("istio-injection")
            .or_else(|| labels.get("mesh-injection"));
        let revision = labels.get("istio.io/rev");
        let ambient = labels.get("istio.io/dataplane-mode").map(String::as_str) == Some("ambient");
        let said = usize::from(legacy.is_some_and(|v| v != "disabled"))
            + usize::from(revision.is_some())
            + usize::from(ambient);
        if said > 1 {
            out.push(ns.message(
                IST0123,
                format!("namespace {name} is labelled for more than one data plane (istio-injection, istio.io/rev, istio.io/dataplane-mode): which one its pods get is undefined"),
                "keep one of the labels",
            ));
            continue;
        }
        if ambient {
            continue;
        }
        match (legacy.map(String::as_str), revision) {
            (None, None) if by_default => out.push(ns.message(
                IST0148,
                format!("namespace {name} has no injection label, and the injector injects such namespaces by default"),
                "label it istio-injection=enabled to say so, or =disabled to keep sidecars out",
            )),
            (None, None) => out.push(ns.message(
                IST0102,
                format!("namespace {name} is not labelled for injection: its pods get no sidecar"),
                format!("kubectl label namespace {name} istio-injection=enabled (or =disabled to say it is meant)"),
            )),
            (Some("enabled"), _) | (None, Some(_)) => {
                injected.insert(name);
            }
            _ => {}
        }
    }
    for pod in snapshot.of_kind("Pod") {
        if !injected.contains(pod.ns()) {
            continue;
        }
        let meta = &pod.value["metadata"];
        // The label says first, then the annotation.
        let opted_out = meta["labels"]["sidecar.istio.io/inject"]
            .as_str()
            .or_else(|| meta["annotations"]["sidecar.istio.io/inject"].as_str())
            .is_some_and(|v| v.eq_ignore_ascii_case("false"));
        if opted_out || pod.spec()["hostNetwork"].as_bool() == Some(true) {
            continue;
        }
        let has_proxy = ["containers", "initContainers"].iter().any(|k| {
            pod.spec()[*k]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["name"].as_str() == Some("istio-proxy"))
        });
        if !has_proxy {
            out.push(pod.message(
                IST0103,
                format!("pod {}/{} runs without a sidecar though its namespace is injected", pod.ns(), pod.name),
                "restart it so the injector adds the sidecar (kubectl rollout restart of its Deployment)",
            ));
        }
    }
}

/// IST0002: fields Istio deprecated: a VirtualService fault's `delay.percent` (use
/// `percentage`), `mirrorPercent` (use `mirrorPercentage`) and `corsPolicy.allowOrigin` (use
/// `allowOrigins`); a Sidecar's `outboundTrafficPolicy.egressProxy`, which is ignored.
fn deprecated_fields(snapshot: &Snapshot, out: &mut Vec<Message>) {
    for vs in snapshot.of_kind("VirtualService") {
        for (i, rule) in vs.spec()["http"]
            .as_array()
            .into_iter()
            .flatten()
            .enumerate()
        {
            let at = format!("spec.http[{i}]");
            let found = [
                (
                    !rule["fault"]["delay"]["percent"].is_null(),
                    "fault.delay.percent",
                    "fault.delay.percentage",
                ),
                (
                    !rule["mirrorPercent"].is_null(),
                    "mirrorPercent",
                    "mirrorPercentage",
                ),
                (
                    !rule["corsPolicy"]["allowOrigin"].is_null(),
                    "corsPolicy.allowOrigin",
                    "corsPolicy.allowOrigins",
                ),
            ];
            for (_, field, instead) in found.into_iter().filter(|(set, _, _)| *set) {
                out.push(vs.message(
                    IST0002,
                    format!("{at}.{field} is deprecated"),
                    format!("use {at}.{instead}"),
                ));
            }
        }
    }
    for sc in snapshot.of_kind("Sidecar") {
        if !sc.spec()["outboundTrafficPolicy"]["egressProxy"].is_null() {
            out.push(sc.message(
                IST0002,
                "spec.outboundTrafficPolicy.egressProxy is deprecated and ignored".into(),
                "remove it; route traffic to an egress gateway with a VirtualService instead",
            ));
        }
    }
}

/// IST0171: an object whose status holds a negative condition of Istio's or the Gateway API's
/// (status False, or accepted only in part), on the object or on one of a route's parents:
/// what the controller said is not in effect. Other controllers' condition types (with a domain
/// of their own) are left alone.
fn negative_conditions(snapshot: &Snapshot, out: &mut Vec<Message>) {
    let ours = |t: &str| !t.contains('/') || t.starts_with("istio.io/");
    for o in &snapshot.objects {
        let status = &o.value["status"];
        let mut lists: Vec<&Value> = vec![&status["conditions"]];
        lists.extend(
            status["parents"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|p| &p["conditions"]),
        );
        let negative = lists
            .into_iter()
            .filter_map(Value::as_array)
            .flatten()
            .find(|c| {
                c["type"].as_str().is_some_and(ours)
                    && (c["status"].as_str() == Some("False")
                        || c["reason"].as_str() == Some("PartiallyInvalid"))
            });
        if let Some(c) = negative {
            out.push(o.message(
                IST0171,
                format!(
                    "its status says {} is {} ({}): {}",
                    c["type"].as_str().unwrap_or(""),
                    c["status"].as_str().unwrap_or(""),
                    c["reason"].as_str().unwrap_or(""),
                    c["message"].as_str().unwrap_or("")
                ),
                "fix what the condition's message names",
            ));
        }
    }
}

/// IST0177: ServiceEntries that give one host and port different protocols where both are
/// visible (in one namespace, or one of them everywhere): only one protocol can apply.
fn service_entry_protocols(snapshot: &Snapshot, out: &mut Vec<Message>) {
    /// Where a host's port is seen ("*": every namespace), the host, the port.
    type Key = (String, String, u64);
    // Each key's protocols, with the ServiceEntry giving each.
    let mut index: BTreeMap<Key, Vec<(String, &Object)>> = BTreeMap::new();
    for se in snapshot.of_kind("ServiceEntry") {
        let scopes: Vec<String> = match visible_in(se) {
            None => vec!["*".into()],
            Some(set) => set.into_iter().collect(),
        };
        for scope in &scopes {
            for h in se.spec()["hosts"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
            {
                for p in se.spec()["ports"].as_array().into_iter().flatten() {
                    let Some(number) = p["number"].as_u64() else {
                        continue;
                    };
                    let protocol = p["protocol"].as_str().unwrap_or("").to_ascii_uppercase();
                    index
                        .entry((scope.clone(), h.to_string(), number))
                        .or_default()
                        .push((protocol, se));
                }
            }
        }
    }
    let mut reported = BTreeSet::new();
    for ((scope, host, port), entries) in &index {
        let mut entries = entries.clone();
        if scope != "*"
            && let Some(everywhere) = index.get(&("*".to_string(), host.clone(), *port))
        {
            entries.extend(everywhere.iter().cloned());
        }
        let protocols: BTreeSet<&str> = entries.iter().map(|(p, _)| p.as_str()).collect();
        if protocols.len() < 2 {
            continue;
        }
        let names: BTreeSet<String> = entries
            .iter()
            .map(|(_, se)| format!("{}/{}", se.ns(), se.name))
            .collect();
        for (_, se) in &entries {
            if !reported.insert(se.origin()) {
                continue;
            }
            out.push(se.message(
                IST0177,
                format!(
                    "ServiceEntries {} give host {host:?} port {port} different protocols ({}): only one can apply",
                    names.iter().cloned().collect::<Vec<_>>().join(", "),
                    protocols.iter().copied().collect::<Vec<_>>().join(", ")
                ),
                "give the port one protocol in every ServiceEntry, or keep the host in one ServiceEntry",
            ));
        }
    }
}

/// What is wrong with a gateway credential Secret, if anything: it must hold a PEM certificate
/// that has not expired and a PEM private key, as `tls.crt` and `tls.key` (or `cert` and `key`).
fn credential_fault(secret: &Object) -> Option<String> {
    let parsed: k8s_openapi::api::core::v1::Secret =
        match serde_json::from_value(secret.value.clone()) {
            Ok(s) => s,
            Err(e) => return Some(format!("it does not read as a Secret: {e}")),
        };
    let get = |names: &[&str]| -> Option<Vec<u8>> {
        names.iter().find_map(|n| {
            parsed
                .data
                .as_ref()
                .and_then(|d| d.get(*n))
                .map(|b| b.0.clone())
                .or_else(|| {
                    parsed
                        .string_data
                        .as_ref()
                        .and_then(|d| d.get(*n))
                        .map(|s| s.as_bytes().to_vec())
                })
        })
    };
    let (Some(cert), Some(key)) = (get(&["tls.crt", "cert"]), get(&["tls.key", "key"])) else {
        return Some("it has no tls.crt and tls.key (nor cert and key)".into());
    };
    let pem = match x509_parser::pem::parse_x509_pem(&cert) {
        Ok((_, pem)) if pem.label == "CERTIFICATE" => pem,
        _ => return Some("its certificate is not a PEM certificate".into()),
    };
    let Ok(x509) = pem.parse_x509() else {
        return Some("its certificate does not parse".into());
    };
    if !x509.validity().is_valid() {
        return Some(format!(
            "its certificate is valid from {} to {}, not now",
            x509.validity().not_before,
            x509.validity().not_after
        ));
    }
    match x509_parser::pem::parse_x509_pem(&key) {
        Ok((_, pem)) if pem.label.ends_with("PRIVATE KEY") => None,
        _ => Some("its key is not a PEM private key".into()),
    }
}

/// IST0101 and IST0161: a Gateway server's `credentialName` names a Secret that must be in the
/// namespace of the gateway's pods (the first its selector selects), holding a valid
/// certificate and key.
fn gateway_secrets(snapshot: &Snapshot, out: &mut Vec<Message>) {
    let workloads = snapshot.workloads();
    for gw in snapshot.of_kind("Gateway") {
        let selector = string_map(&gw.spec()["selector"]);
        let pods_ns = workloads
            .iter()
            .find(|w| selects(&selector, &w.labels))
            .map(|w| w.object.ns());
        let credentials: Vec<(usize, &str)> = gw.spec()["servers"]
            .as_array()
            .into_iter()
            .flatten()
            .enumerate()
            .filter_map(|(i, s)| {
                s["tls"]["credentialName"]
                    .as_str()
                    .filter(|c| !c.is_empty())
                    .map(|c| (i, c))
            })
            .collect();
        if credentials.is_empty() {
            continue;
        }
        let Some(ns) = pods_ns else {
            out.push(gw.message(
                IST0101,
                format!(
                    "its selector ({}) selects no pod, so no namespace holds its credentialName Secrets",
                    selector_text(&selector)
                ),
                "change the selector to the labels of the gateway's pods",
            ));
            continue;
        };
        for (i, name) in credentials {
            let field = format!("spec.servers[{i}].tls.credentialName");
            match snapshot
                .of_kind("Secret")
                .find(|s| s.ns() == ns && s.name == name)
            {
                None => out.push(gw.message(
                    IST0101,
                    format!("{field}: no Secret {ns}/{name}: the gateway's pods run in {ns}, where it must be"),
                    format!("kubectl create -n {ns} secret tls {name} --cert=CERT --key=KEY"),
                )),
                Some(secret) => {
                    if let Some(fault) = credential_fault(secret) {
                        out.push(gw.message(
                            IST0161,
                            format!("{field}: Secret {ns}/{name}: {fault}"),
                            "put a current PEM certificate and its key in the Secret (kubectl create secret tls)",
                        ));
                    }
                }
            }
        }
    }
}

/// Why a policy selecting workloads as AuthorizationPolicy does (its `selector.matchLabels` in
/// its namespace, or in the whole mesh from the root namespace; a namespace-wide one without)
/// applies to none of the `meshed` workloads, with what to do; `None` when it applies to some,
/// names a `targetRef`, or is mesh-wide without a selector.
fn applies_to_nothing(
    snapshot: &Snapshot,
    policy: &Object,
    meshed: &[&super::Workload<'_>],
) -> Option<(String, &'static str)> {
    let spec = policy.spec();
    let mesh_wide = policy.ns() == snapshot.root_namespace;
    let has_target = !spec["targetRef"].is_null()
        || spec["targetRefs"].as_array().is_some_and(|t| !t.is_empty());
    let selector = string_map(&spec["selector"]["matchLabels"]);
    if has_target || (mesh_wide && selector.is_empty()) {
        return None;
    }
    let any = meshed
        .iter()
        .any(|w| (mesh_wide || w.object.ns() == policy.ns()) && selects(&selector, &w.labels));
    if any {
        return None;
    }
    Some(if selector.is_empty() {
        (
            format!(
                "namespace {} has no meshed workload for it to apply to",
                policy.ns()
            ),
            "deploy the workloads with sidecars (label the namespace istio-injection=enabled), or remove the policy",
        )
    } else {
        (
            format!(
                "its selector ({}) selects no meshed workload {}",
                selector_text(&selector),
                if mesh_wide {
                    "in the mesh".to_string()
                } else {
                    format!("in namespace {}", policy.ns())
                }
            ),
            "change the selector to the labels of a workload with a sidecar",
        )
    })
}

/// MESH0004: a RateLimitPolicy that applies to no meshed workload limits nothing.
fn rate_limit_selectors(snapshot: &Snapshot, out: &mut Vec<Message>) {
    let workloads = snapshot.workloads();
    let meshed: Vec<&super::Workload<'_>> = workloads
        .iter()
        .filter(|w| workload_meshed(snapshot, w))
        .collect();
    for rl in snapshot.of_kind("RateLimitPolicy") {
        if let Some((what, hint)) = applies_to_nothing(snapshot, rl, &meshed) {
            out.push(rl.message(MESH0004, format!("{what}: it limits nothing"), hint));
        }
    }
}
