//! End-to-end scenarios, through `mesh_e2e::harness::Cluster` on the backend
//! `MESH_E2E_BACKEND` names. Here (and in CI) that is the local one: real pods in network
//! namespaces, real capture rules, sidecars with certificates from the CA, pilot watching the
//! config folder; each test starts its own mesh and takes it down when it ends. They need
//! root, so they are `#[ignore = "needs root"]`: `scripts/test.sh` (and so CI, as root) runs
//! them with `--run-ignored all`, and there a mesh that cannot start is a failure with its
//! reason. `make kind-e2e` runs the same file with `MESH_E2E_BACKEND=kube` on a kind cluster.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use mesh_e2e::harness::{self, Cluster, echo_pod};
use mesh_e2e::load::Report;
use meshctl::local::{PodSpec, wait_until};

const DEADLINE: Duration = Duration::from_secs(30);
const ORDER_ID: &str = "spiffe://cluster.local/ns/default/sa/order";

fn sample() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/samples/order-app")
}

/// The seed application running, with order's sidecar knowing both shipping versions.
fn seed(scenario: &str) -> Box<dyn Cluster> {
    let c = harness::cluster(scenario);
    c.apply(&sample()).expect("apply the sample");
    c.wait_endpoints("order-v1-0", "shipping-service.default", 2)
        .expect("order knows shipping");
    c
}

/// What starts every JSON access log line of a request a sidecar received (the local mesh
/// turns access logs on, as Istio's demo profile does).
const INBOUND_HTTP_LINE: &str = r#""direction":"inbound","method":""#;

/// Requests the sidecar of `pod` has answered so far (its access log).
fn inbound_requests(c: &dyn Cluster, pod: &str) -> usize {
    c.proxy_log(pod)
        .unwrap_or_default()
        .matches(INBOUND_HTTP_LINE)
        .count()
}

/// The seed application, with order's sidecar knowing inventory too.
fn seed_with_inventory(scenario: &str) -> Box<dyn Cluster> {
    let c = seed(scenario);
    c.wait_endpoints("order-v1-0", "inventory-service.default", 1)
        .expect("order knows inventory");
    c
}

/// A pod with no sidecar, standing for a client outside the mesh.
fn outside() -> PodSpec {
    PodSpec {
        name: "outside".into(),
        namespace: "default".into(),
        service_account: "default".into(),
        sidecar: false,
        command: vec!["mesh-echo".into(), "--port".into(), "8080".into()],
        ports: vec![8080],
        ..PodSpec::default()
    }
}

/// Requests of `report` that failed with `status` and an answer containing `words`.
fn failed_with(report: &Report, status: u16, words: &str) -> usize {
    let prefix = format!("{status} ");
    report
        .failures
        .iter()
        .filter(|(why, _)| why.starts_with(&prefix) && why.contains(words))
        .map(|(_, n)| n)
        .sum()
}

fn assert_all_ok(report: &Report) {
    assert_eq!(
        report.ok, report.requests,
        "every request succeeds: {report:?}"
    );
}

const SHIPPING_ALL_V2: &str = "
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: shipping-service, namespace: default}
spec:
  hosts: [shipping-service]
  http:
  - route:
    - destination: {host: shipping-service, subset: v2}
";

/// Shipping's traffic split: `v1` percent to v1, the rest to v2 (the seed's is 90).
fn shipping_split(v1: u32) -> String {
    format!(
        "
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: shipping-service, namespace: default}}
spec:
  hosts: [shipping-service]
  http:
  - route:
    - destination: {{host: shipping-service, subset: v1}}
      weight: {v1}
    - destination: {{host: shipping-service, subset: v2}}
      weight: {}
",
        100 - v1
    )
}

#[test]
#[ignore = "needs root: runs a mesh in network namespaces"]
fn seed_split_90_10_over_mutual_tls() {
    let c = seed("split");
    let n = 2000;
    let report = c
        .load(
            "order-v1-0",
            "http://shipping-service:8080/",
            &["-n", &n.to_string(), "-c", "8"],
        )
        .unwrap();
    assert_all_ok(&report);
    // v2 gets 10%: a binomial count, sd = sqrt(n p (1-p)) ≈ 13.4; allow five of them.
    let v2 = report.by_version.get("v2").copied().unwrap_or(0) as f64;
    let expected = n as f64 * 0.1;
    let sd = (n as f64 * 0.1 * 0.9).sqrt();
    assert!(
        (v2 - expected).abs() <= 5.0 * sd,
        "v2 got {v2} of {n}, expected {expected} ± {:.0}: {report:?}",
        5.0 * sd
    );
    assert_eq!(report.by_version.len(), 2, "{report:?}");
    // Every answer saw order's identity: mutual TLS carried every request.
    assert_eq!(report.by_peer.get(ORDER_ID), Some(&n), "{report:?}");
    // The three names of a service all reach it.
    let mut answered_by_v2 = report.by_version.get("v2").copied().unwrap_or(0);
    for url in [
        "http://shipping-service.default:8080/",
        "http://shipping-service.default.svc.cluster.local:8080/",
    ] {
        let r = c.load("order-v1-0", url, &["-n", "10"]).unwrap();
        assert_all_ok(&r);
        answered_by_v2 += r.by_version.get("v2").copied().unwrap_or(0);
    }
    // Both sidecars counted every request in Istio's metrics, with Istio's labels, on the
    // port Prometheus scrapes (a response is counted once its body is sent: waited for).
    let total = n + 20;
    let source = [
        "reporter=\"source\"",
        "source_workload=\"order-v1\"",
        "source_app=\"order\"",
        &format!("source_principal=\"{ORDER_ID}\""),
        "destination_service=\"shipping-service.default.svc.cluster.local\"",
        "destination_service_name=\"shipping-service\"",
        "response_code=\"200\"",
        "connection_security_policy=\"mutual_tls\"",
    ];
    let counted = || requests_counted(&*c, "order-v1-0", &source);
    wait_until(DEADLINE, || counted() >= total);
    assert_eq!(counted(), total, "{}", scrape(&*c, "order-v1-0"));
    let v2 = [
        &source[..],
        &[
            "destination_version=\"v2\"",
            // Said by shipping's sidecar in its answers.
            "destination_workload=\"shipping-v2\"",
        ],
    ]
    .concat();
    assert_eq!(
        requests_counted(&*c, "order-v1-0", &v2),
        answered_by_v2,
        "order's sidecar labels each request with the version that answered"
    );
    let destination = [
        "reporter=\"destination\"",
        &format!("source_principal=\"{ORDER_ID}\""),
        // Said by order's sidecar in its requests.
        "source_workload=\"order-v1\"",
        "source_version=\"v1\"",
        "destination_app=\"shipping\"",
        "response_code=\"200\"",
        "connection_security_policy=\"mutual_tls\"",
    ];
    let answered = || {
        requests_counted(&*c, "shipping-v1-0", &destination)
            + requests_counted(&*c, "shipping-v2-0", &destination)
    };
    wait_until(DEADLINE, || answered() >= total);
    assert_eq!(answered(), total, "{}", scrape(&*c, "shipping-v2-0"));

    // A Deployment that asks Prometheus to scrape its own metrics (prometheus.io/port 8080):
    // its sidecar serves them on the same page, in the app's format.
    c.apply_yaml(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: stats-v1, namespace: default}
spec:
  replicas: 1
  selector: {matchLabels: {app: stats}}
  template:
    metadata:
      labels: {app: stats, version: v1}
      annotations: {prometheus.io/scrape: "true", prometheus.io/port: "8080", prometheus.io/path: /metrics}
    spec:
      serviceAccountName: stats
      containers:
      - name: stats
        image: mesh-echo:latest
        args: ["--port", "8080", "--service", "stats", "--version", "v1"]
        ports: [{containerPort: 8080}]
"#,
    )
    .unwrap();
    let page = || {
        c.sidecar_get("stats-v1-0", 15020, "/stats/prometheus")
            .unwrap_or_default()
    };
    let merged =
        |p: &String| p.contains("mesh_echo_requests_total{service=\"stats\",version=\"v1\"}");
    wait_until(DEADLINE, || merged(&page()));
    let page = page();
    assert!(merged(&page), "{page}");
    assert!(
        page.contains("# TYPE mesh_proxy_build_info gauge") && !page.contains("# EOF"),
        "the sidecar's families in the application's text format: {page}"
    );
}

