//! The Kubernetes source against a scripted API server: list responses in the API's own JSON
//! (`tests/fixtures/kube/`, the shapes `kubectl get -o json` shows: managed fields, owner
//! references, endpoint conditions, an injected sidecar container), then watch events. Checks
//! that endpoints come from EndpointSlices with the pods' labels and identities, that a refused
//! VirtualService is left out with its reason written to its status (and cleared once fixed),
//! that the analyzers' messages and fields not enforced yet reach Istio objects' statuses, and
//! that watch events reach the snapshot.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use mesh_api::Resource;
use mesh_pilot::model::{MeshConfig, Model};
use mesh_pilot::source::Snapshot;
use mesh_pilot::source::kube::{KubeOptions, run};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

const DEADLINE: Duration = Duration::from_secs(20);

/// The scripted API server's memory.
#[derive(Default)]
struct Script {
    lists: HashMap<String, String>,
    /// Open watches by collection path.
    watches: Mutex<HashMap<String, Vec<mpsc::UnboundedSender<String>>>>,
    watch_count: Option<watch::Sender<usize>>,
    /// Status patches received: (path, body).
    patches: Mutex<Vec<(String, serde_json::Value)>>,
    patched: Option<watch::Sender<usize>>,
    /// Collections the API server does not serve (their CRD is not installed): 404.
    missing: Vec<String>,
}

type Body = BoxBody<Bytes, Infallible>;

fn full(text: String) -> Body {
    Full::new(Bytes::from(text)).boxed()
}

async fn answer(script: Arc<Script>, req: Request<hyper::body::Incoming>) -> Response<Body> {
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    if req.method() == hyper::Method::PATCH {
        let body = req.into_body().collect().await.unwrap().to_bytes();
        let value: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let mut p = script.patches.lock().unwrap();
        p.push((path, value.clone()));
        script.patched.as_ref().unwrap().send_replace(p.len());
        return Response::new(full(value.to_string()));
    }
    if script.missing.contains(&path) {
        let mut r = Response::new(full(
            r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"the server could not find the requested resource","reason":"NotFound","details":{},"code":404}"#
                .to_string(),
        ));
        *r.status_mut() = hyper::StatusCode::NOT_FOUND;
        return r;
    }
    if query.contains("watch=true") || query.contains("watch=1") {
        let (tx, rx) = mpsc::unbounded_channel::<String>();
        let n = {
            let mut w = script.watches.lock().unwrap();
            w.entry(path).or_default().push(tx);
            w.values().map(Vec::len).sum()
        };
        script.watch_count.as_ref().unwrap().send_replace(n);
        let stream = tokio_stream::wrappers::UnboundedReceiverStream::new(rx)
            .map(|line| Ok::<_, Infallible>(Frame::data(Bytes::from(line + "\n"))));
        return Response::new(BodyExt::boxed(StreamBody::new(stream)));
    }
    let body = script.lists.get(&path).cloned().unwrap_or_else(|| {
        r#"{"apiVersion":"v1","kind":"List","metadata":{"resourceVersion":"4100"},"items":[]}"#
            .to_string()
    });
    Response::new(full(body))
}

use tokio_stream::StreamExt;

async fn api_server(script: Arc<Script>) -> String {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (c, _) = l.accept().await.unwrap();
            let script = script.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let script = script.clone();
                    async move { Ok::<_, Infallible>(answer(script, req).await) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .serve_connection(TokioIo::new(c), svc)
                .await;
            });
        }
    });
    format!("http://{addr}")
}

fn fixture(name: &str) -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/kube")
            .join(name),
    )
    .unwrap()
}

fn send(script: &Script, path: &str, event: serde_json::Value) {
    for tx in script
        .watches
        .lock()
        .unwrap()
        .get(path)
        .into_iter()
        .flatten()
    {
        let _ = tx.send(event.to_string());
    }
}

