//! HTTPRoute and GRPCRoute rules → VirtualService HTTP routes. Each match of a rule becomes its
//! own route, so that routes of every HTTPRoute attached to one listener and host can be put in
//! the Gateway API's precedence order: exact paths, then longer prefixes, then method, header
//! and query matches, then the oldest route.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use mesh_api::common::{Percent, PortSelector, StringMatch};
use mesh_api::gateway_api::{self as gw, HTTPBackendRef, HTTPHeaderMatch, HTTPRouteFilter};
use mesh_api::networking::{
    Destination, HeaderOperations, Headers, HttpDirectResponse, HttpMatchRequest, HttpMirrorPolicy,
    HttpRedirect, HttpRetry, HttpRewrite, HttpRoute, HttpRouteDestination, RedirectPortSelection,
    RegexRewrite, VirtualService,
};

use super::{Grants, generated_meta, vs_spec};
use crate::model::namespace_of;
use crate::model::registry::Registry;

/// A route being converted: what its rules and status need of it.
pub(crate) struct RouteRef {
    /// `HTTPRoute` or `GRPCRoute`.
    pub kind: &'static str,
    pub namespace: String,
    pub name: String,
    pub hostnames: Vec<String>,
    pub meta: ObjectMeta,
}

impl RouteRef {
    pub fn http(r: &gw::HTTPRoute) -> Self {
        Self::new("HTTPRoute", &r.metadata, &r.spec.hostnames)
    }

    pub fn grpc(r: &gw::GRPCRoute) -> Self {
        Self::new("GRPCRoute", &r.metadata, &r.spec.hostnames)
    }

    fn new(kind: &'static str, meta: &ObjectMeta, hostnames: &[String]) -> Self {
        RouteRef {
            kind,
            namespace: namespace_of(meta).to_string(),
            name: meta.name.clone().unwrap_or_default(),
            hostnames: hostnames.to_vec(),
            meta: meta.clone(),
        }
    }

    fn order(&self) -> (Option<Time>, String) {
        (
            self.meta.creation_timestamp.clone(),
            format!("{}/{}", self.namespace, self.name),
        )
    }
}

/// How specific a match is, most specific greatest.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Specificity {
    /// 2 exact, 1 prefix, 0 regular expression.
    path_kind: u8,
    path_len: usize,
    method: bool,
    headers: usize,
    query: usize,
}

/// One converted match of a rule.
#[derive(Clone, Debug)]
pub(crate) struct Rule {
    specificity: Specificity,
    /// Rule and match index within the route.
    position: (usize, usize),
    route: HttpRoute,
}

/// A route's rules, and whether all their references resolved.
pub(crate) struct Converted {
    pub rules: Vec<Rule>,
    pub resolved: Result<(), (&'static str, String)>,
}

/// Where converted rules go: one VirtualService per key.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum BucketKey {
    /// A listener's Istio Gateway (`namespace/name`) and a host.
    Gateway { istio: String, host: String },
    /// A Service of the mesh, the namespaces the routes apply to, and a port.
    Mesh {
        host: String,
        namespace: String,
        export: String,
        port: Option<u16>,
    },
}

impl BucketKey {
    pub fn gateway(istio: &str, host: &str) -> Self {
        BucketKey::Gateway {
            istio: istio.to_string(),
            host: host.to_string(),
        }
    }

    /// The key without its port: one VirtualService holds a Service's routes for all ports.
    pub fn without_port(&self) -> Self {
        match self {
            BucketKey::Mesh {
                host,
                namespace,
                export,
                ..
            } => BucketKey::mesh(host, namespace, export, None),
            other => other.clone(),
        }
    }

    pub fn mesh(host: &str, namespace: &str, export: &str, port: Option<u16>) -> Self {
        BucketKey::Mesh {
            host: host.to_string(),
            namespace: namespace.to_string(),
            export: export.to_string(),
            port,
        }
    }
}

type Order = (Option<Time>, String);

/// The rules for one VirtualService.
#[derive(Default)]
pub(crate) struct Bucket {
    entries: Vec<(Specificity, Order, (usize, usize), HttpRoute)>,
    parents: BTreeSet<String>,
    /// The Service ports some routes apply to alone.
    ports: BTreeSet<u16>,
}