/// What the sidecar of `pod` serves on its metrics port (15020), fetched inside the pod.
fn scrape(c: &dyn Cluster, pod: &str) -> String {
    sidecar_get(c, pod, 15020, "/stats/prometheus")
}

/// What the sidecar of `pod` answers to GET `path` on its loopback `port`, inside the pod.
fn sidecar_get(c: &dyn Cluster, pod: &str, port: u16, path: &str) -> String {
    c.sidecar_get(pod, port, path).unwrap()
}

/// The sum of `istio_requests_total` over the series of `pod`'s sidecar carrying `labels`.
fn requests_counted(c: &dyn Cluster, pod: &str, labels: &[&str]) -> usize {
    scrape(c, pod)
        .lines()
        .filter(|l| l.starts_with("istio_requests_total{"))
        .filter(|l| labels.iter().all(|want| l.contains(want)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<usize>().ok())
        .sum()
}

#[test]
#[ignore = "needs root: runs a mesh in network namespaces"]
fn strict_mtls_refuses_a_pod_without_sidecar() {
    let c = seed("strict");
    let plain = PodSpec {
        name: "plain".into(),
        namespace: "default".into(),
        service_account: "default".into(),
        sidecar: false,
        command: vec!["mesh-echo".into(), "--port".into(), "8080".into()],
        ports: vec![8080],
        ..PodSpec::default()
    };
    c.run(&plain).unwrap();
    // The local runtime says plainly why it cannot run a pod: a name already used, a port
    // the sidecar holds. (Kubernetes says neither: a pod re-applied is the same pod.)
    if let Some(local) = c.as_local() {
        let again = local.mesh.run(&plain).unwrap_err().to_string();
        assert!(again.contains("pod \"plain\" already exists"), "{again}");
        let mut clash = echo_pod("clash", "clash", "v1", "default");
        clash.ports = vec![15001];
        let port = local.mesh.run(&clash).unwrap_err().to_string();
        assert!(
            port.contains("port 15001 is already in use by the sidecar"),
            "{port}"
        );
    }
    let shipping = c.pod_ip("shipping-v1-0").unwrap();
    let url = format!("http://{shipping}:8080/");
    // Without a sidecar: plaintext to a STRICT workload is refused.
    let refused = c.load("plain", &url, &["-n", "5", "-c", "1"]).unwrap();
    assert_eq!(refused.ok, 0, "plaintext must be refused: {refused:?}");
    assert_eq!(refused.requests, 5);
    // ...and counted by shipping's sidecar, once per connection (the load connects again
    // after each refusal).
    let counted = |c: &dyn Cluster| {
        scrape(c, "shipping-v1-0")
            .lines()
            .find_map(|l| {
                l.strip_prefix(
                    r#"mesh_proxy_refused_total{listener="inbound",reason="plaintext_to_strict"} "#,
                )
            })
            .and_then(|n| n.trim().parse::<usize>().ok())
            .unwrap_or(0)
    };
    assert!(
        wait_until(DEADLINE, || counted(&*c) >= 5),
        "{}",
        scrape(&*c, "shipping-v1-0")
    );
    // Through the service's address, plaintext is refused all the same. Locally a VIP means
    // nothing without a sidecar, so the connection is rejected inside the pod instead of
    // leaving it; on Kubernetes kube-proxy carries it to a pod, whose sidecar refuses it.
    let vip = c
        .load("plain", "http://shipping-service:8080/", &["-n", "1"])
        .unwrap();
    assert_eq!(vip.ok, 0);
    if c.as_local().is_some() {
        assert!(
            vip.failures
                .keys()
                .any(|k| k.contains("Connection refused")),
            "{vip:?}"
        );
    }
    // With one (order's): the same address works, over mutual TLS.
    let allowed = c.load("order-v1-0", &url, &["-n", "5", "-c", "1"]).unwrap();
    assert_all_ok(&allowed);
    assert_eq!(allowed.by_peer.get(ORDER_ID), Some(&5), "{allowed:?}");
}

#[test]
#[ignore = "needs root: runs a mesh in network namespaces"]
fn the_seeds_gateway_serves_order_through_the_ingress_gateway() {
    // The seed's gateway.yaml as written (applied with the sample): Gateway order-gateway
    // selects the ingress gateway (`istio: ingressgateway`) and VirtualService order routes
    // its `/order` to order:8080. A client with no sidecar stands for traffic from outside.
    let c = seed("gateway");
    c.run(&outside()).unwrap();
    let ingress = c.ingress().unwrap();
    let url = format!("http://{ingress}/order/42");
    let served = wait_until(DEADLINE, || {
        c.load("outside", &url, &["-n", "1"])
            .is_ok_and(|r| r.ok == 1)
    });
    assert!(served, "the ingress gateway never served /order");
    let report = c.load("outside", &url, &["-n", "200", "-c", "4"]).unwrap();
    assert_all_ok(&report);
    assert_eq!(report.by_version.get("v1"), Some(&200), "{report:?}");
    // Order saw the gateway's identity: the gateway reached it over mutual TLS (the seed's
    // STRICT policy would refuse anything else).
    let gateway_id =
        "spiffe://cluster.local/ns/istio-system/sa/istio-ingressgateway-service-account";
    assert_eq!(report.by_peer.get(gateway_id), Some(&200), "{report:?}");
    // Paths no route names are the gateway's 404, flag NR, as Envoy answers.
    let other = c
        .load(
            "outside",
            &format!("http://{ingress}/shipping"),
            &["-n", "3"],
        )
        .unwrap();
    assert_eq!(failed_with(&other, 404, ""), 3, "{other:?}");
    // The gateway counts what it sent, as Istio's ingress gateway does (reporter source).
    if let Some(local) = c.as_local() {
        let metrics = local
            .sidecar_get(
                meshctl::local::INGRESS_GATEWAY_POD,
                15020,
                "/stats/prometheus",
            )
            .unwrap();
        assert!(
            metrics
                .lines()
                .any(|l| l.starts_with("istio_requests_total{")
                    && l.contains("source_workload=\"istio-ingressgateway\"")
                    && l.contains("destination_service_name=\"order\"")
                    && l.contains("response_code=\"200\"")),
            "{metrics}"
        );
    }
}

/// Bookinfo's own manifests (`istio-samples/bookinfo/platform/kube/bookinfo.yaml`) with
/// mesh-echo in place of each image: the same Services, service accounts, Deployments, labels
/// and port, and the same calls: productpage calls details and reviews, reviews v2 and v3 call
/// ratings, each passing `end-user` on as bookinfo does.
fn bookinfo_with_echo() -> String {
    let path = mesh_api::testing::shared_testdata()
        .join("istio-samples/bookinfo/platform/kube/bookinfo.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    let mut docs = mesh_injector::template::documents(&text).unwrap();
    for d in docs.iter_mut().filter(|d| d["kind"] == "Deployment") {
        let labels = &d["spec"]["template"]["metadata"]["labels"];
        let app = labels["app"].as_str().unwrap().to_string();
        let version = labels["version"].as_str().unwrap().to_string();
        let upstreams: &[&str] = match (app.as_str(), version.as_str()) {
            ("productpage", _) => &[
                "http://details:9080/details/0",
                "http://reviews:9080/reviews/0",
            ],
            ("reviews", "v2" | "v3") => &["http://ratings:9080/ratings/0"],
            _ => &[],
        };
        let mut args = vec![
            "--port".to_string(),
            "9080".into(),
            "--service".into(),
            app,
            "--version".into(),
            version,
        ];
        for u in upstreams {
            args.extend(["--upstream".to_string(), (*u).to_string()]);
        }
        let container = &mut d["spec"]["template"]["spec"]["containers"][0];
        container["image"] = serde_json::json!("mesh-echo:latest");
        container["args"] = serde_json::json!(args);
    }
    mesh_injector::template::to_yaml(&docs).unwrap()
}

/// Through the gateway at `base`: 100 of 100 productpage requests with reviews v1, its
/// static files from productpage, and `missing` the gateway's 404.
fn bookinfo_answers_through(c: &dyn Cluster, base: &str, missing: &str) {
    let all_v1 = "productpage/v1(details/v1,reviews/v1)";
    let page = format!("{base}/productpage");
    let report = c.load("outside", &page, &["-n", "100", "-c", "4"]).unwrap();
    assert_all_ok(&report);
    assert_eq!(report.by_chain.get(all_v1), Some(&100), "{report:?}");
    let statics = c
        .load("outside", &format!("{base}/static/app.css"), &["-n", "3"])
        .unwrap();
    assert_eq!(
        statics.by_service.get("productpage"),
        Some(&3),
        "{statics:?}"
    );
    let other = c
        .load("outside", &format!("{base}{missing}"), &["-n", "2"])
        .unwrap();
    assert_eq!(failed_with(&other, 404, ""), 2, "{other:?}");
}

fn bookinfo_file(path: &str) -> PathBuf {
    mesh_api::testing::shared_testdata()
        .join("istio-samples/bookinfo")
        .join(path)
}

#[test]
#[ignore = "needs root: runs a mesh in network namespaces"]
fn bookinfo_through_its_gateway_api_gateway_with_reviews_routed_by_httproutes() {
    let c = harness::local("bookinfo-gateway-api");
    c.apply_yaml(&bookinfo_with_echo()).unwrap();
    c.apply(&bookinfo_file("platform/kube/bookinfo-versions.yaml"))
        .unwrap();
    // Bookinfo's own Gateway API YAML: the Gateway gets a gateway pod of its own
    // (bookinfo-gateway-istio-0, as Istio deploys bookinfo-gateway-istio), the HTTPRoute
    // binds productpage's paths to it, and a GAMMA route sends reviews to v1.
    c.apply(&bookinfo_file("gateway-api/bookinfo-gateway.yaml"))
        .unwrap();
    c.apply(&bookinfo_file("gateway-api/route-reviews-v1.yaml"))
        .unwrap();
    c.run(&outside()).unwrap();
    let gateway = c.mesh.pod("bookinfo-gateway-istio-0").unwrap().address;
    let page = format!("http://{gateway}/productpage");
    let all_v1 = "productpage/v1(details/v1,reviews/v1)";
    let routed = wait_until(DEADLINE, || {
        c.load("outside", &page, &["-n", "5"])
            .is_ok_and(|r| r.by_chain.get(all_v1) == Some(&5))
    });
    assert!(
        routed,
        "productpage never answered through the Gateway API gateway with reviews v1"
    );
    // The status pilot gives them (what `meshctl gateway-status` shows): the Gateway accepted
    // and programmed at its pod's address, both routes accepted by their parents.
    let model = c.mesh.pilot_debug("/debug/model").unwrap();
    let statuses = model["gatewayApiStatus"].as_array().unwrap();
    let status = |object: &str| {
        statuses
            .iter()
            .find(|s| s["object"] == object)
            .unwrap_or_else(|| panic!("no status for {object}: {statuses:?}"))["status"]
            .clone()
    };
    let gw = status("Gateway default/bookinfo-gateway");
    let holds = |conditions: &serde_json::Value, t: &str| {
        conditions
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["type"] == t && c["status"] == "True")
    };
    assert!(holds(&gw["conditions"], "Accepted"), "{gw}");
    assert!(holds(&gw["conditions"], "Programmed"), "{gw}");
    assert_eq!(gw["addresses"][0]["value"], gateway.as_str(), "{gw}");
    assert_eq!(gw["listeners"][0]["attachedRoutes"], 1, "{gw}");
    for route in ["HTTPRoute default/bookinfo", "HTTPRoute default/reviews"] {
        let st = status(route);
        let conditions = &st["parents"][0]["conditions"];
        assert!(holds(conditions, "Accepted"), "{route}: {st}");
        assert!(holds(conditions, "ResolvedRefs"), "{route}: {st}");
    }
    // PathPrefix matches whole segments; other paths get the gateway's 404.
    bookinfo_answers_through(&c, &format!("http://{gateway}"), "/staticfoo");

    // The 90/10 split between the reviews versions, by weights on backendRefs.
    c.apply(&bookinfo_file("gateway-api/route-reviews-90-10.yaml"))
        .unwrap();
    let v2 = "productpage/v1(details/v1,reviews/v2(ratings/v1))";
    let split = wait_until(DEADLINE, || {
        c.load("outside", &page, &["-n", "40"])
            .is_ok_and(|r| r.by_chain.get(v2).is_some_and(|n| *n > 0))
    });
    assert!(split, "reviews v2 never answered after the 90/10 route");
    let report = c.load("outside", &page, &["-n", "400", "-c", "4"]).unwrap();
    assert_all_ok(&report);
    let (n1, n2) = (
        report.by_chain.get(all_v1).copied().unwrap_or(0),
        report.by_chain.get(v2).copied().unwrap_or(0),
    );
    assert_eq!(n1 + n2, 400, "{report:?}");
    assert!(
        (10..=70).contains(&n2),
        "v2 answered {n2} of 400 for a 10% weight"
    );
}

fn bookinfo_networking(file: &str) -> PathBuf {
    mesh_api::testing::shared_testdata()
        .join("istio-samples/bookinfo/networking")
        .join(file)
}

#[test]
#[ignore = "needs root: runs a mesh in network namespaces"]
fn bookinfo_through_its_own_gateway_with_reviews_routed_by_its_virtual_services() {
    let c = harness::cluster("bookinfo");
    c.apply_yaml(&bookinfo_with_echo()).unwrap();
    for file in [
        "bookinfo-gateway.yaml",
        "destination-rule-all.yaml",
        "virtual-service-all-v1.yaml",
    ] {
        c.apply(&bookinfo_networking(file)).unwrap();
    }
    c.run(&outside()).unwrap();
    // bookinfo-gateway serves port 8080 of the ingress gateway.
    let gateway = c.ingress().unwrap();
    let host = gateway.rsplit_once(':').unwrap().0;
    let page = format!("http://{host}:8080/productpage");
    let all_v1 = "productpage/v1(details/v1,reviews/v1)";
    let routed = wait_until(DEADLINE, || {
        c.load("outside", &page, &["-n", "5"])
            .is_ok_and(|r| r.by_chain.get(all_v1) == Some(&5))
    });
    assert!(
        routed,
        "productpage never answered through the gateway with reviews v1"
    );
    // The gateway's other bookinfo paths reach productpage; the rest is its 404.
    bookinfo_answers_through(&*c, &format!("http://{host}:8080"), "/admin");

    // Istio's request-routing task: jason's reviews from v2 (with ratings), everyone
    // else's from v3, decided by productpage's sidecar on the header it passed on.
    c.apply(&bookinfo_networking(
        "virtual-service-reviews-jason-v2-v3.yaml",
    ))
    .unwrap();
    let jason = "productpage/v1(details/v1,reviews/v2(ratings/v1))";
    let others = "productpage/v1(details/v1,reviews/v3(ratings/v1))";
    let switched = wait_until(DEADLINE, || {
        c.load("outside", &page, &["-n", "5", "-H", "end-user: jason"])
            .is_ok_and(|r| r.by_chain.get(jason) == Some(&5))
    });
    assert!(switched, "jason's requests never reached reviews v2");
    let j = c
        .load("outside", &page, &["-n", "50", "-H", "end-user: jason"])
        .unwrap();
    assert_eq!(j.by_chain.get(jason), Some(&50), "{j:?}");
    let o = c.load("outside", &page, &["-n", "50"]).unwrap();
    assert_eq!(o.by_chain.get(others), Some(&50), "{o:?}");
}

#[test]
#[ignore = "needs root: runs a mesh in network namespaces"]
fn header_based_routing() {
    let c = seed("headers");
    c.apply_yaml(
        "
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: shipping-service, namespace: default}
spec:
  hosts: [shipping-service]
  http:
  - match:
    - headers:
        end-user: {exact: jason}
    route:
    - destination: {host: shipping-service, subset: v2}
  - route:
    - destination: {host: shipping-service, subset: v1}
",
    )
    .unwrap();
    // Wait for the rule to reach order's sidecar: jason's requests all land on v2.
    let url = "http://shipping-service:8080/";
    let routed = wait_until(DEADLINE, || {
        c.load("order-v1-0", url, &["-n", "20", "-H", "end-user: jason"])
            .is_ok_and(|r| r.by_version.get("v2") == Some(&20))
    });
    assert!(routed, "end-user: jason never reached v2 only");
    let jason = c
        .load("order-v1-0", url, &["-n", "200", "-H", "end-user: jason"])
        .unwrap();
    assert_eq!(jason.by_version.get("v2"), Some(&200), "{jason:?}");
    let others = c.load("order-v1-0", url, &["-n", "200"]).unwrap();
    assert_eq!(others.by_version.get("v1"), Some(&200), "{others:?}");
    let mallory = c
        .load("order-v1-0", url, &["-n", "50", "-H", "end-user: mallory"])
        .unwrap();
    assert_eq!(mallory.by_version.get("v1"), Some(&50), "{mallory:?}");
}

