//! `meshctl proxy-config POD clusters|endpoints|listeners|routes|policies|secrets`: the state a
//! sidecar holds, read from its admin port's `/config_dump` (and `/certs` for secrets), as
//! `istioctl proxy-config` reads Envoy's, as a table or `-o json`. The local mesh only for now.

use std::process::ExitCode;

use serde_json::Value;

use crate::local_cli::DirArg;

/// What to show.
#[derive(Clone, Copy, clap::ValueEnum, PartialEq, Eq, Debug)]
pub enum What {
    /// Each service port, and each subset of it, the proxy can send to; and its inbound ports.
    Clusters,
    /// Each endpoint of each cluster, with its health (outlier detection) and identity.
    Endpoints,
    /// The addresses and ports the proxy takes traffic on.
    Listeners,
    /// The HTTP routes of each service: matches, destinations and weights, timeout, retries.
    Routes,
    /// The security policies that apply to the workload: mTLS mode, authorization, JWT.
    Policies,
    /// The workload certificate (identity, validity) and the mesh roots it trusts.
    Secrets,
}

/// `meshctl proxy-config`.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    dir: DirArg,
    /// The pod whose sidecar to read.
    pod: String,
    /// What to show.
    #[arg(value_enum)]
    what: What,
    /// `text` (a table) or `json` (that part of the sidecar's state as it holds it).
    #[arg(short = 'o', long = "output", value_parser = ["text", "json"], default_value = "text")]
    output: String,
}

/// `meshctl proxy-config`.
pub fn run(args: &Args) -> ExitCode {
    let fail = |e: String| {
        eprintln!("error: {e}");
        ExitCode::FAILURE
    };
    let pod = match meshctl::local::Mesh::new(&args.dir.dir).pod(&args.pod) {
        Ok(p) => p,
        Err(e) => return fail(e.to_string()),
    };
    if !pod.sidecar {
        return fail(format!("pod {} has no sidecar", pod.name));
    }
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], 15000));
    let path = if args.what == What::Secrets {
        "/certs"
    } else {
        "/config_dump"
    };
    let dump = match meshctl::local::pods::http_get(&pod.netns, addr, path) {
        Ok((200, body)) => body,
        Ok((status, body)) => {
            return fail(format!(
                "the sidecar of {} answered {status}: {body}",
                pod.name
            ));
        }
        Err(e) => return fail(format!("the sidecar of {}: {e}", pod.name)),
    };
    let dump: Value = match serde_json::from_str(&dump) {
        Ok(v) => v,
        Err(e) => return fail(format!("the sidecar of {} sent no state: {e}", pod.name)),
    };
    if args.output == "json" {
        let part = part(&dump, args.what);
        match serde_json::to_string_pretty(&part) {
            Ok(s) => println!("{s}"),
            Err(e) => return fail(e.to_string()),
        }
    } else {
        print!("{}", table(&dump, args.what));
    }
    ExitCode::SUCCESS
}

/// The part of the state `what` is about, as the sidecar holds it.
pub fn part(dump: &Value, what: What) -> Value {
    let pick = |keys: &[&str]| {
        Value::Object(
            keys.iter()
                .map(|k| ((*k).to_string(), dump[*k].clone()))
                .collect(),
        )
    };
    match what {
        What::Clusters => pick(&["services", "inboundPorts"]),
        What::Endpoints => pick(&["services", "status"]),
        What::Listeners => pick(&["services", "inboundPorts", "gatewayListeners"]),
        What::Routes => pick(&["services", "gatewayListeners"]),
        What::Policies => pick(&[
            "peerAuthentication",
            "authorizationPolicies",
            "requestAuthentications",
        ]),
        What::Secrets => dump.clone(),
    }
}

fn array<'a>(v: &'a Value, key: &str) -> &'a [Value] {
    v[key].as_array().map(Vec::as_slice).unwrap_or(&[])
}

fn text<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key].as_str().unwrap_or("")
}

/// Lines in columns: the widths of the widest cell.
fn columns(rows: &[Vec<String>]) -> String {
    let mut widths = Vec::new();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if widths.len() <= i {
                widths.push(0);
            }
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in rows {
        let last = row.len().saturating_sub(1);
        for (i, cell) in row.iter().enumerate() {
            out.push_str(cell);
            if i < last {
                let pad = widths[i] - cell.chars().count() + 2;
                out.push_str(&" ".repeat(pad));
            }
        }
        out.push('\n');
    }
    out
}

