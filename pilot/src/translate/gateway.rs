//! Istio Gateways → the listeners of a gateway proxy: the servers of every Gateway whose
//! `selector` matches the gateway's labels (in any namespace, as Istio does by default), each
//! host of a server joined with the hosts of the VirtualServices bound to that Gateway
//! (`gateways: [name]` in the VirtualService's namespace, or `namespace/name`), and those
//! VirtualServices' HTTP routes for it. HTTP servers only so far; the others are reported as
//! not enforced (`mesh_api::validate::not_enforced_in`).

use std::collections::BTreeMap;

use mesh_api::networking::{Gateway, VirtualService};
use mesh_api::proto::state::v1 as state;

use super::ProxyNode;
use super::routes::http_routes;
use crate::model::{Model, Selector, namespace_of};

/// `gateway` as `namespace/name`, a short reference taken in `namespace` (the
/// VirtualService's).
pub fn qualified(gateway: &str, namespace: &str) -> String {
    if gateway.contains('/') {
        gateway.to_string()
    } else {
        format!("{namespace}/{gateway}")
    }
}

/// The host both patterns admit, the narrower of the two (`*` and `*.` suffixes allowed), or
/// `None` when they admit no host in common.
pub fn intersect(a: &str, b: &str) -> Option<String> {
    let covers = |wide: &str, narrow: &str| match wide.strip_prefix('*') {
        None => wide.eq_ignore_ascii_case(narrow),
        Some(suffix) => {
            suffix.is_empty()
                || narrow
                    .to_ascii_lowercase()
                    .ends_with(&suffix.to_ascii_lowercase())
                    && narrow.len() > suffix.len()
        }
    };
    if covers(a, b) {
        Some(b.to_ascii_lowercase())
    } else if covers(b, a) {
        Some(a.to_ascii_lowercase())
    } else {
        None
    }
}

/// A server host, `namespace/host` or `host`: whether a VirtualService of `vs_namespace` may
/// bind to it (`*/`, `./` for the Gateway's own namespace, or that namespace), and the host.
fn server_host<'a>(entry: &'a str, gateway_ns: &str, vs_namespace: &str) -> Option<&'a str> {
    match entry.split_once('/') {
        None => Some(entry),
        Some(("*", host)) => Some(host),
        Some((".", host)) => (vs_namespace == gateway_ns).then_some(host),
        Some((ns, host)) => (ns == vs_namespace).then_some(host),
    }
}

fn bound_to(vs: &VirtualService, gateway: &str) -> bool {
    let ns = namespace_of(&vs.metadata);
    vs.spec.gateways.iter().any(|g| qualified(g, ns) == gateway)
}

/// The Gateways that select `node`.
pub fn selecting<'m>(model: &'m Model, node: &ProxyNode) -> impl Iterator<Item = &'m Gateway> {
    model.gateways.iter().filter(|g| {
        let own_namespace_only =
            g.metadata.annotations.as_ref().is_some_and(|a| {
                a.contains_key(crate::model::gateway_api::SAME_NAMESPACE_ANNOTATION)
            });
        Selector::new(&g.spec.selector).matches(&node.labels)
            && (!own_namespace_only || namespace_of(&g.metadata) == node.namespace)
    })
}

