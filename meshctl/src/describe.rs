//! `meshctl describe pod POD`: the configuration that applies to a pod, gathered from what the
//! local mesh holds: the Services that select it, the VirtualServices and DestinationRules for
//! them (and the subsets it is in), its effective mTLS mode and the PeerAuthentication that set
//! it, and the AuthorizationPolicies, RequestAuthentications and Sidecars that apply to it.

use std::collections::BTreeMap;
use std::process::ExitCode;

use mesh_api::analyze::{Object, Snapshot, fqdn, selects, string_map};
use serde_json::Value;

use crate::local_cli::DirArg;

/// `meshctl describe`.
#[derive(clap::Subcommand)]
pub enum Command {
    /// What applies to a pod.
    Pod(PodArgs),
}

/// `meshctl describe pod`.
#[derive(clap::Args)]
pub struct PodArgs {
    #[command(flatten)]
    dir: DirArg,
    /// The pod.
    pod: String,
}

/// `meshctl describe`.
pub fn run(cmd: &Command) -> ExitCode {
    let Command::Pod(args) = cmd;
    let mesh = meshctl::local::Mesh::new(&args.dir.dir);
    let mut snapshot = Snapshot::new();
    if let Err(e) = snapshot.add_path(&mesh.layout.config()) {
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }
    match describe_pod(&snapshot, &args.pod) {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Whether a policy-like resource (`selector` under `spec.selector.matchLabels` or
/// `spec.workloadSelector.labels`) applies to a pod: mesh-wide from the root namespace, or in
/// the pod's namespace, when its selector (if any) matches the pod.
fn applies(r: &Object, root: &str, ns: &str, labels: &BTreeMap<String, String>) -> bool {
    let spec = r.spec();
    let selector = if spec["selector"].is_object() {
        string_map(&spec["selector"]["matchLabels"])
    } else {
        string_map(&spec["workloadSelector"]["labels"])
    };
    let in_scope = r.ns() == ns || (r.ns() == root && selector.is_empty());
    in_scope && selects(&selector, labels)
}

fn name(o: &Object) -> String {
    format!("{}/{}", o.ns(), o.name)
}

/// The text `meshctl describe pod` prints for pod `pod` of `snapshot`.
pub fn describe_pod(snapshot: &Snapshot, pod: &str) -> Result<String, String> {
    use std::fmt::Write as _;
    let p = snapshot
        .of_kind("Pod")
        .find(|p| p.name == pod)
        .ok_or_else(|| format!("no pod {pod:?} in this mesh (`meshctl ps` lists them)"))?;
    let ns = p.ns();
    let root = snapshot.root_namespace.as_str();
    let labels = p.labels();
    let sa = p.spec()["serviceAccountName"].as_str().unwrap_or("default");
    let mut out = String::new();
    let _ = writeln!(out, "Pod: {pod}");
    let _ = writeln!(out, "   Namespace:  {ns}");
    let _ = writeln!(out, "   Identity:   spiffe://cluster.local/ns/{ns}/sa/{sa}");
    let _ = writeln!(
        out,
        "   Labels:     {}",
        labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(", ")
    );

    // Services, and what routes to them and shapes their traffic.
    let services: Vec<&Object> = snapshot
        .of_kind("Service")
        .filter(|s| s.ns() == ns)
        .filter(|s| {
            let sel = string_map(&s.spec()["selector"]);
            !sel.is_empty() && selects(&sel, &labels)
        })
        .collect();
    if services.is_empty() {
        let _ = writeln!(out, "Services:   none selects this pod");
    }
    for s in &services {
        let host = fqdn(&s.name, s.ns());
        let ports: Vec<String> = s.spec()["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| {
                format!(
                    "{} {}",
                    p["name"].as_str().unwrap_or("-"),
                    p["port"].as_u64().unwrap_or(0)
                )
            })
            .collect();
        let _ = writeln!(
            out,
            "Service: {} ({host}), ports: {}",
            s.name,
            ports.join(", ")
        );
        let vss: Vec<&Object> = snapshot
            .of_kind("VirtualService")
            .filter(|vs| {
                vs.spec()["hosts"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .any(|h| fqdn(h, vs.ns()) == host)
            })
            .collect();
        if vss.is_empty() {
            let _ = writeln!(
                out,
                "   VirtualService:   none (requests go to every endpoint)"
            );
        }
        for vs in vss {
            let gateways: Vec<&str> = vs.spec()["gateways"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            let bound = if gateways.is_empty() {
                "mesh".to_string()
            } else {
                gateways.join(", ")
            };
            let rules = vs.spec()["http"].as_array().map_or(0, Vec::len)
                + vs.spec()["tcp"].as_array().map_or(0, Vec::len)
                + vs.spec()["tls"].as_array().map_or(0, Vec::len);
            let _ = writeln!(
                out,
                "   VirtualService:   {} ({rules} rule(s); for {bound})",
                name(vs)
            );
        }
        let drs: Vec<&Object> = snapshot
            .of_kind("DestinationRule")
            .filter(|dr| {
                dr.spec()["host"]
                    .as_str()
                    .is_some_and(|h| fqdn(h, dr.ns()) == host)
            })
            .collect();
        if drs.is_empty() {
            let _ = writeln!(out, "   DestinationRule:  none");
        }
        for dr in drs {
            let subsets: Vec<&str> = dr.spec()["subsets"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|sub| selects(&string_map(&sub["labels"]), &labels))
                .filter_map(|sub| sub["name"].as_str())
                .collect();
            let policy = &dr.spec()["trafficPolicy"];
            let mut shapes = Vec::new();
            if let Some(mode) = policy["tls"]["mode"].as_str() {
                shapes.push(format!("TLS {mode}"));
            }
            if policy["connectionPool"].is_object() {
                shapes.push("connection pool (circuit breaker)".into());
            }
            if policy["outlierDetection"].is_object() {
                shapes.push("outlier detection".into());
            }
            if let Some(lb) = policy["loadBalancer"]["simple"].as_str() {
                shapes.push(format!("load balancer {lb}"));
            }
            let _ = writeln!(
                out,
                "   DestinationRule:  {}{}{}",
                name(dr),
                if subsets.is_empty() {
                    String::new()
                } else {
                    format!(" (this pod is in subset {})", subsets.join(", "))
                },
                if shapes.is_empty() {
                    String::new()
                } else {
                    format!("; {}", shapes.join(", "))
                }
            );
        }
    }

    // mTLS: the most specific PeerAuthentication decides.
    let pas: Vec<&Object> = snapshot
        .of_kind("PeerAuthentication")
        .filter(|pa| applies(pa, root, ns, &labels))
        .collect();
    let rank = |pa: &Object| -> u8 {
        if !string_map(&pa.spec()["selector"]["matchLabels"]).is_empty() {
            0
        } else if pa.ns() == ns {
            1
        } else {
            2
        }
    };
    let decider = pas
        .iter()
        .copied()
        .filter(|pa| {
            pa.spec()["mtls"]["mode"]
                .as_str()
                .is_some_and(|m| m != "UNSET")
        })
        .min_by_key(|pa| rank(pa));
    match decider {
        Some(pa) => {
            let _ = writeln!(
                out,
                "mTLS:          {} (PeerAuthentication {}{})",
                pa.spec()["mtls"]["mode"].as_str().unwrap_or(""),
                name(pa),
                match rank(pa) {
                    0 => ", selecting this workload",
                    1 => ", namespace-wide",
                    _ => ", mesh-wide",
                }
            );
        }
        None => {
            let _ = writeln!(
                out,
                "mTLS:          PERMISSIVE (no PeerAuthentication: the default)"
            );
        }
    }
    for (kind, label) in [
        ("AuthorizationPolicy", "Authorization"),
        ("RequestAuthentication", "JWT"),
        ("Sidecar", "Sidecar"),
    ] {
        let applied: Vec<String> = snapshot
            .of_kind(kind)
            .filter(|r| applies(r, root, ns, &labels))
            .map(|r| match kind {
                "AuthorizationPolicy" => format!(
                    "{} ({})",
                    name(r),
                    r.spec()["action"].as_str().unwrap_or("ALLOW")
                ),
                _ => name(r),
            })
            .collect();
        let _ = writeln!(
            out,
            "{:<15}{}",
            format!("{label}:"),
            if applied.is_empty() {
                "none".to_string()
            } else {
                applied.join(", ")
            }
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pod_is_described_by_what_applies_to_it() {
        let mut s = Snapshot::new();
        s.add_text(
            r#"
apiVersion: v1
kind: Pod
metadata: {name: shipping-v1-0, namespace: default, labels: {app: shipping, version: v1}}
spec: {serviceAccountName: shipping}
---
apiVersion: v1
kind: Service
metadata: {name: shipping-service, namespace: default}
spec: {selector: {app: shipping}, ports: [{name: http, port: 8080}]}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: shipping-service, namespace: default}
spec: {hosts: [shipping-service], http: [{route: [{destination: {host: shipping-service, subset: v1}}]}]}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: shipping-service, namespace: default}
spec:
  host: shipping-service
  trafficPolicy: {outlierDetection: {consecutive5xxErrors: 1}}
  subsets: [{name: v1, labels: {version: v1}}, {name: v2, labels: {version: v2}}]
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec: {mtls: {mode: STRICT}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: only-order, namespace: default}
spec: {selector: {matchLabels: {app: shipping}}, action: ALLOW, rules: [{}]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: other, namespace: default}
spec: {selector: {matchLabels: {app: inventory}}}
"#,
            None,
        )
        .unwrap();
        let text = describe_pod(&s, "shipping-v1-0").unwrap();
        assert!(
            text.contains("Identity:   spiffe://cluster.local/ns/default/sa/shipping"),
            "{text}"
        );
        assert!(text.contains("Service: shipping-service (shipping-service.default.svc.cluster.local), ports: http 8080"), "{text}");
        assert!(
            text.contains("VirtualService:   default/shipping-service (1 rule(s); for mesh)"),
            "{text}"
        );
        assert!(text.contains("DestinationRule:  default/shipping-service (this pod is in subset v1); outlier detection"), "{text}");
        assert!(
            text.contains(
                "mTLS:          STRICT (PeerAuthentication istio-system/default, mesh-wide)"
            ),
            "{text}"
        );
        assert!(
            text.contains("Authorization:default/only-order (ALLOW)")
                || text.contains("Authorization: default/only-order (ALLOW)"),
            "{text}"
        );
        assert!(!text.contains("default/other"), "{text}");
        assert!(describe_pod(&s, "nope").unwrap_err().contains("meshctl ps"));
    }
}
