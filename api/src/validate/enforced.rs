//! What the mesh accepts but does not enforce yet, field by field. Nothing a user applies is
//! quietly ignored: each such field gets a warning "accepted, not enforced yet: …" that says
//! what happens instead. `meshctl validate`/`apply` print them, pilot shows them per proxy in
//! `meshctl proxy-status`, and the proxy logs each once. When a feature lands, its entry here
//! goes (docs/api-coverage.md lists the same).

use crate::diagnostic::Diagnostic;
use crate::networking::{
    ClientTlsMode, ConnectionPoolSettings, DestinationRuleSpec, LoadBalancerSettings, SidecarSpec,
    TrafficPolicy, VirtualServiceSpec,
};
use crate::resource::Resource;
use crate::security::{AuthorizationPolicySpec, RequestAuthenticationSpec};
use crate::telemetry::TelemetrySpec;

/// The start of every such warning, so tools can tell them from other warnings.
pub const NOT_ENFORCED: &str = "accepted, not enforced yet";

/// What a workload's `network` does here.
const NOT_MULTI_NETWORK: &str = "one network only: the endpoint is reached directly at its address, never through a network gateway";

struct Out(Vec<Diagnostic>);

impl Out {
    fn add(&mut self, field: impl AsRef<str>, what: impl AsRef<str>) {
        self.0.push(
            Diagnostic::warning(format!("{NOT_ENFORCED}: {}", what.as_ref()))
                .at_field(field.as_ref()),
        );
    }
}

/// The fields of `resource` that are accepted but not enforced, as warnings at their paths.
pub fn not_enforced(resource: &Resource) -> Vec<Diagnostic> {
    match resource {
        Resource::VirtualService(r) => in_virtual_service(&r.spec),
        Resource::DestinationRule(r) => in_destination_rule(&r.spec),
        Resource::Gateway(r) => {
            let mut out = Out(Vec::new());
            for (i, s) in r.spec.servers.iter().enumerate() {
                let at = format!("spec.servers[{i}]");
                if !s.is_served() {
                    let port = s.port.as_ref().map_or(0, |p| p.number);
                    out.add(
                        &at,
                        format!("served so far: HTTP, plaintext or HTTPS (SIMPLE, MUTUAL; a credentialName Secret or certificate files), TLS PASSTHROUGH and TCP; not this one (TLS terminated to TCP, ISTIO_MUTUAL, OPTIONAL_MUTUAL); nothing listens on port {port}"),
                    );
                } else if let Some(t) = s.tls.as_ref().filter(|_| s.is_https_terminated()) {
                    let tls = format!("{at}.tls");
                    for (set, field) in [
                        (!t.credential_names.is_empty(), "credentialNames"),
                        (!t.tls_certificates.is_empty(), "tlsCertificates"),
                        (!t.ca_crl.is_empty(), "caCrl"),
                        (!t.subject_alt_names.is_empty(), "subjectAltNames"),
                        (
                            !t.verify_certificate_spki.is_empty(),
                            "verifyCertificateSpki",
                        ),
                        (
                            !t.verify_certificate_hash.is_empty(),
                            "verifyCertificateHash",
                        ),
                        (t.min_protocol_version.is_some(), "minProtocolVersion"),
                        (t.max_protocol_version.is_some(), "maxProtocolVersion"),
                        (!t.cipher_suites.is_empty(), "cipherSuites"),
                    ] {
                        if set {
                            out.add(
                                format!("{tls}.{field}"),
                                "the server is served with its credentialName or certificate files; this is not applied",
                            );
                        }
                    }
                }
                if !s.bind.is_empty() {
                    out.add(
                        format!("{at}.bind"),
                        "the gateway listens on its --bind-address",
                    );
                }
                if !s.default_endpoint.is_empty() {
                    out.add(
                        format!("{at}.defaultEndpoint"),
                        "a request no route matches is answered 404",
                    );
                }
            }
            out.0
        }
        Resource::Sidecar(r) => in_sidecar(&r.spec),
        Resource::AuthorizationPolicy(r) => in_authorization_policy(&r.spec),
        Resource::RequestAuthentication(r) => in_request_authentication(&r.spec),
        Resource::Telemetry(r) => in_telemetry(&r.spec),
        Resource::WorkloadEntry(r) => {
            let mut out = Out(Vec::new());
            if !r.spec.network.is_empty() {
                out.add("spec.network", NOT_MULTI_NETWORK);
            }
            out.0
        }
        Resource::ServiceEntry(r) => {
            let mut out = Out(Vec::new());
            for (i, e) in r.spec.endpoints.iter().enumerate() {
                if !e.network.is_empty() {
                    out.add(format!("spec.endpoints[{i}].network"), NOT_MULTI_NETWORK);
                }
            }
            out.0
        }
        Resource::WorkloadGroup(_) => {
            let mut out = Out(Vec::new());
            out.add(
                "spec",
                "workloads are not registered from WorkloadGroups yet; use WorkloadEntry",
            );
            out.0
        }
        Resource::KubeGateway(r) => in_kube_gateway(&r.spec),
        Resource::HttpRoute(r) => {
            let mut out = Out(Vec::new());
            for (i, rule) in r.spec.rules.iter().enumerate() {
                let at = format!("spec.rules[{i}]");
                route_rule_extras(&mut out, &at, &rule.filters, &rule.session_persistence);
                for (k, b) in rule.backend_refs.iter().enumerate() {
                    let at = format!("{at}.backendRefs[{k}]");
                    route_rule_extras(&mut out, &at, &b.filters, &None);
                    if rule.backend_refs.len() < 2 {
                        continue;
                    }
                    for (i, f) in b.filters.iter().enumerate() {
                        if matches!(
                            f.type_.as_str(),
                            "RequestRedirect" | "URLRewrite" | "RequestMirror"
                        ) {
                            out.add(
                                format!("{at}.filters[{i}]"),
                                "a backend's own redirect, rewrite or mirror applies only when it is the rule's one backend; not applied",
                            );
                        }
                    }
                }
            }
            out.0
        }
        Resource::GrpcRoute(r) => {
            let mut out = Out(Vec::new());
            for (i, rule) in r.spec.rules.iter().enumerate() {
                let at = format!("spec.rules[{i}]");
                route_rule_extras(&mut out, &at, &rule.filters, &rule.session_persistence);
            }
            out.0
        }
        Resource::GatewayClass(r) => {
            let mut out = Out(Vec::new());
            if r.spec.parameters_ref.is_some() {
                out.add(
                    "spec.parametersRef",
                    "gateways of this class are deployed with the mesh's defaults; parameters are not read",
                );
            }
            out.0
        }
        _ => Vec::new(),
    }
}