/// The listeners of gateway `node`: one per port, its virtual hosts in the order of the
/// Gateways (oldest first), their servers and hosts.
pub fn listeners(model: &Model, node: &ProxyNode) -> Vec<state::GatewayListener> {
    let mut by_port: BTreeMap<u32, state::GatewayListener> = BTreeMap::new();
    for gw in selecting(model, node) {
        let gw_ns = namespace_of(&gw.metadata);
        let name = format!("{gw_ns}/{}", gw.metadata.name.as_deref().unwrap_or(""));
        // The VirtualServices bound to it, with their match-level `gateways` qualified so the
        // route translation can hold them against this Gateway.
        let bound: Vec<VirtualService> = model
            .virtual_services
            .iter()
            .filter(|vs| bound_to(vs, &name))
            .map(|vs| {
                let mut vs = vs.clone();
                let ns = namespace_of(&vs.metadata).to_string();
                let qualify = |gateways: &mut Vec<String>| {
                    for g in gateways.iter_mut() {
                        if g != "mesh" {
                            *g = qualified(g, &ns);
                        }
                    }
                };
                for route in &mut vs.spec.http {
                    route
                        .matches
                        .iter_mut()
                        .for_each(|m| qualify(&mut m.gateways));
                }
                for route in &mut vs.spec.tls {
                    route
                        .matches
                        .iter_mut()
                        .for_each(|m| qualify(&mut m.gateways));
                }
                for route in &mut vs.spec.tcp {
                    route
                        .matches
                        .iter_mut()
                        .for_each(|m| qualify(&mut m.gateways));
                }
                vs
            })
            .collect();
        let mut for_gw = node.clone();
        for_gw.bound_gateway = name.clone();
        for server in gw.spec.servers.iter().filter(|s| s.is_served()) {
            let Some(port) = server.port.as_ref() else {
                continue;
            };
            if server.is_passthrough() || server.is_tcp() {
                layer4(model, &for_gw, gw_ns, server, &bound, &mut by_port);
                continue;
            }
            let certificate = if server.is_https_terminated() {
                match certificate(model, node, server) {
                    Some(c) => Some(c),
                    // A file the source could not read is a rejection there already.
                    None => continue,
                }
            } else {
                None
            };
            let listener = by_port
                .entry(port.number)
                .or_insert_with(|| state::GatewayListener {
                    port: port.number,
                    protocol: state::Protocol::Http.into(),
                    hosts: Vec::new(),
                    certificates: Vec::new(),
                });
            if listener.protocol != state::Protocol::Http as i32 {
                // The port is a TLS passthrough or TCP one already.
                continue;
            }
            // One port is either plaintext or TLS: a server that disagrees with the first one
            // on its port is left out.
            let tls_port = !listener.certificates.is_empty();
            if !listener.hosts.is_empty() && tls_port != certificate.is_some() {
                continue;
            }
            listener.certificates.extend(certificate);
            let redirect = server
                .tls
                .as_ref()
                .filter(|_| !server.is_https_terminated())
                .and_then(|t| t.https_redirect)
                .unwrap_or(false);
            // host → (its routes in order, the namespace of the first VirtualService).
            let mut hosts: BTreeMap<String, (Vec<state::HttpRoute>, String)> = BTreeMap::new();
            let mut order = Vec::new();
            for vs in &bound {
                let vs_ns = namespace_of(&vs.metadata);
                for entry in &server.hosts {
                    let Some(allowed) = server_host(entry, gw_ns, vs_ns) else {
                        continue;
                    };
                    for h in &vs.spec.hosts {
                        let Some(host) = intersect(allowed, h) else {
                            continue;
                        };
                        let routes = http_routes(model, vs, &for_gw);
                        let slot = hosts.entry(host.clone()).or_insert_with(|| {
                            order.push(host.clone());
                            (Vec::new(), vs_ns.to_string())
                        });
                        slot.0.extend(routes);
                    }
                }
            }
            for host in order {
                if listener.hosts.iter().any(|h| h.domains.contains(&host)) {
                    // An earlier server (or Gateway) on this port has the host already.
                    continue;
                }
                let (routes, namespace) = hosts.remove(&host).unwrap_or_default();
                listener.hosts.push(state::GatewayHost {
                    domains: vec![host.clone()],
                    https_redirect: redirect,
                    routes: Some(state::Service {
                        hostname: host,
                        namespace,
                        http_routes: routes,
                        ..state::Service::default()
                    }),
                });
            }
            if redirect {
                // Istio redirects every host of the server, routes or not.
                for entry in &server.hosts {
                    let host = entry
                        .rsplit('/')
                        .next()
                        .unwrap_or(entry)
                        .to_ascii_lowercase();
                    if !listener.hosts.iter().any(|h| h.domains.contains(&host)) {
                        listener.hosts.push(state::GatewayHost {
                            domains: vec![host.clone()],
                            https_redirect: true,
                            routes: Some(state::Service {
                                hostname: host,
                                namespace: gw_ns.to_string(),
                                ..state::Service::default()
                            }),
                        });
                    }
                }
            }
        }
    }
    by_port.into_values().collect()
}

