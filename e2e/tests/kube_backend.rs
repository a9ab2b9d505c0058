//! The Kubernetes backend of the harness against a scripted API server holding real API JSON:
//! it refuses a cluster without the mesh or without injection and says what to do; applies
//! the scenarios' YAML by server-side apply with the test image the cluster has; waits for
//! Deployments and pods; finds `order-v1-0` among a Deployment's pods; asks pilot through the
//! service proxy and the sidecar's log through the API; restarts pilot as a crash would; and
//! leaves namespace `default` empty. `kubectl exec` itself needs a real cluster (the kind
//! run); here its command line is checked.

#![allow(clippy::expect_used, clippy::unwrap_used)]

#[path = "../../meshctl/tests/common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::StatusCode;
use mesh_e2e::harness::{Cluster, echo_pod};
use mesh_e2e::kubernetes::KubeCluster;
use serde_json::{Value, json};

/// The scripted cluster: objects by path, and every write seen (method, path?query, body).
#[derive(Default)]
struct Server {
    objects: Mutex<BTreeMap<String, Value>>,
    writes: Mutex<Vec<(String, String, Value)>>,
    pilot_restarts: Mutex<u32>,
}

const PODS: &str = "/api/v1/namespaces/default/pods";
const PILOT_PODS: &str = "/api/v1/namespaces/mesh-system/pods";

fn ready_pod(name: &str, labels: Value, created: &str, ip: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "default", "labels": labels, "creationTimestamp": created},
        "spec": {"initContainers": [{"name": "istio-proxy"}], "containers": [{"name": "order"}]},
        "status": {"phase": "Running", "podIP": ip, "conditions": [{"type": "Ready", "status": "True"}]},
    })
}

fn selected(obj: &Value, selector: &str) -> bool {
    selector.split(',').filter(|s| !s.is_empty()).all(|kv| {
        let (k, v) = kv.split_once('=').unwrap();
        obj["metadata"]["labels"][k] == v
    })
}

fn answer(s: &Server, r: common::Seen<'_>) -> common::Answer {
    let query: BTreeMap<String, String> = form_urlencoded::parse(r.query.as_bytes())
        .into_owned()
        .collect();
    if r.method != "GET" {
        s.writes.lock().unwrap().push((
            r.method.to_string(),
            format!("{}?{}", r.path, r.query),
            r.body.clone(),
        ));
    }
    let mut objects = s.objects.lock().unwrap();
    match (r.method, r.path) {
        ("GET", "/api/v1/namespaces/mesh-system/services/mesh-pilot:15014/proxy/debug/syncz") => {
            (StatusCode::OK, json!({"generation": 4, "proxies": []}))
        }
        ("GET", p) if p.ends_with("/log") => {
            assert_eq!(
                query.get("container").map(String::as_str),
                Some("istio-proxy")
            );
            (StatusCode::OK, json!("inbound http GET / 200"))
        }
        ("GET", PODS | PILOT_PODS) => {
            let selector = query.get("labelSelector").cloned().unwrap_or_default();
            let items: Vec<Value> = objects
                .iter()
                .filter(|(k, _)| k.rsplit_once('/').is_some_and(|(dir, _)| dir == r.path))
                .map(|(_, o)| o.clone())
                .filter(|o| selected(o, &selector))
                .collect();
            (
                StatusCode::OK,
                json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": items}),
            )
        }
        ("GET", p) => objects
            .get(p)
            .map_or((StatusCode::NOT_FOUND, common::not_found()), |o| {
                (StatusCode::OK, o.clone())
            }),
        ("PATCH", p) => {
            let mut obj = r.body.clone();
            match obj["kind"].as_str() {
                // The scripted controllers: a Deployment is available at once, a Pod ready.
                Some("Deployment") => {
                    obj["status"] =
                        json!({"availableReplicas": obj["spec"]["replicas"].as_i64().unwrap_or(1)});
                }
                Some("Pod") => {
                    obj["status"] = json!({"phase": "Running", "podIP": "10.244.0.9", "conditions": [{"type": "Ready", "status": "True"}]});
                }
                _ => {}
            }
            objects.insert(p.to_string(), obj.clone());
            (StatusCode::OK, obj)
        }
        ("DELETE", p) => {
            let Some(gone) = objects.remove(p) else {
                return (StatusCode::NOT_FOUND, common::not_found());
            };
            // The scripted controllers: a Deployment's pods go with it; a deleted pilot
            // pod is replaced by a new one.
            if gone["kind"] == "Deployment" {
                let name = gone["metadata"]["name"].as_str().unwrap().to_string();
                objects.retain(|k, _| !k.starts_with(&format!("{PODS}/{name}-")));
            }
            if p.starts_with(PILOT_PODS) {
                let mut n = s.pilot_restarts.lock().unwrap();
                *n += 1;
                let name = format!("mesh-pilot-new{n}");
                let mut pod = ready_pod(
                    &name,
                    json!({"app.kubernetes.io/name": "mesh-pilot"}),
                    "2026-12-07T00:00:00Z",
                    "10.244.0.2",
                );
                pod["metadata"]["namespace"] = json!("mesh-system");
                objects.insert(format!("{PILOT_PODS}/{name}"), pod);
            }
            (
                StatusCode::OK,
                json!({"kind": "Status", "apiVersion": "v1", "status": "Success"}),
            )
        }
        _ => (StatusCode::NOT_FOUND, common::not_found()),
    }
}

