//! The injector's mutation: golden manifests for Istio's sample Deployments and a Job (what
//! `meshctl kube-inject` prints; regenerate with `UPDATE_GOLDEN=1` after checking the
//! difference), the decision rules, probe rewriting, and that a second pass changes nothing.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::Pod;
use mesh_injector::template::{inject_manifests, to_yaml};
use mesh_injector::{Decision, InjectConfig, decide, inject, patch};
use serde_json::{Value, json};

fn here(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(p)
}

/// The injected manifests of `input`, compared with `tests/golden/NAME.yaml`.
fn golden(name: &str, input: &Path) {
    let text = std::fs::read_to_string(input).unwrap();
    let (docs, _) = inject_manifests(&text, &InjectConfig::default()).unwrap();
    let got = to_yaml(&docs).unwrap();
    let path = here(&format!("tests/golden/{name}.yaml"));
    if std::env::var("UPDATE_GOLDEN").is_ok() {
        std::fs::write(&path, &got).unwrap();
    }
    let want = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (run with UPDATE_GOLDEN=1)", path.display()));
    assert!(
        got == want,
        "{name}: the injection differs from {}; run with UPDATE_GOLDEN=1 and review the diff\n{got}",
        path.display()
    );
    // A second pass changes nothing.
    let (again, outcomes) = inject_manifests(&got, &InjectConfig::default()).unwrap();
    assert_eq!(to_yaml(&again).unwrap(), got, "{name}: injected twice");
    assert!(
        outcomes
            .iter()
            .filter_map(|o| o.decision.as_ref())
            .all(|d| *d == Decision::Skip("already injected")),
        "{outcomes:?}"
    );
}

#[test]
#[ignore = "needs shared testdata"]
fn istio_sample_deployments_golden() {
    let samples = mesh_api::testing::shared_testdata().join("istio-samples");
    for (name, file) in [
        ("bookinfo", "bookinfo/platform/kube/bookinfo.yaml"),
        ("httpbin", "httpbin/httpbin.yaml"),
        ("curl", "curl/curl.yaml"),
        ("sleep", "sleep/sleep.yaml"),
        ("helloworld", "helloworld/helloworld.yaml"),
        ("fortio", "httpbin/sample-client/fortio-deploy.yaml"),
    ] {
        golden(name, &samples.join(file));
    }
}