#[test]
#[ignore = "needs root: runs a mesh in network namespaces"]
fn fault_injection_aborts_jason_and_delays_the_others() {
    // Istio's fault-injection task on the seed: jason's requests aborted with 500, the others
    // delayed 200 ms, both in order's sidecar.
    let c = seed("faults");
    c.apply_yaml(
        "
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: shipping-service, namespace: default}
spec:
  hosts: [shipping-service]
  http:
  - match:
    - headers:
        end-user: {exact: jason}
    fault:
      abort: {httpStatus: 500, percentage: {value: 100}}
    route:
    - destination: {host: shipping-service, subset: v1}
  - fault:
      delay: {fixedDelay: 200ms, percentage: {value: 100}}
    route:
    - destination: {host: shipping-service, subset: v1}
",
    )
    .unwrap();
    let url = "http://shipping-service:8080/";
    let aborted = "500 fault filter abort";
    let applied = wait_until(DEADLINE, || {
        c.load("order-v1-0", url, &["-n", "1", "-H", "end-user: jason"])
            .is_ok_and(|r| r.failures.get(aborted) == Some(&1))
    });
    assert!(applied, "the abort never took effect");
    let jason = c
        .load("order-v1-0", url, &["-n", "20", "-H", "end-user: jason"])
        .unwrap();
    assert_eq!(jason.failures.get(aborted), Some(&20), "{jason:?}");
    let others = c.load("order-v1-0", url, &["-n", "10", "-c", "1"]).unwrap();
    assert_eq!(others.ok, 10, "{others:?}");
    // A delay cannot end early: every request took at least the 200 ms injected.
    assert!(others.p50_ms >= 200.0, "{others:?}");
}