fn reviews_endpoints(s: &Snapshot) -> Vec<(String, String, String)> {
    let model = Model::build(
        MeshConfig::default(),
        s.resources.iter().map(|r| &**r),
        BTreeMap::new(),
    );
    let svc = &model.registry.services["reviews.default.svc.cluster.local"];
    svc.endpoints
        .iter()
        .map(|e| {
            (
                e.address.clone(),
                e.labels.get("version").cloned().unwrap_or_default(),
                e.identity.clone(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflectors_fold_the_cluster_into_snapshots() {
    let (count_tx, mut count_rx) = watch::channel(0);
    let (patched_tx, mut patched_rx) = watch::channel(0);
    let mut script = Script {
        watch_count: Some(count_tx),
        patched: Some(patched_tx),
        ..Script::default()
    };
    for (path, file) in [
        ("/api/v1/services", "services.json"),
        ("/api/v1/pods", "pods.json"),
        ("/api/v1/namespaces", "namespaces.json"),
        (
            "/apis/discovery.k8s.io/v1/endpointslices",
            "endpointslices.json",
        ),
        (
            "/apis/networking.istio.io/v1/virtualservices",
            "virtualservices.json",
        ),
        (
            "/apis/networking.istio.io/v1/destinationrules",
            "destinationrules.json",
        ),
    ] {
        script.lists.insert(path.to_string(), fixture(file));
    }
    let script = Arc::new(script);
    let url = api_server(script.clone()).await;
    let config = kube::Config::new(url.parse().unwrap());
    let client = kube::Client::try_from(config).unwrap();
    let (tx, mut rx) = watch::channel(Arc::new(Snapshot::default()));
    let source = tokio::spawn(run(client, tx, KubeOptions::default()));

    let first = tokio::time::timeout(DEADLINE, rx.wait_for(|s| s.revision > 0))
        .await
        .expect("a first snapshot once every reflector listed")
        .unwrap()
        .clone();
    let id = "spiffe://cluster.local/ns/default/sa/bookinfo-reviews".to_string();
    assert_eq!(
        reviews_endpoints(&first),
        vec![
            ("10.244.0.11".into(), "v1".into(), id.clone()),
            ("10.244.0.12".into(), "v2".into(), id.clone()),
            ("10.244.0.13".into(), "v3".into(), id.clone()),
        ]
    );
    let vs_names: Vec<&str> = first
        .resources
        .iter()
        .filter(|r| matches!(&***r, Resource::VirtualService(_)))
        .map(|r| r.name())
        .collect();
    assert_eq!(
        vs_names,
        vec!["reviews"],
        "the refused VirtualService is left out"
    );
    let findings: Vec<String> = first.findings.iter().map(ToString::to_string).collect();
    assert!(
        findings
            .iter()
            .any(|f| f.contains("reviews-typo") && f.contains("weight")),
        "{findings:?}"
    );

    // Its status says why.
    tokio::time::timeout(DEADLINE, patched_rx.wait_for(|n| *n >= 1))
        .await
        .expect("status written")
        .unwrap();
    let (path, body) = script.patches.lock().unwrap()[0].clone();
    assert_eq!(
        path,
        "/apis/networking.istio.io/v1/namespaces/default/virtualservices/reviews-typo/status"
    );
    let description = body["status"]["validationMessages"][0]["description"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        description.contains("spec.http[0].route") && description.contains("100"),
        "{description}"
    );

    // Watches: one endpoint leaves, and the typo is fixed.
    tokio::time::timeout(DEADLINE, count_rx.wait_for(|n| *n >= 14))
        .await
        .expect("every kind is watched")
        .unwrap();
    let mut slice: serde_json::Value =
        serde_json::from_str(&fixture("endpointslices.json")).unwrap();
    let mut item = slice["items"][0].take();
    item["endpoints"].as_array_mut().unwrap().remove(1);
    item["metadata"]["resourceVersion"] = "4200".into();
    send(
        &script,
        "/apis/discovery.k8s.io/v1/endpointslices",
        serde_json::json!({"type": "MODIFIED", "object": item}),
    );
    let after = tokio::time::timeout(DEADLINE, rx.wait_for(|s| reviews_endpoints(s).len() == 2))
        .await
        .expect("the slice change reaches the snapshot")
        .unwrap()
        .clone();
    assert!(reviews_endpoints(&after).iter().all(|(_, v, _)| v != "v2"));

    let mut vss: serde_json::Value =
        serde_json::from_str(&fixture("virtualservices.json")).unwrap();
    let mut fixed = vss["items"][1].take();
    fixed["spec"]["http"][0]["route"][1]["weight"] = 20.into();
    fixed["metadata"]["resourceVersion"] = "4300".into();
    send(
        &script,
        "/apis/networking.istio.io/v1/virtualservices",
        serde_json::json!({"type": "MODIFIED", "object": fixed}),
    );
    tokio::time::timeout(
        DEADLINE,
        rx.wait_for(|s| s.resources.iter().any(|r| r.name() == "reviews-typo")),
    )
    .await
    .expect("the fixed VirtualService is accepted")
    .unwrap();
    tokio::time::timeout(DEADLINE, patched_rx.wait_for(|n| *n >= 2))
        .await
        .expect("status cleared")
        .unwrap();
    let (_, body) = script.patches.lock().unwrap()[1].clone();
    assert!(body["status"]["validationMessages"].is_null(), "{body}");
    source.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kind_whose_crd_is_not_installed_is_left_out_not_waited_for() {
    // A cluster with Istio's CRDs but not the mesh's own RateLimitPolicy.
    let (count_tx, _count_rx) = watch::channel(0);
    let (patched_tx, _patched_rx) = watch::channel(0);
    let mut script = Script {
        watch_count: Some(count_tx),
        patched: Some(patched_tx),
        missing: vec!["/apis/policy.mesh.dev/v1alpha1/ratelimitpolicies".into()],
        ..Script::default()
    };
    for (path, file) in [
        ("/api/v1/services", "services.json"),
        ("/api/v1/pods", "pods.json"),
        (
            "/apis/discovery.k8s.io/v1/endpointslices",
            "endpointslices.json",
        ),
    ] {
        script.lists.insert(path.to_string(), fixture(file));
    }
    let script = Arc::new(script);
    let url = api_server(script.clone()).await;
    let client = kube::Client::try_from(kube::Config::new(url.parse().unwrap())).unwrap();
    let (tx, mut rx) = watch::channel(Arc::new(Snapshot::default()));
    let source = tokio::spawn(run(client, tx, KubeOptions::default()));
    let first = tokio::time::timeout(DEADLINE, rx.wait_for(|s| s.revision > 0))
        .await
        .expect("pilot publishes without the missing kind")
        .unwrap()
        .clone();
    assert_eq!(reviews_endpoints(&first).len(), 3);
    source.abort();
}

/// A list of the API's own JSON shape.
fn list(kind: &str, items: serde_json::Value) -> String {
    serde_json::json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": format!("{kind}List"),
        "metadata": {"resourceVersion": "4200"},
        "items": items,
    })
    .to_string()
}

#[tokio::test]
async fn gateway_api_objects_are_read_and_a_refused_route_says_so_in_its_status() {
    let (count_tx, _count_rx) = watch::channel(0);
    let (patched_tx, mut patched_rx) = watch::channel(0);
    let mut script = Script {
        watch_count: Some(count_tx),
        patched: Some(patched_tx),
        ..Script::default()
    };
    let gateway = serde_json::json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
        "metadata": {"name": "edge", "namespace": "shop", "generation": 1},
        "spec": {"gatewayClassName": "istio", "listeners": [{"name": "http", "port": 80, "protocol": "HTTP"}]},
    });
    let good = serde_json::json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
        "metadata": {"name": "good", "namespace": "shop", "generation": 1},
        "spec": {"parentRefs": [{"name": "edge"}], "rules": [{"backendRefs": [{"name": "reviews", "port": 9080}]}]},
    });
    let bad = serde_json::json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
        "metadata": {"name": "bad", "namespace": "shop", "generation": 3},
        "spec": {"parentRefs": [{"name": "edge"}], "rules": [{"matches": [{"path": {"type": "PathPrefix", "value": "api"}}]}]},
    });
    script.lists.insert(
        "/apis/gateway.networking.k8s.io/v1/gateways".into(),
        list("Gateway", serde_json::json!([gateway])),
    );
    script.lists.insert(
        "/apis/gateway.networking.k8s.io/v1/httproutes".into(),
        list("HTTPRoute", serde_json::json!([good, bad])),
    );
    let script = Arc::new(script);
    let url = api_server(script.clone()).await;
    let client = kube::Client::try_from(kube::Config::new(url.parse().unwrap())).unwrap();
    let (tx, mut rx) = watch::channel(Arc::new(Snapshot::default()));
    let source = tokio::spawn(run(client, tx, KubeOptions::default()));
    let first = tokio::time::timeout(DEADLINE, rx.wait_for(|s| s.revision > 0))
        .await
        .expect("a first snapshot")
        .unwrap()
        .clone();
    let kinds: Vec<String> = first
        .resources
        .iter()
        .filter(|r| r.kind().is_gateway_api())
        .map(|r| format!("{} {}", r.kind().name(), r.name()))
        .collect();
    assert_eq!(
        kinds,
        ["Gateway edge", "HTTPRoute good"],
        "the refused route is left out"
    );
    tokio::time::timeout(DEADLINE, patched_rx.wait_for(|n| *n >= 1))
        .await
        .expect("the refused route's status is written")
        .unwrap();
    let patches = script.patches.lock().unwrap().clone();
    let (path, body) = &patches[0];
    assert_eq!(
        path,
        "/apis/gateway.networking.k8s.io/v1/namespaces/shop/httproutes/bad/status"
    );
    let parent = &body["status"]["parents"][0];
    assert_eq!(parent["parentRef"]["name"], "edge");
    assert_eq!(parent["controllerName"], "istio.io/gateway-controller");
    let c = &parent["conditions"][0];
    assert_eq!(
        (&c["type"], &c["status"]),
        (&"Accepted".into(), &"False".into())
    );
    assert_eq!(c["observedGeneration"], 3);
    assert!(
        c["message"]
            .as_str()
            .unwrap()
            .contains("must start with '/'"),
        "{c}"
    );
    assert!(c["lastTransitionTime"].is_string());
    source.abort();
}