#[test]
fn a_job_gets_a_native_sidecar_so_it_completes() {
    golden("job", &here("tests/fixtures/job.yaml"));
    let text = std::fs::read_to_string(here("tests/fixtures/job.yaml")).unwrap();
    let (docs, _) = inject_manifests(&text, &InjectConfig::default()).unwrap();
    let spec = &docs[0]["spec"]["template"]["spec"];
    let inits: Vec<&str> = spec["initContainers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(inits, ["istio-init", "istio-proxy"]);
    assert_eq!(spec["initContainers"][1]["restartPolicy"], "Always");
    assert_eq!(
        spec["containers"].as_array().unwrap().len(),
        1,
        "the app alone"
    );
}

#[test]
fn http_probes_go_through_the_proxy() {
    golden("probes", &here("tests/fixtures/probes.yaml"));
    let text = std::fs::read_to_string(here("tests/fixtures/probes.yaml")).unwrap();
    let (docs, _) = inject_manifests(&text, &InjectConfig::default()).unwrap();
    let spec = &docs[0]["spec"]["template"]["spec"];
    let app = &spec["containers"][0];
    assert_eq!(
        app["livenessProbe"]["httpGet"],
        json!({"path": "/app-health/inventory/livez", "port": 15021, "scheme": "HTTP"})
    );
    assert_eq!(app["livenessProbe"]["timeoutSeconds"], 2);
    assert_eq!(
        app["startupProbe"]["tcpSocket"]["port"], 8080,
        "TCP probes stay as they are"
    );
    assert_eq!(
        spec["containers"][1]["livenessProbe"]["httpGet"]["scheme"], "HTTPS",
        "so do HTTPS ones"
    );
    let proxy = &spec["initContainers"][1];
    let probers: Value = serde_json::from_str(
        proxy["env"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == "ISTIO_KUBE_APP_PROBERS")
            .unwrap()["value"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        probers["/app-health/inventory/livez"],
        json!({"httpGet": {"path": "/healthz", "port": 8080}, "timeoutSeconds": 2}),
        "the named port resolved"
    );
    assert_eq!(
        probers["/app-health/inventory/readyz"]["httpGet"]["httpHeaders"][0]["name"],
        "X-Probe"
    );
    // The pod's annotations chose the capture and the proxy's CPU.
    let init_args = spec["initContainers"][0]["args"].as_array().unwrap();
    let at = init_args.iter().position(|a| a == "-o").unwrap();
    assert_eq!(init_args[at + 1], "5432");
    assert_eq!(proxy["resources"]["requests"]["cpu"], "50m");
}

fn pod(yaml: &str) -> Pod {
    serde_saphyr::from_str(yaml).unwrap()
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn the_namespace_label_decides_and_the_pod_overrides_it_both_ways() {
    let cfg = InjectConfig::default();
    let plain = pod("metadata: {name: a}\nspec: {containers: [{name: app, image: x}]}\n");
    let on = labels(&[("istio-injection", "enabled")]);
    let ours = labels(&[("mesh-injection", "enabled")]);
    let off = labels(&[("istio-injection", "disabled")]);
    let none = labels(&[]);
    assert!(decide(&plain, "shop", &on, &cfg).inject());
    assert!(decide(&plain, "shop", &ours, &cfg).inject());
    assert!(!decide(&plain, "shop", &none, &cfg).inject());
    let opt_out = pod(
        "metadata: {name: a, annotations: {sidecar.istio.io/inject: 'false'}}\nspec: {containers: [{name: app}]}\n",
    );
    assert_eq!(
        decide(&opt_out, "shop", &on, &cfg),
        Decision::Skip("the pod says sidecar.istio.io/inject: false")
    );
    let opt_in = pod(
        "metadata: {name: a, labels: {sidecar.istio.io/inject: 'true'}}\nspec: {containers: [{name: app}]}\n",
    );
    assert!(decide(&opt_in, "shop", &none, &cfg).inject());
    assert!(
        !decide(&opt_in, "shop", &off, &cfg).inject(),
        "a disabled namespace wins"
    );
    let host = pod("metadata: {name: a}\nspec: {hostNetwork: true, containers: [{name: app}]}\n");
    assert_eq!(
        decide(&host, "shop", &on, &cfg),
        Decision::Skip("the pod uses the host's network")
    );
    assert_eq!(
        decide(&plain, "kube-system", &on, &cfg),
        Decision::Skip("a system namespace")
    );
}

#[test]
fn a_patch_injects_and_a_second_pass_has_nothing_to_do() {
    let cfg = InjectConfig::default();
    let original = pod(
        "metadata:\n  generateName: shipping-v1-7d9f8c6b5-\n  namespace: shop\n  labels: {app: shipping, version: v1}\n  ownerReferences: [{apiVersion: apps/v1, kind: ReplicaSet, name: shipping-v1-7d9f8c6b5, uid: u1, controller: true}]\nspec:\n  serviceAccountName: shipping\n  containers: [{name: shipping, image: example.com/shipping:1}]\n",
    );
    let on = labels(&[("istio-injection", "enabled")]);
    let (decision, p) = patch(&original, "shop", &on, &cfg);
    assert!(decision.inject());
    let p = p.unwrap();
    let mut doc = serde_json::to_value(&original).unwrap();
    json_patch::patch(&mut doc, &p).unwrap();
    let injected: Pod = serde_json::from_value(doc).unwrap();
    assert_eq!(
        injected,
        inject(&original, Some("shipping-v1"), &cfg),
        "the patch makes the injected pod"
    );
    let args = injected
        .spec
        .as_ref()
        .unwrap()
        .init_containers
        .as_ref()
        .unwrap()[1]
        .args
        .clone()
        .unwrap();
    let at = args.iter().position(|a| a == "--workload").unwrap();
    assert_eq!(
        args[at + 1],
        "shipping-v1",
        "the Deployment, from the ReplicaSet"
    );
    assert_eq!(
        injected.metadata.labels.as_ref().unwrap()["security.istio.io/tlsMode"],
        "istio"
    );
    let (again, none) = patch(&injected, "shop", &on, &cfg);
    assert_eq!(again, Decision::Skip("already injected"));
    assert!(none.is_none());
}

#[test]
fn without_native_sidecars_the_proxy_goes_first_and_holds_the_app() {
    let cfg = InjectConfig {
        native_sidecar: false,
        ..InjectConfig::default()
    };
    let injected = inject(
        &pod("metadata: {name: a}\nspec: {containers: [{name: app, image: x}]}\n"),
        None,
        &cfg,
    );
    let spec = injected.spec.unwrap();
    assert_eq!(spec.containers[0].name, "istio-proxy");
    assert_eq!(spec.containers[1].name, "app");
    let hook = spec.containers[0]
        .lifecycle
        .as_ref()
        .and_then(|l| l.post_start.as_ref())
        .and_then(|h| h.exec.as_ref())
        .and_then(|e| e.command.clone())
        .unwrap();
    assert_eq!(&hook[..2], ["mesh-proxy", "wait"]);
    assert_eq!(spec.init_containers.unwrap().len(), 1, "istio-init only");
}

#[test]
fn prometheus_is_pointed_at_the_proxy_which_merges_the_apps_own_metrics() {
    let env_of = |p: &Pod| -> Option<String> {
        let spec = p.spec.as_ref().unwrap();
        spec.init_containers
            .iter()
            .flatten()
            .chain(spec.containers.iter())
            .filter(|c| c.name == "istio-proxy")
            .flat_map(|c| c.env.iter().flatten())
            .find(|e| e.name == "ISTIO_PROMETHEUS_ANNOTATIONS")
            .and_then(|e| e.value.clone())
    };
    let annotations = |p: &Pod| p.metadata.annotations.clone().unwrap_or_default();

    let scraped = pod(
        "metadata:\n  name: shop\n  annotations:\n    prometheus.io/scrape: \"true\"\n    prometheus.io/port: \"9090\"\nspec:\n  containers:\n  - name: shop\n    image: shop\n",
    );
    let out = inject(&scraped, None, &InjectConfig::default());
    let a = annotations(&out);
    assert_eq!(a["prometheus.io/port"], "15020");
    assert_eq!(a["prometheus.io/path"], "/stats/prometheus");
    let original: Value = serde_json::from_str(&env_of(&out).unwrap()).unwrap();
    assert_eq!(
        original,
        json!({"scrape": "true", "port": "9090", "path": ""})
    );

    let plain =
        pod("metadata:\n  name: shop\nspec:\n  containers:\n  - name: shop\n    image: shop\n");
    let out = inject(&plain, None, &InjectConfig::default());
    assert_eq!(
        annotations(&out)["prometheus.io/port"],
        "15020",
        "the proxy's metrics alone"
    );
    assert_eq!(env_of(&out), None);

    let opted_out = pod(
        "metadata:\n  name: shop\n  annotations:\n    prometheus.io/scrape: \"false\"\nspec:\n  containers:\n  - name: shop\n    image: shop\n",
    );
    let out = inject(&opted_out, None, &InjectConfig::default());
    let a = annotations(&out);
    assert_eq!(
        a["prometheus.io/scrape"], "false",
        "the pod's choice stands"
    );
    assert!(!a.contains_key("prometheus.io/port"));
    assert_eq!(env_of(&out), None);
}