#[test]
#[ignore = "needs root: runs a mesh in network namespaces"]
fn the_seed_circuit_breaker_overflows_two_connections_and_never_one() {
    harness::require();
    // Istio's circuit-breaking task on the seed's DestinationRule (one connection, one pending
    // request, one request per connection), enforced by order's sidecar: one connection at a
    // time never overflows; two at once sometimes do, answered at once with 503 (flag UO).
    let c = seed_with_inventory("circuit-breaker");
    let url = "http://inventory-service:8080/";
    let one = c.load("order-v1-0", url, &["-n", "30", "-c", "1"]).unwrap();
    assert_all_ok(&one);
    let two = c.load("order-v1-0", url, &["-n", "60", "-c", "2"]).unwrap();
    let overflow = failed_with(&two, 503, "reset reason: overflow");
    assert!(overflow > 0, "two connections at once overflow: {two:?}");
    assert_eq!(
        two.ok + overflow,
        two.requests,
        "only 200 or 503 UO: {two:?}"
    );
    // Counted where Istio's task reads them: the sidecar's /stats, under Envoy's names; and
    // flagged UO in its request metrics.
    let stats = sidecar_get(&*c, "order-v1-0", 15000, "/stats");
    let line = format!(
        "cluster.outbound|8080||inventory-service.default.svc.cluster.local.upstream_rq_pending_overflow: {overflow}"
    );
    assert!(stats.contains(&line), "{line}: {stats}");
    let flagged = requests_counted(
        &*c,
        "order-v1-0",
        &["response_flags=\"UO\"", "response_code=\"503\""],
    );
    assert_eq!(flagged, overflow, "{}", scrape(&*c, "order-v1-0"));
}

#[test]
#[ignore = "needs root: runs a mesh in network namespaces"]
fn outlier_detection_ejects_a_failing_endpoint() {
    harness::require();
    // A third shipping pod answers every request with 503. With outlier detection on
    // shipping (one 5xx ejects), order's sidecar sends it one request, retries that on a
    // healthy pod (Istio's default two attempts), and sends it nothing more while ejected.
    let c = seed("outlier");
    failing_shipping_pod(&*c);
    c.apply_yaml(
        "
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: shipping-service, namespace: default}
spec:
  hosts: [shipping-service]
  http:
  - route:
    - destination: {host: shipping-service}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: shipping-service, namespace: default}
spec:
  host: shipping-service
  trafficPolicy:
    outlierDetection: {consecutive5xxErrors: 1, interval: 1s, baseEjectionTime: 2m, maxEjectionPercent: 50}
",
    )
    .unwrap();
    let url = "http://shipping-service:8080/";
    // Routed to all three once the change arrives; the first request v3 answers ejects it.
    wait_until_v3_answered(&*c, url);
    let clusters = sidecar_get(&*c, "order-v1-0", 15000, "/clusters");
    let cluster = "outbound|8080||shipping-service.default.svc.cluster.local::";
    let ejected: Vec<&str> = clusters
        .lines()
        .filter(|l| l.starts_with(cluster) && l.ends_with("::health_flags::/failed_outlier_check"))
        .collect();
    assert_eq!(ejected.len(), 1, "{clusters}");
    let before = inbound_requests(&*c, "shipping-v3-0");
    let report = c.load("order-v1-0", url, &["-n", "60", "-c", "2"]).unwrap();
    assert_all_ok(&report);
    assert_eq!(report.by_version.get("v3"), None, "{report:?}");
    assert_eq!(
        inbound_requests(&*c, "shipping-v3-0"),
        before,
        "an ejected endpoint gets no request"
    );
    let stats = sidecar_get(&*c, "order-v1-0", 15000, "/stats");
    assert!(
        stats.contains("cluster.outbound|8080||shipping-service.default.svc.cluster.local.outlier_detection.ejections_active: 1"),
        "{stats}"
    );
}

#[test]
#[ignore = "needs root: runs a mesh in network namespaces"]
fn retries_hide_a_failing_endpoint_and_the_route_timeout_bounds_a_slow_one() {
    harness::require();
    let c = seed("retries");
    // A third shipping pod answers every request with 503; the route retries 5xx.
    failing_shipping_pod(&*c);
    // A service whose one pod takes 2 s to answer; its route gives it 300 ms.
    let mut slow = harness::echo_pod("slow-v1-0", "slow", "v1", "default");
    slow.command.extend(["--latency-ms".into(), "2000".into()]);
    c.run(&slow).unwrap();
    c.apply_yaml(
        "
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: shipping-service, namespace: default}
spec:
  hosts: [shipping-service]
  http:
  - route:
    - destination: {host: shipping-service}
    retries: {attempts: 3, retryOn: 5xx}
---
apiVersion: v1
kind: Service
metadata: {name: slow, namespace: default}
spec:
  selector: {app: slow}
  ports: [{name: http, port: 8080}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: slow, namespace: default}
spec:
  hosts: [slow]
  http:
  - route:
    - destination: {host: slow}
    timeout: 300ms
",
    )
    .unwrap();
    c.wait_endpoints("order-v1-0", "slow.default", 1)
        .expect("order knows the slow service");
    let url = "http://shipping-service:8080/";
    wait_until_v3_answered(&*c, url);
    let tried = inbound_requests(&*c, "shipping-v3-0");
    let report = c.load("order-v1-0", url, &["-n", "90", "-c", "3"]).unwrap();
    assert_all_ok(&report);
    assert!(
        inbound_requests(&*c, "shipping-v3-0") > tried,
        "the failing pod was tried, and its answers retried elsewhere"
    );
    let slow = c
        .load("order-v1-0", "http://slow:8080/", &["-n", "3", "-c", "1"])
        .unwrap();
    assert_eq!(
        slow.failures.get("504 upstream request timeout"),
        Some(&3),
        "{slow:?}"
    );
    // Cut at the route's 300 ms, not after the pod's 2 s.
    assert!(slow.p50_ms >= 300.0 && slow.max_ms < 2000.0, "{slow:?}");
}