#[tokio::test]
async fn gateway_api_status_is_written_next_to_other_controllers_parents() {
    let (count_tx, _count_rx) = watch::channel(0);
    let (patched_tx, _patched_rx) = watch::channel(0);
    let mut script = Script {
        watch_count: Some(count_tx),
        patched: Some(patched_tx),
        ..Script::default()
    };
    // The route as the cluster has it: another controller answered for its other parent.
    let route = serde_json::json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
        "metadata": {"name": "r", "namespace": "shop", "generation": 2},
        "spec": {},
        "status": {"parents": [{
            "parentRef": {"name": "theirs"},
            "controllerName": "example.com/other",
            "conditions": [{"type": "Accepted", "status": "True", "reason": "Accepted", "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z"}],
        }]},
    });
    script.lists.insert(
        "/apis/gateway.networking.k8s.io/v1/namespaces/shop/httproutes/r".into(),
        route.to_string(),
    );
    let gateway = serde_json::json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
        "metadata": {"name": "edge", "namespace": "shop"}, "spec": {},
    });
    script.lists.insert(
        "/apis/gateway.networking.k8s.io/v1/namespaces/shop/gateways/edge".into(),
        gateway.to_string(),
    );
    let script = Arc::new(script);
    let url = api_server(script.clone()).await;
    let client = kube::Client::try_from(kube::Config::new(url.parse().unwrap())).unwrap();
    let model = mesh_pilot::testing::model(&mesh_pilot::testing::resources(
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: edge, namespace: shop, generation: 1}
spec:
  gatewayClassName: istio
  listeners: [{name: http, port: 80, protocol: HTTP}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r, namespace: shop, generation: 2}
spec:
  parentRefs: [{name: edge}]
  rules: [{backendRefs: [{name: nowhere, port: 80}]}]
"#,
    ));
    let mut written = BTreeMap::new();
    let failed = mesh_pilot::gateway_status::publish(
        &client,
        "mesh-pilot",
        &model.gateway_api_status,
        &mut written,
    )
    .await;
    assert!(failed.is_empty(), "{failed:?}");
    let patches = script.patches.lock().unwrap().clone();
    assert_eq!(patches.len(), 2, "{patches:?}");
    let route = patches
        .iter()
        .find(|(p, _)| p.ends_with("/httproutes/r/status"))
        .unwrap();
    let parents = route.1["status"]["parents"].as_array().unwrap();
    assert_eq!(parents.len(), 2, "the other controller's parent is kept");
    assert_eq!(parents[0]["controllerName"], "example.com/other");
    let ours = &parents[1];
    assert_eq!(ours["parentRef"]["name"], "edge");
    let resolved = ours["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "ResolvedRefs")
        .unwrap();
    assert_eq!(resolved["status"], "False");
    assert_eq!(resolved["reason"], "BackendNotFound");
    assert_eq!(resolved["observedGeneration"], 2);
    assert!(resolved["lastTransitionTime"].is_string());
    let gw = patches
        .iter()
        .find(|(p, _)| p.ends_with("/gateways/edge/status"))
        .unwrap();
    assert_eq!(gw.1["status"]["listeners"][0]["attachedRoutes"], 1);
    // Nothing changed: nothing is written again.
    let again = mesh_pilot::gateway_status::publish(
        &client,
        "mesh-pilot",
        &model.gateway_api_status,
        &mut written,
    )
    .await;
    assert!(again.is_empty());
    assert_eq!(script.patches.lock().unwrap().len(), 2);
}

