//! Translation golden tests: Istio YAML in, one proxy's state out. The bookinfo routes come
//! from Istio's own samples (`../shared/testdata/istio-samples/bookinfo/networking/`), the
//! order application from the seed; both are compared with the files in `tests/golden/`
//! (regenerate with `UPDATE_GOLDEN=1` after checking the difference is intended), and the
//! routing decisions that matter are also asserted one by one.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use mesh_api::load;
use mesh_api::proto::state::v1 as state;
use mesh_pilot::model::Model;
use mesh_pilot::testing;
use mesh_pilot::translate::{ProxyNode, view};

use mesh_api::testing::shared_testdata as testdata;

fn model_from(paths: &[PathBuf]) -> Model {
    let paths: Vec<&Path> = paths.iter().map(PathBuf::as_path).collect();
    testing::model(&testing::resources_from(&paths))
}

fn node(ns: &str, labels: &[(&str, &str)], ip: &str) -> ProxyNode {
    testing::node(ns, "", labels, ip)
}

/// Compares `state` with `tests/golden/NAME.json` (keys sorted, so the file is stable), after
/// checking the proxy accepts it as it is.
fn golden(name: &str, state: &state::ProxyState) {
    if let Err(e) = mesh_proxy::state::State::compile(state.clone()) {
        panic!("{name}: the proxy refuses pilot's state: {e}");
    }
    let value = serde_json::to_value(state).unwrap();
    let text = serde_json::to_string_pretty(&value).unwrap() + "\n";
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/golden/{name}.json"));
    if std::env::var("UPDATE_GOLDEN").is_ok() {
        std::fs::write(&path, &text).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (run with UPDATE_GOLDEN=1 to create it)",
            path.display()
        )
    });
    assert!(
        want == text,
        "{name}: the translation differs from {}; run with UPDATE_GOLDEN=1 and review the diff\n{text}",
        path.display()
    );
}

fn bookinfo(data: &Path, routes: &str) -> Model {
    let samples = data.join("istio-samples/bookinfo");
    model_from(&[
        samples.join("platform/kube/bookinfo.yaml"),
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/bookinfo-pods.yaml"),
        samples.join("networking/destination-rule-all.yaml"),
        samples.join(format!("networking/{routes}")),
    ])
}

fn productpage() -> ProxyNode {
    node(
        "default",
        &[("app", "productpage"), ("version", "v1")],
        "10.0.0.15",
    )
}

fn service<'a>(s: &'a state::ProxyState, short: &str) -> &'a state::Service {
    let host = format!("{short}.default.svc.cluster.local");
    s.services
        .iter()
        .find(|x| x.hostname == host)
        .unwrap_or_else(|| panic!("{host} missing"))
}

fn split(route: &state::HttpRoute) -> Vec<(String, u32)> {
    route
        .destinations
        .iter()
        .map(|d| (d.subset.clone(), d.weight))
        .collect()
}

#[test]
#[ignore = "needs shared testdata"]
fn bookinfo_all_v1() {
    let data = testdata();
    let v = view(
        &bookinfo(&data, "virtual-service-all-v1.yaml"),
        &productpage(),
    );
    assert!(v.rejections.is_empty(), "{:?}", v.rejections);
    for svc in ["details", "ratings", "reviews", "productpage"] {
        let s = service(&v.state, svc);
        assert_eq!(s.http_routes.len(), 1, "{svc}");
        assert_eq!(split(&s.http_routes[0]), vec![("v1".into(), 100)], "{svc}");
    }
    let reviews = service(&v.state, "reviews");
    assert_eq!(reviews.endpoints.len(), 3);
    assert_eq!(reviews.subsets.len(), 3);
    assert_eq!(
        reviews.endpoints[0].identity,
        "spiffe://cluster.local/ns/default/sa/bookinfo-reviews"
    );
    assert!(reviews.endpoints.iter().all(|e| e.mesh));
    // productpage serves 9080 itself.
    assert_eq!(
        v.state.inbound_ports,
        vec![state::WorkloadPort {
            port: 9080,
            protocol: state::Protocol::Http.into()
        }]
    );
    golden("bookinfo-all-v1", &v.state);
}