fn selects(subset: &Value, endpoint: &Value) -> bool {
    subset["labels"]
        .as_object()
        .into_iter()
        .flatten()
        .all(|(k, v)| endpoint["labels"][k] == *v)
}

/// The table of `what`.
pub fn table(dump: &Value, what: What) -> String {
    let mut rows: Vec<Vec<String>> = Vec::new();
    let services = array(dump, "services");
    match what {
        What::Clusters => {
            rows.push(
                [
                    "SERVICE FQDN",
                    "PORT",
                    "SUBSET",
                    "DIRECTION",
                    "ENDPOINTS",
                    "CLUSTER",
                ]
                .map(String::from)
                .to_vec(),
            );
            for s in services {
                let host = text(s, "hostname");
                for p in array(s, "ports") {
                    let port = p["port"].as_u64().unwrap_or(0);
                    let all = array(s, "endpoints").len();
                    rows.push(vec![
                        host.into(),
                        port.to_string(),
                        "-".into(),
                        "outbound".into(),
                        all.to_string(),
                        format!("outbound|{port}||{host}"),
                    ]);
                    for sub in array(s, "subsets") {
                        let name = text(sub, "name");
                        let n = array(s, "endpoints")
                            .iter()
                            .filter(|e| selects(sub, e))
                            .count();
                        rows.push(vec![
                            host.into(),
                            port.to_string(),
                            name.into(),
                            "outbound".into(),
                            n.to_string(),
                            format!("outbound|{port}|{name}|{host}"),
                        ]);
                    }
                }
            }
            for p in array(dump, "inboundPorts") {
                let port = p["port"].as_u64().unwrap_or(0);
                rows.push(vec![
                    "(this workload)".into(),
                    port.to_string(),
                    "-".into(),
                    "inbound".into(),
                    "1".into(),
                    format!("inbound|{port}||"),
                ]);
            }
        }
        What::Endpoints => {
            rows.push(
                ["ENDPOINT", "STATUS", "IDENTITY", "CLUSTER"]
                    .map(String::from)
                    .to_vec(),
            );
            let ejected: Vec<&str> = array(&dump["status"], "outlierDetection")
                .iter()
                .flat_map(|o| array(o, "ejectedEndpoints"))
                .filter_map(Value::as_str)
                .collect();
            for s in services {
                let host = text(s, "hostname");
                for p in array(s, "ports") {
                    let port = p["port"].as_u64().unwrap_or(0);
                    let target = p["targetPort"].as_u64().unwrap_or(port);
                    for e in array(s, "endpoints") {
                        let at = format!(
                            "{}:{}",
                            text(e, "address"),
                            e["ports"][port.to_string()].as_u64().unwrap_or(target)
                        );
                        let status = if ejected.contains(&at.as_str()) {
                            "EJECTED (outlier detection)"
                        } else {
                            "HEALTHY"
                        };
                        let identity = match text(e, "identity") {
                            "" => "- (no sidecar: plaintext)".to_string(),
                            id => id.to_string(),
                        };
                        rows.push(vec![
                            at,
                            status.into(),
                            identity,
                            format!("outbound|{port}||{host}"),
                        ]);
                    }
                }
            }
        }
        What::Listeners => {
            rows.push(
                ["ADDRESS", "PORT", "DIRECTION", "PROTOCOL", "FOR"]
                    .map(String::from)
                    .to_vec(),
            );
            for p in array(dump, "inboundPorts") {
                rows.push(vec![
                    "0.0.0.0".into(),
                    p["port"].as_u64().unwrap_or(0).to_string(),
                    "inbound".into(),
                    text(p, "protocol").into(),
                    "(this workload)".into(),
                ]);
            }
            for l in array(dump, "gatewayListeners") {
                rows.push(vec![
                    "0.0.0.0".into(),
                    l["port"].as_u64().unwrap_or(0).to_string(),
                    "gateway".into(),
                    text(l, "protocol").into(),
                    array(l, "hosts")
                        .iter()
                        .map(|h| text(h, "host").to_string())
                        .collect::<Vec<_>>()
                        .join(","),
                ]);
            }
            for s in services {
                for a in array(s, "addresses").iter().filter_map(Value::as_str) {
                    for p in array(s, "ports") {
                        rows.push(vec![
                            a.into(),
                            p["port"].as_u64().unwrap_or(0).to_string(),
                            "outbound".into(),
                            text(p, "protocol").into(),
                            text(s, "hostname").into(),
                        ]);
                    }
                }
            }
        }
        What::Routes => {
            rows.push(
                ["SERVICE", "MATCH", "DESTINATIONS", "TIMEOUT", "RETRIES"]
                    .map(String::from)
                    .to_vec(),
            );
            for s in services {
                let host = text(s, "hostname");
                let routes = array(s, "httpRoutes");
                if routes.is_empty() {
                    rows.push(vec![
                        host.into(),
                        "/*".into(),
                        format!("{host} (every endpoint)"),
                        "-".into(),
                        "-".into(),
                    ]);
                }
                for r in routes {
                    let matches = array(r, "matches");
                    let matched = if matches.is_empty() {
                        "/*".to_string()
                    } else {
                        matches
                            .iter()
                            .map(|m| {
                                let mut m = m.clone();
                                strip_empty(&mut m);
                                m.to_string()
                            })
                            .collect::<Vec<_>>()
                            .join(" or ")
                    };
                    let destinations = array(r, "destinations")
                        .iter()
                        .map(|d| {
                            let subset = match text(d, "subset") {
                                "" => String::new(),
                                s => format!("|{s}"),
                            };
                            format!(
                                "{}{subset} {}%",
                                text(d, "host"),
                                d["weight"].as_u64().unwrap_or(100)
                            )
                        })
                        .collect::<Vec<_>>()
                        .join(", ");
                    let destinations = if destinations.is_empty() {
                        if r["directResponse"].is_object() {
                            "(direct response)".into()
                        } else if r["redirect"].is_object() {
                            "(redirect)".into()
                        } else {
                            "-".into()
                        }
                    } else {
                        destinations
                    };
                    let timeout = match r["timeoutMs"].as_u64().unwrap_or(0) {
                        0 => "-".to_string(),
                        ms => format!("{ms}ms"),
                    };
                    let retries = match r["retry"]["attempts"].as_u64() {
                        Some(n) => n.to_string(),
                        None => r["retries"].as_u64().unwrap_or(0).to_string(),
                    };
                    rows.push(vec![host.into(), matched, destinations, timeout, retries]);
                }
            }
        }
        What::Policies => {
            rows.push(["KIND", "NAME", "WHAT"].map(String::from).to_vec());
            let pa = &dump["peerAuthentication"];
            let ports: Vec<String> = pa["portModes"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(p, m)| format!("port {p}: {}", m.as_str().unwrap_or("")))
                .collect();
            rows.push(vec![
                "PeerAuthentication".into(),
                "(effective)".into(),
                format!(
                    "mTLS {}{}",
                    pa["mode"].as_str().unwrap_or("PERMISSIVE"),
                    if ports.is_empty() {
                        String::new()
                    } else {
                        format!(" ({})", ports.join(", "))
                    }
                ),
            ]);
            for (kind, key) in [
                ("AuthorizationPolicy", "authorizationPolicies"),
                ("RequestAuthentication", "requestAuthentications"),
            ] {
                for p in array(dump, key) {
                    let spec: Value =
                        serde_json::from_str(text(p, "specJson")).unwrap_or(Value::Null);
                    let what = if kind == "AuthorizationPolicy" {
                        format!(
                            "{} with {} rule(s){}",
                            spec["action"].as_str().unwrap_or("ALLOW"),
                            spec["rules"].as_array().map_or(0, Vec::len),
                            if p["dryRun"].as_bool() == Some(true) {
                                " (dry run)"
                            } else {
                                ""
                            }
                        )
                    } else {
                        let issuers: Vec<&str> = spec["jwtRules"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .filter_map(|r| r["issuer"].as_str())
                            .collect();
                        format!("JWT from {}", issuers.join(", "))
                    };
                    rows.push(vec![
                        kind.into(),
                        format!("{}/{}", text(p, "namespace"), text(p, "name")),
                        what,
                    ]);
                }
            }
        }
        What::Secrets => {
            rows.push(
                [
                    "RESOURCE NAME",
                    "TYPE",
                    "IDENTITY / SUBJECT",
                    "VALID UNTIL",
                    "DAYS LEFT",
                ]
                .map(String::from)
                .to_vec(),
            );
            for c in array(dump, "certificates") {
                rows.push(vec![
                    text(c, "name").into(),
                    "Cert Chain".into(),
                    text(c, "identity").into(),
                    text(c, "validUntil").into(),
                    format!("{:.1}", c["secondsLeft"].as_f64().unwrap_or(0.0) / 86_400.0),
                ]);
            }
            for r in array(dump, "roots") {
                rows.push(vec![
                    "ROOTCA".into(),
                    "CA".into(),
                    text(r, "subject").into(),
                    text(r, "validUntil").into(),
                    String::new(),
                ]);
            }
        }
    }
    columns(&rows)
}

/// Drops `null`, empty strings, lists and objects: a match said by what it has.
fn strip_empty(v: &mut Value) {
    if let Some(o) = v.as_object_mut() {
        o.retain(|_, x| {
            strip_empty(x);
            !(x.is_null()
                || x.as_str() == Some("")
                || x.as_array().is_some_and(Vec::is_empty)
                || x.as_object().is_some_and(serde_json::Map::is_empty)
                || x.as_bool() == Some(false))
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dump() -> Value {
        serde_json::json!({
            "inboundPorts": [{"port": 8080, "protocol": "HTTP"}],
            "gatewayListeners": [],
            "peerAuthentication": {"mode": "STRICT", "portModes": {}},
            "authorizationPolicies": [{"name": "allow-order", "namespace": "default", "specJson": "{\"action\":\"ALLOW\",\"rules\":[{}]}", "dryRun": false}],
            "requestAuthentications": [],
            "status": {"outlierDetection": [{"cluster": "outbound|8080||shipping-service.default.svc.cluster.local", "ejectedEndpoints": ["10.244.0.6:8080"]}]},
            "services": [{
                "hostname": "shipping-service.default.svc.cluster.local",
                "addresses": ["10.96.0.12"],
                "ports": [{"name": "http", "port": 8080, "protocol": "HTTP", "targetPort": 8080}],
                "subsets": [{"name": "v1", "labels": {"version": "v1"}}, {"name": "v2", "labels": {"version": "v2"}}],
                "endpoints": [
                    {"address": "10.244.0.5", "identity": "spiffe://cluster.local/ns/default/sa/shipping", "labels": {"version": "v1"}, "ports": {}},
                    {"address": "10.244.0.6", "identity": "spiffe://cluster.local/ns/default/sa/shipping", "labels": {"version": "v2"}, "ports": {}}
                ],
                "httpRoutes": [{"matches": [], "destinations": [
                    {"host": "shipping-service.default.svc.cluster.local", "subset": "v1", "weight": 90},
                    {"host": "shipping-service.default.svc.cluster.local", "subset": "v2", "weight": 10}
                ], "timeoutMs": 0, "retry": {"attempts": 2}}]
            }]
        })
    }

    #[test]
    fn each_table_says_what_the_sidecar_holds() {
        let d = dump();
        let clusters = table(&d, What::Clusters);
        assert!(
            clusters.contains("outbound|8080|v2|shipping-service.default.svc.cluster.local"),
            "{clusters}"
        );
        assert!(clusters.contains("inbound|8080||"), "{clusters}");
        let endpoints = table(&d, What::Endpoints);
        assert!(
            endpoints.contains("10.244.0.5:8080  HEALTHY"),
            "{endpoints}"
        );
        assert!(
            endpoints.contains("10.244.0.6:8080  EJECTED (outlier detection)"),
            "{endpoints}"
        );
        let routes = table(&d, What::Routes);
        assert!(routes.contains("shipping-service.default.svc.cluster.local|v1 90%, shipping-service.default.svc.cluster.local|v2 10%"), "{routes}");
        let listeners = table(&d, What::Listeners);
        assert!(listeners.contains("10.96.0.12"), "{listeners}");
        let policies = table(&d, What::Policies);
        assert!(policies.contains("mTLS STRICT"), "{policies}");
        assert!(
            policies.contains("default/allow-order  ALLOW with 1 rule(s)"),
            "{policies}"
        );
    }
}
