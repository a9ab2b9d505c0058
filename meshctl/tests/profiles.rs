//! Install profiles as `meshctl manifest generate` renders them: goldens per profile (the CRDs
//! aside, checked against `manifests/crds/` elsewhere; regenerate with `UPDATE_GOLDEN=1`),
//! every object read back by its Kubernetes type without losing a field (the schema check
//! that needs no API server), the control plane's arguments taken by the real `mesh-pilot`,
//! the injector's settings read back, and `--set` refusing what the values do not have.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use meshctl::profile::{ProfileError, inject_config, render, values};
use serde_json::Value;

/// `doc` read as `T` and written back is `doc`: no field unknown to Kubernetes' schema, none
/// misplaced.
fn round_trips<T: serde::de::DeserializeOwned + serde::Serialize>(doc: &Value) {
    let typed: T =
        serde_json::from_value(doc.clone()).unwrap_or_else(|e| panic!("{}: {e}", doc["kind"]));
    let back = serde_json::to_value(&typed).unwrap();
    assert_eq!(
        &back, doc,
        "{} {} loses fields",
        doc["kind"], doc["metadata"]["name"]
    );
}

fn check_schema(doc: &Value) {
    match doc["kind"].as_str().unwrap() {
        "Namespace" => round_trips::<Namespace>(doc),
        "CustomResourceDefinition" => round_trips::<CustomResourceDefinition>(doc),
        "ServiceAccount" => round_trips::<ServiceAccount>(doc),
        "ClusterRole" => round_trips::<ClusterRole>(doc),
        "ClusterRoleBinding" => round_trips::<ClusterRoleBinding>(doc),
        "Role" => round_trips::<Role>(doc),
        "RoleBinding" => round_trips::<RoleBinding>(doc),
        "ConfigMap" => round_trips::<ConfigMap>(doc),
        "Deployment" => round_trips::<Deployment>(doc),
        "Service" => round_trips::<Service>(doc),
        "MutatingWebhookConfiguration" => round_trips::<MutatingWebhookConfiguration>(doc),
        other => panic!("a kind the test does not know: {other}"),
    }
}

#[test]
fn each_profile_renders_objects_kubernetes_reads_whole() {
    for profile in ["default", "demo", "minimal"] {
        let v = values(profile, &[]).unwrap();
        let docs = render(&v);
        for d in &docs {
            check_schema(d);
        }
        let crds = docs
            .iter()
            .filter(|d| d["kind"] == "CustomResourceDefinition")
            .count();
        assert_eq!(crds, mesh_api::crd::all().len());
        let rest: Vec<Value> = docs
            .into_iter()
            .filter(|d| d["kind"] != "CustomResourceDefinition")
            .collect();
        let got = mesh_injector::template::to_yaml(&rest).unwrap();
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join(format!("tests/golden/profile-{profile}.yaml"));
        if std::env::var("UPDATE_GOLDEN").is_ok() {
            std::fs::write(&path, &got).unwrap();
        }
        let want = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e} (run with UPDATE_GOLDEN=1)", path.display()));
        assert!(
            got == want,
            "{profile}: differs from {}; run with UPDATE_GOLDEN=1 and review the diff\n{got}",
            path.display()
        );
        let kinds: Vec<&str> = rest.iter().map(|d| d["kind"].as_str().unwrap()).collect();
        let webhook = kinds.contains(&"MutatingWebhookConfiguration");
        assert_eq!(webhook, profile != "minimal", "{profile}: {kinds:?}");
    }
}

#[test]
fn the_control_plane_arguments_are_mesh_pilots_and_the_injector_settings_read_back() {
    let v = values("default", &[]).unwrap();
    let docs = render(&v);
    let deployment = docs.iter().find(|d| d["kind"] == "Deployment").unwrap();
    let args: Vec<String> = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect();
    // Parsed by the real binary: it gets as far as looking for a cluster (exit 1, not the
    // usage error's 2).
    let pilot = meshctl::local::find_binary("mesh-pilot", "mesh-pilot").unwrap();
    let ran = Command::new(pilot)
        .args(&args)
        .env("KUBECONFIG", "/nonexistent/kubeconfig")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("KUBERNETES_SERVICE_PORT")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&ran.stderr);
    assert_eq!(ran.status.code(), Some(1), "{args:?}: {stderr}");
    assert!(stderr.contains("cannot reach Kubernetes"), "{stderr}");

    let cm = docs
        .iter()
        .find(|d| d["kind"] == "ConfigMap" && d["metadata"]["name"] == "mesh-injector")
        .unwrap();
    let read =
        mesh_injector::InjectConfig::from_yaml(cm["data"]["injector.yaml"].as_str().unwrap())
            .unwrap();
    assert_eq!(read, inject_config(&v));
    assert_eq!(read.image, "mesh/proxy:0.1.0");
    assert_eq!(
        read.pilot_identity,
        "spiffe://cluster.local/ns/mesh-system/sa/mesh-pilot"
    );
}