/// A cluster with the mesh installed and `default` labelled (unless `labelled` is false),
/// Deployment order-v1 with two running pods and one terminating.
fn serve(labelled: bool) -> (String, Arc<Server>) {
    let server = Arc::new(Server::default());
    {
        let mut o = server.objects.lock().unwrap();
        let labels = if labelled {
            json!({"istio-injection": "enabled"})
        } else {
            json!({})
        };
        o.insert(
            "/api/v1/namespaces/default".into(),
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "default", "labels": labels}}),
        );
        o.insert(
            "/apis/apps/v1/namespaces/mesh-system/deployments/mesh-pilot".into(),
            json!({"apiVersion": "apps/v1", "kind": "Deployment",
                   "metadata": {"name": "mesh-pilot", "namespace": "mesh-system"},
                   "spec": {"replicas": 1, "selector": {}, "template": {}},
                   "status": {"availableReplicas": 1}}),
        );
        o.insert(
            "/apis/apps/v1/namespaces/default/deployments/order-v1".into(),
            json!({"apiVersion": "apps/v1", "kind": "Deployment",
                   "metadata": {"name": "order-v1", "namespace": "default"},
                   "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "order", "version": "v1"}}, "template": {}},
                   "status": {"availableReplicas": 2}}),
        );
        let order = json!({"app": "order", "version": "v1"});
        for (name, created, ip) in [
            ("order-v1-7f9c-later", "2026-12-07T00:00:02Z", "10.244.0.6"),
            ("order-v1-7f9c-first", "2026-12-07T00:00:01Z", "10.244.0.5"),
            ("order-v1-5d2a-going", "2026-12-06T00:00:00Z", "10.244.0.4"),
        ] {
            let mut pod = ready_pod(name, order.clone(), created, ip);
            if name.ends_with("going") {
                pod["metadata"]["deletionTimestamp"] = json!("2026-12-07T00:00:03Z");
            }
            o.insert(format!("{PODS}/{name}"), pod);
        }
        o.insert(
            format!("{PODS}/inventory-other"),
            ready_pod(
                "inventory-other",
                json!({"app": "inventory"}),
                "2026-12-07T00:00:00Z",
                "10.244.0.7",
            ),
        );
        let mut pilot = ready_pod(
            "mesh-pilot-old",
            json!({"app.kubernetes.io/name": "mesh-pilot"}),
            "2026-12-06T00:00:00Z",
            "10.244.0.1",
        );
        pilot["metadata"]["namespace"] = json!("mesh-system");
        o.insert(format!("{PILOT_PODS}/mesh-pilot-old"), pilot);
    }
    let shared = server.clone();
    let url = common::api_server(move |r| answer(&shared, r));
    (url, server)
}