#[test]
#[ignore = "needs shared testdata"]
fn bookinfo_50_50_and_80_20() {
    let data = testdata();
    let v = view(
        &bookinfo(&data, "virtual-service-reviews-50-v3.yaml"),
        &productpage(),
    );
    let r = &service(&v.state, "reviews").http_routes;
    assert_eq!(split(&r[0]), vec![("v1".into(), 50), ("v3".into(), 50)]);
    golden("bookinfo-reviews-50-v3", &v.state);

    let v = view(
        &bookinfo(&data, "virtual-service-reviews-80-20.yaml"),
        &productpage(),
    );
    let r = &service(&v.state, "reviews").http_routes;
    assert_eq!(split(&r[0]), vec![("v1".into(), 80), ("v2".into(), 20)]);
    golden("bookinfo-reviews-80-20", &v.state);
}

#[test]
#[ignore = "needs shared testdata"]
fn bookinfo_jason_goes_to_v2() {
    let data = testdata();
    let v = view(
        &bookinfo(&data, "virtual-service-reviews-jason-v2-v3.yaml"),
        &productpage(),
    );
    let r = &service(&v.state, "reviews").http_routes;
    assert_eq!(r.len(), 2);
    let m = &r[0].matches[0].headers["end-user"];
    assert_eq!(
        m.kind,
        Some(state::string_match::Kind::Exact("jason".into()))
    );
    assert_eq!(split(&r[0]), vec![("v2".into(), 100)]);
    assert!(r[1].matches.is_empty());
    assert_eq!(split(&r[1]), vec![("v3".into(), 100)]);
    golden("bookinfo-reviews-jason-v2-v3", &v.state);
}

#[test]
#[ignore = "needs shared testdata"]
fn seed_order_view() {
    let data = testdata();
    let mut m = model_from(&[data.join("seeds")]);
    // The seed has Deployments only; give shipping two endpoints, as the runtime would.
    let we = |name: &str, ip: &str, version: &str| {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  address: {ip}\n  serviceAccount: shipping\n  labels: {{app: shipping, version: {version}, security.istio.io/tlsMode: istio}}\n---\n"
        )
    };
    let text = we("shipping-v1-0", "10.0.0.31", "v1") + &we("shipping-v2-0", "10.0.0.32", "v2");
    let mut resources: Vec<_> = load::load_path(&data.join("seeds"))
        .unwrap()
        .documents
        .into_iter()
        .map(|d| d.resource)
        .collect();
    let extra = load::load_str(&text, None);
    assert!(extra.is_valid(), "{:?}", extra.errors().collect::<Vec<_>>());
    resources.extend(extra.documents.into_iter().map(|d| d.resource));
    m = Model::build(m.config, &resources, BTreeMap::new());
    let v = view(
        &m,
        &node(
            "default",
            &[("app", "order"), ("version", "v1")],
            "10.0.0.20",
        ),
    );
    assert!(v.rejections.is_empty(), "{:?}", v.rejections);
    let shipping = service(&v.state, "shipping-service");
    let weights: Vec<u32> = shipping.http_routes[0]
        .destinations
        .iter()
        .map(|d| d.weight)
        .collect();
    assert_eq!(weights, vec![90, 10]);
    assert_eq!(shipping.endpoints.len(), 2);
    assert_eq!(
        v.state.peer_authentication.as_ref().unwrap().mode(),
        state::PeerMode::Strict
    );
    let inventory = service(&v.state, "inventory-service");
    let policy = inventory.traffic_policy.as_ref().unwrap();
    assert!(policy.outlier_detection.is_some());
    // The circuit breaker of Istio's task: one connection, one pending, one per connection.
    assert_eq!(
        policy.connection_pool,
        Some(state::ConnectionPool {
            max_connections: 1,
            http1_max_pending_requests: 1,
            max_requests_per_connection: 1,
            ..Default::default()
        })
    );
    golden("seed-order", &v.state);
}