impl Bucket {
    pub fn add(&mut self, route: &RouteRef, rules: &[Rule], key: &BucketKey) {
        self.parents
            .insert(format!("{}/{}/{}", route.kind, route.namespace, route.name));
        for r in rules {
            let mut http = r.route.clone();
            if let BucketKey::Mesh {
                port: Some(port), ..
            } = key
            {
                self.ports.insert(*port);
                if http.matches.is_empty() {
                    http.matches.push(HttpMatchRequest::default());
                }
                for m in &mut http.matches {
                    m.port = Some(u32::from(*port));
                }
            }
            self.entries
                .push((r.specificity.clone(), route.order(), r.position, http));
        }
    }

    pub fn into_virtual_service(mut self, key: BucketKey) -> VirtualService {
        self.entries
            .sort_by(|a, b| (Reverse(&a.0), &a.1, a.2).cmp(&(Reverse(&b.0), &b.1, b.2)));
        let parents = self.parents.into_iter().collect::<Vec<_>>().join(",");
        let mut http: Vec<HttpRoute> = self.entries.into_iter().map(|e| e.3).collect();
        // Routes for one port leave the Service's other ports as they were: to the Service.
        // On the routes' own ports, a request no rule matches is answered 404, as without.
        if let (false, BucketKey::Mesh { host, .. }) = (self.ports.is_empty(), &key) {
            for port in &self.ports {
                http.push(HttpRoute {
                    name: format!("unmatched-{port}"),
                    matches: vec![HttpMatchRequest {
                        port: Some(u32::from(*port)),
                        ..HttpMatchRequest::default()
                    }],
                    direct_response: Some(HttpDirectResponse {
                        status: 404,
                        body: None,
                    }),
                    ..HttpRoute::default()
                });
            }
            http.push(HttpRoute {
                name: "default".into(),
                route: vec![HttpRouteDestination {
                    destination: Destination {
                        host: host.clone(),
                        ..Destination::default()
                    },
                    ..HttpRouteDestination::default()
                }],
                ..HttpRoute::default()
            });
        }
        let (meta, mut spec) = match key {
            BucketKey::Gateway { istio, host } => {
                let (ns, name) = istio.split_once('/').unwrap_or(("default", &istio));
                (
                    generated_meta(format!("{name}~{host}"), ns, parents),
                    vs_spec(vec![host], vec![istio.clone()]),
                )
            }
            BucketKey::Mesh {
                host,
                namespace,
                export,
                ..
            } => {
                let ns = if export == "*" { &namespace } else { &export };
                let mut spec = vs_spec(vec![host.clone()], Vec::new());
                spec.export_to = vec![if export == "*" {
                    "*".into()
                } else {
                    ".".into()
                }];
                (generated_meta(format!("{host}~mesh"), ns, parents), spec)
            }
        };
        spec.http = http;
        VirtualService {
            metadata: meta,
            spec,
        }
    }
}

/// What resolving a route's references reads: the route, the grants, the registry and the
/// cluster domain.
struct Refs<'a> {
    route: &'a RouteRef,
    grants: &'a Grants<'a>,
    registry: &'a Registry,
    domain: &'a str,
}

