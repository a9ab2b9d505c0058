//! The Kubernetes Gateway API, translated into the same model as Istio's own configuration (as
//! istiod does): every listener of a Gateway of one of our classes becomes an Istio Gateway
//! server, and the HTTPRoutes and GRPCRoutes attached to it become VirtualServices bound to that
//! Gateway, one per listener and host name, their rules in the Gateway API's precedence order.
//! Routes whose parent is a Service (the mesh, GAMMA) become VirtualServices for that Service.
//! Along the way every object gets the status conditions the specification describes
//! (Accepted, Programmed, ResolvedRefs, Conflicted, attachedRoutes), which pilot writes back.

mod routes;
pub mod status;

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use mesh_api::gateway_api::{self as gw, GROUP, Listener};
use mesh_api::networking::{
    Gateway, GatewaySpec, Port, Server, ServerTlsMode, ServerTlsSettings, VirtualService,
    VirtualServiceSpec,
};

pub use self::routes::prefix_rewrite;
use self::routes::{Bucket, BucketKey, RouteRef};
use self::status::{Condition, ObjectStatus};
use super::registry::Registry;
use super::{namespace_of, oldest_first};

/// The controller name Gateways and GatewayClasses are handled under (istiod's, so
/// GatewayClasses written for Istio work unchanged).
pub const CONTROLLER: &str = "istio.io/gateway-controller";
/// The GatewayClass that exists without being written down (as in Istio).
pub const DEFAULT_CLASS: &str = "istio";
/// The label the gateway deployed for a Gateway carries (Kubernetes' well-known label).
pub const GATEWAY_NAME_LABEL: &str = "gateway.networking.k8s.io/gateway-name";
/// Annotation on a generated Istio Gateway: the gateway workloads it selects are only those
/// deployed for it, in its own namespace.
pub const SAME_NAMESPACE_ANNOTATION: &str = "internal.mesh.dev/gateway-namespace-only";
/// Annotation on generated resources: the Gateway API objects they come from.
pub const PARENTS_ANNOTATION: &str = "internal.mesh.dev/parents";
/// Prefix of a generated server's `credentialName`: `namespace/name` of the Secret follows
/// (a Gateway API certificate may live in another namespace, under a ReferenceGrant).
pub const SECRET_REF_PREFIX: &str = "kubernetes-gateway://";

/// Start of a generated redirect's `uri` that replaces the matched path prefix with the rest
/// (Istio's own marker for Gateway API prefix redirects).
pub const PREFIX_MARKER: &str = "%PREFIX()%";

/// The Gateway API resources of the mesh, and what they are checked against.
#[derive(Default)]
pub struct Input<'a> {
    /// GatewayClasses.
    pub classes: Vec<&'a gw::GatewayClass>,
    /// Gateways.
    pub gateways: Vec<&'a gw::Gateway>,
    /// HTTPRoutes.
    pub http_routes: Vec<&'a gw::HTTPRoute>,
    /// GRPCRoutes.
    pub grpc_routes: Vec<&'a gw::GRPCRoute>,
    /// ReferenceGrants.
    pub grants: Vec<&'a gw::ReferenceGrant>,
    /// Labels of each namespace.
    pub namespaces: BTreeMap<String, BTreeMap<String, String>>,
}

/// What the Gateway API resources become.
#[derive(Clone, Debug, Default)]
pub struct Output {
    /// Istio Gateways, one per listener.
    pub gateways: Vec<Gateway>,
    /// VirtualServices.
    pub virtual_services: Vec<VirtualService>,
    /// The status of every Gateway API object of ours.
    pub statuses: Vec<ObjectStatus>,
    /// The gateways to deploy: one per Gateway of ours that names no deployment of its own.
    pub deployments: Vec<GatewayDeployment>,
}

/// A gateway deployment a Gateway asks for (as Istio deploys `NAME-istio`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GatewayDeployment {
    /// The Gateway's namespace.
    pub namespace: String,
    /// The Gateway's name.
    pub gateway: String,
    /// The Gateway's uid (the deployment's owner, so it goes with the Gateway).
    pub uid: String,
    /// Its listeners' ports.
    pub ports: Vec<u16>,
}

impl GatewayDeployment {
    /// `NAME-istio`, the Deployment's, Service's and service account's name.
    pub fn name(&self) -> String {
        format!("{}-istio", self.gateway)
    }
}