#[test]
fn connection_pools_carry_every_limit_the_proxy_applies() {
    let m = testing::model(&testing::resources(
        "apiVersion: v1\nkind: Service\nmetadata: {name: inventory, namespace: default}\nspec:\n  selector: {app: inventory}\n  ports: [{name: http, port: 80}]\n---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: inventory, namespace: default}\nspec:\n  host: inventory\n  trafficPolicy:\n    connectionPool:\n      tcp: {maxConnections: 3, connectTimeout: 250ms}\n      http: {http1MaxPendingRequests: 4, http2MaxRequests: 5, maxRequestsPerConnection: 6, maxRetries: 7, idleTimeout: 30s}\n",
    ));
    let v = view(&m, &node("default", &[("app", "order")], "10.0.0.20"));
    let policy = service(&v.state, "inventory")
        .traffic_policy
        .clone()
        .unwrap();
    assert_eq!(
        policy.connection_pool,
        Some(state::ConnectionPool {
            max_connections: 3,
            connect_timeout_ms: 250,
            http1_max_pending_requests: 4,
            http2_max_requests: 5,
            max_requests_per_connection: 6,
            max_retries: 7,
            idle_timeout_ms: 30_000,
        })
    );
}

#[test]
fn custom_policies_carry_their_authorizers_from_the_mesh_configuration() {
    // Istio's ext-authz task: the mesh configuration names two authorizers; a CUSTOM policy
    // on httpbin uses the HTTP one. Only httpbin's view carries it, with its service resolved.
    let yaml = r#"
apiVersion: v1
kind: ConfigMap
metadata: {name: istio, namespace: istio-system}
data:
  mesh: |
    extensionProviders:
    - name: sample-ext-authz-grpc
      envoyExtAuthzGrpc: {service: ext-authz.foo.svc.cluster.local, port: 9000}
    - name: sample-ext-authz-http
      envoyExtAuthzHttp:
        service: foo/ext-authz.foo.svc.cluster.local
        port: 8000
        includeRequestHeadersInCheck: ["x-ext-authz"]
---
apiVersion: v1
kind: Service
metadata: {name: ext-authz, namespace: foo}
spec:
  selector: {app: ext-authz}
  ports: [{name: http, port: 8000}, {name: grpc, port: 9000}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ext-authz, namespace: foo}
spec:
  selector: {matchLabels: {app: httpbin}}
  action: CUSTOM
  provider: {name: sample-ext-authz-http}
  rules: [{to: [{operation: {paths: ["/headers"]}}]}]
"#;
    let m = testing::model(&testing::resources(yaml));
    let httpbin = view(&m, &node("foo", &[("app", "httpbin")], "10.0.0.40"));
    let providers = &httpbin.state.extension_providers;
    assert_eq!(providers.len(), 1, "{providers:?}");
    assert_eq!(providers[0].name, "sample-ext-authz-http");
    assert_eq!(providers[0].host, "ext-authz.foo.svc.cluster.local");
    let spec: serde_json::Value = serde_json::from_str(&providers[0].spec_json).unwrap();
    assert_eq!(spec["envoyExtAuthzHttp"]["port"], 8000);
    // The proxy accepts what pilot sends.
    mesh_proxy::state::State::compile(httpbin.state.clone()).unwrap();
    let other = view(&m, &node("foo", &[("app", "curl")], "10.0.0.41"));
    assert!(other.state.extension_providers.is_empty());
}

#[test]
#[ignore = "needs shared testdata"]
fn bookinfo_fault_injection_for_jason() {
    // Istio's fault-injection task: jason's ratings requests delayed 7s, or aborted with 500;
    // everyone else's untouched.
    let data = testdata();
    let reviews = node(
        "default",
        &[("app", "reviews"), ("version", "v2")],
        "10.0.0.17",
    );
    let delay = view(
        &bookinfo(&data, "virtual-service-ratings-test-delay.yaml"),
        &reviews,
    );
    assert!(delay.rejections.is_empty(), "{:?}", delay.rejections);
    let r = &service(&delay.state, "ratings").http_routes;
    let fault = r[0].fault.as_ref().expect("jason's route has the fault");
    assert_eq!((fault.delay_ms, fault.delay_percent), (7_000, 100.0));
    assert_eq!(fault.abort_http_status, 0);
    assert!(r[1].fault.is_none());
    let abort = view(
        &bookinfo(&data, "virtual-service-ratings-test-abort.yaml"),
        &reviews,
    );
    let r = &service(&abort.state, "ratings").http_routes;
    let fault = r[0].fault.as_ref().expect("jason's route has the fault");
    assert_eq!((fault.abort_http_status, fault.abort_percent), (500, 100.0));
    assert_eq!(fault.delay_ms, 0);
    assert!(r[1].fault.is_none());
}