#[test]
fn set_changes_a_value_and_refuses_what_is_not_there() {
    let v = values(
        "default",
        &[
            "pilot.replicas=3".into(),
            "injector.nativeSidecar=false".into(),
            "injector.limits.cpu=1".into(),
        ],
    )
    .unwrap();
    assert_eq!(v.pilot.replicas, 3);
    assert!(!v.injector.native_sidecar);
    assert_eq!(v.injector.limits["cpu"], "1");
    let typo = values("default", &["pilot.replica=3".into()]).unwrap_err();
    assert!(
        typo.to_string()
            .contains("pilot.replica: no such value; here: limits, replicas, requests"),
        "{typo}"
    );
    assert!(matches!(
        values("default", &["pilot.replicas".into()]),
        Err(ProfileError::NotKeyValue(_))
    ));
    assert!(values("default", &["pilot.replicas=many".into()]).is_err());
    assert_eq!(
        values("huge", &[]).unwrap_err(),
        ProfileError::Unknown("huge".into())
    );
    // From the command line.
    let out = Command::new(env!("CARGO_BIN_EXE_meshctl"))
        .args([
            "manifest",
            "generate",
            "--profile",
            "demo",
            "--set",
            "pilot.replicas=2",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("replicas: 2"));
}

#[test]
fn the_ingress_gateway_runs_mesh_proxy_in_gateway_mode() {
    let docs = render(&values("demo", &[]).unwrap());
    let find = |kind: &str, name: &str| {
        docs.iter()
            .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("{kind} {name}"))
            .clone()
    };
    let deployment = find("Deployment", "istio-ingressgateway");
    assert_eq!(deployment["metadata"]["namespace"], "istio-system");
    let template = &deployment["spec"]["template"];
    // Gateways select it by Istio's labels.
    assert_eq!(template["metadata"]["labels"]["istio"], "ingressgateway");
    assert_eq!(
        template["spec"]["serviceAccountName"],
        "istio-ingressgateway-service-account"
    );
    assert_eq!(
        template["spec"]["securityContext"]["sysctls"][0]["name"],
        "net.ipv4.ip_unprivileged_port_start"
    );
    let container = &template["spec"]["containers"][0];
    assert_eq!(container["image"], "mesh/proxy:0.1.0");
    // Its arguments, with the pod's values the downward API gives, are mesh-proxy's.
    let proxy = meshctl::local::find_binary("mesh-proxy", "mesh-proxy").unwrap();
    let mut args: Vec<String> = container["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            a.as_str()
                .unwrap()
                .replace("$(POD_NAMESPACE)", "istio-system")
                .replace("$(SERVICE_ACCOUNT)", "istio-ingressgateway-service-account")
                .replace("$(POD_NAME)", "istio-ingressgateway-7c9f-x2k4p")
                .replace("$(INSTANCE_IP)", "10.244.1.9")
        })
        .collect();
    assert_eq!(args[..3], ["run", "--mode", "gateway"]);
    args.push("--dry-run".into());
    let run = Command::new(&proxy).args(&args).output().unwrap();
    assert!(
        run.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    // Its Service exposes the Gateway ports unchanged, and readiness.
    let service = find("Service", "istio-ingressgateway");
    let ports: Vec<u64> = service["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["port"].as_u64().unwrap())
        .collect();
    assert_eq!(ports, [80, 443, 8080, 15021]);
    assert_eq!(service["spec"]["type"], "LoadBalancer");
    // The minimal profile has none.
    let minimal = render(&values("minimal", &[]).unwrap());
    assert!(
        !minimal
            .iter()
            .any(|d| d["metadata"]["name"] == "istio-ingressgateway")
    );
}

/// The documents of `manifests/addons/NAME`.
fn addon(name: &str) -> Vec<Value> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../manifests/addons")
        .join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_saphyr::from_multiple::<Value>(&text)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .into_iter()
        .filter(|d| !d.is_null())
        .collect()
}