/// A listener as checked: whether routes may attach and how many did.
pub(crate) struct ListenerState<'a> {
    listener: &'a Listener,
    /// Accepted, with the reason when not.
    accepted: Result<(), (&'static str, String)>,
    /// References resolved, with the reason when not.
    resolved: Result<(), (&'static str, String)>,
    /// Conflicted, with the reason when so.
    conflict: Option<(&'static str, String)>,
    /// Route kinds that may attach.
    kinds: Vec<&'static str>,
    /// The generated Istio Gateway's `namespace/name`.
    istio_name: String,
    attached: u32,
}

impl ListenerState<'_> {
    fn usable(&self) -> bool {
        self.accepted.is_ok() && self.conflict.is_none()
    }
}

pub(crate) struct GatewayState<'a> {
    gateway: &'a gw::Gateway,
    listeners: Vec<ListenerState<'a>>,
}

/// The translation, as pilot runs it on every configuration change.
pub fn convert(input: &Input, registry: &Registry, domain: &str, secrets: &Secrets) -> Output {
    let mut out = Output::default();
    let classes = our_classes(input, &mut out);
    let grants = Grants::new(&input.grants);
    let mut gateways: Vec<&gw::Gateway> = input
        .gateways
        .iter()
        .copied()
        .filter(|g| classes.contains(g.spec.gateway_class_name.as_str()))
        .collect();
    gateways.sort_by(|a, b| oldest_first(&a.metadata, &b.metadata));
    let mut states: Vec<GatewayState> = gateways
        .iter()
        .map(|g| check_gateway(g, &grants, secrets))
        .collect();

    let mut buckets: BTreeMap<BucketKey, Bucket> = BTreeMap::new();
    let mut http: Vec<&gw::HTTPRoute> = input.http_routes.clone();
    http.sort_by(|a, b| oldest_first(&a.metadata, &b.metadata));
    for route in http {
        let r = RouteRef::http(route);
        let parents = attach(&r, &route.spec.parent_refs, &mut states, input, domain);
        let backends = routes::http_rules(&r, &route.spec.rules, &grants, registry, domain);
        finish_route(&r, parents, backends, &mut buckets, &mut out);
    }
    let mut grpc: Vec<&gw::GRPCRoute> = input.grpc_routes.clone();
    grpc.sort_by(|a, b| oldest_first(&a.metadata, &b.metadata));
    for route in grpc {
        let r = RouteRef::grpc(route);
        let parents = attach(&r, &route.spec.parent_refs, &mut states, input, domain);
        let backends = routes::grpc_rules(&r, &route.spec.rules, &grants, registry, domain);
        finish_route(&r, parents, backends, &mut buckets, &mut out);
    }
    for state in &states {
        gateway_outputs(state, registry, &mut out);
        let g = state.gateway;
        if g.spec.addresses.is_empty() {
            let mut ports: Vec<u16> = g.spec.listeners.iter().map(|l| l.port).collect();
            ports.sort_unstable();
            ports.dedup();
            out.deployments.push(GatewayDeployment {
                namespace: namespace_of(&g.metadata).to_string(),
                gateway: g.metadata.name.clone().unwrap_or_default(),
                uid: g.metadata.uid.clone().unwrap_or_default(),
                ports,
            });
        }
    }
    out.virtual_services
        .extend(buckets.into_iter().map(|(k, b)| b.into_virtual_service(k)));
    out
}

/// The certificate Secrets the mesh holds, by `namespace/name`.
pub type Secrets = BTreeMap<String, k8s_openapi::api::core::v1::Secret>;

/// Our GatewayClasses (the default one and those naming our controller), with their status.
fn our_classes<'a>(input: &'a Input, out: &mut Output) -> BTreeSet<&'a str> {
    let mut ours = BTreeSet::from([DEFAULT_CLASS]);
    for c in &input.classes {
        if c.spec.controller_name != CONTROLLER {
            if c.metadata.name.as_deref() == Some(DEFAULT_CLASS) {
                ours.remove(DEFAULT_CLASS);
            }
            continue;
        }
        let name = c.metadata.name.as_deref().unwrap_or("");
        ours.insert(name);
        out.statuses.push(ObjectStatus::class(
            &c.metadata,
            vec![Condition::ok("Accepted", "Accepted", "Handled by the mesh")],
        ));
    }
    ours
}

/// Which cross-namespace references ReferenceGrants allow.
struct Grants<'a>(Vec<&'a gw::ReferenceGrant>);