/// [`not_enforced`] for a Gateway API Gateway's spec.
fn in_kube_gateway(spec: &crate::gateway_api::GatewaySpec) -> Vec<Diagnostic> {
    let mut out = Out(Vec::new());
    for (set, field, what) in [
        (
            spec.backend_tls.is_some(),
            "spec.backendTLS",
            "the gateway reaches backends with mesh mTLS or plaintext, never with these settings",
        ),
        (
            spec.tls.is_some(),
            "spec.tls",
            "gateway-wide TLS settings are not applied; client certificate validation (tls.frontend) refuses the HTTPS listeners (status Accepted=False) rather than serve them without it",
        ),
        (
            spec.allowed_listeners.is_some(),
            "spec.allowedListeners",
            "ListenerSets are not read; only the Gateway's own listeners are served",
        ),
        (
            spec.infrastructure
                .as_ref()
                .is_some_and(|i| i.parameters_ref.is_some()),
            "spec.infrastructure.parametersRef",
            "the gateway is deployed with the mesh's defaults; parameters are not read",
        ),
        (
            spec.infrastructure
                .as_ref()
                .is_some_and(|i| !i.labels.is_empty() || !i.annotations.is_empty()),
            "spec.infrastructure",
            "labels and annotations are not put on the gateway deployed for it",
        ),
    ] {
        if set {
            out.add(field, what);
        }
    }
    for (i, l) in spec.listeners.iter().enumerate() {
        let at = format!("spec.listeners[{i}]");
        if let Some(t) = &l.tls {
            if t.frontend_validation.is_some() {
                out.add(
                    format!("{at}.tls.frontendValidation"),
                    "client certificates are not verified yet, so the listener is refused (status Accepted=False) rather than served without them",
                );
            }
            if !t.options.is_empty() {
                out.add(format!("{at}.tls.options"), "TLS options are not read");
            }
        }
    }
    out.0
}