#[test]
fn outlier_detection_gets_istios_defaults() {
    let m = testing::model(&testing::resources(
        "apiVersion: v1\nkind: Service\nmetadata: {name: reviews, namespace: default}\nspec:\n  selector: {app: reviews}\n  ports: [{name: http, port: 80}]\n---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: reviews, namespace: default}\nspec:\n  host: reviews\n  trafficPolicy:\n    outlierDetection: {consecutiveGatewayErrors: 3}\n",
    ));
    let v = view(&m, &node("default", &[("app", "order")], "10.0.0.20"));
    let policy = service(&v.state, "reviews").traffic_policy.clone().unwrap();
    // Envoy's defaults as Istio configures them: five 5xx in a row, 10 s, 30 s, 10%, no panic.
    assert_eq!(
        policy.outlier_detection,
        Some(state::OutlierDetection {
            consecutive_5xx_errors: 5,
            consecutive_gateway_errors: 3,
            interval_ms: 10_000,
            base_ejection_time_ms: 30_000,
            max_ejection_percent: 10,
            min_health_percent: 0,
            split_local_origin: false,
            consecutive_local_origin_failures: 0,
        })
    );
    // Split local failures: Envoy's five unless set.
    let split = testing::model(&testing::resources(
        "apiVersion: v1\nkind: Service\nmetadata: {name: reviews, namespace: default}\nspec:\n  selector: {app: reviews}\n  ports: [{name: http, port: 80}]\n---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: reviews, namespace: default}\nspec:\n  host: reviews\n  trafficPolicy:\n    outlierDetection: {splitExternalLocalOriginErrors: true}\n",
    ));
    let v = view(&split, &node("default", &[("app", "order")], "10.0.0.20"));
    let od = service(&v.state, "reviews")
        .traffic_policy
        .clone()
        .unwrap()
        .outlier_detection
        .unwrap();
    assert_eq!(
        (od.split_local_origin, od.consecutive_local_origin_failures),
        (true, 5)
    );
}

#[test]
fn retries_translate_as_istio_does() {
    let vs = |retries: &str| {
        testing::model(&testing::resources(&format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: ratings, namespace: default}}\nspec:\n  selector: {{app: ratings}}\n  ports: [{{name: http, port: 80}}]\n---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: ratings, namespace: default}}\nspec:\n  hosts: [ratings]\n  http:\n  - timeout: 3s\n{retries}    route: [{{destination: {{host: ratings}}}}]\n"
        )))
    };
    let route = |m: &Model| {
        let v = view(m, &node("default", &[("app", "order")], "10.0.0.20"));
        service(&v.state, "ratings").http_routes[0].clone()
    };
    // Unset: Istio's default policy.
    let r = route(&vs(""));
    assert_eq!(r.timeout_ms, 3_000);
    let p = r.retry.unwrap();
    assert_eq!(p.attempts, 2);
    assert_eq!(
        p.retry_on,
        [
            "connect-failure",
            "refused-stream",
            "unavailable",
            "cancelled",
            "retriable-status-codes"
        ]
    );
    assert_eq!(p.retriable_status_codes, [503]);
    // retryOn replaces the conditions; its numbers are the retriable status codes.
    let r = route(&vs(
        "    retries: {attempts: 4, perTryTimeout: 250ms, retryOn: '5xx,409, reset', backoff: 40ms}\n",
    ));
    let p = r.retry.unwrap();
    assert_eq!(
        (p.attempts, p.per_try_timeout_ms, p.backoff_base_ms),
        (4, 250, 40)
    );
    assert_eq!(p.retry_on, ["5xx", "reset", "retriable-status-codes"]);
    assert_eq!(p.retriable_status_codes, [409]);
    assert!(!p.retry_remote_localities);
    let r = route(&vs(
        "    retries: {attempts: 2, retryRemoteLocalities: true}
",
    ));
    assert!(r.retry.unwrap().retry_remote_localities);
    // attempts 0: no retries at all.
    assert!(route(&vs("    retries: {attempts: 0}\n")).retry.is_none());
}

