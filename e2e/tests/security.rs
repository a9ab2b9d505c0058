//! Security policy end to end, through the harness (the local backend here, kind with `make kind-e2e`): the seed's `require-jwt.yaml` unchanged,
//! with its issuer's key set served inside the mesh (`jwks.default.svc.cluster.local`) and
//! fetched by booking's sidecar through its own outbound path; a DENY-all AuthorizationPolicy
//! taking effect as soon as it is applied and stopping when deleted; a principals rule refusing
//! a workload whose certificate proves another service account; a CUSTOM policy whose
//! provider, named in the mesh configuration (ConfigMap `istio`), is an authorizer pod in the
//! mesh. Root only, like the rest of the
//! suite (`#[ignore = "needs root"]`, run by the test script with `--run-ignored all`).

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::path::Path;
use std::time::{Duration, Instant};

use jsonwebtoken::Algorithm;
use mesh_e2e::harness::{self, Cluster, echo_pod};
use mesh_e2e::load::Report;
use mesh_proxy::testing::jwt::Issuer;
use meshctl::local::wait_until;

const DEADLINE: Duration = Duration::from_secs(30);
const DENIED: &str = "403 RBAC: access denied";

/// The JSON access log lines of `pod`'s sidecar (the local mesh turns access logs on, as
/// Istio's demo profile does).
fn access_log(c: &dyn Cluster, pod: &str) -> Vec<serde_json::Value> {
    c.proxy_log(pod)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v.get("direction").is_some())
        .collect()
}

/// What `pod`'s access log says denied requests.
fn denied_by(c: &dyn Cluster, pod: &str) -> Vec<String> {
    access_log(c, pod)
        .iter()
        .filter_map(|e| e["denied_by"].as_str().map(str::to_string))
        .collect()
}

/// `n` requests from `pod` to `url`, with `headers`.
fn send(c: &dyn Cluster, pod: &str, url: &str, n: usize, headers: &[String]) -> Report {
    let n = n.to_string();
    let mut args = vec!["-n", n.as_str(), "-c", "1"];
    for h in headers {
        args.extend(["-H", h.as_str()]);
    }
    c.load(pod, url, &args).unwrap()
}

/// Whether every one of the report's requests failed with `why`.
fn all_failed_with(report: &Report, why: &str) -> bool {
    report.ok == 0 && report.failures.get(why) == Some(&report.requests)
}

fn bearer(token: &str) -> String {
    format!("authorization: Bearer {token}")
}

/// A Service `name` on port 8080 and its Deployment of one mesh-echo, with `args` appended to
/// mesh-echo's (each `, "--flag", "value"`).
fn app(name: &str, args: &str) -> String {
    format!(
        "
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: default}}
spec:
  selector: {{app: {name}}}
  ports:
  - {{name: http, port: 8080}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: {name}-v1, namespace: default}}
spec:
  selector:
    matchLabels: {{app: {name}, version: v1}}
  template:
    metadata:
      labels: {{app: {name}, version: v1}}
    spec:
      containers:
      - name: {name}
        image: mesh-echo:latest
        args: [\"--port\", \"8080\", \"--service\", \"{name}\"{args}]
        ports:
        - containerPort: 8080
"
    )
}

/// The seed's booking service, a client, and a pod serving `jwks` as the seed's `jwksUri`.
fn booking_with_keys(c: &dyn Cluster, jwks: &str) {
    // The key set travels in the container's env, which every backend passes on.
    let jwks_app = app("jwks", ", \"--file\", \"/jwks.json=env:JWKS\"").replace(
        "        ports:\n",
        &format!(
            "        env: [{{name: JWKS, value: {}}}]\n        ports:\n",
            serde_json::Value::String(jwks.to_string())
        ),
    );
    let yaml = [app("booking-service", ""), jwks_app, app("client", "")].join("---\n");
    c.apply_yaml(&yaml).unwrap();
    c.wait_endpoints("client-v1-0", "booking-service.default", 1)
        .unwrap();
    c.wait_endpoints("booking-service-v1-0", "jwks.default", 1)
        .unwrap();
}