/// Route filters and settings the gateway does not apply.
fn route_rule_extras(
    out: &mut Out,
    at: &str,
    filters: &[crate::gateway_api::HTTPRouteFilter],
    session: &Option<serde_json::Value>,
) {
    if session.is_some() {
        out.add(
            format!("{at}.sessionPersistence"),
            "requests are balanced without session persistence",
        );
    }
    for (i, f) in filters.iter().enumerate() {
        match f.type_.as_str() {
            "ExtensionRef" => out.add(
                format!("{at}.filters[{i}]"),
                "no extension filters are known: requests this rule matches are answered 500, as the Gateway API asks",
            ),
            "CORS" => out.add(
                format!("{at}.filters[{i}]"),
                "CORS filters of HTTPRoutes are not applied yet; use a VirtualService corsPolicy",
            ),
            _ => {}
        }
    }
}

/// [`not_enforced`] for a VirtualService's spec.
pub fn in_virtual_service(spec: &VirtualServiceSpec) -> Vec<Diagnostic> {
    let mut out = Out(Vec::new());
    virtual_service(&mut out, spec);
    out.0
}

/// [`not_enforced`] for a DestinationRule's spec.
pub fn in_destination_rule(spec: &DestinationRuleSpec) -> Vec<Diagnostic> {
    let mut out = Out(Vec::new());
    if let Some(tp) = &spec.traffic_policy {
        traffic_policy(&mut out, "spec.trafficPolicy", tp);
    }
    for (i, s) in spec.subsets.iter().enumerate() {
        if let Some(tp) = &s.traffic_policy {
            traffic_policy(&mut out, &format!("spec.subsets[{i}].trafficPolicy"), tp);
        }
    }
    out.0
}

/// [`not_enforced`] for a Sidecar's spec.
pub fn in_sidecar(spec: &SidecarSpec) -> Vec<Diagnostic> {
    let mut out = Out(Vec::new());
    if !spec.ingress.is_empty() {
        out.add(
            "spec.ingress",
            "inbound listeners come from the workload's ports; Sidecar ingress is not applied",
        );
    }
    if spec.inbound_connection_pool.is_some() {
        out.add(
            "spec.inboundConnectionPool",
            "limits on connections into the workload are not applied (DestinationRule connectionPool limits what callers send)",
        );
    }
    if spec
        .outbound_traffic_policy
        .as_ref()
        .is_some_and(|p| p.egress_proxy.is_some())
    {
        out.add(
            "spec.outboundTrafficPolicy.egressProxy",
            "unknown destinations are passed through or refused, never sent to an egress proxy",
        );
    }
    out.0
}

/// [`not_enforced`] for an AuthorizationPolicy's spec.
pub fn in_authorization_policy(spec: &AuthorizationPolicySpec) -> Vec<Diagnostic> {
    let mut out = Out(Vec::new());
    if spec.target_ref.is_some() || !spec.target_refs.is_empty() {
        let field = if spec.target_ref.is_some() {
            "spec.targetRef"
        } else {
            "spec.targetRefs"
        };
        out.add(field, "policies attached to a Gateway or Service bind to gateways and waypoints; the gateway applies no policy yet and there are no waypoints, so nothing enforces it");
    }
    for (i, rule) in spec.rules.iter().enumerate() {
        for (j, c) in rule.when.iter().enumerate() {
            if c.key.starts_with("experimental.envoy.filters.") {
                out.add(
                    format!("spec.rules[{i}].when[{j}].key"),
                    format!("{:?} reads Envoy filter metadata, which this proxy does not have: the condition never matches", c.key),
                );
            }
        }
    }
    out.0
}

/// [`not_enforced`] for a RequestAuthentication's spec.
pub fn in_request_authentication(spec: &RequestAuthenticationSpec) -> Vec<Diagnostic> {
    let mut out = Out(Vec::new());
    if spec.target_ref.is_some() || !spec.target_refs.is_empty() {
        out.add(
            "spec.targetRefs",
            "policies attached to a Gateway or Service bind to gateways and waypoints; the gateway applies no policy yet and there are no waypoints, so nothing enforces it",
        );
    }
    out.0
}