/// The Prometheus and Grafana addons are objects Kubernetes reads whole, in the demo profile's
/// namespace; Prometheus's jobs keep the pods by the annotations the injector sets and pilot by
/// the Service and port the profile renders; Grafana reads that Prometheus.
#[test]
fn the_addons_scrape_what_the_demo_profile_installs() {
    let prometheus = addon("prometheus.yaml");
    let grafana = addon("grafana.yaml");
    let v = values("demo", &[]).unwrap();
    let rendered = render(&v);
    let pilot = rendered
        .iter()
        .find(|d| d["kind"] == "Service" && d["metadata"]["name"] == "mesh-pilot")
        .expect("the demo profile renders pilot's Service");
    let ns = pilot["metadata"]["namespace"].as_str().unwrap();
    for d in prometheus.iter().chain(&grafana) {
        check_schema(d);
        if let Some(n) = d["metadata"]["namespace"].as_str() {
            assert_eq!(n, ns, "{} {}", d["kind"], d["metadata"]["name"]);
        }
    }
    let config_map = |docs: &[Value], name: &str| {
        docs.iter()
            .find(|d| d["kind"] == "ConfigMap" && d["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("no ConfigMap {name}"))
            .clone()
    };
    let config: Value = serde_saphyr::from_str(
        config_map(&prometheus, "prometheus")["data"]["prometheus.yml"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    let jobs = config["scrape_configs"].as_array().unwrap();
    let job = |name: &str| {
        jobs.iter()
            .find(|j| j["job_name"] == name)
            .unwrap_or_else(|| panic!("no job {name}"))
    };

    // Pilot: the Service's port 15014, by name.
    let debug_port = pilot["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["port"] == 15014)
        .expect("pilot's debug port");
    let pilot_job = job("mesh-pilot");
    assert_eq!(
        pilot_job["relabel_configs"][0]["regex"],
        format!("mesh-pilot;{}", debug_port["name"].as_str().unwrap())
    );
    assert_eq!(
        pilot_job["kubernetes_sd_configs"][0]["namespaces"]["names"][0],
        ns
    );

    // Sidecars: the annotations the injector puts on a pod, as Prometheus names them.
    let deployment = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: order, namespace: default}\nspec:\n  selector: {matchLabels: {app: order}}\n  template:\n    metadata: {labels: {app: order}}\n    spec:\n      containers:\n      - {name: order, image: order}\n";
    let (injected, _) =
        mesh_injector::template::inject_manifests(deployment, &inject_config(&v)).unwrap();
    let annotations = injected[0]["spec"]["template"]["metadata"]["annotations"]
        .as_object()
        .unwrap();
    let pods = serde_json::to_string(&job("kubernetes-pods")["relabel_configs"]).unwrap();
    for key in [
        "prometheus.io/scrape",
        "prometheus.io/port",
        "prometheus.io/path",
    ] {
        assert!(annotations.contains_key(key), "{key}: {annotations:?}");
        let meta = format!(
            "__meta_kubernetes_pod_annotation_{}",
            key.replace(['.', '/', '-'], "_")
        );
        assert!(pods.contains(&meta), "the pods job reads {meta}: {pods}");
    }
    assert_eq!(annotations["prometheus.io/scrape"], "true");
    assert_eq!(annotations["prometheus.io/port"], "15020");

    // Grafana: its data source is that Prometheus, its dashboards the folder the docs name.
    let datasources = config_map(&grafana, "grafana")["data"]["datasources.yaml"].clone();
    assert!(
        datasources
            .as_str()
            .unwrap()
            .contains(&format!("url: http://prometheus.{ns}.svc:9090")),
        "{datasources}"
    );
    let dashboards = Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/addons/dashboards");
    assert!(dashboards.join("mesh.json").is_file());
}

/// As Istio's demo profile: every request traced. The demo profile's mesh configuration and the
/// Jaeger addon's Service, given to pilot, send every sidecar tracing at 100% to the addon's
/// OTLP/gRPC port; the default profile traces nothing.
#[test]
fn the_demo_profile_traces_every_request_to_the_jaeger_addon() {
    use mesh_pilot::model::{MeshConfig, Model};
    use mesh_pilot::translate::ProxyNode;
    use mesh_pilot::translate::telemetry::resolve;

    let jaeger = addon("jaeger.yaml");
    for d in &jaeger {
        check_schema(d);
    }
    let collector = jaeger
        .iter()
        .find(|d| d["kind"] == "Service" && d["metadata"]["name"] == "jaeger-collector")
        .expect("the addon's collector Service");
    let otlp = collector["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["port"] == 4317)
        .expect("OTLP/gRPC on 4317");
    assert!(
        otlp["name"].as_str().unwrap().starts_with("grpc"),
        "named for gRPC, so the sidecars speak HTTP/2 to it: {otlp}"
    );

    let node = ProxyNode {
        id: "order-1.default".into(),
        namespace: "default".into(),
        labels: [("app".to_string(), "order".to_string())].into(),
        ..ProxyNode::default()
    };
    let tracing_of = |profile: &str| {
        let v = values(profile, &[]).unwrap();
        let mesh = render(&v)
            .into_iter()
            .find(|d| d["kind"] == "ConfigMap" && d["metadata"]["name"] == "istio")
            .expect("the profile renders the mesh configuration");
        let docs: Vec<String> = std::iter::once(&mesh)
            .chain(&jaeger)
            .map(|d| serde_json::to_string(d).unwrap())
            .collect();
        let report = mesh_api::load::load_str(&docs.join("\n---\n"), None);
        assert!(report.is_valid(), "{profile}: {:?}", report.diagnostics);
        let resources: Vec<_> = report.documents.into_iter().map(|d| d.resource).collect();
        let model = Model::build(MeshConfig::default(), &resources, Default::default());
        let resolved = resolve(&model, &node);
        assert!(
            resolved.problems.is_empty(),
            "{profile}: {:?}",
            resolved.problems
        );
        resolved.telemetry.tracing
    };
    let demo = tracing_of("demo").expect("the demo profile traces");
    assert_eq!(demo.sampling, 100.0);
    assert_eq!(demo.host, "jaeger-collector.mesh-system.svc.cluster.local");
    assert_eq!(demo.port, 4317);
    assert!(demo.client && demo.server, "{demo:?}");
    assert_eq!(tracing_of("default"), None);
}