/// Converts an HTTPRoute's rules.
pub(crate) fn http_rules(
    route: &RouteRef,
    rules: &[gw::HTTPRouteRule],
    grants: &Grants,
    registry: &Registry,
    domain: &str,
) -> Converted {
    let refs = &Refs {
        route,
        grants,
        registry,
        domain,
    };
    let mut out = Converted {
        rules: Vec::new(),
        resolved: Ok(()),
    };
    let default_match = [gw::HTTPRouteMatch::default()];
    for (i, rule) in rules.iter().enumerate() {
        let matches: &[gw::HTTPRouteMatch] = if rule.matches.is_empty() {
            &default_match
        } else {
            &rule.matches
        };
        for (j, m) in matches.iter().enumerate() {
            let (kind, value) = path_of(m.path.as_ref());
            let specificity = Specificity {
                path_kind: match kind {
                    "Exact" => 2,
                    "PathPrefix" => 1,
                    _ => 0,
                },
                path_len: value.len(),
                method: m.method.is_some(),
                headers: m.headers.len(),
                query: m.query_params.len(),
            };
            let mut base = HttpMatchRequest {
                headers: header_matches(&m.headers, true),
                query_params: header_matches(&m.query_params, false),
                method: m.method.clone().map(exact),
                ..HttpMatchRequest::default()
            };
            let mut matches = Vec::new();
            let prefix = value.trim_end_matches('/');
            match kind {
                "Exact" => {
                    base.uri = Some(exact(value.to_string()));
                    matches.push(base);
                }
                "RegularExpression" => {
                    base.uri = Some(StringMatch {
                        regex: Some(value.to_string()),
                        ..StringMatch::default()
                    });
                    matches.push(base);
                }
                _ if prefix.is_empty() => {
                    base.uri = Some(prefix_match("/"));
                    matches.push(base);
                }
                _ => {
                    // Gateway API prefixes match whole path segments: `/foo` matches `/foo`
                    // and `/foo/bar`, never `/foobar`.
                    let mut whole = base.clone();
                    whole.uri = Some(exact(prefix.to_string()));
                    base.uri = Some(prefix_match(&format!("{prefix}/")));
                    matches.push(whole);
                    matches.push(base);
                }
            }
            let mut http = HttpRoute {
                name: rule_name(route, rule.name.as_deref(), i, j),
                matches,
                ..HttpRoute::default()
            };
            let prefix = (kind == "PathPrefix").then_some(prefix);
            apply_filters(&mut http, &rule.filters, prefix, refs, &mut out.resolved);
            // A rule's only backend may carry its own redirect, rewrite or mirror: those
            // apply to every request the rule takes.
            if let [only] = rule.backend_refs.as_slice() {
                let own: Vec<HTTPRouteFilter> = only
                    .filters
                    .iter()
                    .filter(|f| !f.type_.ends_with("HeaderModifier"))
                    .cloned()
                    .collect();
                apply_filters(&mut http, &own, prefix, refs, &mut out.resolved);
            }
            backends(&mut http, &rule.backend_refs, refs, &mut out.resolved);
            if let Some(t) = &rule.timeouts {
                timeouts(&mut http, t, rule.retry.as_ref());
            } else if let Some(r) = &rule.retry {
                http.retries = Some(retry(r, None));
            }
            out.rules.push(Rule {
                specificity,
                position: (i, j),
                route: http,
            });
        }
    }
    out
}

/// Converts a GRPCRoute's rules: a method match is a match on the request path
/// (`/package.Service/Method`).
pub(crate) fn grpc_rules(
    route: &RouteRef,
    rules: &[gw::GRPCRouteRule],
    grants: &Grants,
    registry: &Registry,
    domain: &str,
) -> Converted {
    let refs = &Refs {
        route,
        grants,
        registry,
        domain,
    };
    let mut out = Converted {
        rules: Vec::new(),
        resolved: Ok(()),
    };
    let default_match = [gw::GRPCRouteMatch::default()];
    for (i, rule) in rules.iter().enumerate() {
        let matches: &[gw::GRPCRouteMatch] = if rule.matches.is_empty() {
            &default_match
        } else {
            &rule.matches
        };
        for (j, m) in matches.iter().enumerate() {
            let (uri, kind, len) = match &m.method {
                None => (prefix_match("/"), 0, 0),
                Some(method) if method.type_.as_deref() == Some("RegularExpression") => {
                    let s = method.service.as_deref().unwrap_or("[^/]+");
                    let me = method.method.as_deref().unwrap_or("[^/]+");
                    (
                        StringMatch {
                            regex: Some(format!("/{s}/{me}")),
                            ..StringMatch::default()
                        },
                        0,
                        0,
                    )
                }
                Some(method) => match (&method.service, &method.method) {
                    (Some(s), Some(me)) => (exact(format!("/{s}/{me}")), 3, s.len() + me.len()),
                    (Some(s), None) => (prefix_match(&format!("/{s}/")), 2, s.len()),
                    (None, Some(me)) => (
                        StringMatch {
                            regex: Some(format!("/[^/]+/{}", regex_escape(me))),
                            ..StringMatch::default()
                        },
                        1,
                        me.len(),
                    ),
                    (None, None) => (prefix_match("/"), 0, 0),
                },
            };
            let mut http = HttpRoute {
                name: rule_name(route, rule.name.as_deref(), i, j),
                matches: vec![HttpMatchRequest {
                    uri: Some(uri),
                    headers: header_matches(&m.headers, true),
                    ..HttpMatchRequest::default()
                }],
                ..HttpRoute::default()
            };
            apply_filters(&mut http, &rule.filters, None, refs, &mut out.resolved);
            backends(&mut http, &rule.backend_refs, refs, &mut out.resolved);
            out.rules.push(Rule {
                specificity: Specificity {
                    path_kind: kind,
                    path_len: len,
                    method: false,
                    headers: m.headers.len(),
                    query: 0,
                },
                position: (i, j),
                route: http,
            });
        }
    }
    out
}