/// [`not_enforced`] for a Telemetry's spec. Which providers it names exist and are served is
/// checked against the mesh configuration, per proxy, by pilot.
pub fn in_telemetry(spec: &TelemetrySpec) -> Vec<Diagnostic> {
    let mut out = Out(Vec::new());
    if spec.target_ref.is_some() || !spec.target_refs.is_empty() {
        let field = if spec.target_ref.is_some() {
            "spec.targetRef"
        } else {
            "spec.targetRefs"
        };
        out.add(field, "Telemetry attached to a Gateway or Service binds to gateways and waypoints by reference; use a selector: nothing applies this one");
    }
    for (i, t) in spec.tracing.iter().enumerate() {
        if t.use_request_id_for_trace_sampling.is_some() {
            out.add(
                format!("spec.tracing[{i}].useRequestIdForTraceSampling"),
                "the first proxy of a trace samples it at random with the configured percentage; the request id plays no part",
            );
        }
        if t.enable_istio_tags.is_some() {
            out.add(
                format!("spec.tracing[{i}].enableIstioTags"),
                "spans always carry the mesh's own attributes (workload, namespace, canonical service)",
            );
        }
    }
    for (i, m) in spec.metrics.iter().enumerate() {
        let at = format!("spec.metrics[{i}]");
        for (j, p) in m.providers.iter().enumerate() {
            if p.name != "prometheus" {
                out.add(
                    format!("{at}.providers[{j}].name"),
                    format!("{:?}: metrics are served for Prometheus only (provider prometheus), on :15020/stats/prometheus", p.name),
                );
            }
        }
        if !m.overrides.is_empty() {
            out.add(
                format!("{at}.overrides"),
                "Istio's standard metrics stay on with their standard labels",
            );
        }
        if m.reporting_interval.is_some() {
            out.add(
                format!("{at}.reportingInterval"),
                "a TCP connection's bytes are counted when it closes",
            );
        }
    }
    for (i, a) in spec.access_logging.iter().enumerate() {
        if a.filter.is_some() {
            out.add(
                format!("spec.accessLogging[{i}].filter"),
                "every request is logged: filter expressions are not evaluated yet",
            );
        }
    }
    out.0
}

fn virtual_service(out: &mut Out, spec: &VirtualServiceSpec) {
    for (i, g) in spec.gateways.iter().enumerate() {
        if g != "mesh" && !g.contains('/') && g.contains('.') {
            out.add(
                format!("spec.gateways[{i}]"),
                format!("{g:?}: name a Gateway as NAME or NAMESPACE/NAME; this form binds to none"),
            );
        }
    }

    for (i, h) in spec.http.iter().enumerate() {
        let at = format!("spec.http[{i}]");
        if let Some(r) = &h.retries {
            for cond in r.retry_on.split(',').map(str::trim) {
                if matches!(cond, "retriable-headers" | "http3-post-connect-failure") {
                    out.add(
                        format!("{at}.retries.retryOn"),
                        format!("{cond:?} never holds here (Istio's API names no retriable header; the mesh has no HTTP/3): it retries nothing"),
                    );
                }
            }
        }
        if h.direct_response
            .as_ref()
            .and_then(|d| d.body.as_ref())
            .is_some_and(|b| b.bytes.is_some())
        {
            out.add(
                format!("{at}.directResponse.body.bytes"),
                "the response is sent without this body; use body.string",
            );
        }
        // As in Istio, claims are known where routes are chosen only at gateways (which apply
        // RequestAuthentication first); a sidecar never matches them.
        let sidecars = spec.gateways.is_empty() || spec.gateways.iter().any(|g| g == "mesh");
        for (j, m) in h.matches.iter().enumerate() {
            let for_sidecars =
                sidecars && (m.gateways.is_empty() || m.gateways.iter().any(|g| g == "mesh"));
            for name in m.headers.keys().chain(m.without_headers.keys()) {
                if for_sidecars && name.starts_with("@request.auth.claims") {
                    out.add(
                        format!("{at}.match[{j}].headers.{name}"),
                        "routing on JWT claims works at gateways only (as in Istio): for sidecars this match never matches",
                    );
                }
            }
        }
    }
}