impl<'a> Grants<'a> {
    fn new(grants: &[&'a gw::ReferenceGrant]) -> Self {
        Grants(grants.to_vec())
    }

    /// Whether a `from_kind` in `from_ns` may refer to `to_kind` `to_name` in `to_ns`.
    fn allows(
        &self,
        from_kind: &str,
        from_ns: &str,
        to_group: &str,
        to_kind: &str,
        to_ns: &str,
        to_name: &str,
    ) -> bool {
        if from_ns == to_ns {
            return true;
        }
        self.0.iter().any(|g| {
            namespace_of(&g.metadata) == to_ns
                && g.spec
                    .from
                    .iter()
                    .any(|f| f.group == GROUP && f.kind == from_kind && f.namespace == from_ns)
                && g.spec.to.iter().any(|t| {
                    t.group == to_group
                        && t.kind == to_kind
                        && t.name.as_deref().is_none_or(|n| n == to_name)
                })
        })
    }
}

const ROUTE_KINDS: [&str; 2] = ["HTTPRoute", "GRPCRoute"];

fn check_gateway<'a>(g: &'a gw::Gateway, grants: &Grants, secrets: &Secrets) -> GatewayState<'a> {
    let ns = namespace_of(&g.metadata);
    let name = g.metadata.name.as_deref().unwrap_or("");
    let frontend_validation = g
        .spec
        .tls
        .as_ref()
        .is_some_and(|t| t.get("frontend").is_some());
    let mut listeners: Vec<ListenerState> = g
        .spec
        .listeners
        .iter()
        .map(|l| {
            let accepted = match l.protocol.as_str() {
                "HTTP" => Ok(()),
                "HTTPS" if l.tls.is_none() => Err((
                    "UnsupportedProtocol",
                    "protocol is HTTPS but no tls is set".to_string(),
                )),
                "HTTPS"
                    if frontend_validation
                        || l
                            .tls
                            .as_ref()
                            .is_some_and(|t| t.frontend_validation.is_some()) =>
                {
                    // Served without the client certificates it asks for would let anyone
                    // in: refused until the mesh verifies them.
                    Err((
                        "NoValidCACertificate",
                        "client certificate validation (tls.frontendValidation) is not served yet; the listener is refused rather than served without it".to_string(),
                    ))
                }
                "HTTPS" => Ok(()),
                other => Err((
                    "UnsupportedProtocol",
                    format!(
                        "protocol {other:?} is not served yet (HTTP and HTTPS are; TLSRoute and TCPRoute are not read)"
                    ),
                )),
            };
            let mut kinds = Vec::new();
            let mut resolved = Ok(());
            match l.allowed_routes.as_ref().map(|a| &a.kinds) {
                Some(list) if !list.is_empty() => {
                    for k in list {
                        let group = k.group.as_deref().unwrap_or(GROUP);
                        match ROUTE_KINDS.iter().find(|r| **r == k.kind) {
                            Some(r) if group == GROUP => kinds.push(*r),
                            _ => {
                                resolved = Err((
                                    "InvalidRouteKinds",
                                    format!("route kind {group}/{} is not supported", k.kind),
                                ));
                            }
                        }
                    }
                }
                _ => kinds.extend(ROUTE_KINDS),
            }
            if l.protocol == "HTTPS"
                && let Some(tls) = &l.tls
                && tls.mode.as_deref().unwrap_or("Terminate") == "Terminate"
                && let Err(e) = certificates(ns, tls, grants, secrets)
            {
                resolved = Err(e);
            }
            ListenerState {
                listener: l,
                accepted,
                resolved,
                conflict: None,
                kinds,
                istio_name: format!("{ns}/{name}~{}", l.name),
                attached: 0,
            }
        })
        .collect();
    // Listeners on one port must agree on the protocol, and on one port and protocol their
    // host names must differ.
    for i in 0..listeners.len() {
        for j in 0..listeners.len() {
            if i == j {
                continue;
            }
            let (a, b) = (listeners[i].listener, listeners[j].listener);
            if a.port != b.port {
                continue;
            }
            if a.protocol != b.protocol {
                listeners[i].conflict = Some((
                    "ProtocolConflict",
                    format!(
                        "listener {:?} serves port {} with {} already",
                        b.name, b.port, b.protocol
                    ),
                ));
            } else if a.hostname == b.hostname && a.protocol == b.protocol {
                listeners[i].conflict = Some((
                    "HostnameConflict",
                    format!(
                        "listener {:?} serves port {} for the same hostname",
                        b.name, b.port
                    ),
                ));
            }
        }
    }
    GatewayState {
        gateway: g,
        listeners,
    }
}