#[test]
#[ignore = "needs root: runs a mesh in network namespaces"]
fn the_seed_require_jwt_with_keys_served_in_the_mesh() {
    // Our sample's copy of the seed file (api/tests/samples.rs holds it to the seed's bytes).
    let seed = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../manifests/samples/order-app/require-jwt.yaml");
    let c = harness::cluster("jwt");
    let issuer = Issuer::new("testing@secure.istio.io");
    booking_with_keys(&*c, &issuer.jwks_of(&["rsa-1"]));
    let url = "http://booking-service:8080/";
    // Before the policy, anyone gets through.
    assert_eq!(send(&*c, "client-v1-0", url, 3, &[]).ok, 3);

    c.apply(&seed).unwrap();
    let valid = issuer.sign(
        Algorithm::RS256,
        &issuer.claims("testing@secure.istio.io", "booking"),
    );
    // No token: the ALLOW rule needs a request principal, so 403.
    assert!(
        wait_until(DEADLINE, || all_failed_with(
            &send(&*c, "client-v1-0", url, 1, &[]),
            DENIED
        )),
        "require-jwt never took effect"
    );
    let none = send(&*c, "client-v1-0", url, 5, &[]);
    assert!(all_failed_with(&none, DENIED), "{none:?}");
    // A valid token from the seed's issuer, verified with keys fetched from jwks.default.
    let ok = send(&*c, "client-v1-0", url, 5, &[bearer(&valid)]);
    assert_eq!(ok.ok, 5, "{ok:?}");
    // Another issuer's token (signed with the very same key): 401.
    let other = Issuer::new("someone-else@example.com");
    let foreign = other.sign(
        Algorithm::RS256,
        &other.claims("testing@secure.istio.io", "booking"),
    );
    let refused = send(&*c, "client-v1-0", url, 3, &[bearer(&foreign)]);
    assert!(
        all_failed_with(&refused, "401 Jwt issuer is not configured"),
        "{refused:?}"
    );
    // A token of the seed's issuer with a bad signature: 401 too, never 200.
    let mut forged = valid.clone();
    forged.replace_range(forged.len() - 4.., "AAAA");
    let bad = send(&*c, "client-v1-0", url, 3, &[bearer(&forged)]);
    assert!(
        bad.ok == 0 && bad.failures.keys().all(|k| k.starts_with("401")),
        "{bad:?}"
    );

    // `meshctl why` tells each of those fates, with booking's sidecar checking the token.
    if let Some(local) = c.as_local() {
        let why = |headers: &[String]| {
            let dir = local.dir().to_str().unwrap().to_string();
            let mut args = vec!["why", "--dir", &dir, "client-v1-0", url];
            for h in headers {
                args.extend(["-H", h.as_str()]);
            }
            let bin = meshctl::local::find_binary("meshctl", "meshctl").unwrap();
            let out = std::process::Command::new(bin)
                .args(&args)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        let text = why(&[]);
        for line in [
            "no JWT where RequestAuthentication default/booking-jwt looks: unauthenticated",
            "Verdict: 100%: 403 from booking-service-v1-0's sidecar: denied: no ALLOW policy matched (ALLOW policies there: default/require-jwt)",
            "(the request carries no JWT)",
        ] {
            assert!(text.contains(line), "{line}: {text}");
        }
        let text = why(&[bearer(&valid)]);
        for line in [
            "JWT verified by its sidecar (RequestAuthentication default/booking-jwt): principal testing@secure.istio.io/testing@secure.istio.io",
            "Verdict: 100%: booking-service-v1-0 answers.",
        ] {
            assert!(text.contains(line), "{line}: {text}");
        }
        let text = why(&[bearer(&foreign)]);
        assert!(
            text.contains("Verdict: 100%: 401 from booking-service-v1-0's sidecar: Jwt issuer is not configured (RequestAuthentication default/booking-jwt)."),
            "{text}"
        );
    }
}

const DENY_ALL_SHIPPING: &str = "
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-shipping, namespace: default}
spec:
  selector:
    matchLabels: {app: shipping}
  action: DENY
  rules: [{}]
";