fn traffic_policy(out: &mut Out, at: &str, tp: &TrafficPolicy) {
    let originates = tp
        .tls
        .as_ref()
        .is_some_and(|t| matches!(t.mode, Some(ClientTlsMode::Simple | ClientTlsMode::Mutual)));
    if let Some(pool) = &tp.connection_pool {
        connection_pool(out, &format!("{at}.connectionPool"), pool, originates);
    }
    if let Some(lb) = &tp.load_balancer {
        load_balancer(out, &format!("{at}.loadBalancer"), lb);
    }
    for (name, set) in [
        ("tunnel", tp.tunnel.is_some()),
        ("proxyProtocol", tp.proxy_protocol.is_some()),
    ] {
        if set {
            out.add(format!("{at}.{name}"), "this setting is not applied");
        }
    }
    for (i, p) in tp.port_level_settings.iter().enumerate() {
        let pat = format!("{at}.portLevelSettings[{i}]");
        let originates = originates
            || p.tls.as_ref().is_some_and(|t| {
                matches!(t.mode, Some(ClientTlsMode::Simple | ClientTlsMode::Mutual))
            });
        if let Some(pool) = &p.connection_pool {
            connection_pool(out, &format!("{pat}.connectionPool"), pool, originates);
        }
        if p.load_balancer.is_some() {
            out.add(
                format!("{pat}.loadBalancer"),
                "port-level load balancing is not applied: the port uses the policy's own loadBalancer",
            );
        }
        if p.tls.is_some() {
            out.add(
                format!("{pat}.tls"),
                "port-level TLS settings are not applied: the port uses the policy's own tls",
            );
        }
    }
}

/// What of an outlierDetection the proxy does not apply: local-origin errors are counted with
/// the upstream's 5xx, as Envoy does when they are not split.
/// What of a connectionPool the proxy does not apply: the connection and request limits,
/// timeouts and retries cap are enforced; these are not.
fn connection_pool(out: &mut Out, at: &str, pool: &ConnectionPoolSettings, originates: bool) {
    if let Some(t) = &pool.tcp {
        for (name, set, what) in [
            (
                "tcpKeepalive",
                t.tcp_keepalive.is_some(),
                "upstream connections are not probed with TCP keep-alives",
            ),
            (
                "maxConnectionDuration",
                t.max_connection_duration.is_some(),
                "upstream connections are not closed after this long",
            ),
            (
                "idleTimeout",
                t.idle_timeout.is_some(),
                "idle TCP connections are not closed by the proxy (http.idleTimeout applies to HTTP)",
            ),
        ] {
            if set {
                out.add(format!("{at}.tcp.{name}"), what);
            }
        }
    }
    if let Some(h) = &pool.http {
        for (name, set, what) in [
            (
                "h2UpgradePolicy",
                h.h2_upgrade_policy.is_some(),
                "the upstream protocol is chosen by the mesh (HTTP/2 between sidecars), not by this setting",
            ),
            (
                "useClientProtocol",
                h.use_client_protocol.is_some(),
                "the upstream protocol is chosen by the mesh (HTTP/2 between sidecars), not by this setting",
            ),
            (
                "maxConcurrentStreams",
                h.max_concurrent_streams.is_some(),
                "HTTP/2 streams per connection are not capped by this setting",
            ),
            (
                "http2KeepAlive",
                h.http2_keep_alive.is_some(),
                "HTTP/2 connections are not kept alive with PINGs",
            ),
        ] {
            if set {
                out.add(format!("{at}.http.{name}"), what);
            }
        }
        if originates && h.max_requests_per_connection.is_some_and(|n| n > 0) {
            out.add(
                format!("{at}.http.maxRequestsPerConnection"),
                "connections the proxy originates TLS on (tls SIMPLE or MUTUAL) are reused without this cap; the other limits apply",
            );
        }
    }
}