#[test]
#[ignore = "needs root: runs a mesh in network namespaces"]
fn mirroring_copies_requests_to_v2_and_answers_from_v1() {
    harness::require();
    // Istio's mirroring task on the seed: every request goes to shipping v1, and a copy of
    // each to v2, whose answers are discarded.
    let c = seed("mirror");
    c.apply_yaml(
        "
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: shipping-service, namespace: default}
spec:
  hosts: [shipping-service]
  http:
  - route:
    - destination: {host: shipping-service, subset: v1}
      weight: 100
    mirror: {host: shipping-service, subset: v2}
    mirrorPercentage: {value: 100}
",
    )
    .unwrap();
    let url = "http://shipping-service:8080/";
    // The change has arrived when 50 answers in a row come from v1 (under the seed's 90/10
    // split, one chance in 190 of that).
    let applied = wait_until(DEADLINE, || {
        c.load("order-v1-0", url, &["-n", "50", "-c", "2"])
            .is_ok_and(|r| r.by_version.get("v1") == Some(&50))
    });
    assert!(applied, "the route to v1 alone never took effect");
    let before = inbound_requests(&*c, "shipping-v2-0");
    let report = c.load("order-v1-0", url, &["-n", "40", "-c", "2"]).unwrap();
    assert_all_ok(&report);
    assert_eq!(
        report.by_version.get("v1"),
        Some(&40),
        "answers come from v1: {report:?}"
    );
    // Every copy arrives (they run on their own, so wait for them).
    let copied = wait_until(DEADLINE, || {
        inbound_requests(&*c, "shipping-v2-0") >= before + 40
    });
    assert!(
        copied,
        "{} copies reached v2",
        inbound_requests(&*c, "shipping-v2-0") - before
    );
    // The copies carry the -shadow host (v2's sidecar logs each request's authority).
    let log = c.proxy_log("shipping-v2-0").unwrap();
    let shadowed = log
        .lines()
        .filter(|l| {
            l.contains(INBOUND_HTTP_LINE)
                && l.contains(r#""authority":"shipping-service-shadow:8080""#)
        })
        .count();
    let sample: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(INBOUND_HTTP_LINE))
        .take(3)
        .collect();
    assert!(
        shadowed >= 40,
        "{shadowed} copies logged with the -shadow host: {sample:#?}"
    );
}

#[test]
#[ignore = "needs root: runs a mesh in network namespaces"]
fn rate_limits_answer_429_rl_per_route_and_per_workload() {
    harness::require();
    // A RateLimitPolicy on inventory, enforced by inventory's own sidecar: a route's bucket
    // (3 requests to /expensive) and the workload's (20 requests in all), neither filling
    // again within the test. Requests over a limit are answered 429 with flag RL.
    let c = seed_with_inventory("rate-limit");
    c.apply_yaml(
        "
apiVersion: policy.mesh.dev/v1alpha1
kind: RateLimitPolicy
metadata: {name: inventory-limits, namespace: default}
spec:
  selector: {matchLabels: {app: inventory}}
  limits:
  - name: expensive
    match:
    - uri: {prefix: /expensive}
    tokenBucket: {maxTokens: 3, fillInterval: 1h}
  - name: per-workload
    tokenBucket: {maxTokens: 20, fillInterval: 1h}
",
    )
    .unwrap();
    let limited = |r: &Report| failed_with(r, 429, "local_rate_limited");
    // Applied once /expensive is refused: its bucket's 3 tokens are then spent.
    let expensive = "http://inventory-service:8080/expensive";
    let applied = wait_until(DEADLINE, || {
        c.load("order-v1-0", expensive, &["-n", "1", "-c", "1"])
            .is_ok_and(|r| limited(&r) == 1)
    });
    assert!(applied, "the route's limit never took effect");
    let more = c
        .load("order-v1-0", expensive, &["-n", "5", "-c", "1"])
        .unwrap();
    assert_eq!(limited(&more), 5, "/expensive stays refused: {more:?}");
    // Everything else counts against the workload's 20 only; /expensive's 3 took 3 of them
    // (its refusals gave theirs back).
    let rest = c
        .load(
            "order-v1-0",
            "http://inventory-service:8080/",
            &["-n", "30", "-c", "1"],
        )
        .unwrap();
    assert_eq!(
        (rest.ok, limited(&rest)),
        (17, 13),
        "17 answered, then refused: {rest:?}"
    );
    // Counted under Envoy's names in inventory's sidecar, and flagged RL in its metrics.
    let stats = sidecar_get(&*c, "inventory-v1-0", 15000, "/stats");
    let refused = limited(&more) + limited(&rest);
    for line in [
        "http_local_rate_limit.default/inventory-limits/expensive.ok: 3".to_string(),
        "http_local_rate_limit.default/inventory-limits/per-workload.ok: 20".to_string(),
        "http_local_rate_limit.default/inventory-limits/per-workload.rate_limited: 13".to_string(),
    ] {
        assert!(stats.contains(&line), "{line}: {stats}");
    }
    // The refusals above, and the one that showed the limit applied.
    let flagged = || {
        requests_counted(
            &*c,
            "inventory-v1-0",
            &["response_flags=\"RL\"", "response_code=\"429\""],
        )
    };
    wait_until(DEADLINE, || flagged() > refused);
    assert_eq!(flagged(), refused + 1, "{}", scrape(&*c, "inventory-v1-0"));
}

/// Starts a third shipping pod (v3) answering every request with 503, and waits until order's
/// sidecar knows it.
fn failing_shipping_pod(c: &dyn Cluster) {
    let mut bad = harness::echo_pod("shipping-v3-0", "shipping", "v3", "shipping");
    bad.command.extend(["--error-rate".into(), "1".into()]);
    c.run(&bad).unwrap();
    c.wait_endpoints("order-v1-0", "shipping-service.default", 3)
        .expect("order knows the third shipping pod");
}

/// Sends requests to `url` until v3 has answered one: the route to every shipping pod arrived.
fn wait_until_v3_answered(c: &dyn Cluster, url: &str) {
    let reached = wait_until(DEADLINE, || {
        c.load("order-v1-0", url, &["-n", "10", "-c", "1"]).is_ok()
            && inbound_requests(c, "shipping-v3-0") >= 1
    });
    assert!(reached, "the route to all shipping pods never took effect");
}

/// Runs 3000 requests from order to shipping at 300 rps (10 s) and, once traffic flows,
/// `during`; returns the load's report.
fn under_load(c: &dyn Cluster, during: impl FnOnce()) -> Report {
    under_load_n(c, 3000, during)
}

/// As [`under_load`], `n` requests at 300 rps.
fn under_load_n(c: &dyn Cluster, n: usize, during: impl FnOnce()) -> Report {
    let n = n.to_string();
    std::thread::scope(|s| {
        let load = s.spawn(|| {
            c.load(
                "order-v1-0",
                "http://shipping-service:8080/",
                &["-n", &n, "-c", "4", "--rate", "300"],
            )
        });
        assert!(
            wait_until(DEADLINE, || inbound_requests(c, "shipping-v1-0") >= 50),
            "traffic never reached shipping v1"
        );
        during();
        load.join().unwrap().unwrap()
    })
}

/// Applies "all to v2" and waits until v2 has answered 300 more requests (the load still runs).
fn switch_to_v2_and_see_it(c: &dyn Cluster) {
    let v2_before = inbound_requests(c, "shipping-v2-0");
    c.apply_yaml(SHIPPING_ALL_V2).unwrap();
    assert!(
        wait_until(DEADLINE, || inbound_requests(c, "shipping-v2-0")
            >= v2_before + 300),
        "the change never reached traffic"
    );
}

/// Prints what a fault scenario measured, for docs/reliability.md (run with `--no-capture`).
fn fault_figures(fault: &str, report: &Report) {
    eprintln!(
        "fault {fault}: {} requests, {} failed {:?}, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        report.requests,
        report.requests - report.ok,
        report.failures,
        report.p50_ms,
        report.p99_ms,
        report.max_ms
    );
}