/// A TLS passthrough or TCP server: its port's one virtual host carries the TLS routes (by
/// server name) or TCP routes of the VirtualServices bound to the Gateway for its hosts.
fn layer4(
    model: &Model,
    node: &ProxyNode,
    gw_ns: &str,
    server: &mesh_api::networking::Server,
    bound: &[VirtualService],
    by_port: &mut BTreeMap<u32, state::GatewayListener>,
) {
    let Some(port) = server.port.as_ref() else {
        return;
    };
    let protocol = if server.is_passthrough() {
        state::Protocol::Tls
    } else {
        state::Protocol::Tcp
    };
    let listener = by_port
        .entry(port.number)
        .or_insert_with(|| state::GatewayListener {
            port: port.number,
            protocol: protocol.into(),
            hosts: Vec::new(),
            certificates: Vec::new(),
        });
    if listener.protocol != protocol as i32 {
        // The port serves another protocol already (its first server's).
        return;
    }
    if listener.hosts.is_empty() {
        listener.hosts.push(state::GatewayHost {
            domains: vec!["*".into()],
            https_redirect: false,
            routes: Some(state::Service {
                hostname: format!("{}:{}", node.bound_gateway, port.number),
                namespace: gw_ns.to_string(),
                ..state::Service::default()
            }),
        });
    }
    let Some(routes) = listener.hosts[0].routes.as_mut() else {
        return;
    };
    for vs in bound {
        let vs_ns = namespace_of(&vs.metadata);
        let admitted = server.hosts.iter().any(|entry| {
            server_host(entry, gw_ns, vs_ns).is_some_and(|allowed| {
                vs.spec
                    .hosts
                    .iter()
                    .any(|h| intersect(allowed, h).is_some())
            })
        });
        if !admitted {
            continue;
        }
        if protocol == state::Protocol::Tls {
            routes
                .tls_routes
                .extend(super::routes::tls_routes(model, vs, node));
        } else {
            routes
                .tcp_routes
                .extend(super::routes::tcp_routes(model, vs, node));
        }
    }
}

/// One key of a Secret, from `data` (or `stringData`, as a hand-written file may have it).
fn secret_key(secret: &k8s_openapi::api::core::v1::Secret, keys: &[&str]) -> Option<String> {
    keys.iter().find_map(|k| {
        secret
            .data
            .as_ref()
            .and_then(|d| d.get(*k))
            .map(|b| String::from_utf8_lossy(&b.0).into_owned())
            .or_else(|| secret.string_data.as_ref()?.get(*k).cloned())
    })
}

/// The certificate of an HTTPS server: from the Secret its `credentialName` names in the
/// gateway's namespace (`tls.crt`/`tls.key`, or `cert`/`key`; for MUTUAL the CA from `ca.crt`
/// there or from Secret `<name>-cacert`, as Istio reads them), else from its files as the
/// source read them. `None` when the material is missing (then the server is not served).
fn certificate(
    model: &Model,
    node: &ProxyNode,
    server: &mesh_api::networking::Server,
) -> Option<state::ServerCertificate> {
    let tls = server.tls.as_ref()?;
    let mutual = matches!(tls.mode, Some(mesh_api::networking::ServerTlsMode::Mutual));
    let hosts = server
        .hosts
        .iter()
        .map(|h| h.rsplit('/').next().unwrap_or(h).to_ascii_lowercase())
        .collect();
    let (chain, key, ca) = if tls.credential_name.is_empty() {
        let file = |path: &str| model.files.get(path).cloned();
        let ca = if mutual {
            file(&tls.ca_certificates)?
        } else {
            String::new()
        };
        (file(&tls.server_certificate)?, file(&tls.private_key)?, ca)
    } else {
        // A Gateway API listener's certificate is named `namespace/name` (it may live in
        // another namespace, under a ReferenceGrant); Istio's are in the gateway's namespace.
        let secret =
            |name: &str| match name.strip_prefix(crate::model::gateway_api::SECRET_REF_PREFIX) {
                Some(key) => model.secrets.get(key),
                None => model.secrets.get(&format!("{}/{name}", node.namespace)),
            };
        let s = secret(&tls.credential_name)?;
        let ca = if mutual {
            secret_key(s, &["ca.crt", "cacert"]).or_else(|| {
                secret_key(
                    secret(&format!("{}-cacert", tls.credential_name))?,
                    &["ca.crt", "cacert"],
                )
            })?
        } else {
            String::new()
        };
        (
            secret_key(s, &["tls.crt", "cert"])?,
            secret_key(s, &["tls.key", "key"])?,
            ca,
        )
    };
    Some(state::ServerCertificate {
        hosts,
        certificate_chain_pem: chain,
        private_key_pem: key,
        ca_certificates_pem: ca,
    })
}