/// The Secrets a terminating listener's `certificateRefs` name, each checked: a core Secret,
/// readable from the Gateway's namespace, holding a certificate and key.
fn certificates(
    gateway_ns: &str,
    tls: &gw::ListenerTls,
    grants: &Grants,
    secrets: &Secrets,
) -> Result<Vec<String>, (&'static str, String)> {
    let mut out = Vec::new();
    for r in &tls.certificate_refs {
        let group = r.group.as_deref().unwrap_or("");
        let kind = r.kind.as_deref().unwrap_or("Secret");
        let ns = r.namespace.as_deref().unwrap_or(gateway_ns);
        let key = format!("{ns}/{}", r.name);
        if !group.is_empty() || kind != "Secret" {
            return Err((
                "InvalidCertificateRef",
                format!("certificateRef {group}/{kind} {key}: only core Secrets hold certificates"),
            ));
        }
        if !grants.allows("Gateway", gateway_ns, "", "Secret", ns, &r.name) {
            return Err((
                "RefNotPermitted",
                format!(
                    "certificateRef {key} is not readable from namespace {gateway_ns}: add a ReferenceGrant in {ns} from Gateways in {gateway_ns} to Secrets"
                ),
            ));
        }
        let valid = secrets.get(&key).is_some_and(|s| {
            let has = |k: &str| {
                s.data
                    .as_ref()
                    .and_then(|d| d.get(k))
                    .is_some_and(|v| String::from_utf8_lossy(&v.0).contains("-----BEGIN"))
                    || s.string_data
                        .as_ref()
                        .and_then(|d| d.get(k))
                        .is_some_and(|v| v.contains("-----BEGIN"))
            };
            has("tls.crt") && has("tls.key")
        });
        if !valid {
            return Err((
                "InvalidCertificateRef",
                format!(
                    "certificateRef {key}: no such Secret with a PEM tls.crt and tls.key; create it (kubectl create secret tls)"
                ),
            ));
        }
        out.push(key);
    }
    Ok(out)
}