#[test]
fn mirrors_translate_with_istios_shares() {
    let m = testing::model(&testing::resources(
        "apiVersion: v1\nkind: Service\nmetadata: {name: httpbin, namespace: default}\nspec:\n  selector: {app: httpbin}\n  ports: [{name: http, port: 8000}]\n---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: httpbin, namespace: default}\nspec:\n  hosts: [httpbin]\n  http:\n  - route: [{destination: {host: httpbin, subset: v1}}]\n    mirrors:\n    - destination: {host: httpbin, subset: v2}\n    - destination: {host: httpbin, subset: v3, port: {number: 8000}}\n      percentage: {value: 25}\n  - route: [{destination: {host: httpbin, subset: v1}}]\n    mirror: {host: httpbin, subset: v2}\n    mirrorPercentage: {value: 10.5}\n",
    ));
    let v = view(&m, &node("default", &[("app", "order")], "10.0.0.20"));
    let routes = &service(&v.state, "httpbin").http_routes;
    let host = "httpbin.default.svc.cluster.local";
    let mirror = |subset: &str, port: u32, percent: f64| state::Mirror {
        host: host.into(),
        subset: subset.into(),
        port,
        percent,
    };
    // A mirror without a share copies every request (Istio's mirroring task).
    assert_eq!(
        routes[0].mirrors,
        [mirror("v2", 0, 100.0), mirror("v3", 8000, 25.0)]
    );
    assert_eq!(routes[1].mirrors, [mirror("v2", 0, 10.5)]);
}

#[test]
fn rate_limit_policies_select_workloads_like_istio_policies() {
    let text = r#"
apiVersion: policy.mesh.dev/v1alpha1
kind: RateLimitPolicy
metadata: {name: mesh-wide, namespace: istio-system, creationTimestamp: "2026-01-01T00:00:00Z"}
spec:
  limits:
  - tokenBucket: {maxTokens: 1000, fillInterval: 1s}
---
apiVersion: policy.mesh.dev/v1alpha1
kind: RateLimitPolicy
metadata: {name: shipping-limits, namespace: default, creationTimestamp: "2026-01-02T00:00:00Z"}
spec:
  selector: {matchLabels: {app: shipping}}
  limits:
  - name: per-workload
    tokenBucket: {maxTokens: 100, tokensPerFill: 100, fillInterval: 1s}
  - match:
    - method: {exact: POST}
      uri: {prefix: /orders}
      headers: {x-tenant: {}}
      port: 8080
    tokenBucket: {maxTokens: 10, fillInterval: 100ms}
---
apiVersion: policy.mesh.dev/v1alpha1
kind: RateLimitPolicy
metadata: {name: elsewhere, namespace: other}
spec:
  limits:
  - tokenBucket: {maxTokens: 1, fillInterval: 1m}
"#;
    let report = load::load_str(text, None);
    assert!(
        report.is_valid(),
        "{:?}",
        report.errors().collect::<Vec<_>>()
    );
    let resources: Vec<_> = report.documents.into_iter().map(|d| d.resource).collect();
    let m = testing::model(&resources);
    let limits = |labels: &[(&str, &str)]| {
        view(&m, &node("default", labels, "10.0.0.40"))
            .state
            .rate_limits
    };
    let shipping = limits(&[("app", "shipping")]);
    let names: Vec<&str> = shipping.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "istio-system/mesh-wide/0",
            "default/shipping-limits/per-workload",
            "default/shipping-limits/1",
        ],
        "mesh-wide first (oldest), then the workload's own; other namespaces' never"
    );
    assert_eq!(
        (
            shipping[1].max_tokens,
            shipping[1].tokens_per_fill,
            shipping[1].fill_interval_ms
        ),
        (100, 100, 1000)
    );
    let route = &shipping[2];
    assert_eq!(
        (route.tokens_per_fill, route.fill_interval_ms),
        (1, 100),
        "Envoy's default of one token per fill"
    );
    let m0 = &route.matches[0];
    assert_eq!(m0.port, 8080);
    assert!(m0.headers.contains_key("x-tenant"));
    assert_eq!(
        m0.uri.as_ref().unwrap().kind,
        Some(state::string_match::Kind::Prefix("/orders".into()))
    );
    let order = limits(&[("app", "order")]);
    assert_eq!(order.len(), 1, "only the mesh-wide limit selects order");
}