#[test]
#[ignore = "needs root: runs a mesh in network namespaces"]
fn a_config_push_every_second_for_30_s_fails_no_request() {
    let c = seed("pushes");
    // 35 s of traffic at 300 rps; thirty changes, one a second, while it runs.
    let report = under_load_n(&*c, 10_500, || {
        let pushes_before = c.pilot_debug("/debug/syncz").ok();
        for i in 0..30 {
            c.apply_yaml(&shipping_split(if i % 2 == 0 { 50 } else { 90 }))
                .unwrap();
            // The scenario's pace (a change a second), not a wait for anything.
            std::thread::sleep(Duration::from_secs(1));
        }
        assert!(pushes_before.is_some(), "pilot answers its debug endpoint");
    });
    fault_figures("config push every second for 30 s", &report);
    assert_eq!(report.requests, 10_500);
    assert_all_ok(&report);
    // Both versions answered all along: the changes reached traffic.
    let v2 = report.by_version.get("v2").copied().unwrap_or(0);
    assert!(v2 > 10_500 / 10, "{report:?}");
}

/// Starts a second v1 shipping pod and waits until order's sidecar knows all three.
fn second_v1_shipping_pod(c: &dyn Cluster) {
    c.run(&harness::echo_pod(
        "shipping-v1-1",
        "shipping",
        "v1",
        "shipping",
    ))
    .unwrap();
    c.wait_endpoints("order-v1-0", "shipping-service.default", 3)
        .expect("order knows the second v1 pod");
}

/// Under load, with a second v1 shipping pod running, takes `shipping-v1-0` away (`kill`: as
/// a crash; else as a rollout, its sidecar draining) and waits until the v1 pod left has
/// answered 300 more requests; returns the load's report.
fn a_v1_pod_leaves_under_load(c: &dyn Cluster, kill: bool) -> Report {
    second_v1_shipping_pod(c);
    under_load(c, || {
        c.remove_pod("shipping-v1-0", kill).unwrap();
        let before = inbound_requests(c, "shipping-v1-1");
        assert!(
            wait_until(DEADLINE, || inbound_requests(c, "shipping-v1-1")
                >= before + 300),
            "the remaining v1 pod never took the traffic"
        );
    })
}

#[test]
#[ignore = "needs root: runs a mesh in network namespaces"]
fn an_upstream_pod_killed_fails_at_most_its_requests_in_flight() {
    let c = seed("kill");
    let report = a_v1_pod_leaves_under_load(&*c, true);
    fault_figures("upstream pod killed (SIGKILL)", &report);
    assert_eq!(report.requests, 3000);
    // The load keeps 4 requests in flight: at most those can have been on the killed pod;
    // the rest (refused connections) were tried again elsewhere.
    assert!(report.requests - report.ok <= 4, "{report:?}");
}

#[test]
#[ignore = "needs root: runs a mesh in network namespaces"]
fn a_sidecar_drained_and_replaced_fails_no_request() {
    let c = seed("drain");
    // The replacement first, as a rollout starts it; then the old pod goes gracefully: its
    // sidecar drains (Connection: close, GOAWAY) and finishes what it has.
    let report = a_v1_pod_leaves_under_load(&*c, false);
    fault_figures("sidecar drained and replaced", &report);
    assert_eq!(report.requests, 3000);
    assert_all_ok(&report);
}

#[test]
#[ignore = "needs root: runs a mesh in network namespaces"]
fn a_config_the_proxy_must_nack_fails_no_request_and_is_reported() {
    let c = seed("nack");
    let local = c
        .as_local()
        .expect("this scenario needs the local backend: pilot reads the PEM file from its disk");
    // Pilot takes this (the file reads); order's sidecar cannot (it is not a certificate), so
    // it refuses the state and keeps routing with the last one it took.
    let bad = local.dir().join("not-a-ca.pem");
    std::fs::write(&bad, "not a certificate").unwrap();
    let dr = format!(
        "
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: shipping-service, namespace: default}}
spec:
  host: shipping-service
  trafficPolicy:
    tls: {{mode: SIMPLE, caCertificates: {}}}
  subsets:
  - {{name: v1, labels: {{version: v1}}}}
  - {{name: v2, labels: {{version: v2}}}}
",
        bad.display()
    );
    let nacked = |v: &serde_json::Value| {
        v["proxies"].as_array().is_some_and(|ps| {
            ps.iter().any(|p| {
                p["node"]["id"]
                    .as_str()
                    .is_some_and(|id| id.contains("order-v1-0"))
                    && p["nack"].as_str().is_some_and(|n| !n.is_empty())
            })
        })
    };
    let report = under_load(&*c, || {
        c.apply_yaml(&dr).unwrap();
        let seen = wait_until(DEADLINE, || {
            c.pilot_debug("/debug/syncz").is_ok_and(|v| nacked(&v))
        });
        assert!(
            seen,
            "pilot never recorded order's NACK: {:?}",
            c.pilot_debug("/debug/syncz")
        );
        // Fixed: taken again.
        c.apply_yaml(
            "
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: shipping-service, namespace: default}
spec:
  host: shipping-service
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
",
        )
        .unwrap();
        let cleared = wait_until(DEADLINE, || {
            c.pilot_debug("/debug/syncz").is_ok_and(|v| !nacked(&v))
        });
        assert!(
            cleared,
            "the NACK never cleared once the rule was fixed: {:?}",
            c.pilot_debug("/debug/syncz")
        );
    });
    fault_figures("config the proxy must NACK", &report);
    assert_eq!(report.requests, 3000);
    assert_all_ok(&report);
}

/// Service `echo` (HTTP on 8080) and mesh-wide STRICT mutual TLS.
const ECHO_STRICT: &str = "
apiVersion: v1
kind: Service
metadata: {name: echo, namespace: default}
spec:
  selector: {app: echo}
  ports:
  - {name: http, port: 8080}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec:
  mtls: {mode: STRICT}
";

/// The serial number of the workload certificate `pod`'s sidecar holds (its admin `/certs`).
fn cert_serial(c: &dyn Cluster, pod: &str) -> Option<String> {
    let certs: serde_json::Value =
        serde_json::from_str(&c.sidecar_get(pod, 15000, "/certs").ok()?).ok()?;
    certs["certificates"][0]["serialNumber"]
        .as_str()
        .map(str::to_string)
}

/// Renewals that failed so far in `pod`'s sidecar (each is retried after a backoff).
fn failed_renewals(c: &dyn Cluster, pod: &str) -> usize {
    c.proxy_log(pod)
        .unwrap_or_default()
        .matches("cannot get a certificate")
        .count()
}

#[test]
#[ignore = "needs root: runs a mesh in network namespaces"]
fn certificates_renewed_under_load_and_the_ca_down_past_a_backoff_fail_no_request() {
    let c = seed_less_echo("renewal");
    let pods = ["client", "echo-0"];
    let first: Vec<_> = pods.iter().map(|p| cert_serial(&*c, p)).collect();
    assert!(first.iter().all(Option::is_some), "{first:?}");
    let report = std::thread::scope(|s| {
        let load = s.spawn(|| {
            c.load(
                "client",
                "http://echo:8080/",
                &["-n", "15000", "-c", "4", "--rate", "300"],
            )
        });
        // Renewed under load: both sidecars take a new certificate.
        let renewed = |before: &[Option<String>]| {
            pods.iter()
                .zip(before)
                .all(|(p, old)| cert_serial(&*c, p).is_some_and(|now| Some(now) != *old))
        };
        assert!(
            wait_until(Duration::from_secs(40), || renewed(&first)),
            "the sidecars never renewed their certificates"
        );
        let second: Vec<_> = pods.iter().map(|p| cert_serial(&*c, p)).collect();
        // Then the CA (with pilot) goes down, and stays down until a renewal has failed and
        // been tried again after its backoff, in either sidecar.
        let failed_before: Vec<usize> = pods.iter().map(|p| failed_renewals(&*c, p)).collect();
        c.restart_control_plane_when(&|| {
            pods.iter()
                .zip(&failed_before)
                .any(|(p, n)| failed_renewals(&*c, p) >= n + 2)
        })
        .unwrap();
        // Back: both renew again, before their certificates run out.
        assert!(
            wait_until(Duration::from_secs(30), || renewed(&second)),
            "the sidecars never renewed once the CA was back"
        );
        load.join().unwrap().unwrap()
    });
    fault_figures(
        "certificates renewed, then the CA down past a renewal backoff",
        &report,
    );
    assert_eq!(report.requests, 15_000);
    assert_all_ok(&report);
    assert!(report.all_mtls(), "{report:?}");
}