fn load_balancer(out: &mut Out, at: &str, lb: &LoadBalancerSettings) {
    if lb.warmup_duration_secs.is_some() || lb.warmup.is_some() {
        let field = if lb.warmup.is_some() {
            "warmup"
        } else {
            "warmupDurationSecs"
        };
        out.add(
            format!("{at}.{field}"),
            "new endpoints get their full share at once",
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::load_str;

    fn warnings(yaml: &str) -> Vec<String> {
        let report = load_str(yaml, Some("test.yaml"));
        report
            .documents
            .iter()
            .flat_map(|d| not_enforced(&d.resource))
            .map(|d| format!("{}: {}", d.field.unwrap_or_default(), d.message))
            .collect()
    }

    #[test]
    fn the_seed_destination_rule_is_enforced_whole() {
        let seed = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: inv}\nspec:\n  host: inventory\n  trafficPolicy:\n    connectionPool:\n      tcp: {maxConnections: 1, connectTimeout: 1s}\n      http: {http1MaxPendingRequests: 1, maxRequestsPerConnection: 1, http2MaxRequests: 5, maxRetries: 2, idleTimeout: 30s}\n    outlierDetection: {consecutive5xxErrors: 1, consecutiveGatewayErrors: 2, interval: 1s, baseEjectionTime: 3m, maxEjectionPercent: 100, minHealthPercent: 50}\n";
        let w = warnings(seed);
        assert!(w.is_empty(), "{w:?}");
        let split = seed.replace(
            "minHealthPercent: 50",
            "minHealthPercent: 50, splitExternalLocalOriginErrors: true, consecutiveLocalOriginFailures: 3",
        );
        assert!(warnings(&split).is_empty(), "{:?}", warnings(&split));
    }

    #[test]
    fn retries_are_enforced_but_conditions_that_never_hold() {
        let yaml = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: ratings}\nspec:\n  hosts: [ratings]\n  http:\n  - timeout: 2s\n    retries: {attempts: 3, perTryTimeout: 500ms, retryOn: 'gateway-error,connect-failure,503', backoff: 50ms}\n    route: [{destination: {host: ratings}}]\n";
        assert!(warnings(yaml).is_empty(), "{:?}", warnings(yaml));
        let w = warnings(
            &yaml
                .replace("backoff: 50ms", "retryRemoteLocalities: true")
                .replace("503", "retriable-headers"),
        );
        let fields: Vec<&str> = w
            .iter()
            .map(|l| l.split(": ").next().unwrap_or(""))
            .collect();
        assert_eq!(fields, ["spec.http[0].retries.retryOn"], "{w:?}");
    }

    #[test]
    fn connection_pool_fields_not_applied_are_named() {
        let w = warnings(
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: ext}\nspec:\n  host: api.example.com\n  trafficPolicy:\n    tls: {mode: SIMPLE}\n    connectionPool:\n      tcp: {tcpKeepalive: {time: 7200s}}\n      http: {maxRequestsPerConnection: 1, h2UpgradePolicy: UPGRADE}\n    portLevelSettings:\n    - port: {number: 443}\n      loadBalancer: {simple: RANDOM}\n",
        );
        let fields: Vec<&str> = w
            .iter()
            .map(|l| l.split(": ").next().unwrap_or(""))
            .collect();
        assert_eq!(
            fields,
            [
                "spec.trafficPolicy.connectionPool.tcp.tcpKeepalive",
                "spec.trafficPolicy.connectionPool.http.h2UpgradePolicy",
                "spec.trafficPolicy.connectionPool.http.maxRequestsPerConnection",
                "spec.trafficPolicy.portLevelSettings[0].loadBalancer",
            ],
            "{w:?}"
        );
    }

    #[test]
    fn faults_are_enforced_and_an_unset_share_is_explained() {
        let yaml = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: ratings}\nspec:\n  hosts: [ratings]\n  http:\n  - fault:\n      delay: {fixedDelay: 7s}\n      abort: {grpcStatus: UNAVAILABLE, percentage: {value: 10}}\n    route: [{destination: {host: ratings}}]\n";
        assert!(warnings(yaml).is_empty(), "{:?}", warnings(yaml));
        let report = load_str(yaml, None);
        let w: Vec<String> = report
            .warnings()
            .map(|d| d.field.clone().unwrap_or_default())
            .collect();
        assert_eq!(w, ["spec.http[0].fault.delay.percentage"]);
        let bad = load_str(&yaml.replace("UNAVAILABLE", "SLOW"), None);
        let e: Vec<String> = bad
            .errors()
            .map(|d| d.field.clone().unwrap_or_default())
            .collect();
        assert_eq!(e, ["spec.http[0].fault.abort.grpcStatus"]);
    }

    #[test]
    fn enforced_fields_say_nothing() {
        let w = warnings(
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: deny}\nspec:\n  action: DENY\n  rules: [{}]\n",
        );
        assert!(w.is_empty(), "{w:?}");
    }

    #[test]
    fn custom_authorization_is_enforced() {
        // The provider is checked against the mesh configuration by pilot (proxy-status).
        let w = warnings(
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: ext}\nspec:\n  action: CUSTOM\n  provider: {name: opa}\n  rules: [{}]\n",
        );
        assert!(w.is_empty(), "{w:?}");
    }
}