/// The Secrets that Gateways among `resources` name in `credentialName` (and their
/// `-cacert` companions) or, for Gateway API Gateways, in `certificateRefs`: the only ones a
/// source passes on.
pub fn credential_names(
    resources: &[std::sync::Arc<mesh_api::Resource>],
) -> std::collections::BTreeSet<String> {
    let mut out = std::collections::BTreeSet::new();
    for r in resources {
        match &**r {
            mesh_api::Resource::Gateway(g) => {
                for t in g.spec.servers.iter().filter_map(|s| s.tls.as_ref()) {
                    if !t.credential_name.is_empty() {
                        out.insert(t.credential_name.clone());
                        out.insert(format!("{}-cacert", t.credential_name));
                    }
                }
            }
            mesh_api::Resource::KubeGateway(g) => {
                for t in g.spec.listeners.iter().filter_map(|l| l.tls.as_ref()) {
                    out.extend(t.certificate_refs.iter().map(|c| c.name.clone()));
                }
            }
            _ => {}
        }
    }
    out
}

/// The services the routes of gateway `node` name (the rest of its view follows from them).
pub fn destinations(model: &Model, node: &ProxyNode) -> Vec<String> {
    let mut out = Vec::new();
    for routes in listeners(model, node)
        .iter()
        .flat_map(|l| &l.hosts)
        .filter_map(|h| h.routes.as_ref())
    {
        for r in &routes.http_routes {
            out.extend(r.destinations.iter().map(|d| d.host.clone()));
            out.extend(r.mirrors.iter().map(|m| m.host.clone()));
        }
        for d in routes
            .tls_routes
            .iter()
            .flat_map(|r| &r.destinations)
            .chain(routes.tcp_routes.iter().flat_map(|r| &r.destinations))
        {
            out.push(d.host.clone());
        }
    }
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_intersect_to_the_narrower() {
        assert_eq!(
            intersect("*", "shop.example.com").as_deref(),
            Some("shop.example.com")
        );
        assert_eq!(
            intersect("*.example.com", "shop.example.com").as_deref(),
            Some("shop.example.com")
        );
        assert_eq!(
            intersect("shop.example.com", "*").as_deref(),
            Some("shop.example.com")
        );
        assert_eq!(
            intersect("*.example.com", "*.shop.example.com").as_deref(),
            Some("*.shop.example.com")
        );
        assert_eq!(intersect("*", "*").as_deref(), Some("*"));
        assert_eq!(intersect("a.example.com", "b.example.com"), None);
        assert_eq!(intersect("*.example.com", "example.com"), None);
        assert_eq!(qualified("gw", "shop"), "shop/gw");
        assert_eq!(qualified("edge/gw", "shop"), "edge/gw");
        assert_eq!(server_host("./x.com", "edge", "edge"), Some("x.com"));
        assert_eq!(server_host("./x.com", "edge", "shop"), None);
        assert_eq!(server_host("shop/x.com", "edge", "shop"), Some("x.com"));
        assert_eq!(server_host("*/x.com", "edge", "shop"), Some("x.com"));
    }
}