fn connect(url: &str) -> anyhow::Result<KubeCluster> {
    let config = kube::Config::new(url.parse().unwrap());
    let mut c = KubeCluster::connect_to(Some(config))?;
    c.within = Duration::from_secs(5);
    Ok(c)
}

#[test]
fn a_cluster_without_the_mesh_or_injection_is_refused_with_what_to_do() {
    let (url, server) = serve(false);
    let err = format!("{:#}", connect(&url).err().unwrap());
    assert!(
        err.contains("kubectl label namespace default istio-injection=enabled"),
        "{err}"
    );
    server
        .objects
        .lock()
        .unwrap()
        .remove("/apis/apps/v1/namespaces/mesh-system/deployments/mesh-pilot");
    let err = format!("{:#}", connect(&url).err().unwrap());
    assert!(
        err.contains("the mesh is not installed") && err.contains("meshctl install --profile demo"),
        "{err}"
    );
}

#[test]
fn scenario_names_find_a_deployments_pods_oldest_first() {
    let (url, _server) = serve(true);
    let c = connect(&url).unwrap();
    let name = |n: &str| c.resolve(n).unwrap().metadata.name.unwrap();
    assert_eq!(name("order-v1-0"), "order-v1-7f9c-first");
    assert_eq!(name("order-v1-1"), "order-v1-7f9c-later");
    // A pod of that very name wins; a terminating pod is never chosen.
    assert_eq!(name("inventory-other"), "inventory-other");
    let err = c.resolve("order-v1-2").unwrap_err().to_string();
    assert!(
        err.contains("Deployment order-v1 has 2 running pods"),
        "{err}"
    );
    assert!(c.resolve("nothing-0").is_err());
    assert_eq!(c.pod_ip("order-v1-1").unwrap(), "10.244.0.6");

    // The commands kubectl runs: the application's container, or the sidecar's.
    let cmd = c
        .exec_command(
            "order-v1-0",
            None,
            &["mesh-echo", "load", "--url", "http://x/"],
        )
        .unwrap();
    let args: Vec<String> = cmd
        .get_args()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        args,
        [
            "exec",
            "-n",
            "default",
            "order-v1-7f9c-first",
            "-c",
            "order",
            "--",
            "mesh-echo",
            "load",
            "--url",
            "http://x/"
        ]
    );
    let cmd = c
        .exec_command(
            "order-v1-0",
            Some("istio-proxy"),
            &["mesh-proxy", "request", "GET", "/stats"],
        )
        .unwrap();
    let args: Vec<String> = cmd
        .get_args()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        args[4..7],
        ["-c".to_string(), "istio-proxy".into(), "--".into()]
    );

    assert!(
        c.proxy_log("order-v1-0")
            .unwrap()
            .contains("inbound http GET / 200")
    );
    assert_eq!(c.pilot_debug("/debug/syncz").unwrap()["generation"], 4);
}