/// The parents a route attached to, each with its status conditions, and the buckets its rules
/// go into.
pub(crate) struct Attachment {
    /// `parentRef` as written, for the status.
    pub parent_ref: gw::ParentReference,
    /// Accepted, or why not.
    pub accepted: Result<String, (&'static str, String)>,
    /// Where the rules go: a bucket per listener and host.
    pub buckets: Vec<BucketKey>,
}

fn attach(
    route: &RouteRef,
    parents: &[gw::ParentReference],
    states: &mut [GatewayState],
    input: &Input,
    domain: &str,
) -> Vec<Attachment> {
    let route_ns = route.namespace.as_str();
    let mut out = Vec::new();
    for p in parents {
        let ns = p.namespace.as_deref().unwrap_or(route_ns);
        if p.is_service() {
            let host = format!("{}.{ns}.svc.{domain}", p.name);
            // A route in the Service's namespace is its producer's and applies to every
            // caller; one from elsewhere applies to callers in its own namespace only. As in
            // Istio, a Service that does not exist (yet) is no error: its routes wait for it.
            let export = if ns == route_ns { "*" } else { route_ns };
            out.push(Attachment {
                parent_ref: p.clone(),
                accepted: Ok("Route was valid".into()),
                buckets: vec![BucketKey::mesh(&host, ns, export, p.port)],
            });
            continue;
        }
        if !p.is_gateway() {
            out.push(Attachment {
                parent_ref: p.clone(),
                accepted: Err((
                    "InvalidKind",
                    format!(
                        "parentRef {}/{}: only Gateways and Services are parents",
                        p.group.as_deref().unwrap_or(GROUP),
                        p.kind.as_deref().unwrap_or("")
                    ),
                )),
                buckets: Vec::new(),
            });
            continue;
        }
        let Some(state) = states.iter_mut().find(|s| {
            namespace_of(&s.gateway.metadata) == ns
                && s.gateway.metadata.name.as_deref() == Some(p.name.as_str())
        }) else {
            let known = input.gateways.iter().any(|g| {
                namespace_of(&g.metadata) == ns
                    && g.metadata.name.as_deref() == Some(p.name.as_str())
            });
            if known {
                // A Gateway of another controller's class: not ours to answer for.
                continue;
            }
            out.push(Attachment {
                parent_ref: p.clone(),
                accepted: Err((
                    "NoMatchingParent",
                    format!("Gateway {ns}/{} does not exist", p.name),
                )),
                buckets: Vec::new(),
            });
            continue;
        };
        let gw_ns = namespace_of(&state.gateway.metadata).to_string();
        let mut candidates: Vec<&mut ListenerState> = state
            .listeners
            .iter_mut()
            .filter(|l| {
                p.section_name
                    .as_deref()
                    .is_none_or(|s| s == l.listener.name)
                    && p.port.is_none_or(|port| port == l.listener.port)
            })
            .collect();
        if candidates.is_empty() {
            let why = match (&p.section_name, p.port) {
                (Some(s), _) => format!("sectionName {s:?} not found"),
                (None, Some(port)) => format!("port {port} not found"),
                _ => "the Gateway has no listeners".into(),
            };
            out.push(Attachment {
                parent_ref: p.clone(),
                accepted: Err(("NoMatchingParent", why)),
                buckets: Vec::new(),
            });
            continue;
        }
        let route_labels = input.namespaces.get(route_ns);
        candidates.retain(|l| {
            l.usable()
                && l.kinds.contains(&route.kind)
                && namespace_allowed(l.listener, &gw_ns, route_ns, route_labels)
        });
        if candidates.is_empty() {
            out.push(Attachment {
                parent_ref: p.clone(),
                accepted: Err((
                    "NotAllowedByListeners",
                    "no listener of the parent admits this route (kind, namespace, or the listener is invalid); check spec.listeners[].allowedRoutes".into(),
                )),
                buckets: Vec::new(),
            });
            continue;
        }
        let mut keys = Vec::new();
        for l in candidates {
            let listener_host = l.listener.hostname.as_deref().unwrap_or("*");
            let hosts: Vec<String> = if route.hostnames.is_empty() {
                vec![listener_host.to_ascii_lowercase()]
            } else {
                route
                    .hostnames
                    .iter()
                    .filter_map(|h| crate::translate::gateway::intersect(listener_host, h))
                    .collect()
            };
            if hosts.is_empty() {
                continue;
            }
            l.attached += 1;
            for h in hosts {
                keys.push(BucketKey::gateway(&l.istio_name, &h));
            }
        }
        if keys.is_empty() {
            out.push(Attachment {
                parent_ref: p.clone(),
                accepted: Err((
                    "NoMatchingListenerHostname",
                    "no hostname of the route matches a listener's hostname".into(),
                )),
                buckets: Vec::new(),
            });
            continue;
        }
        out.push(Attachment {
            parent_ref: p.clone(),
            accepted: Ok("Route was valid".into()),
            buckets: keys,
        });
    }
    out
}

/// Whether a listener's `allowedRoutes.namespaces` admits routes of `route_ns`.
fn namespace_allowed(
    l: &Listener,
    gateway_ns: &str,
    route_ns: &str,
    labels: Option<&BTreeMap<String, String>>,
) -> bool {
    let Some(ns) = l
        .allowed_routes
        .as_ref()
        .and_then(|a| a.namespaces.as_ref())
    else {
        return gateway_ns == route_ns;
    };
    match ns.from.as_deref().unwrap_or("Same") {
        "All" => true,
        "Selector" => ns.selector.as_ref().is_some_and(|s| {
            // Every namespace carries its name as a label (Kubernetes sets it).
            let mut labels = labels.cloned().unwrap_or_default();
            labels.insert("kubernetes.io/metadata.name".into(), route_ns.to_string());
            label_selector_matches(s, &labels)
        }),
        _ => gateway_ns == route_ns,
    }
}

/// A Kubernetes LabelSelector (`matchLabels` and `matchExpressions`) against labels.
fn label_selector_matches(
    s: &k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector,
    labels: &BTreeMap<String, String>,
) -> bool {
    let labels_ok = s
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let exprs_ok = s.match_expressions.iter().flatten().all(|e| {
        let values = e.values.clone().unwrap_or_default();
        let value = labels.get(&e.key);
        match e.operator.as_str() {
            "In" => value.is_some_and(|v| values.contains(v)),
            "NotIn" => value.is_none_or(|v| !values.contains(v)),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            _ => false,
        }
    });
    labels_ok && exprs_ok
}

fn finish_route(
    route: &RouteRef,
    parents: Vec<Attachment>,
    rules: routes::Converted,
    buckets: &mut BTreeMap<BucketKey, Bucket>,
    out: &mut Output,
) {
    for a in &parents {
        for key in &a.buckets {
            let bucket = buckets.entry(key.without_port()).or_default();
            bucket.add(route, &rules.rules, key);
        }
    }
    out.statuses
        .push(status::route_status(route, &parents, &rules.resolved));
}

/// The Istio Gateways of one Gateway API Gateway (a server per usable listener) and its status.
fn gateway_outputs(state: &GatewayState, registry: &Registry, out: &mut Output) {
    let g = state.gateway;
    let ns = namespace_of(&g.metadata).to_string();
    let name = g.metadata.name.clone().unwrap_or_default();
    let (selector, same_namespace) = selector(g, registry);
    // An address the mesh cannot assign refuses the whole Gateway (see its status).
    let refused = g
        .spec
        .addresses
        .iter()
        .any(|a| a.type_.as_deref().unwrap_or("IPAddress") != "Hostname");
    for l in state.listeners.iter().filter(|l| l.usable() && !refused) {
        let listener = l.listener;
        let tls = if listener.protocol == "HTTPS" && l.resolved.is_ok() {
            listener.tls.as_ref().map(|t| ServerTlsSettings {
                mode: Some(ServerTlsMode::Simple),
                credential_name: t
                    .certificate_refs
                    .first()
                    .map(|r| {
                        format!(
                            "{SECRET_REF_PREFIX}{}/{}",
                            r.namespace.as_deref().unwrap_or(&ns),
                            r.name
                        )
                    })
                    .unwrap_or_default(),
                ..ServerTlsSettings::default()
            })
        } else if listener.protocol == "HTTPS" {
            // A certificate that does not resolve leaves the listener unserved.
            continue;
        } else {
            None
        };
        let mut meta = ObjectMeta {
            name: Some(format!("{name}~{}", listener.name)),
            namespace: Some(ns.clone()),
            creation_timestamp: g.metadata.creation_timestamp.clone(),
            ..ObjectMeta::default()
        };
        let mut annotations = BTreeMap::from([(
            PARENTS_ANNOTATION.to_string(),
            format!("Gateway.{GROUP}/{ns}/{name}"),
        )]);
        if same_namespace {
            annotations.insert(SAME_NAMESPACE_ANNOTATION.into(), "true".into());
        }
        meta.annotations = Some(annotations);
        out.gateways.push(Gateway {
            metadata: meta,
            spec: GatewaySpec {
                selector: selector.clone(),
                servers: vec![Server {
                    port: Some(Port {
                        number: u32::from(listener.port),
                        protocol: listener.protocol.clone(),
                        name: listener.name.clone(),
                        ..Port::default()
                    }),
                    hosts: vec![format!("*/{}", listener.hostname.as_deref().unwrap_or("*"))],
                    tls,
                    ..Server::default()
                }],
            },
        });
    }
    out.statuses.push(status::gateway_status(
        state,
        registry,
        &selector,
        same_namespace,
    ));
}

/// The labels of the gateway workloads a Gateway is served by: those of the Service a
/// `Hostname` address names (a gateway deployed by hand, as `istio-ingressgateway`), else the
/// well-known gateway-name label of the workloads deployed for it in its namespace.
fn selector(g: &gw::Gateway, registry: &Registry) -> (BTreeMap<String, String>, bool) {
    let ns = namespace_of(&g.metadata);
    for a in &g.spec.addresses {
        if a.type_.as_deref().unwrap_or("IPAddress") != "Hostname" {
            continue;
        }
        let service = registry.services.values().find(|s| {
            s.origin.starts_with("Service ")
                && (s.hostname == a.value
                    || s.hostname.starts_with(&format!("{}.{ns}.svc.", a.value)))
        });
        if let Some(sel) = service.and_then(|s| s.selector.clone()) {
            return (sel, false);
        }
    }
    let name = g.metadata.name.clone().unwrap_or_default();
    (
        BTreeMap::from([(GATEWAY_NAME_LABEL.to_string(), name)]),
        true,
    )
}

/// A VirtualService's metadata for generated output.
pub(crate) fn generated_meta(name: String, namespace: &str, parents: String) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: Some(namespace.to_string()),
        annotations: Some(BTreeMap::from([(PARENTS_ANNOTATION.to_string(), parents)])),
        ..ObjectMeta::default()
    }
}

/// An empty VirtualService spec for `hosts`.
pub(crate) fn vs_spec(hosts: Vec<String>, gateways: Vec<String>) -> VirtualServiceSpec {
    VirtualServiceSpec {
        hosts,
        gateways,
        ..VirtualServiceSpec::default()
    }
}