#[tokio::test]
async fn a_gateway_api_gateway_gets_its_gateway_deployed_once() {
    let (count_tx, _count_rx) = watch::channel(0);
    let (patched_tx, _patched_rx) = watch::channel(0);
    let script = Arc::new(Script {
        watch_count: Some(count_tx),
        patched: Some(patched_tx),
        ..Script::default()
    });
    let url = api_server(script.clone()).await;
    let client = kube::Client::try_from(kube::Config::new(url.parse().unwrap())).unwrap();
    let model = mesh_pilot::testing::model(&mesh_pilot::testing::resources(
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: edge, namespace: shop, uid: 1f2e}
spec:
  gatewayClassName: istio
  listeners:
  - {name: http, port: 80, protocol: HTTP}
  - {name: alt, port: 8080, protocol: HTTP}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: by-hand, namespace: shop}
spec:
  gatewayClassName: istio
  addresses: [{type: Hostname, value: istio-ingressgateway}]
  listeners: [{name: http, port: 80, protocol: HTTP}]
"#,
    ));
    let inject = mesh_injector::config::InjectConfig::default();
    let mut applied = std::collections::BTreeSet::new();
    let failed = mesh_pilot::gateway_deploy::apply(
        &client,
        "mesh-pilot",
        &inject,
        &model.gateway_deployments,
        &mut applied,
    )
    .await;
    assert!(failed.is_empty(), "{failed:?}");
    let patches = script.patches.lock().unwrap().clone();
    let paths: Vec<&str> = patches.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(
        paths,
        [
            "/api/v1/namespaces/shop/serviceaccounts/edge-istio",
            "/apis/apps/v1/namespaces/shop/deployments/edge-istio",
            "/api/v1/namespaces/shop/services/edge-istio",
        ],
        "only the Gateway without an address of its own gets a deployment"
    );
    let deployment = &patches[1].1;
    assert_eq!(deployment["metadata"]["ownerReferences"][0]["uid"], "1f2e");
    let labels = &deployment["spec"]["template"]["metadata"]["labels"];
    assert_eq!(labels["gateway.networking.k8s.io/gateway-name"], "edge");
    let args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .unwrap();
    assert!(
        args.windows(2)
            .any(|w| w[0] == "--mode" && w[1] == "gateway"),
        "{args:?}"
    );
    let ports: Vec<u64> = patches[2].1["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["port"].as_u64().unwrap())
        .collect();
    assert_eq!(ports, [80, 8080, 15021]);
    // Applied once: the next generation changes nothing.
    let again = mesh_pilot::gateway_deploy::apply(
        &client,
        "mesh-pilot",
        &inject,
        &model.gateway_deployments,
        &mut applied,
    )
    .await;
    assert!(again.is_empty());
    assert_eq!(script.patches.lock().unwrap().len(), 3);
}

