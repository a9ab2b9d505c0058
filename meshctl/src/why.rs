//! `meshctl why POD URL`: the fate of a request from a pod to a URL, worked out with the
//! proxy's own code on the states the sidecars hold: the service the host resolves to, the
//! route that matches (and the VirtualService it came from), the subsets and endpoints it may
//! go to with their health, timeouts, retries and faults, mutual TLS on both sides, and which
//! AuthorizationPolicy allows or denies it at each destination, after the destination's sidecar
//! has checked the request's JWT (its admin `/authn`, with the keys it holds); then a verdict in
//! plain words. TCP and TLS ports are explained as connections (their `tcp` and `tls` routes).
//! The local mesh only for now.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::process::ExitCode;

use mesh_api::analyze::{Snapshot, fqdn};
use mesh_api::proto::state::v1 as proto;
use mesh_proxy::state::{PeerMode, State};
use serde_json::Value;

use crate::local_cli::DirArg;

/// `meshctl why`.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    dir: DirArg,
    /// The pod the request leaves from.
    pod: String,
    /// Where it goes: `http://shipping-service:8080/orders?id=7`.
    url: String,
    /// The method.
    #[arg(short = 'X', long, default_value = "GET")]
    method: String,
    /// A request header, `name: value` (repeatable).
    #[arg(short = 'H', long = "header")]
    headers: Vec<String>,
}

/// A sidecar's state, as the proxy compiles it, and the endpoints it has ejected.
struct Sidecar {
    state: State,
    ejected: Vec<String>,
}