const ZONED: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: shipping, namespace: default}
spec:
  selector: {app: shipping}
  ports: [{name: http, port: 8080}]
---
apiVersion: v1
kind: Pod
metadata:
  name: shipping-a
  namespace: default
  labels: {app: shipping, topology.kubernetes.io/region: us-west, topology.kubernetes.io/zone: zone1}
spec: {containers: [{name: app}]}
status: {phase: Running, podIP: 10.0.0.31}
---
apiVersion: v1
kind: Pod
metadata:
  name: shipping-b
  namespace: default
  labels: {app: shipping, istio-locality: us-east.zone1.sub1}
spec: {containers: [{name: app}]}
status: {phase: Running, podIP: 10.0.0.32}
"#;

fn order_in(labels: &[(&str, &str)]) -> ProxyNode {
    let mut all = vec![("app", "order")];
    all.extend_from_slice(labels);
    node("default", &all, "10.0.0.20")
}

#[test]
fn localities_come_from_labels_and_locality_lb_is_on_by_default() {
    let resources = testing::resources(ZONED);
    let m = testing::model(&resources);
    let v = view(
        &m,
        &order_in(&[
            ("topology.kubernetes.io/region", "us-west"),
            ("topology.kubernetes.io/zone", "zone1"),
        ]),
    );
    assert_eq!(
        v.state.locality, "us-west/zone1",
        "the proxy's own, from its labels"
    );
    let svc = service(&v.state, "shipping");
    let localities: Vec<&str> = svc.endpoints.iter().map(|e| e.locality.as_str()).collect();
    assert_eq!(localities, ["us-west/zone1", "us-east/zone1/sub1"]);
    let lb = svc
        .traffic_policy
        .as_ref()
        .and_then(|t| t.locality_lb.as_ref());
    assert_eq!(
        lb,
        Some(&state::LocalityLb::default()),
        "Istio's default: on, ranking by locality"
    );

    // A DestinationRule that turns it off; one that distributes.
    let off = format!(
        "{ZONED}---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: shipping, namespace: default}}\nspec:\n  host: shipping\n  trafficPolicy:\n    loadBalancer:\n      localityLbSetting: {{enabled: false}}\n"
    );
    let m = testing::model(&testing::resources(&off));
    let v = view(&m, &order_in(&[]));
    let svc = service(&v.state, "shipping");
    assert!(
        svc.traffic_policy
            .as_ref()
            .is_none_or(|t| t.locality_lb.is_none()),
        "enabled: false leaves none"
    );

    // The mesh configuration's setting applies where no DestinationRule sets one.
    let mut m = testing::model(&resources);
    m.mesh.locality_lb_setting = Some(mesh_api::networking::LocalityLbSetting {
        failover: vec![mesh_api::networking::LocalityFailover {
            from: "us-west".into(),
            to: "us-east".into(),
        }],
        ..Default::default()
    });
    let v = view(&m, &order_in(&[]));
    let lb = service(&v.state, "shipping")
        .traffic_policy
        .as_ref()
        .and_then(|t| t.locality_lb.clone())
        .unwrap();
    assert_eq!(lb.failover[0].to, "us-east");
}