/// The `validationMessages` codes of the last status written at `path` (none when cleared).
fn codes_written(script: &Script, path: &str) -> Option<Vec<String>> {
    let patches = script.patches.lock().unwrap();
    let (_, body) = patches.iter().rev().find(|(p, _)| p == path)?;
    Some(
        body["status"]["validationMessages"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|m| m["type"]["code"].as_str().unwrap().to_string())
            .collect(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn istio_objects_get_the_analyzers_messages_in_their_status_until_fixed() {
    let (count_tx, mut count_rx) = watch::channel(0);
    let (patched_tx, mut patched_rx) = watch::channel(0);
    let mut script = Script {
        watch_count: Some(count_tx),
        patched: Some(patched_tx),
        ..Script::default()
    };
    for (path, file) in [
        ("/api/v1/services", "services.json"),
        ("/api/v1/pods", "pods.json"),
        (
            "/apis/discovery.k8s.io/v1/endpointslices",
            "endpointslices.json",
        ),
    ] {
        script.lists.insert(path.to_string(), fixture(file));
    }
    // A VirtualService bound to a Gateway nobody wrote (IST0101), a Gateway with a field the
    // mesh keeps but does not act on yet (MESH0003), and a DestinationRule with nothing to say.
    let vs = serde_json::json!({
        "apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
        "metadata": {"name": "edge", "namespace": "default", "generation": 4, "resourceVersion": "5000"},
        "spec": {"hosts": ["reviews.example.com"], "gateways": ["missing-gateway"],
                 "http": [{"route": [{"destination": {"host": "reviews"}}]}]},
    });
    let gateway = serde_json::json!({
        "apiVersion": "networking.istio.io/v1", "kind": "Gateway",
        "metadata": {"name": "bound", "namespace": "default", "generation": 1},
        "spec": {"selector": {"app": "reviews"},
                 "servers": [{"port": {"number": 9080, "name": "http", "protocol": "HTTP"}, "hosts": ["*"], "bind": "10.0.0.1"}]},
    });
    let quiet = serde_json::json!({
        "apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
        "metadata": {"name": "reviews", "namespace": "default", "generation": 1},
        "spec": {"host": "reviews", "subsets": [{"name": "v1", "labels": {"version": "v1"}}]},
    });
    let istio_list = |kind: &str, item: &serde_json::Value| {
        serde_json::json!({"apiVersion": "networking.istio.io/v1", "kind": format!("{kind}List"),
                           "metadata": {"resourceVersion": "5000"}, "items": [item]})
        .to_string()
    };
    script.lists.insert(
        "/apis/networking.istio.io/v1/virtualservices".into(),
        istio_list("VirtualService", &vs),
    );
    script.lists.insert(
        "/apis/networking.istio.io/v1/gateways".into(),
        istio_list("Gateway", &gateway),
    );
    script.lists.insert(
        "/apis/networking.istio.io/v1/destinationrules".into(),
        istio_list("DestinationRule", &quiet),
    );
    let script = Arc::new(script);
    let url = api_server(script.clone()).await;
    let client = kube::Client::try_from(kube::Config::new(url.parse().unwrap())).unwrap();
    let (tx, _rx) = watch::channel(Arc::new(Snapshot::default()));
    let source = tokio::spawn(run(client, tx, KubeOptions::default()));

    let vs_status = "/apis/networking.istio.io/v1/namespaces/default/virtualservices/edge/status";
    let gw_status = "/apis/networking.istio.io/v1/namespaces/default/gateways/bound/status";
    tokio::time::timeout(
        DEADLINE,
        patched_rx.wait_for(|_| {
            codes_written(&script, vs_status).is_some()
                && codes_written(&script, gw_status).is_some()
        }),
    )
    .await
    .expect("both statuses are written")
    .unwrap();
    assert_eq!(codes_written(&script, vs_status).unwrap(), ["IST0101"]);
    assert_eq!(codes_written(&script, gw_status).unwrap(), ["MESH0003"]);
    {
        let patches = script.patches.lock().unwrap();
        let (_, body) = patches.iter().find(|(p, _)| p == vs_status).unwrap();
        let m = &body["status"]["validationMessages"][0];
        assert_eq!(m["level"], "ERROR");
        assert_eq!(m["type"]["name"], "ReferencedResourceNotFound");
        assert!(
            m["description"]
                .as_str()
                .unwrap()
                .contains("missing-gateway"),
            "{m}"
        );
        assert!(m["hint"].is_string(), "{m}");
        assert_eq!(
            m["documentationUrl"],
            "https://istio.io/latest/docs/reference/config/analysis/ist0101/"
        );
        assert_eq!(body["status"]["observedGeneration"], "4");
        let (_, body) = patches.iter().find(|(p, _)| p == gw_status).unwrap();
        let m = &body["status"]["validationMessages"][0];
        assert_eq!(m["level"], "WARNING");
        assert!(
            m["description"]
                .as_str()
                .unwrap()
                .starts_with("spec.servers[0].bind: accepted, not enforced yet"),
            "{m}"
        );
        assert!(
            !patches.iter().any(|(p, _)| p.contains("destinationrules")),
            "an object with nothing to say is not written: {patches:?}"
        );
    }

    // The VirtualService is fixed: its messages are cleared, once.
    let vs_path = "/apis/networking.istio.io/v1/virtualservices";
    tokio::time::timeout(
        DEADLINE,
        count_rx.wait_for(|_| script.watches.lock().unwrap().contains_key(vs_path)),
    )
    .await
    .expect("VirtualServices are watched")
    .unwrap();
    let mut fixed = vs.clone();
    fixed["spec"]["gateways"] = serde_json::json!(["mesh"]);
    fixed["spec"]["hosts"] = serde_json::json!(["reviews"]);
    fixed["metadata"]["generation"] = 5.into();
    fixed["metadata"]["resourceVersion"] = "5100".into();
    let before = script.patches.lock().unwrap().len();
    send(
        &script,
        vs_path,
        serde_json::json!({"type": "MODIFIED", "object": fixed}),
    );
    tokio::time::timeout(
        DEADLINE,
        patched_rx.wait_for(|_| codes_written(&script, vs_status) == Some(vec![])),
    )
    .await
    .expect("the fixed VirtualService's messages are cleared")
    .unwrap();
    let patches = script.patches.lock().unwrap();
    let (_, body) = patches.iter().rev().find(|(p, _)| p == vs_status).unwrap();
    assert!(body["status"]["validationMessages"].is_null(), "{body}");
    assert_eq!(body["status"]["observedGeneration"], "5");
    assert_eq!(
        patches.len(),
        before + 1,
        "only the changed status is written: {:?}",
        &patches[before..]
    );
    drop(patches);
    source.abort();
}