fn sidecar(pod: &meshctl::local::state::PodRecord) -> Result<Sidecar, String> {
    let addr = SocketAddr::from(([127, 0, 0, 1], 15000));
    let (status, body) = meshctl::local::pods::http_get(&pod.netns, addr, "/config_dump")
        .map_err(|e| format!("the sidecar of {}: {e}", pod.name))?;
    if status != 200 {
        return Err(format!(
            "the sidecar of {} answered {status}: {body}",
            pod.name
        ));
    }
    let mut dump: Value = serde_json::from_str(&body)
        .map_err(|e| format!("the sidecar of {} sent no state: {e}", pod.name))?;
    let status = dump
        .as_object_mut()
        .and_then(|o| o.remove("status"))
        .unwrap_or(Value::Null);
    let ejected = status["outlierDetection"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|o| {
            o["ejectedEndpoints"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .filter_map(|e| e.as_str().map(str::to_string))
        .collect();
    let source: proto::ProxyState = serde_json::from_value(dump)
        .map_err(|e| format!("the state of {}'s sidecar does not read: {e}", pod.name))?;
    let state = State::compile(source)
        .map_err(|e| format!("the state of {}'s sidecar does not compile: {e}", pod.name))?;
    Ok(Sidecar { state, ejected })
}

/// What a destination's sidecar makes of the request's JWT.
enum Jwt {
    /// No RequestAuthentication applies there.
    NotChecked,
    /// None carried (where the rules look): unauthenticated.
    Absent(String),
    /// Verified: what it proves.
    Verified(String, mesh_proxy::authn::Verified),
    /// Refused with 401, and why.
    Refused(String, String),
}

/// Asks `pod`'s sidecar what its RequestAuthentications make of a request with `headers` and
/// `query`.
fn jwt_at(
    pod: &meshctl::local::state::PodRecord,
    headers: &hyper::HeaderMap,
    query: &str,
) -> Result<Jwt, String> {
    let addr = SocketAddr::from(([127, 0, 0, 1], 15000));
    let path = if query.is_empty() {
        "/authn".to_string()
    } else {
        format!("/authn?{query}")
    };
    let (status, body) = meshctl::local::pods::http_get_with(&pod.netns, addr, &path, headers)
        .map_err(|e| format!("the sidecar of {}: {e}", pod.name))?;
    if status != 200 {
        return Err(format!(
            "the sidecar of {} answered {status}: {body}",
            pod.name
        ));
    }
    let v: Value = serde_json::from_str(&body).map_err(|e| {
        format!(
            "the sidecar of {} answered something unexpected: {e}",
            pod.name
        )
    })?;
    let policies: Vec<String> = v["policies"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(|p| format!("RequestAuthentication {p}"))
        .collect();
    let policies = policies.join(", ");
    Ok(match v["outcome"].as_str() {
        _ if policies.is_empty() => Jwt::NotChecked,
        Some("verified") => Jwt::Verified(
            policies,
            mesh_proxy::authn::Verified {
                principal: v["principal"].as_str().unwrap_or("").to_string(),
                audiences: v["audiences"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|a| a.as_str().map(str::to_string))
                    .collect(),
                presenter: v["claims"]["azp"].as_str().map(str::to_string),
                claims: v["claims"].clone(),
            },
        ),
        Some("refused") => Jwt::Refused(policies, v["reason"].as_str().unwrap_or("").to_string()),
        _ => Jwt::Absent(policies),
    })
}

/// `meshctl why`.
pub fn run(args: &Args) -> ExitCode {
    match explain(args) {
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

fn explain(args: &Args) -> Result<String, String> {
    let mesh = meshctl::local::Mesh::new(&args.dir.dir);
    let st = mesh.state().map_err(|e| e.to_string())?;
    let client = st.pods.get(&args.pod).ok_or_else(|| {
        format!(
            "no pod {:?} in this mesh (`meshctl ps` lists them)",
            args.pod
        )
    })?;
    if !client.sidecar {
        return Err(format!(
            "pod {} has no sidecar: its requests leave as plaintext, unrouted; a STRICT destination refuses them",
            client.name
        ));
    }
    let uri: hyper::Uri = args
        .url
        .parse()
        .map_err(|e| format!("{:?} is not a URL: {e}", args.url))?;
    let scheme = uri.scheme_str().unwrap_or("http");
    let host = uri
        .host()
        .ok_or_else(|| format!("{:?} names no host", args.url))?
        .to_ascii_lowercase();
    let port = uri
        .port_u16()
        .unwrap_or(if scheme == "https" { 443 } else { 80 });
    let path = uri.path().to_string();
    let query = uri.query().unwrap_or("").to_string();
    let authority = uri
        .authority()
        .map(|a| a.as_str().to_string())
        .unwrap_or_else(|| host.clone());
    let mut headers = hyper::HeaderMap::new();
    for h in &args.headers {
        let (k, v) = h
            .split_once(':')
            .ok_or_else(|| format!("--header {h:?}: write it as `name: value`"))?;
        let name = hyper::header::HeaderName::try_from(k.trim())
            .map_err(|_| format!("--header {h:?}: {k:?} is not a header name"))?;
        let value = hyper::header::HeaderValue::try_from(v.trim())
            .map_err(|_| format!("--header {h:?}: the value is not a header value"))?;
        headers.append(name, value);
    }
    let method = args.method.to_ascii_uppercase();
    let from = sidecar(client)?;
    let client_id = format!(
        "spiffe://cluster.local/ns/{}/sa/{}",
        client.namespace, client.service_account
    );
    let mut snapshot = Snapshot::new();
    let _ = snapshot.add_path(&mesh.layout.config());

    let mut out = String::new();
    let _ = writeln!(
        out,
        "Request: {method} {} from {} ({client_id})",
        args.url, client.name
    );

    // 1. The service.
    let ns = client.namespace.as_str();
    let candidates = [
        host.clone(),
        format!("{host}.{ns}.svc.cluster.local"),
        format!("{host}.svc.cluster.local"),
        format!("{host}.cluster.local"),
    ];
    let svc = candidates
        .iter()
        .find_map(|h| from.state.services.get(h))
        .or_else(|| {
            from.state
                .services
                .values()
                .find(|s| s.spec.addresses.contains(&host))
        });
    let Some(svc) = svc else {
        let policy = from.state.source.outbound_traffic_policy();
        let verdict = if policy == proto::OutboundTrafficPolicy::RegistryOnly {
            "refused by the caller's sidecar: the mesh's outboundTrafficPolicy is REGISTRY_ONLY and no service or ServiceEntry is named so (502, BlackHoleCluster)"
        } else {
            "passed through unrouted and without mTLS: no service or ServiceEntry is named so, and outboundTrafficPolicy ALLOW_ANY lets it out as addressed"
        };
        let _ = writeln!(
            out,
            "1. Service: none for {host:?} in {}'s view",
            client.name
        );
        let _ = writeln!(out, "Verdict: {verdict}.");
        return Ok(out);
    };
    let hostname = svc.spec.hostname.clone();
    let Some(svc_port) = svc.spec.ports.iter().find(|p| p.port == u32::from(port)) else {
        let ports: Vec<String> = svc.spec.ports.iter().map(|p| p.port.to_string()).collect();
        let _ = writeln!(
            out,
            "1. Service: {hostname}, which has no port {port} (ports: {})",
            ports.join(", ")
        );
        let _ = writeln!(
            out,
            "Verdict: not routed: the service has no port {port}; use one of {}.",
            ports.join(", ")
        );
        return Ok(out);
    };
    let _ = writeln!(
        out,
        "1. Service: {hostname} port {port} ({}){}",
        format!("{:?}", svc_port.protocol()).to_ascii_uppercase(),
        svc.spec
            .addresses
            .first()
            .map(|a| format!(", address {a}"))
            .unwrap_or_default()
    );

    let vs_names: Vec<String> = snapshot
        .of_kind("VirtualService")
        .filter(|vs| {
            let gateways = vs.spec()["gateways"].as_array();
            let for_mesh = gateways
                .is_none_or(|g| g.is_empty() || g.iter().any(|g| g.as_str() == Some("mesh")));
            for_mesh
                && vs.spec()["hosts"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .any(|h| fqdn(h, vs.ns()) == hostname)
        })
        .map(|vs| format!("VirtualService {}/{}", vs.ns(), vs.name))
        .collect();
    let from_vs = match vs_names.as_slice() {
        [] => String::new(),
        [one] => format!(" of {one}"),
        many => format!(" of one of {}", many.join(", ")),
    };
    let routes = &svc.spec.http_routes;

    // 2. The route: a TCP or TLS connection by port (and SNI), HTTP by the request.
    let l4 = match (scheme, svc_port.protocol()) {
        ("tcp", _) => Some("tcp"),
        ("tls", _) => Some("tls"),
        (_, proto::Protocol::Tcp) => Some("tcp"),
        (_, proto::Protocol::Tls) => Some("tls"),
        _ => None,
    };
    let facts = mesh_proxy::route::http::RequestFacts {
        method: &method,
        path: &path,
        query: &query,
        authority: &authority,
        scheme,
        headers: &headers,
        port,
        claims: None,
    };
    let labels: BTreeMap<String, String> = from
        .state
        .source
        .workload_labels
        .clone()
        .into_iter()
        .collect();
    let src = mesh_proxy::route::http::SourceFacts {
        labels: Some(&labels),
        namespace: ns,
    };
    let (destinations, route) = if let Some(kind) = l4 {
        let found = if kind == "tcp" {
            svc.spec
                .tcp_routes
                .iter()
                .position(|r| r.port == 0 || r.port == u32::from(port))
                .map(|i| {
                    (
                        i,
                        svc.spec.tcp_routes[i].destinations.clone(),
                        String::new(),
                    )
                })
        } else {
            svc.spec
                .tls_routes
                .iter()
                .position(|r| {
                    (r.port == 0 || r.port == u32::from(port))
                        && r.sni_hosts
                            .iter()
                            .any(|h| mesh_proxy::tls::sni_matches(h, &host))
                })
                .map(|i| {
                    let r = &svc.spec.tls_routes[i];
                    (
                        i,
                        r.destinations.clone(),
                        format!(", SNI {host} among {}", r.sni_hosts.join(", ")),
                    )
                })
        };
        match found {
            Some((i, destinations, sni)) => {
                let _ = writeln!(
                    out,
                    "2. Route: {kind}[{i}]{from_vs} (port {port}{sni}); a {} connection, so no retries, timeouts or faults",
                    kind.to_ascii_uppercase()
                );
                (destinations, None)
            }
            None => {
                let _ = writeln!(
                    out,
                    "2. Route: no {} route{from_vs} for port {port}{}: every endpoint of the service",
                    kind.to_ascii_uppercase(),
                    if kind == "tls" {
                        format!(" and SNI {host}")
                    } else {
                        String::new()
                    }
                );
                (
                    vec![proto::WeightedDestination {
                        host: hostname.clone(),
                        weight: 100,
                        ..Default::default()
                    }],
                    None,
                )
            }
        }
    } else if routes.is_empty() {
        let _ = writeln!(
            out,
            "2. Route: no VirtualService routes {hostname}: every endpoint, Istio's default retries"
        );
        (
            vec![proto::WeightedDestination {
                host: hostname.clone(),
                weight: 100,
                ..Default::default()
            }],
            None,
        )
    } else {
        match mesh_proxy::route::http::find(&from.state, routes, &facts, &src) {
            None => {
                let _ = writeln!(
                    out,
                    "2. Route: none of the {} rule(s){from_vs} matches {method} {path}",
                    routes.len()
                );
                let _ = writeln!(
                    out,
                    "Verdict: 404 from the caller's sidecar (flag NR): no route matches; add a rule (or a last one without a match){from_vs}."
                );
                return Ok(out);
            }
            Some(r) => {
                let i = routes.iter().position(|x| std::ptr::eq(x, r)).unwrap_or(0);
                let name = if r.name.is_empty() {
                    format!("http[{i}]")
                } else {
                    format!("http[{i}] ({:?})", r.name)
                };
                let how = if r.matches.is_empty() {
                    "no match conditions: every request".to_string()
                } else {
                    "its match accepts the request".to_string()
                };
                let _ = writeln!(out, "2. Route: {name}{from_vs} ({how})");
                (r.destinations.clone(), Some(r))
            }
        }
    };
    if let Some(r) = route {
        let timeout = match r.timeout_ms {
            0 => "no timeout".to_string(),
            ms => format!("timeout {ms} ms"),
        };
        let retries = match &r.retry {
            Some(p) if p.attempts > 0 => format!(
                "{} retries on {}",
                p.attempts,
                if p.retry_on.is_empty() {
                    "Istio's conditions".to_string()
                } else {
                    p.retry_on.join(",")
                }
            ),
            Some(_) => "no retries".to_string(),
            None if r.retries > 0 => format!("{} retries", r.retries),
            None => "no retries".to_string(),
        };
        let _ = writeln!(out, "   {timeout}; {retries}");
        if let Some(d) = &r.direct_response {
            let _ = writeln!(
                out,
                "Verdict: {} answered by the caller's sidecar itself (a direct response{from_vs}); nothing is sent on.",
                d.status
            );
            return Ok(out);
        }
        if let Some(rd) = &r.redirect {
            let _ = writeln!(
                out,
                "Verdict: {} redirect from the caller's sidecar{from_vs} (to {}{}).",
                if rd.code == 0 { 301 } else { rd.code },
                rd.authority,
                rd.uri
            );
            return Ok(out);
        }
        if let Some(f) = &r.fault {
            if f.delay_ms > 0 {
                let _ = writeln!(
                    out,
                    "   fault: {}% of requests delayed {} ms{from_vs}",
                    f.delay_percent, f.delay_ms
                );
            }
            if f.abort_http_status > 0 || f.has_abort_grpc {
                let _ = writeln!(
                    out,
                    "   fault: {}% of requests aborted with {}{from_vs} (flag FI)",
                    f.abort_percent,
                    if f.has_abort_grpc {
                        format!("gRPC status {}", f.abort_grpc_status)
                    } else {
                        f.abort_http_status.to_string()
                    }
                );
                if f.abort_percent >= 100.0 {
                    let _ = writeln!(
                        out,
                        "Verdict: {} from the caller's sidecar: the route injects it into every request (fault injection{from_vs}).",
                        f.abort_http_status
                    );
                    return Ok(out);
                }
            }
        }
        for m in &r.mirrors {
            let _ = writeln!(
                out,
                "   mirrored to {}{} ({}%), its answer dropped",
                m.host,
                if m.subset.is_empty() {
                    String::new()
                } else {
                    format!("|{}", m.subset)
                },
                m.percent
            );
        }
    }

    // 3. Subsets and endpoints; 4. mTLS and authorization at each.
    let total: u32 = destinations
        .iter()
        .map(|d| d.weight.max(1))
        .sum::<u32>()
        .max(1);
    let mut outcomes: Vec<String> = Vec::new();
    let mut step = 3;
    for d in &destinations {
        let share = f64::from(d.weight.max(1)) * 100.0 / f64::from(total);
        let Some(dest) = from.state.services.get(&d.host) else {
            let _ = writeln!(
                out,
                "{step}. Destination {} ({share:.0}%): not a service the caller knows: 503 (flag NC)",
                d.host
            );
            outcomes.push(format!("{share:.0}%: 503, no such service"));
            step += 1;
            continue;
        };
        let subset = (!d.subset.is_empty())
            .then(|| dest.spec.subsets.iter().find(|s| s.name == d.subset))
            .flatten();
        if !d.subset.is_empty() && subset.is_none() {
            let _ = writeln!(
                out,
                "{step}. Destination {}|{} ({share:.0}%): no DestinationRule defines subset {:?}: 503 (flag NR)",
                d.host, d.subset, d.subset
            );
            outcomes.push(format!("{share:.0}%: 503, unknown subset {}", d.subset));
            step += 1;
            continue;
        }
        let dest_port = if d.port == 0 { u32::from(port) } else { d.port };
        let target = dest
            .spec
            .ports
            .iter()
            .find(|p| p.port == dest_port)
            .map_or(dest_port, |p| {
                if p.target_port == 0 {
                    p.port
                } else {
                    p.target_port
                }
            });
        let endpoints: Vec<&proto::Endpoint> = dest
            .spec
            .endpoints
            .iter()
            .filter(|e| {
                subset.is_none_or(|s| s.labels.iter().all(|(k, v)| e.labels.get(k) == Some(v)))
            })
            .collect();
        let label = if d.subset.is_empty() {
            d.host.clone()
        } else {
            format!("{}|{}", d.host, d.subset)
        };
        let dr = snapshot
            .of_kind("DestinationRule")
            .find(|dr| {
                dr.spec()["host"]
                    .as_str()
                    .is_some_and(|h| fqdn(h, dr.ns()) == d.host)
            })
            .map(|dr| format!(" (DestinationRule {}/{})", dr.ns(), dr.name))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "{step}. Destination {label} ({share:.0}%){}: {} endpoint(s)",
            if d.subset.is_empty() { "" } else { &dr },
            endpoints.len()
        );
        step += 1;
        let policy = subset
            .and_then(|s| s.traffic_policy.as_ref())
            .or(dest.spec.traffic_policy.as_ref());
        if let Some(cp) = policy.and_then(|p| p.connection_pool.as_ref()) {
            let limits: Vec<String> = [
                (cp.max_connections, "connection(s)"),
                (cp.http1_max_pending_requests, "pending request(s)"),
                (cp.http2_max_requests, "active request(s)"),
            ]
            .into_iter()
            .filter(|(n, _)| *n > 0)
            .map(|(n, what)| format!("{n} {what}"))
            .collect();
            if !limits.is_empty() {
                let _ = writeln!(
                    out,
                    "   circuit breaker{dr}: at most {}; beyond them {} answers 503 (flag UO){}",
                    limits.join(", "),
                    client.name,
                    if l4.is_some() {
                        " or closes the connection"
                    } else {
                        ""
                    }
                );
            }
        }
        if let Some(od) = policy.and_then(|p| p.outlier_detection.as_ref()) {
            let after = match (od.consecutive_5xx_errors, od.consecutive_gateway_errors) {
                (0, 0) => None,
                (n, 0) => Some(format!("{n} consecutive 5xx")),
                (0, g) => Some(format!("{g} consecutive gateway errors")),
                (n, g) => Some(format!("{n} consecutive 5xx or {g} gateway errors")),
            };
            if let Some(after) = after {
                let _ = writeln!(
                    out,
                    "   outlier detection{dr}: an endpoint is ejected after {after}, for {} s at first",
                    od.base_ejection_time_ms / 1000
                );
            }
        }
        if endpoints.is_empty() {
            let _ = writeln!(out, "   no endpoint: {} answers 503 (flag UH)", client.name);
            outcomes.push(format!("{share:.0}%: 503, no endpoint of {label}"));
            continue;
        }
        let mut answers = Vec::new();
        for e in endpoints {
            let at = format!(
                "{}:{}",
                e.address,
                e.ports
                    .get(&dest_port.to_string())
                    .copied()
                    .unwrap_or(target)
            );
            let pod = st.pods.values().find(|p| p.address == e.address);
            let who = pod.map_or_else(|| at.clone(), |p| format!("{} ({at})", p.name));
            if from.ejected.contains(&at) {
                let _ = writeln!(
                    out,
                    "   {who}: ejected by outlier detection: not chosen until it returns"
                );
                continue;
            }
            let mtls = e.mesh || !e.identity.is_empty();
            let Some(pod) = pod.filter(|p| p.sidecar) else {
                let _ = writeln!(
                    out,
                    "   {who}: HEALTHY, no sidecar: plaintext; no policy of the mesh applies there"
                );
                answers.push(format!("{who} answers"));
                continue;
            };
            let server = match sidecar(pod) {
                Ok(s) => s,
                Err(e) => {
                    let _ = writeln!(out, "   {who}: its sidecar cannot be asked: {e}");
                    continue;
                }
            };
            let mode = server
                .state
                .peer_port_modes
                .get(&(target as u16))
                .copied()
                .unwrap_or(server.state.peer_mode);
            let tls = if mtls {
                format!("mutual TLS ({} proves {})", client.name, client_id)
            } else {
                "plaintext".to_string()
            };
            if mode == PeerMode::Strict && !mtls {
                let _ = writeln!(
                    out,
                    "   {who}: STRICT mTLS and the caller sends plaintext: the connection is refused"
                );
                outcomes.push(format!(
                    "{share:.0}%: refused by STRICT mTLS at {}",
                    pod.name
                ));
                continue;
            }
            let jwt = if l4.is_some() || server.state.source.request_authentications.is_empty() {
                Jwt::NotChecked
            } else {
                match jwt_at(pod, &headers, &query) {
                    Ok(j) => j,
                    Err(e) => {
                        let _ = writeln!(out, "   {who}: its sidecar cannot check the JWT: {e}");
                        continue;
                    }
                }
            };
            let auth = match &jwt {
                Jwt::NotChecked => None,
                Jwt::Absent(policies) => {
                    let _ = writeln!(
                        out,
                        "   {who}: no JWT where {policies} looks: unauthenticated"
                    );
                    None
                }
                Jwt::Verified(policies, v) => {
                    let _ = writeln!(
                        out,
                        "   {who}: JWT verified by its sidecar ({policies}): principal {}",
                        v.principal
                    );
                    Some(v)
                }
                Jwt::Refused(policies, reason) => {
                    let _ = writeln!(
                        out,
                        "   {who}: JWT refused by its sidecar ({policies}): {reason}"
                    );
                    outcomes.push(format!(
                        "{share:.0}%: 401 from {}'s sidecar: {reason} ({policies})",
                        pod.name
                    ));
                    continue;
                }
            };
            let principal = mtls.then_some(client_id.as_str());
            let source = SocketAddr::new(client.address.parse().unwrap_or([0, 0, 0, 0].into()), 0);
            let destination = SocketAddr::new(
                pod.address.parse().unwrap_or([0, 0, 0, 0].into()),
                target as u16,
            );
            let attributes = mesh_proxy::authz::Attributes {
                source,
                remote_ip: source.ip(),
                principal,
                destination,
                sni: (l4 == Some("tls")).then_some(host.as_str()),
                http: l4.is_none().then_some(mesh_proxy::authz::HttpAttributes {
                    host: &authority,
                    method: &method,
                    path: &path,
                    headers: &headers,
                    auth,
                }),
            };
            let decision = server.state.authz.evaluate(&attributes);
            // "No ALLOW policy matched" names the policies that did not.
            let allows: Vec<String> = server
                .state
                .source
                .authorization_policies
                .iter()
                .filter(|p| {
                    serde_json::from_str::<Value>(&p.spec_json)
                        .is_ok_and(|v| v["action"].as_str().is_none_or(|a| a == "ALLOW"))
                })
                .map(|p| format!("{}/{}", p.namespace, p.name))
                .collect();
            let reason = match decision.reason() {
                r if decision.denied && !r.contains('/') && !allows.is_empty() => {
                    format!("{r} (ALLOW policies there: {})", allows.join(", "))
                }
                r => r,
            };
            let authz = if server.state.authz.is_empty() {
                "no AuthorizationPolicy: allowed".to_string()
            } else {
                reason.clone()
            };
            let mode_name = match mode {
                PeerMode::Strict => "STRICT",
                PeerMode::Permissive => "PERMISSIVE",
                _ => "DISABLE",
            };
            let _ = writeln!(out, "   {who}: HEALTHY; {tls}, {mode_name} there; {authz}");
            if decision.denied {
                let jwt = if matches!(jwt, Jwt::Absent(_)) {
                    " (the request carries no JWT)"
                } else {
                    ""
                };
                let refusal = if l4.is_some() {
                    "the connection closed by"
                } else {
                    "403 from"
                };
                outcomes.push(format!(
                    "{share:.0}%: {refusal} {}'s sidecar: {}{jwt}",
                    pod.name, reason
                ));
            } else {
                answers.push(format!("{} answers", pod.name));
            }
        }
        if !answers.is_empty() {
            outcomes.push(format!("{share:.0}%: {}", answers.join(" or ")));
        } else if outcomes.is_empty() {
            outcomes.push(format!(
                "{share:.0}%: 503, every endpoint of {label} ejected"
            ));
        }
    }
    let _ = writeln!(out, "Verdict: {}.", outcomes.join("; "));
    Ok(out)
}