#[test]
#[ignore = "needs root: runs a mesh in network namespaces"]
fn deny_all_refuses_at_once_and_delete_restores() {
    let c = harness::cluster("deny");
    c.apply(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/samples/order-app"))
        .unwrap();
    c.wait_endpoints("order-v1-0", "shipping-service.default", 2)
        .unwrap();
    let url = "http://shipping-service:8080/";
    assert_eq!(send(&*c, "order-v1-0", url, 20, &[]).ok, 20);

    let applied = Instant::now();
    c.apply_yaml(DENY_ALL_SHIPPING).unwrap();
    assert!(
        wait_until(DEADLINE, || all_failed_with(
            &send(&*c, "order-v1-0", url, 1, &[]),
            DENIED
        )),
        "the DENY policy never took effect"
    );
    let took = applied.elapsed();
    // Once in force it holds for every request, on both shipping versions.
    let denied = send(&*c, "order-v1-0", url, 20, &[]);
    assert!(all_failed_with(&denied, DENIED), "{denied:?}");
    eprintln!("DENY-all in force {} ms after apply", took.as_millis());
    assert!(
        took < Duration::from_secs(5),
        "a DENY policy must be in force within seconds: took {took:?}"
    );
    // The sidecar's access log names the policy and rule.
    let denials = denied_by(&*c, "shipping-v1-0");
    assert!(
        denials.contains(&"denied by default/deny-shipping rules[0] (DENY)".to_string()),
        "shipping's access log names the deciding policy: {denials:?}"
    );

    c.delete_yaml(DENY_ALL_SHIPPING).unwrap();
    assert!(
        wait_until(DEADLINE, || send(&*c, "order-v1-0", url, 1, &[]).ok == 1),
        "deleting the policy never restored traffic"
    );
    let back = send(&*c, "order-v1-0", url, 20, &[]);
    assert_eq!(back.ok, 20, "{back:?}");
}

#[test]
#[ignore = "needs root: runs a mesh in network namespaces"]
fn a_principals_rule_refuses_another_service_account() {
    let c = harness::cluster("principals");
    c.apply_yaml(
        "
apiVersion: v1
kind: Service
metadata: {name: vault, namespace: default}
spec:
  selector: {app: vault}
  ports:
  - {name: http, port: 8080}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: vault-callers, namespace: default}
spec:
  selector:
    matchLabels: {app: vault}
  action: ALLOW
  rules:
  - from:
    - source:
        principals: [cluster.local/ns/default/sa/teller]
",
    )
    .unwrap();
    c.run(&echo_pod("vault-0", "vault", "v1", "vault")).unwrap();
    c.run(&echo_pod("teller", "teller", "v1", "teller"))
        .unwrap();
    // Same app labels as the teller, but its certificate proves service account `intruder`.
    c.run(&echo_pod("intruder", "teller", "v1", "intruder"))
        .unwrap();
    for pod in ["teller", "intruder"] {
        c.wait_endpoints(pod, "vault.default", 1).unwrap();
    }
    let url = "http://vault:8080/";
    let allowed = send(&*c, "teller", url, 5, &[]);
    assert_eq!(allowed.ok, 5, "{allowed:?}");
    assert_eq!(
        allowed
            .by_peer
            .get("spiffe://cluster.local/ns/default/sa/teller"),
        Some(&5)
    );
    let refused = send(&*c, "intruder", url, 5, &[]);
    assert!(all_failed_with(&refused, DENIED), "{refused:?}");
    let refused_peers: Vec<String> = access_log(&*c, "vault-0")
        .iter()
        .filter(|e| e["response_code"] == 403)
        .filter_map(|e| e["downstream_peer_principal"].as_str().map(str::to_string))
        .collect();
    assert!(
        refused_peers.contains(&"spiffe://cluster.local/ns/default/sa/intruder".to_string()),
        "vault's access log shows the identity it refused: {refused_peers:?}"
    );
}

/// Istio's ext-authz task: the mesh configuration names the authorizer, a CUSTOM policy sends
/// booking's `/orders*` requests to it.
/// Access logs for the whole mesh through Istio's Telemetry API (the mesh configuration the
/// test applies replaces the local mesh's default, which turned them on).
const ACCESS_LOGS: &str = r#"
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: mesh-default, namespace: istio-system}
spec:
  accessLogging:
  - providers: [{name: envoy}]
"#;

const EXT_AUTHZ: &str = r#"
apiVersion: v1
kind: ConfigMap
metadata: {name: istio, namespace: istio-system}
data:
  mesh: |
    extensionProviders:
    - name: sample-ext-authz-http
      envoyExtAuthzHttp:
        service: ext-authz.default.svc.cluster.local
        port: 8080
        includeRequestHeadersInCheck: ["x-ext-authz"]
        headersToDownstreamOnDeny: ["x-ext-authz-check-result"]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ext-authz, namespace: default}
spec:
  selector:
    matchLabels: {app: booking-service}
  action: CUSTOM
  provider: {name: sample-ext-authz-http}
  rules:
  - to:
    - operation:
        paths: ["/orders*"]
"#;