#[test]
fn yaml_is_applied_server_side_with_the_clusters_image_and_removed_at_the_end() {
    let (url, server) = serve(true);
    let c = connect(&url).unwrap();
    c.apply_yaml(
        "
apiVersion: v1
kind: Service
metadata: {name: shipping-service}
spec:
  selector: {app: shipping}
  ports: [{name: http, port: 8080}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: shipping-v1}
spec:
  replicas: 1
  selector: {matchLabels: {app: shipping}}
  template:
    metadata: {labels: {app: shipping}}
    spec:
      containers:
      - name: shipping
        image: mesh-echo:latest
        env: [{name: JWKS, value: '{\"keys\": []}'}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: shipping-service}
spec:
  hosts: [shipping-service]
  http: [{route: [{destination: {host: shipping-service}}]}]
",
    )
    .unwrap();
    let writes = server.writes.lock().unwrap().clone();
    let paths: Vec<&str> = writes
        .iter()
        .map(|(_, p, _)| p.split('?').next().unwrap())
        .collect();
    assert_eq!(
        paths,
        [
            "/api/v1/namespaces/default/services/shipping-service",
            "/apis/apps/v1/namespaces/default/deployments/shipping-v1",
            "/apis/networking.istio.io/v1/namespaces/default/virtualservices/shipping-service",
        ]
    );
    for (method, target, _) in &writes {
        assert_eq!(method, "PATCH");
        assert!(target.contains("fieldManager=meshctl"), "{target}");
    }
    let container = &writes[1].2["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(
        container["image"],
        format!("mesh/echo:{}", env!("CARGO_PKG_VERSION"))
    );
    assert_eq!(container["imagePullPolicy"], "IfNotPresent");
    assert_eq!(container["env"][0]["value"], "{\"keys\": []}");

    // A pod of its own: its service account, no sidecar when asked, ready once its ports
    // answer on loopback.
    let mut plain = echo_pod("plain", "plain", "v1", "plain");
    plain.sidecar = false;
    c.run(&plain).unwrap();
    let objects = server.objects.lock().unwrap().clone();
    assert!(objects.contains_key("/api/v1/namespaces/default/serviceaccounts/plain"));
    let pod = &objects["/api/v1/namespaces/default/pods/plain"];
    assert_eq!(
        pod["metadata"]["annotations"]["sidecar.istio.io/inject"],
        "false"
    );
    assert_eq!(pod["spec"]["serviceAccountName"], "plain");
    let probe = pod["spec"]["containers"][0]["readinessProbe"]["exec"]["command"][2]
        .as_str()
        .unwrap();
    assert_eq!(
        probe,
        "exec 3<>/dev/tcp/127.0.0.1/8080 && exec 3<>/dev/tcp/127.0.0.1/9000 && exec 3<>/dev/tcp/127.0.0.1/9090"
    );

    // Deleting YAML deletes its objects; the end of the scenario deletes the rest, in
    // reverse order, and waits for namespace default to hold no pod.
    c.delete_yaml("apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: shipping-service}\n")
        .unwrap();
    server.writes.lock().unwrap().clear();
    // The scripted server's own pods belong to no scenario: gone before the end.
    server
        .objects
        .lock()
        .unwrap()
        .retain(|k, _| !k.starts_with(PODS) || k.ends_with("/plain"));
    drop(c);
    let deletes: Vec<String> = server
        .writes
        .lock()
        .unwrap()
        .iter()
        .filter(|(m, ..)| m == "DELETE")
        .map(|(_, p, _)| p.split('?').next().unwrap().to_string())
        .collect();
    assert_eq!(
        deletes,
        [
            "/api/v1/namespaces/default/pods/plain",
            "/api/v1/namespaces/default/serviceaccounts/plain",
            "/apis/apps/v1/namespaces/default/deployments/shipping-v1",
            "/api/v1/namespaces/default/services/shipping-service",
        ]
    );
}

#[test]
fn pilot_is_killed_at_once_and_waited_for() {
    let (url, server) = serve(true);
    let c = connect(&url).unwrap();
    c.restart_control_plane().unwrap();
    let writes = server.writes.lock().unwrap().clone();
    let (method, target, body) = &writes[0];
    assert_eq!(method, "DELETE");
    assert!(
        target.starts_with("/api/v1/namespaces/mesh-system/pods/mesh-pilot-old"),
        "{target}"
    );
    assert_eq!(body["gracePeriodSeconds"], 0, "{body}");
    assert_eq!(*server.pilot_restarts.lock().unwrap(), 1);
}