/// The roots `pod`'s sidecar trusts (their SHA-256, from its admin `/certs`).
fn trusted_roots(c: &dyn Cluster, pod: &str) -> Vec<String> {
    c.sidecar_get(pod, 15000, "/certs")
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| {
            v["roots"].as_array().map(|rs| {
                rs.iter()
                    .filter_map(|r| r["sha256"].as_str().map(str::to_string))
                    .collect()
            })
        })
        .unwrap_or_default()
}

#[test]
#[ignore = "needs root: runs a mesh in network namespaces"]
fn a_root_rotation_under_load_fails_no_request() {
    let c = seed_less_echo("rotation");
    let local = c
        .as_local()
        .expect("this scenario needs the local backend: it rewrites the CA's files");
    let ca = local.dir().join("ca");
    let pods = ["client", "echo-0"];
    let old_root = trusted_roots(&*c, "client");
    assert_eq!(old_root.len(), 1, "{old_root:?}");
    let old_root = old_root[0].clone();
    // The new root and an intermediate under it, made as the CA makes its own.
    let fresh = tempfile::tempdir().unwrap();
    mesh_ca::Authority::load_or_create(fresh.path(), mesh_ca::CaConfig::default()).unwrap();
    let everyone = |want: &[&String]| {
        pods.iter().all(|p| {
            let mut have = trusted_roots(&*c, p);
            have.sort();
            let mut want: Vec<String> = want.iter().map(|s| (*s).clone()).collect();
            want.sort();
            have == want
        })
    };
    let renewed_since = |before: &[Option<String>]| {
        pods.iter()
            .zip(before)
            .all(|(p, old)| cert_serial(&*c, p).is_some_and(|now| Some(now) != *old))
    };
    let serials = || pods.iter().map(|p| cert_serial(&*c, p)).collect::<Vec<_>>();
    let report = std::thread::scope(|s| {
        let load = s.spawn(|| {
            c.load(
                "client",
                "http://echo:8080/",
                &["-n", "24000", "-c", "4", "--rate", "300"],
            )
        });
        assert!(
            wait_until(DEADLINE, || inbound_requests(&*c, "echo-0") >= 50),
            "traffic never reached echo"
        );
        let (root_file, old_pem) = (
            ca.join("root-cert.pem"),
            std::fs::read_to_string(ca.join("root-cert.pem")).unwrap(),
        );
        let new_pem = std::fs::read_to_string(fresh.path().join("root-cert.pem")).unwrap();
        // 1. The new root joins the bundle (the old one first); the CA restarts with it, and
        //    every sidecar renews into trusting both.
        std::fs::write(&root_file, format!("{old_pem}{new_pem}")).unwrap();
        c.restart_control_plane().unwrap();
        assert!(
            wait_until(Duration::from_secs(40), || pods
                .iter()
                .all(|p| trusted_roots(&*c, p).len() == 2)),
            "the sidecars never trusted both roots"
        );
        let both = trusted_roots(&*c, "client");
        assert!(both.contains(&old_root), "{both:?}");
        let new_root = both.iter().find(|r| **r != old_root).unwrap().clone();
        assert!(everyone(&[&old_root, &new_root]));
        // 2. The new root signs: its intermediate replaces the old one; the sidecars renew into
        //    certificates from it (the CA's own serving certificate too).
        for f in [
            "ca-cert.pem",
            "ca-key.pem",
            "cert-chain.pem",
            "root-key.pem",
        ] {
            std::fs::copy(fresh.path().join(f), ca.join(f)).unwrap();
        }
        let before = serials();
        c.restart_control_plane().unwrap();
        assert!(
            wait_until(Duration::from_secs(40), || renewed_since(&before)),
            "the sidecars never renewed from the new root"
        );
        // 3. The old root leaves the bundle.
        std::fs::write(&root_file, &new_pem).unwrap();
        c.restart_control_plane().unwrap();
        assert!(
            wait_until(Duration::from_secs(40), || everyone(&[&new_root])),
            "the sidecars still trust the old root"
        );
        load.join().unwrap().unwrap()
    });
    fault_figures("root rotation (three steps, three CA restarts)", &report);
    assert_all_ok(&report);
    assert!(report.all_mtls(), "{report:?}");
}

/// A mesh of a client and an echo pod (service `echo`, STRICT mTLS) whose sidecars ask for
/// 30 s certificates (Istio's `SECRET_TTL`), renewed 12-18 s after each arrives.
fn seed_less_echo(scenario: &str) -> Box<dyn Cluster> {
    let c = harness::cluster(scenario);
    c.apply_yaml(ECHO_STRICT).unwrap();
    let short_lived = |name: &str, app: &str| {
        let mut pod = echo_pod(name, app, "v1", app);
        pod.proxy_env.push(("SECRET_TTL".into(), "30s".into()));
        pod
    };
    c.run(&short_lived("client", "client")).unwrap();
    c.run(&short_lived("echo-0", "echo")).unwrap();
    c.wait_endpoints("client", "echo.default", 1).unwrap();
    c
}

#[test]
#[ignore = "needs root: runs a mesh in network namespaces"]
fn config_change_under_traffic_fails_no_request() {
    let c = seed("change");
    let report = under_load(&*c, || {
        c.apply_yaml(&shipping_split(50)).unwrap();
        switch_to_v2_and_see_it(&*c);
    });
    fault_figures("config change", &report);
    assert_eq!(report.requests, 3000);
    assert_all_ok(&report);
    assert!(
        report.by_version.get("v1").copied().unwrap_or(0) >= 50,
        "{report:?}"
    );
}

#[test]
#[ignore = "needs root: runs a mesh in network namespaces"]
fn pilot_killed_and_restarted_under_traffic_fails_no_request() {
    let c = seed("restart");
    let report = under_load(&*c, || {
        c.restart_control_plane().unwrap();
        // Every proxy (four sidecars and the ingress gateway) reconnects to the new pilot...
        let reconnected = wait_until(DEADLINE, || {
            c.pilot_debug("/debug/syncz").is_ok_and(|v| {
                v["proxies"].as_array().is_some_and(|ps| {
                    !ps.is_empty() && ps.iter().all(|p| p["connected"] == true) && ps.len() >= 5
                })
            })
        });
        assert!(reconnected, "the sidecars did not reconnect to pilot");
        // ...and a change made after the restart reaches traffic.
        switch_to_v2_and_see_it(&*c);
    });
    fault_figures("pilot killed (SIGKILL) and restarted", &report);
    assert_eq!(report.requests, 3000);
    assert_all_ok(&report);
}

