//! Istio's semantic rules, one case per rule: each invalid document is refused with the field
//! path and a message fragment, each valid one is accepted.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use mesh_api::load;

fn doc(api: &str, kind: &str, spec: &str) -> String {
    let spec: String = spec.lines().map(|l| format!("  {l}\n")).collect();
    format!(
        "apiVersion: {api}\nkind: {kind}\nmetadata:\n  name: x\n  namespace: shop\nspec:\n{spec}"
    )
}

const NET: &str = "networking.istio.io/v1";
const SEC: &str = "security.istio.io/v1";
const POL: &str = "policy.mesh.dev/v1alpha1";
const GW: &str = "gateway.networking.k8s.io/v1";

/// (apiVersion, kind, spec, field path, message fragment)
const INVALID: &[(&str, &str, &str, &str, &str)] = &[
    // VirtualService
    (
        NET,
        "VirtualService",
        "hosts: [r]\ngateways: [gw]\nhttp:\n- match:\n  - headers:\n      '@request.auth.claims.': {exact: a}\n  route:\n  - destination: {host: r}",
        "spec.http[0].match[0].headers.@request.auth.claims.",
        "name the claim",
    ),
    (
        NET,
        "VirtualService",
        "hosts: [r]\nhttp:\n- route:\n  - destination: {host: r, subset: v1}\n    weight: 90\n  - destination: {host: r, subset: v2}\n    weight: 20",
        "spec.http[0].route[1].weight",
        "weights sum to 110, must be 100",
    ),
    (
        NET,
        "VirtualService",
        "hosts: [r]\nhttp:\n- route:\n  - destination: {host: r, subset: V_1}",
        "spec.http[0].route[0].destination.subset",
        "not a valid subset name",
    ),
    (
        NET,
        "VirtualService",
        "hosts: [r]\nhttp:\n- route:\n  - destination: {host: r}\n  timeout: -3s",
        "spec.http[0].timeout",
        "negative",
    ),
    (
        NET,
        "VirtualService",
        "hosts: [r]\nhttp:\n- route:\n  - destination: {host: r}\n  timeout: 10",
        "spec.http[0].timeout",
        "no unit",
    ),
    (
        NET,
        "VirtualService",
        "hosts: [r]\nhttp:\n- route:\n  - destination: {host: r}\n  timeout: 1500us",
        "spec.http[0].timeout",
        "millisecond precision",
    ),
    (
        NET,
        "VirtualService",
        "hosts: [r]\nhttp:\n- match:\n  - uri: {regex: '(?<=a)b'}\n  route:\n  - destination: {host: r}",
        "spec.http[0].match[0].uri.regex",
        "RE2",
    ),
    (
        NET,
        "VirtualService",
        "hosts: [r]\nhttp:\n- match:\n  - uri: {prefix: /a, exact: /b}\n  route:\n  - destination: {host: r}",
        "spec.http[0].match[0].uri",
        "only one of exact, prefix or regex",
    ),
    (
        NET,
        "VirtualService",
        "hosts: [r]\nhttp:\n- match:\n  - headers: {X-User: {exact: a}}\n  route:\n  - destination: {host: r}",
        "spec.http[0].match[0].headers.X-User",
        "lower case",
    ),
    (
        NET,
        "VirtualService",
        "hosts: [r]\nhttp:\n- route:\n  - destination: {host: r, port: {number: 70000}}",
        "spec.http[0].route[0].destination.port.number",
        "port must be between 1-65535",
    ),
    (
        NET,
        "VirtualService",
        "hosts: ['bad host']\nhttp:\n- route:\n  - destination: {host: r}",
        "spec.hosts[0]",
        "not a valid host",
    ),
    (
        NET,
        "VirtualService",
        "hosts: ['*']\nhttp:\n- route:\n  - destination: {host: r}",
        "spec.hosts[0]",
        "wildcard host * is not allowed",
    ),
    (
        NET,
        "VirtualService",
        "hosts: [r]\nhttp:\n- route:\n  - destination: {host: r}\n  redirect: {uri: /x}",
        "spec.http[0]",
        "only one of route, redirect, directResponse, delegate",
    ),
    (
        NET,
        "VirtualService",
        "hosts: [r]\nhttp:\n- name: nothing",
        "spec.http[0]",
        "one of route, redirect, directResponse, delegate must be set",
    ),
    (
        NET,
        "VirtualService",
        "hosts: [r]",
        "spec",
        "at least one of http, tls or tcp",
    ),
    (
        NET,
        "VirtualService",
        "hosts: [r]\nhttp:\n- route:\n  - destination: {host: r}\n  retries: {attempts: 0, perTryTimeout: 2s}",
        "spec.http[0].retries",
        "attempts is 0",
    ),
    (
        NET,
        "VirtualService",
        "hosts: [r]\nhttp:\n- route:\n  - destination: {host: r}\n  retries: {attempts: 3, retryOn: 'bogus'}",
        "spec.http[0].retries.retryOn",
        "not a retry condition",
    ),
    (
        NET,
        "VirtualService",
        "hosts: [r]\nhttp:\n- route:\n  - destination: {host: r}\n  fault: {abort: {httpStatus: 700, percentage: {value: 10}}}",
        "spec.http[0].fault.abort.httpStatus",
        "between 200 and 599",
    ),
    (
        NET,
        "VirtualService",
        "hosts: [r]\nhttp:\n- route:\n  - destination: {host: r}\n  fault: {delay: {fixedDelay: 1s, percentage: {value: 120}}}",
        "spec.http[0].fault.delay.percentage.value",
        "between 0 and 100",
    ),
    (
        NET,
        "VirtualService",
        "hosts: [r]\nhttp:\n- redirect: {uri: /x, redirectCode: 200}",
        "spec.http[0].redirect.redirectCode",
        "301, 302",
    ),
    (
        NET,
        "VirtualService",
        "hosts: [a.example.com]\ntls:\n- match:\n  - sniHosts: [b.example.com]\n  route:\n  - destination: {host: b}",
        "spec.tls[0].match[0].sniHosts[0]",
        "does not match any host",
    ),
    (
        NET,
        "VirtualService",
        "hosts: [r]\ntcp:\n- match:\n  - destinationSubnets: [10.0.0.0/33]\n  route:\n  - destination: {host: r}",
        "spec.tcp[0].match[0].destinationSubnets[0]",
        "not an IP address or CIDR",
    ),
    (
        NET,
        "VirtualService",
        "hosts: [r]\ngateways: [bad/Name]\nhttp:\n- route:\n  - destination: {host: r}",
        "spec.gateways[0]",
        "not a gateway reference",
    ),
    // DestinationRule
    (
        NET,
        "DestinationRule",
        "host: r\nsubsets:\n- name: v1\n  labels: {version: v1}\n- name: v1\n  labels: {version: v2}",
        "spec.subsets[1].name",
        "Duplicate value",
    ),
    (
        NET,
        "DestinationRule",
        "subsets:\n- name: v1",
        "spec.host",
        "Required value",
    ),
    (
        NET,
        "DestinationRule",
        "host: r\ntrafficPolicy:\n  loadBalancer: {simple: ROUND_ROBIN, consistentHash: {useSourceIp: true}}",
        "spec.trafficPolicy.loadBalancer",
        "only one of simple or consistentHash",
    ),
    (
        NET,
        "DestinationRule",
        "host: r\ntrafficPolicy:\n  loadBalancer:\n    consistentHash: {httpHeaderName: x-user, useSourceIp: true}",
        "spec.trafficPolicy.loadBalancer.consistentHash",
        "only one of httpHeaderName",
    ),
    (
        NET,
        "DestinationRule",
        "host: r\ntrafficPolicy:\n  loadBalancer:\n    consistentHash: {httpCookie: {name: c}}",
        "spec.trafficPolicy.loadBalancer.consistentHash.httpCookie.ttl",
        "Required value",
    ),
    (
        NET,
        "DestinationRule",
        "host: r\ntrafficPolicy:\n  outlierDetection: {maxEjectionPercent: 150}",
        "spec.trafficPolicy.outlierDetection.maxEjectionPercent",
        "between 0 and 100",
    ),
    (
        NET,
        "DestinationRule",
        "host: r\ntrafficPolicy:\n  connectionPool: {tcp: {maxConnections: -1}}",
        "spec.trafficPolicy.connectionPool.tcp.maxConnections",
        "non-negative",
    ),
    (
        NET,
        "DestinationRule",
        "host: r\ntrafficPolicy:\n  tls: {mode: ISTIO_MUTUAL, clientCertificate: /c.pem}",
        "spec.trafficPolicy.tls",
        "ISTIO_MUTUAL",
    ),
    (
        NET,
        "DestinationRule",
        "host: r\ntrafficPolicy:\n  tls: {mode: MUTUAL}",
        "spec.trafficPolicy.tls",
        "MUTUAL needs",
    ),
    (
        NET,
        "DestinationRule",
        "host: r\ntrafficPolicy:\n  portLevelSettings:\n  - port: {number: 80}\n    tls: {mode: DISABLE}\n  - port: {number: 80}\n    tls: {mode: SIMPLE}",
        "spec.trafficPolicy.portLevelSettings[1].port.number",
        "Duplicate value",
    ),
    (
        NET,
        "DestinationRule",
        "host: r\ntrafficPolicy: {}",
        "spec.trafficPolicy",
        "at least one field",
    ),
    // Gateway
    (
        NET,
        "Gateway",
        "selector: {istio: ingressgateway}\nservers:\n- port: {number: 443, name: https, protocol: HTTPS}\n  hosts: ['*']",
        "spec.servers[0].tls",
        "needs TLS settings",
    ),
    (
        NET,
        "Gateway",
        "servers:\n- port: {number: 80, name: http, protocol: HTTP}\n  hosts: ['*']\n  tls: {mode: SIMPLE}",
        "spec.servers[0].tls",
        "cannot have TLS settings",
    ),
    (
        NET,
        "Gateway",
        "servers:\n- port: {number: 80, name: http, protocol: HTTPX}\n  hosts: ['*']",
        "spec.servers[0].port.protocol",
        "Unsupported value",
    ),
    (
        NET,
        "Gateway",
        "servers:\n- port: {number: 80, protocol: HTTP}\n  hosts: ['*']",
        "spec.servers[0].port.name",
        "Required value",
    ),
    (
        NET,
        "Gateway",
        "servers:\n- port: {number: 443, name: https, protocol: HTTPS}\n  hosts: ['*']\n  tls: {mode: MUTUAL, serverCertificate: /s.pem, privateKey: /k.pem}",
        "spec.servers[0].tls.caCertificates",
        "Required value",
    ),
    (
        NET,
        "Gateway",
        "servers: []",
        "spec.servers",
        "at least one server",
    ),
    // ServiceEntry
    (
        NET,
        "ServiceEntry",
        "hosts: [example.com]\nports:\n- {name: http, number: 80, protocol: HTTP}\nresolution: STATIC\nendpoints:\n- address: example.org",
        "spec.endpoints[0].address",
        "STATIC resolution needs IP",
    ),
    (
        NET,
        "ServiceEntry",
        "hosts: [example.com]\nports:\n- {name: http, number: 80}\nresolution: STATIC\nendpoints:\n- address: 1.2.3.4\n  ports: {grpc: 9000}",
        "spec.endpoints[0].ports.grpc",
        "not a port name of the ServiceEntry",
    ),
    (
        NET,
        "ServiceEntry",
        "hosts: ['*.example.com']\nresolution: DNS",
        "spec.hosts[0]",
        "wildcard host cannot be resolved by DNS",
    ),
    // WorkloadEntry
    (
        NET,
        "WorkloadEntry",
        "address: 1.2.3.4\nlabels: {app: 'a b'}",
        "spec.labels.app",
        "invalid label value",
    ),
    // Sidecar
    (
        NET,
        "Sidecar",
        "egress:\n- hosts: [reviews]",
        "spec.egress[0].hosts[0]",
        "namespace/dnsName",
    ),
    (
        NET,
        "Sidecar",
        "egress:\n- hosts: ['./*']\n- port: {number: 80, protocol: HTTP, name: http}\n  hosts: ['./*']",
        "spec.egress[0]",
        "must be the last one",
    ),
    (
        NET,
        "Sidecar",
        "ingress:\n- port: {number: 80, protocol: HTTP, name: http}\n  defaultEndpoint: 10.0.0.1:80",
        "spec.ingress[0].defaultEndpoint",
        "127.0.0.1:<port>",
    ),
    (
        NET,
        "Sidecar",
        "workloadSelector: {labels: {app: r}}",
        "spec",
        "empty Sidecar",
    ),
    // PeerAuthentication
    (
        SEC,
        "PeerAuthentication",
        "mtls: {mode: STRICT}\nportLevelMtls:\n  8080: {mode: PERMISSIVE}",
        "spec.portLevelMtls",
        "needs a workload selector",
    ),
    (
        SEC,
        "PeerAuthentication",
        "selector: {matchLabels: {app: '*'}}\nmtls: {mode: STRICT}",
        "spec.selector.matchLabels.app",
        "wildcard not allowed",
    ),
    (
        SEC,
        "PeerAuthentication",
        "mtls: {mode: MOSTLY}",
        "spec.mtls.mode",
        "unknown variant `MOSTLY`",
    ),
    // AuthorizationPolicy
    (
        SEC,
        "AuthorizationPolicy",
        "action: CUSTOM\nrules:\n- to:\n  - operation: {paths: [/admin]}",
        "spec.provider",
        "needs a provider",
    ),
    (
        SEC,
        "AuthorizationPolicy",
        "rules:\n- from:\n  - source: {ipBlocks: [300.1.1.1]}",
        "spec.rules[0].from[0].source.ipBlocks[0]",
        "not an IP address",
    ),
    (
        SEC,
        "AuthorizationPolicy",
        "rules:\n- when:\n  - key: request.colour\n    values: [blue]",
        "spec.rules[0].when[0].key",
        "unknown attribute",
    ),
    (
        SEC,
        "AuthorizationPolicy",
        "rules:\n- when:\n  - key: source.ip",
        "spec.rules[0].when[0]",
        "values or notValues",
    ),
    (
        SEC,
        "AuthorizationPolicy",
        "rules:\n- to:\n  - operation: {ports: ['http']}",
        "spec.rules[0].to[0].operation.ports[0]",
        "port must be between",
    ),
    (
        SEC,
        "AuthorizationPolicy",
        "selector: {matchLabels: {app: a}}\ntargetRef: {kind: Gateway, group: gateway.networking.k8s.io, name: g}",
        "spec",
        "only one of targetRefs or selector",
    ),
    // RequestAuthentication
    (
        SEC,
        "RequestAuthentication",
        "jwtRules:\n- issuer: a\n  jwksUri: ftp://keys",
        "spec.jwtRules[0].jwksUri",
        "url must have scheme",
    ),
    (
        SEC,
        "RequestAuthentication",
        "jwtRules:\n- jwksUri: https://keys.example.com/jwks.json",
        "spec.jwtRules[0].issuer",
        "Required value",
    ),
    (
        SEC,
        "RequestAuthentication",
        "jwtRules:\n- issuer: a\n- issuer: a",
        "spec.jwtRules[1].issuer",
        "Duplicate value",
    ),
    (
        NET,
        "DestinationRule",
        "host: r\ntrafficPolicy:\n  loadBalancer:\n    localityLbSetting:\n      distribute:\n      - to: {'us-west/*': 100}",
        "spec.trafficPolicy.loadBalancer.localityLbSetting.distribute[0].from",
        "Required value",
    ),
    (
        NET,
        "DestinationRule",
        "host: r\ntrafficPolicy:\n  loadBalancer:\n    localityLbSetting:\n      failoverPriority: ['bad key!']",
        "spec.trafficPolicy.loadBalancer.localityLbSetting.failoverPriority[0]",
        "not a label key",
    ),
    // RateLimitPolicy (the mesh's own)
    (
        POL,
        "RateLimitPolicy",
        "{}",
        "spec.limits",
        "at least one limit",
    ),
    (
        POL,
        "RateLimitPolicy",
        "limits:\n- name: a",
        "spec.limits[0].tokenBucket",
        "Required value",
    ),
    (
        POL,
        "RateLimitPolicy",
        "limits:\n- tokenBucket: {maxTokens: 0, fillInterval: 1s}",
        "spec.limits[0].tokenBucket.maxTokens",
        "at least 1",
    ),
    (
        POL,
        "RateLimitPolicy",
        "limits:\n- tokenBucket: {maxTokens: 5, fillInterval: 10ms}",
        "spec.limits[0].tokenBucket.fillInterval",
        "at least 50ms",
    ),
    (
        POL,
        "RateLimitPolicy",
        "limits:\n- tokenBucket: {maxTokens: 5}",
        "spec.limits[0].tokenBucket.fillInterval",
        "Required value",
    ),
    (
        POL,
        "RateLimitPolicy",
        "limits:\n- tokenBucket: {maxTokens: 5, tokensPerFill: 0, fillInterval: 1s}",
        "spec.limits[0].tokenBucket.tokensPerFill",
        "at least 1",
    ),
    (
        POL,
        "RateLimitPolicy",
        "limits:\n- tokenBucket: {maxTokens: 5, fillInterval: 1s}\n  match:\n  - uri: {regex: '(a'}",
        "spec.limits[0].match[0].uri.regex",
        "does not compile",
    ),
    (
        POL,
        "RateLimitPolicy",
        "limits:\n- name: a\n  tokenBucket: {maxTokens: 5, fillInterval: 1s}\n- name: a\n  tokenBucket: {maxTokens: 5, fillInterval: 1s}",
        "spec.limits[1].name",
        "names another limit",
    ),
    (
        POL,
        "RateLimitPolicy",
        "limits:\n- tokenBucket: {maxTokens: 5, fillInterval: 1s}\n  match:\n  - sourceLabels: {app: a}",
        "spec.limits[0].match[0].sourceLabels",
        "unknown field",
    ),
    // Gateway API
    (
        GW,
        "Gateway",
        "gatewayClassName: istio\nlisteners:\n- {name: https, port: 443, protocol: HTTPS}",
        "spec.listeners[0].tls",
        "an HTTPS listener needs tls",
    ),
    (
        GW,
        "Gateway",
        "gatewayClassName: istio\nlisteners:\n- {name: a, port: 80, protocol: HTTP}\n- {name: a, port: 81, protocol: HTTP}",
        "spec.listeners[1].name",
        "names must be unique",
    ),
    (
        GW,
        "Gateway",
        "gatewayClassName: istio\nlisteners:\n- {name: a, port: 80, protocol: HTTP, hostname: '1.2.3.4'}",
        "spec.listeners[0].hostname",
        "not a hostname",
    ),
    (
        GW,
        "HTTPRoute",
        "parentRefs: [{name: gw}]\nrules:\n- matches:\n  - path: {type: PathPrefix, value: api}\n  backendRefs: [{name: a, port: 80}]",
        "spec.rules[0].matches[0].path.value",
        "must start with '/'",
    ),
    (
        GW,
        "HTTPRoute",
        "parentRefs: [{name: gw}]\nrules:\n- backendRefs: [{name: a}]",
        "spec.rules[0].backendRefs[0].port",
        "the Service's port",
    ),
    (
        GW,
        "HTTPRoute",
        "parentRefs: [{name: gw}]\nrules:\n- filters:\n  - type: RequestRedirect\n    requestRedirect: {statusCode: 305}",
        "spec.rules[0].filters[0].requestRedirect.statusCode",
        "use 301, 302, 303, 307 or 308",
    ),
    (
        GW,
        "HTTPRoute",
        "parentRefs: [{name: gw}]\nrules:\n- matches:\n  - path: {type: Exact, value: /a}\n  filters:\n  - type: URLRewrite\n    urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /b}}\n  backendRefs: [{name: a, port: 80}]",
        "spec.rules[0].filters[0].urlRewrite.path.type",
        "every match of the rule to be a PathPrefix",
    ),
    (
        GW,
        "HTTPRoute",
        "parentRefs: [{name: gw}]\nrules:\n- timeouts: {request: 1s, backendRequest: 2s}\n  backendRefs: [{name: a, port: 80}]",
        "spec.rules[0].timeouts.backendRequest",
        "must not be longer than request",
    ),
    (
        GW,
        "HTTPRoute",
        "parentRefs: [{name: gw}]\nrules:\n- timeouts: {request: 1.5s}\n  backendRefs: [{name: a, port: 80}]",
        "spec.rules[0].timeouts.request",
        "not a Gateway API duration",
    ),
    (
        GW,
        "GRPCRoute",
        "parentRefs: [{name: gw}]\nrules:\n- matches:\n  - method: {type: Exact}\n  backendRefs: [{name: a, port: 80}]",
        "spec.rules[0].matches[0].method",
        "one or both of service and method",
    ),
    (
        "gateway.networking.k8s.io/v1beta1",
        "ReferenceGrant",
        "from: []\nto: [{group: '', kind: Service}]",
        "spec.from",
        "at least one from entry",
    ),
];