fn rule_name(route: &RouteRef, name: Option<&str>, i: usize, j: usize) -> String {
    match name {
        Some(n) => format!("{}.{}.{n}.{j}", route.namespace, route.name),
        None => format!("{}.{}.{i}.{j}", route.namespace, route.name),
    }
}

fn path_of(p: Option<&gw::HTTPPathMatch>) -> (&str, &str) {
    match p {
        None => ("PathPrefix", "/"),
        Some(p) => (
            p.type_.as_deref().unwrap_or("PathPrefix"),
            p.value.as_deref().unwrap_or("/"),
        ),
    }
}

fn exact(v: String) -> StringMatch {
    StringMatch {
        exact: Some(v),
        ..StringMatch::default()
    }
}

fn prefix_match(v: &str) -> StringMatch {
    StringMatch {
        prefix: Some(v.to_string()),
        ..StringMatch::default()
    }
}

fn header_matches(list: &[HTTPHeaderMatch], lower: bool) -> BTreeMap<String, StringMatch> {
    list.iter()
        .map(|h| {
            let name = if lower {
                h.name.to_ascii_lowercase()
            } else {
                h.name.clone()
            };
            let m = if h.type_.as_deref() == Some("RegularExpression") {
                StringMatch {
                    regex: Some(h.value.clone()),
                    ..StringMatch::default()
                }
            } else {
                exact(h.value.clone())
            };
            (name, m)
        })
        .collect()
}