#[test]
#[ignore = "needs root: runs a mesh in network namespaces"]
fn tcp_websocket_and_grpc_across_the_mesh() {
    let c = harness::cluster("protocols");
    c.apply_yaml(
        "
apiVersion: v1
kind: Service
metadata: {name: echo, namespace: default}
spec:
  selector: {app: echo}
  ports:
  - {name: http, port: 8080}
  - {name: tcp-echo, port: 9000}
  - {name: grpc, port: 9090}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec:
  mtls: {mode: STRICT}
",
    )
    .unwrap();
    c.run(&echo_pod("client", "client", "v1", "client"))
        .unwrap();
    c.run(&echo_pod("echo-0", "echo", "v1", "echo")).unwrap();
    c.wait_endpoints("client", "echo.default", 1).unwrap();
    let out = c
        .exec(
            "client",
            &[
                "mesh-echo",
                "tcp",
                "--address",
                "echo:9000",
                "--message",
                "over the mesh",
            ],
        )
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("service=echo version=v1 pod=echo-0"),
        "{text}"
    );
    assert!(text.contains("over the mesh"), "{text}");

    // h2c from the app, through both sidecars.
    let h2 = c
        .load("client", "http://echo:8080/", &["-n", "20", "--http2"])
        .unwrap();
    assert_all_ok(&h2);
    assert_eq!(
        h2.by_peer
            .get("spiffe://cluster.local/ns/default/sa/client"),
        Some(&20),
        "{h2:?}"
    );

    // WebSocket: an HTTP/1.1 upgrade through both sidecars, then frames both ways.
    let out = c
        .exec(
            "client",
            &[
                "mesh-echo",
                "ws",
                "--url",
                "ws://echo:8080/ws",
                "--message",
                "frames",
            ],
        )
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut lines = text.lines();
    let greeting: serde_json::Value = serde_json::from_str(lines.next().unwrap()).unwrap();
    assert_eq!(greeting["service"], "echo");
    assert_eq!(
        greeting["peer"],
        "spiffe://cluster.local/ns/default/sa/client"
    );
    assert_eq!(lines.next(), Some("frames"));

    // gRPC (HTTP/2 end to end), with the caller's identity seen by the server.
    let out = c
        .exec(
            "client",
            &[
                "mesh-echo",
                "grpc",
                "--address",
                "http://echo:9090",
                "--message",
                "rpc",
            ],
        )
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let answer: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
    assert_eq!(answer["message"], "rpc");
    assert_eq!(answer["service"], "echo");
    assert_eq!(
        answer["peer"],
        "spiffe://cluster.local/ns/default/sa/client"
    );
    // Both sidecars count the call as gRPC with the status its trailers carried.
    let grpc_ok = ["request_protocol=\"grpc\"", "grpc_response_status=\"0\""];
    let counted = wait_until(DEADLINE, || requests_counted(&*c, "client", &grpc_ok) >= 1);
    assert!(counted, "{}", scrape(&*c, "client"));
}

#[test]
#[ignore = "needs root: runs a mesh in network namespaces"]
fn an_https_server_takes_its_certificate_from_a_credential_name_secret() {
    // Istio's secure-gateway task, as applied: a TLS Secret in the gateway's namespace (as
    // `kubectl create secret tls` writes it) and a Gateway whose HTTPS server names it. The
    // TLS itself is tested in process (proxy/tests/gateway.rs); here the Secret travels from
    // the applied configuration through pilot to the gateway, which binds 443 with it.
    let c = seed("https");
    let (_, chain, key) = mesh_proxy::testing::tls::pki("shop.example.com");
    let secret = serde_json::json!({
        "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
        "metadata": {"name": "shop-credential", "namespace": "istio-system"},
        "stringData": {"tls.crt": chain, "tls.key": key},
    });
    let gateway = "
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: shop-https, namespace: default}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 443, name: https, protocol: HTTPS}
    hosts: [shop.example.com]
    tls: {mode: SIMPLE, credentialName: shop-credential}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: shop-https, namespace: default}
spec:
  hosts: [shop.example.com]
  gateways: [shop-https]
  http:
  - route:
    - destination: {host: order, port: {number: 8080}}
";
    c.apply_yaml(&format!("{secret}\n---\n{gateway}")).unwrap();
    let pod = meshctl::local::INGRESS_GATEWAY_POD;
    let listening = wait_until(DEADLINE, || {
        c.proxy_config(pod).is_ok_and(|cfg| {
            cfg["gatewayListeners"].as_array().is_some_and(|ls| {
                ls.iter().any(|l| {
                    l["port"] == 443
                        && l["certificates"][0]["certificateChainPem"]
                            .as_str()
                            .is_some_and(|pem| pem == chain)
                })
            })
        })
    });
    assert!(
        listening,
        "the gateway never got the Secret's certificate for 443"
    );
    // The port is bound: a client outside the mesh (no sidecar to accept for it) connects.
    c.run(&outside()).unwrap();
    let address = c.ingress().unwrap();
    let host = address.rsplit_once(':').unwrap().0;
    let connect = |port: u16| {
        c.exec(
            "outside",
            &["bash", "-c", &format!("exec 3<>/dev/tcp/{host}/{port}")],
        )
        .is_ok_and(|o| o.status.success())
    };
    // (A port no Gateway names is refused, so the check below means something.)
    assert!(!connect(8443), "{host}:8443 should be closed");
    let connected = wait_until(DEADLINE, || connect(443));
    assert!(connected, "nothing listens on {host}:443");
}

/// An OTLP collector (mesh-echo's OTLP mode, behind its own sidecar), the mesh configuration
/// naming it as an `opentelemetry` provider, and a mesh-wide Telemetry tracing every request.
const TRACING: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: otel-collector, namespace: default}
spec:
  selector: {app: otel-collector}
  ports:
  - {name: grpc-otlp, port: 4317, targetPort: 8080}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: istio, namespace: istio-system}
data:
  mesh: |
    accessLogFile: /dev/stdout
    extensionProviders:
    - name: otel
      opentelemetry: {service: otel-collector.default.svc.cluster.local, port: 4317}
---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: mesh-default, namespace: istio-system}
spec:
  tracing:
  - providers: [{name: otel}]
    randomSamplingPercentage: 100
"#;

/// The spans the collector pod has received.
fn collected_spans(c: &dyn Cluster) -> Vec<mesh_e2e::echo::otlp::Span> {
    let get =
        "exec 3<>/dev/tcp/127.0.0.1/8080; printf 'GET /spans HTTP/1.0\\r\\n\\r\\n' >&3; cat <&3";
    let Ok(out) = c.exec("otel-collector-0", &["bash", "-c", get]) else {
        return Vec::new();
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    serde_json::from_str(body).unwrap_or_default()
}

#[test]
#[ignore = "needs root: runs a mesh in network namespaces"]
fn a_trace_crosses_two_sidecars_and_reaches_the_collector_through_the_mesh() {
    const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const CALLER: &str = "00f067aa0ba902b7";
    const SERVER: i32 = 2;
    let c = seed("tracing");
    let mut collector = echo_pod("otel-collector-0", "otel-collector", "v1", "otel-collector");
    collector.command.push("--otlp".into());
    c.run(&collector).unwrap();
    c.apply_yaml(TRACING).unwrap();
    for pod in ["order-v1-0", "shipping-v1-0", "shipping-v2-0"] {
        c.wait_endpoints(pod, "otel-collector.default", 1).unwrap();
    }
    let header = format!("traceparent: 00-{TRACE}-{CALLER}-01");
    let url = "http://shipping-service:8080/";
    // Once the Telemetry is in force, order's CLIENT span and shipping's SERVER span of one
    // request arrive, linked: caller → order's sidecar → shipping's sidecar.
    let mut spans = Vec::new();
    let linked = wait_until(DEADLINE, || {
        let _ = c.load("order-v1-0", url, &["-n", "5", "-H", &header]);
        spans = collected_spans(&*c);
        spans.iter().any(|server| {
            server.kind == SERVER
                && server.trace_id == TRACE
                && server.service == "shipping.default"
                && spans.iter().any(|client| {
                    client.span_id == server.parent_span_id
                        && client.parent_span_id == CALLER
                        && client.service == "order.default"
                })
        })
    });
    assert!(
        linked,
        "no linked CLIENT/SERVER pair of trace {TRACE}: {spans:#?}"
    );
    let client = spans
        .iter()
        .find(|s| s.service == "order.default" && s.trace_id == TRACE)
        .unwrap();
    assert_eq!(client.attributes["http.status_code"], "200");
    assert!(
        client.attributes["upstream_cluster"].starts_with("outbound|8080|")
            && client.attributes["upstream_cluster"]
                .ends_with("|shipping-service.default.svc.cluster.local"),
        "{client:#?}"
    );
    // The access log line of the same request carries the trace id.
    let log = c.proxy_log("order-v1-0").unwrap();
    assert!(
        log.contains(&format!(r#""trace_id":"{TRACE}""#)),
        "order's access log names the trace"
    );
    // The spans went through the mesh: the collector's sidecar took the Export call over
    // mesh mTLS from order's identity.
    let exports: Vec<serde_json::Value> = c
        .proxy_log("otel-collector-0")
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["path"] == mesh_e2e::echo::otlp::EXPORT_PATH)
        .collect();
    assert!(
        exports.iter().any(|e| e["downstream_peer_principal"]
            == "spiffe://cluster.local/ns/default/sa/order"
            && e["response_code"] == 200),
        "{exports:#?}"
    );
}