#[test]
#[ignore = "needs root: runs a mesh in network namespaces"]
fn a_custom_policy_asks_the_authorizer_in_the_mesh() {
    let c = harness::cluster("extauthz");
    let yaml = [
        app("booking-service", ""),
        app("ext-authz", ", \"--ext-authz\""),
        app("client", ""),
        ACCESS_LOGS.to_string(),
    ]
    .join("---\n");
    c.apply_yaml(&yaml).unwrap();
    c.wait_endpoints("client-v1-0", "booking-service.default", 1)
        .unwrap();
    c.wait_endpoints("booking-service-v1-0", "ext-authz.default", 1)
        .unwrap();
    let orders = "http://booking-service:8080/orders/1";
    assert_eq!(send(&*c, "client-v1-0", orders, 3, &[]).ok, 3);

    c.apply_yaml(EXT_AUTHZ).unwrap();
    let denied = format!("403 {}", mesh_e2e::echo::EXT_AUTHZ_DENIED);
    assert!(
        wait_until(DEADLINE, || all_failed_with(
            &send(&*c, "client-v1-0", orders, 1, &[]),
            &denied
        )),
        "the CUSTOM policy never took effect"
    );
    // The authorizer's denial is the client's answer; its allowed requests go through.
    let refused = send(&*c, "client-v1-0", orders, 5, &[]);
    assert!(all_failed_with(&refused, &denied), "{refused:?}");
    let allowed = send(
        &*c,
        "client-v1-0",
        orders,
        5,
        &["x-ext-authz: allow".into()],
    );
    assert_eq!(allowed.ok, 5, "{allowed:?}");
    // A path the policy does not match is not checked.
    let other = send(
        &*c,
        "client-v1-0",
        "http://booking-service:8080/health",
        5,
        &[],
    );
    assert_eq!(other.ok, 5, "{other:?}");
    // booking's access log names the policy and the authorizer's verdict.
    let denials = denied_by(&*c, "booking-service-v1-0");
    assert!(
        denials.contains(
            &"denied by default/ext-authz rules[0] (CUSTOM: authorizer \"sample-ext-authz-http\" answered 403)"
                .to_string()
        ),
        "booking's access log names the deciding policy: {denials:?}"
    );
}

/// Routing on JWT claims at the ingress gateway, as Istio's "JWT claim based routing" task:
/// a RequestAuthentication selecting the gateway, its keys served in the mesh, and a route
/// for tokens whose `groups` claim holds `admin` (to `jwks`, a service that answers with its
/// name; the rest go to booking).
const CLAIM_ROUTING: &str = r#"
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: shop-gateway, namespace: default}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: shop, namespace: default}
spec:
  hosts: ["*"]
  gateways: [shop-gateway]
  http:
  - match:
    - headers:
        "@request.auth.claims.groups": {exact: admin}
    route:
    - destination: {host: jwks, port: {number: 8080}}
  - route:
    - destination: {host: booking-service, port: {number: 8080}}
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: ingress-jwt, namespace: istio-system}
spec:
  selector:
    matchLabels: {istio: ingressgateway}
  jwtRules:
  - issuer: testing@secure.istio.io
    jwksUri: http://jwks.default.svc.cluster.local:8080/jwks.json
"#;

#[test]
#[ignore = "needs root: runs a mesh in network namespaces"]
fn the_ingress_gateway_routes_on_verified_jwt_claims() {
    let c = harness::cluster("claims");
    let issuer = Issuer::new("testing@secure.istio.io");
    booking_with_keys(&*c, &issuer.jwks_of(&["rsa-1"]));
    c.apply_yaml(CLAIM_ROUTING).unwrap();
    // The client pod's sidecar sends to the gateway's pod address as to any address outside
    // the registry; the gateway verifies tokens with keys it fetches through the mesh.
    let url = format!("http://{}/orders", c.ingress().unwrap());
    let token = |groups: serde_json::Value| {
        let mut claims = issuer.claims("alice", "booking");
        claims["groups"] = groups;
        bearer(&issuer.sign(Algorithm::RS256, &claims))
    };
    let answered_by = |r: &Report, service: &str| r.by_service.get(service).copied();
    let admin = [token(serde_json::json!(["dev", "admin"]))];
    let routed = wait_until(DEADLINE, || {
        answered_by(&send(&*c, "client-v1-0", &url, 1, &admin), "jwks") == Some(1)
    });
    assert!(routed, "the gateway never routed an admin's token to jwks");
    let admins = send(&*c, "client-v1-0", &url, 10, &admin);
    assert_eq!(answered_by(&admins, "jwks"), Some(10), "{admins:?}");
    // Another group, or no token at all: the other route.
    let dev = send(
        &*c,
        "client-v1-0",
        &url,
        5,
        &[token(serde_json::json!("dev"))],
    );
    assert_eq!(answered_by(&dev, "booking-service"), Some(5), "{dev:?}");
    let anonymous = send(&*c, "client-v1-0", &url, 5, &[]);
    assert_eq!(
        answered_by(&anonymous, "booking-service"),
        Some(5),
        "{anonymous:?}"
    );
    // A token the gateway cannot verify is refused there, before any route.
    let other = Issuer::new("someone-else@example.com");
    let foreign = other.sign(Algorithm::RS256, &other.claims("alice", "booking"));
    let refused = send(&*c, "client-v1-0", &url, 3, &[bearer(&foreign)]);
    assert!(
        all_failed_with(&refused, "401 Jwt issuer is not configured"),
        "{refused:?}"
    );
}