/// Escapes RE2 metacharacters.
fn regex_escape(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        if "\\.+*?()|[]{}^$".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn header_ops(f: &gw::HTTPHeaderFilter) -> HeaderOperations {
    HeaderOperations {
        set: f
            .set
            .iter()
            .map(|h| (h.name.clone(), h.value.clone()))
            .collect(),
        add: f
            .add
            .iter()
            .map(|h| (h.name.clone(), h.value.clone()))
            .collect(),
        remove: f.remove.clone(),
    }
}

fn merge_ops(into: &mut Option<HeaderOperations>, ops: HeaderOperations) {
    let target = into.get_or_insert_with(HeaderOperations::default);
    target.set.extend(ops.set);
    target.add.extend(ops.add);
    target.remove.extend(ops.remove);
}

fn apply_filters(
    http: &mut HttpRoute,
    filters: &[HTTPRouteFilter],
    prefix: Option<&str>,
    refs: &Refs,
    resolved: &mut Result<(), (&'static str, String)>,
) {
    for f in filters {
        match f.type_.as_str() {
            "RequestHeaderModifier" => {
                if let Some(m) = &f.request_header_modifier {
                    let headers = http.headers.get_or_insert_with(Headers::default);
                    merge_ops(&mut headers.request, header_ops(m));
                }
            }
            "ResponseHeaderModifier" => {
                if let Some(m) = &f.response_header_modifier {
                    let headers = http.headers.get_or_insert_with(Headers::default);
                    merge_ops(&mut headers.response, header_ops(m));
                }
            }
            "RequestRedirect" => {
                if let Some(r) = &f.request_redirect {
                    let uri = match &r.path {
                        Some(p) if p.type_ == "ReplaceFullPath" => {
                            p.replace_full_path.clone().unwrap_or_default()
                        }
                        Some(p) => format!(
                            "{}{}",
                            super::PREFIX_MARKER,
                            p.replace_prefix_match.clone().unwrap_or_default()
                        ),
                        None => String::new(),
                    };
                    http.redirect = Some(HttpRedirect {
                        uri,
                        authority: r.hostname.clone().unwrap_or_default(),
                        port: r.port.map(u32::from),
                        derive_port: (r.port.is_none() && r.scheme.is_some())
                            .then_some(RedirectPortSelection::FromProtocolDefault),
                        scheme: r.scheme.clone().unwrap_or_default(),
                        redirect_code: Some(u32::from(r.status_code.unwrap_or(302))),
                    });
                }
            }
            "URLRewrite" => {
                if let Some(r) = &f.url_rewrite {
                    let mut rw = HttpRewrite {
                        authority: r.hostname.clone().unwrap_or_default(),
                        ..HttpRewrite::default()
                    };
                    match &r.path {
                        Some(p) if p.type_ == "ReplaceFullPath" => {
                            rw.uri_regex_rewrite = Some(RegexRewrite {
                                pattern: "^/.*$".into(),
                                rewrite: p.replace_full_path.clone().unwrap_or_default(),
                            });
                        }
                        Some(p) => {
                            let with = p.replace_prefix_match.as_deref().unwrap_or("/");
                            rw.uri_regex_rewrite = Some(prefix_rewrite(prefix.unwrap_or(""), with));
                        }
                        None => {}
                    }
                    http.rewrite = Some(rw);
                }
            }
            "RequestMirror" => {
                if let Some(m) = &f.request_mirror {
                    let b = HTTPBackendRef {
                        group: m.backend_ref.group.clone(),
                        kind: m.backend_ref.kind.clone(),
                        name: m.backend_ref.name.clone(),
                        namespace: m.backend_ref.namespace.clone(),
                        port: m.backend_ref.port,
                        ..HTTPBackendRef::default()
                    };
                    match destination(&b, refs) {
                        Ok(d) => {
                            let percent = match (&m.percent, &m.fraction) {
                                (Some(p), _) => Some(f64::from(*p)),
                                (None, Some(fr)) => Some(
                                    f64::from(fr.numerator) * 100.0
                                        / f64::from(fr.denominator.unwrap_or(100).max(1)),
                                ),
                                _ => None,
                            };
                            http.mirrors.push(HttpMirrorPolicy {
                                destination: d,
                                percentage: percent.map(|value| Percent { value }),
                            });
                        }
                        Err(e) => {
                            if resolved.is_ok() {
                                *resolved = Err(e);
                            }
                        }
                    }
                }
            }
            "ExtensionRef" => {
                // The Gateway API asks that a filter that cannot be applied fail the request
                // rather than be skipped.
                http.direct_response = Some(HttpDirectResponse {
                    status: 500,
                    body: None,
                });
            }
            _ => {}
        }
    }
}

/// The regex rewrite that replaces a matched path prefix (whole segments) with `with`.
pub fn prefix_rewrite(prefix: &str, with: &str) -> RegexRewrite {
    let with = with.trim_end_matches('/');
    if with.is_empty() {
        RegexRewrite {
            pattern: format!("^{}/?(.*)$", regex_escape(prefix)),
            rewrite: "/\\1".into(),
        }
    } else {
        RegexRewrite {
            pattern: format!("^{}(/.*)?$", regex_escape(prefix)),
            rewrite: format!("{with}\\1"),
        }
    }
}

fn backends(
    http: &mut HttpRoute,
    backend_refs: &[HTTPBackendRef],
    refs: &Refs,
    resolved: &mut Result<(), (&'static str, String)>,
) {
    if http.redirect.is_some() || http.direct_response.is_some() {
        return;
    }
    for b in backend_refs {
        match destination(b, refs) {
            Ok(d) => {
                let weight = b.weight.unwrap_or(1);
                if weight == 0 {
                    continue;
                }
                let mut headers = None;
                for f in &b.filters {
                    let ops = |into: &mut Headers| {
                        if let Some(m) = &f.request_header_modifier {
                            merge_ops(&mut into.request, header_ops(m));
                        }
                        if let Some(m) = &f.response_header_modifier {
                            merge_ops(&mut into.response, header_ops(m));
                        }
                    };
                    ops(headers.get_or_insert_with(Headers::default));
                }
                http.route.push(HttpRouteDestination {
                    destination: d,
                    weight: Some(i32::try_from(weight).unwrap_or(i32::MAX)),
                    headers,
                });
            }
            Err(e) => {
                if resolved.is_ok() {
                    *resolved = Err(e);
                }
            }
        }
    }
    if http.route.is_empty() {
        // No backend to send to: the Gateway API answers 500.
        http.direct_response = Some(HttpDirectResponse {
            status: 500,
            body: None,
        });
    } else if http.route.len() == 1 {
        http.route[0].weight = None;
    }
}

/// The destination a backendRef names: a Service of the mesh (`name.namespace.svc.domain`),
/// or an Istio host name (`group: networking.istio.io, kind: Hostname`).
fn destination(b: &HTTPBackendRef, refs: &Refs) -> Result<Destination, (&'static str, String)> {
    let Refs {
        route,
        grants,
        registry,
        domain,
    } = refs;
    let group = b.group.as_deref().unwrap_or("");
    let kind = b.kind.as_deref().unwrap_or("Service");
    let ns = b.namespace.as_deref().unwrap_or(&route.namespace);
    let port = b.port.map(|p| PortSelector {
        number: Some(u32::from(p)),
    });
    match (group, kind) {
        ("", "Service") => {
            if !grants.allows(route.kind, &route.namespace, "", "Service", ns, &b.name) {
                return Err((
                    "RefNotPermitted",
                    format!(
                        "backendRef {ns}/{} is not reachable from a {} in namespace {}: add a ReferenceGrant in {ns}",
                        b.name, route.kind, route.namespace
                    ),
                ));
            }
            let host = format!("{}.{ns}.svc.{domain}", b.name);
            if !registry.services.contains_key(&host) {
                return Err((
                    "BackendNotFound",
                    format!("backendRef Service {ns}/{} does not exist", b.name),
                ));
            }
            Ok(Destination {
                host,
                port,
                ..Destination::default()
            })
        }
        ("networking.istio.io", "Hostname") => {
            if !registry.services.contains_key(&b.name) {
                return Err((
                    "BackendNotFound",
                    format!("backendRef host {} is not in the mesh's registry", b.name),
                ));
            }
            Ok(Destination {
                host: b.name.clone(),
                port,
                ..Destination::default()
            })
        }
        _ => Err((
            "InvalidKind",
            format!("backendRef of group {group:?} kind {kind:?} is not supported: use a Service"),
        )),
    }
}

fn timeouts(
    http: &mut HttpRoute,
    t: &gw::HTTPRouteTimeouts,
    retry_cfg: Option<&gw::HTTPRouteRetry>,
) {
    let zero = |d: &Option<String>| {
        d.as_deref()
            .and_then(mesh_api::validate::parse_gateway_duration)
            .is_some_and(|d| d.is_zero())
    };
    // `0s` means no timeout, as in Istio.
    let request = t.request.clone().filter(|_| !zero(&t.request));
    let backend = t
        .backend_request
        .clone()
        .filter(|_| !zero(&t.backend_request));
    match retry_cfg {
        Some(r) => {
            http.timeout = request.or(t.request.clone());
            http.retries = Some(retry(r, backend));
        }
        None => {
            // One try only: the backend's timeout is the request's when shorter.
            let shorter = match (&request, &backend) {
                (Some(r), Some(b)) => {
                    let (rd, bd) = (
                        mesh_api::validate::parse_gateway_duration(r),
                        mesh_api::validate::parse_gateway_duration(b),
                    );
                    if bd < rd {
                        Some(b.clone())
                    } else {
                        Some(r.clone())
                    }
                }
                (r, b) => r.clone().or(b.clone()),
            };
            http.timeout = shorter.or_else(|| t.request.clone());
        }
    }
}

fn retry(r: &gw::HTTPRouteRetry, per_try: Option<String>) -> HttpRetry {
    let codes: Vec<String> = r.codes.iter().map(u16::to_string).collect();
    HttpRetry {
        attempts: i32::try_from(r.attempts.unwrap_or(1)).unwrap_or(i32::MAX),
        per_try_timeout: per_try,
        retry_on: if codes.is_empty() {
            "connect-failure,refused-stream,503".into()
        } else {
            format!("connect-failure,{}", codes.join(","))
        },
        backoff: r.backoff.clone(),
        ..HttpRetry::default()
    }
}