#[test]
fn each_rule_refuses_with_field_and_reason() {
    let mut failures = Vec::new();
    for (api, kind, spec, field, fragment) in INVALID {
        let text = doc(api, kind, spec);
        let report = load::load_str(&text, Some("case.yaml"));
        let hit = report
            .errors()
            .any(|e| e.field.as_deref() == Some(*field) && e.message.contains(fragment));
        if !hit || !report.documents.is_empty() {
            let got: Vec<String> = report.errors().map(ToString::to_string).collect();
            failures.push(format!(
                "{kind} at {field} expecting {fragment:?}: got {got:?}\n{text}"
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        INVALID.len(),
        failures.join("\n")
    );
}

/// Valid documents exercising the same fields.
const VALID: &[(&str, &str, &str)] = &[
    (
        NET,
        "VirtualService",
        "hosts: [r]\ngateways: [gw]\nhttp:\n- match:\n  - headers:\n      '@request.auth.claims.groups': {exact: admin}\n      '@request.auth.claims.realm.Role': {prefix: ops}\n  route:\n  - destination: {host: r}",
    ),
    (
        NET,
        "VirtualService",
        "hosts: [r, r.shop.svc.cluster.local]\nhttp:\n- match:\n  - uri: {prefix: /api}\n    headers: {x-user: {regex: '^a.*'}, x-debug: {}}\n    queryParams: {v: {exact: '1'}}\n  rewrite: {uri: /}\n  timeout: 1.5s\n  retries: {attempts: 3, perTryTimeout: 500ms, retryOn: '5xx,connect-failure,503'}\n  route:\n  - destination: {host: r, subset: v1}\n    weight: 75\n  - destination: {host: r, subset: v2}\n    weight: 25\n  corsPolicy: {allowOrigins: [{exact: 'https://a.example.com'}], allowMethods: [GET, POST], maxAge: 24h}\n- directResponse: {status: 503, body: {string: down}}",
    ),
    (
        NET,
        "VirtualService",
        "hosts: [a.example.com]\ngateways: [istio-system/ingress, mesh]\ntls:\n- match:\n  - sniHosts: [a.example.com]\n    port: 443\n  route:\n  - destination: {host: a.example.com, port: {number: 443}}",
    ),
    (
        NET,
        "DestinationRule",
        "host: r\ntrafficPolicy:\n  loadBalancer:\n    consistentHash: {httpCookie: {name: user, ttl: 0s}}\n  connectionPool:\n    tcp: {maxConnections: 100, connectTimeout: 30ms}\n    http: {http1MaxPendingRequests: 10, maxRequestsPerConnection: 1}\n  outlierDetection: {consecutive5xxErrors: 7, interval: 5m, baseEjectionTime: 15m}\n  tls: {mode: ISTIO_MUTUAL}\n  portLevelSettings:\n  - port: {number: 80}\n    loadBalancer: {simple: LEAST_REQUEST}\nsubsets:\n- name: v1\n  labels: {version: v1}\n  trafficPolicy:\n    loadBalancer: {simple: ROUND_ROBIN}",
    ),
    (
        NET,
        "Gateway",
        "selector: {istio: ingressgateway}\nservers:\n- port: {number: 443, name: https, protocol: HTTPS}\n  hosts: ['shop/*.example.com']\n  tls: {mode: SIMPLE, credentialName: shop-cert}\n- port: {number: 80, name: http, protocol: HTTP}\n  hosts: ['*']\n  tls: {httpsRedirect: true}",
    ),
    (
        NET,
        "ServiceEntry",
        "hosts: [api.example.com]\nlocation: MESH_EXTERNAL\nports:\n- {name: https, number: 443, protocol: TLS}\nresolution: DNS",
    ),
    (
        NET,
        "Sidecar",
        "egress:\n- hosts: ['./*', 'istio-system/*']\noutboundTrafficPolicy: {mode: REGISTRY_ONLY}",
    ),
    (
        SEC,
        "PeerAuthentication",
        "selector: {matchLabels: {app: r}}\nmtls: {mode: STRICT}\nportLevelMtls:\n  8080: {mode: PERMISSIVE}",
    ),
    (
        SEC,
        "AuthorizationPolicy",
        "action: DENY\nrules:\n- from:\n  - source: {notNamespaces: [shop]}\n  to:\n  - operation: {methods: [POST], paths: ['/admin/*']}\n  when:\n  - key: request.headers[x-token]\n    notValues: ['secret']",
    ),
    (SEC, "AuthorizationPolicy", "{}"),
    (
        SEC,
        "RequestAuthentication",
        "selector: {matchLabels: {app: r}}\njwtRules:\n- issuer: testing@secure.istio.io\n  jwksUri: https://raw.example.com/jwks.json\n  fromHeaders: [{name: x-jwt, prefix: 'Bearer '}]\n  outputClaimToHeaders: [{header: x-sub, claim: sub}]",
    ),
    (
        POL,
        "RateLimitPolicy",
        "selector: {matchLabels: {app: r}}\nlimits:\n- name: per-workload\n  tokenBucket: {maxTokens: 100, tokensPerFill: 100, fillInterval: 1s}\n- name: writes\n  match:\n  - method: {exact: POST}\n    uri: {prefix: /api}\n    headers: {x-tenant: {}}\n    port: 8080\n  tokenBucket: {maxTokens: 10, fillInterval: 100ms}",
    ),
    (
        GW,
        "Gateway",
        "gatewayClassName: istio\nlisteners:\n- name: https\n  port: 443\n  protocol: HTTPS\n  hostname: '*.example.com'\n  tls: {certificateRefs: [{name: cert}]}\n  allowedRoutes: {namespaces: {from: Selector, selector: {matchLabels: {shared: 'true'}}}}",
    ),
    (
        GW,
        "HTTPRoute",
        "parentRefs: [{name: gw, sectionName: https}, {group: '', kind: Service, name: r, port: 80}]\nhostnames: [shop.example.com]\nrules:\n- matches:\n  - path: {type: PathPrefix, value: /api}\n    headers: [{name: x-v, value: '2'}]\n    queryParams: [{type: RegularExpression, name: q, value: '^a'}]\n    method: GET\n  filters:\n  - type: RequestHeaderModifier\n    requestHeaderModifier: {set: [{name: x-a, value: b}], remove: [x-c]}\n  - type: URLRewrite\n    urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /v2}}\n  backendRefs: [{name: a, port: 80, weight: 90}, {name: b, namespace: other, port: 80, weight: 10}]\n  timeouts: {request: 10s, backendRequest: 2s}\n  retry: {attempts: 2, codes: [503], backoff: 100ms}",
    ),
    (
        GW,
        "GRPCRoute",
        "parentRefs: [{name: gw}]\nrules:\n- matches:\n  - method: {service: shop.Cart, method: Add}\n  backendRefs: [{name: cart, port: 50051}]",
    ),
];

#[test]
fn valid_documents_are_accepted() {
    for (api, kind, spec) in VALID {
        let text = doc(api, kind, spec);
        let report = load::load_str(&text, Some("ok.yaml"));
        let errs: Vec<String> = report.errors().map(ToString::to_string).collect();
        assert!(errs.is_empty(), "{kind}: {errs:?}\n{text}");
        assert_eq!(report.documents.len(), 1);
    }
}

/// Gateway API fields the mesh does not apply are said so, field by field.
#[test]
fn gateway_api_fields_not_applied_are_reported() {
    let text = doc(
        GW,
        "Gateway",
        "gatewayClassName: istio\ninfrastructure: {labels: {team: a}}\nlisteners:\n- {name: http, port: 80, protocol: HTTP}",
    );
    let report = load::load_str(&text, Some("gw.yaml"));
    assert!(report.is_valid());
    let warned: Vec<String> = report
        .warnings()
        .filter(|d| d.message.contains(mesh_api::validate::NOT_ENFORCED))
        .filter_map(|d| d.field.clone())
        .collect();
    assert_eq!(warned, ["spec.infrastructure"], "{:?}", report.diagnostics);
}
