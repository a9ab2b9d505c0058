//! Install profiles and the manifests they render: `meshctl manifest generate --profile P
//! [--set key=value]`. A profile is data (`manifests/profiles/P.yaml`, built into meshctl);
//! `--set` changes one value by its dotted path, and a path the values do not have is refused
//! by name. The manifests: the namespace, the CRDs, the control plane's service account, its
//! cluster role and binding, the mesh configuration, the injector's settings, the control
//! plane's Deployment and Service (`mesh-pilot serve --kubernetes --ca-dir`, docs/kubernetes.md)
//! and, with the injector, its MutatingWebhookConfiguration.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// The profiles, by name.
pub const PROFILES: [(&str, &str); 3] = [
    (
        "default",
        include_str!("../../manifests/profiles/default.yaml"),
    ),
    ("demo", include_str!("../../manifests/profiles/demo.yaml")),
    (
        "minimal",
        include_str!("../../manifests/profiles/minimal.yaml"),
    ),
];

/// What a profile sets.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Values {
    /// The profile's name.
    pub profile: String,
    /// The control plane's namespace.
    pub namespace: String,
    /// Where the images come from (`<hub>/pilot:<tag>`, `<hub>/proxy:<tag>`).
    pub hub: String,
    /// The images' tag.
    pub tag: String,
    /// The cluster's DNS domain.
    pub domain: String,
    /// The mesh's trust domain.
    pub trust_domain: String,
    /// The control plane.
    pub pilot: PilotValues,
    /// The sidecar injector.
    pub injector: InjectorValues,
    /// The ingress gateway (`istio-system/istio-ingressgateway`, as Istio's).
    pub ingress_gateway: GatewayValues,
}

/// The ingress gateway's Deployment and Service.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GatewayValues {
    /// Render it.
    pub enabled: bool,
    /// Replicas.
    pub replicas: u32,
    /// The Service's type (`LoadBalancer`, as Istio's; `NodePort` or `ClusterIP` where no
    /// load balancer exists).
    pub service_type: String,
    /// The ports the Service exposes, each to the same port of the gateway (which binds each
    /// Gateway server's port number itself).
    pub ports: Vec<u16>,
}

/// The control plane's Deployment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PilotValues {
    /// Replicas.
    pub replicas: u32,
    /// Resource requests.
    pub requests: BTreeMap<String, String>,
    /// Resource limits.
    pub limits: BTreeMap<String, String>,
}

/// The injector and the sidecar it adds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InjectorValues {
    /// Serve the webhook (and render its configuration).
    pub enabled: bool,
    /// The proxy as a native sidecar (Kubernetes 1.29+).
    pub native_sidecar: bool,
    /// The proxy's resource requests.
    pub requests: BTreeMap<String, String>,
    /// The proxy's resource limits.
    pub limits: BTreeMap<String, String>,
}

/// A profile that cannot be had.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProfileError {
    /// No such profile.
    #[error("--profile {0:?}: no such profile; profiles: default, demo, minimal")]
    Unknown(String),
    /// A `--set` that is not `key=value`.
    #[error("--set {0:?}: write key=value, e.g. --set pilot.replicas=2")]
    NotKeyValue(String),
    /// A `--set` path or value the values refuse.
    #[error("--set {set:?}: {why}")]
    Refused {
        /// The `--set` as given.
        set: String,
        /// Why.
        why: String,
    },
}

/// The values of `profile` with each `key=value` of `sets` applied.
pub fn values(profile: &str, sets: &[String]) -> Result<Values, ProfileError> {
    let text = PROFILES
        .iter()
        .find(|(name, _)| *name == profile)
        .map(|(_, text)| *text)
        .ok_or_else(|| ProfileError::Unknown(profile.to_string()))?;
    let mut tree: Value =
        mesh_injector::template::from_yaml(text).map_err(|why| ProfileError::Refused {
            set: String::new(),
            why: format!("the {profile} profile does not read: {why}"),
        })?;
    for set in sets {
        let (path, raw) = set
            .split_once('=')
            .ok_or_else(|| ProfileError::NotKeyValue(set.clone()))?;
        let keys: Vec<&str> = path.split('.').collect();
        let refused = |why: String| ProfileError::Refused {
            set: set.clone(),
            why,
        };
        let mut at = &mut tree;
        for (i, key) in keys.iter().enumerate() {
            let map = at.as_object_mut().ok_or_else(|| {
                refused(format!("{} is not a group of values", keys[..i].join(".")))
            })?;
            // Maps of resources take new keys; everything else must exist.
            let open = keys[..i]
                .last()
                .is_some_and(|k| matches!(*k, "requests" | "limits"));
            if !map.contains_key(*key) && !open {
                let known: Vec<&String> = map.keys().collect();
                return Err(refused(format!(
                    "{path}: no such value; here: {}",
                    known
                        .iter()
                        .map(|k| k.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
            at = map.entry((*key).to_string()).or_insert(Value::Null);
        }
        // Resource quantities are text ("2", "500m"), whatever they look like.
        let quantity = keys.len() >= 2 && matches!(keys[keys.len() - 2], "requests" | "limits");
        *at = if quantity {
            Value::String(raw.to_string())
        } else {
            scalar(raw)
        };
    }
    serde_json::from_value(tree).map_err(|e| ProfileError::Refused {
        set: sets.join(" "),
        why: e.to_string(),
    })
}

/// A `--set` value as YAML reads a scalar: true/false, a whole number, else text.
fn scalar(raw: &str) -> Value {
    match raw {
        "true" => Value::Bool(true),
        "false" => Value::Bool(false),
        _ => raw
            .parse::<u64>()
            .map(Value::from)
            .unwrap_or_else(|_| Value::String(raw.to_string())),
    }
}

/// The name of the injector's MutatingWebhookConfiguration (pilot keeps its caBundle).
pub const WEBHOOK_CONFIGURATION: &str = "mesh-sidecar-injector";
const PILOT: &str = "mesh-pilot";
/// The Secret the CA keeps its root and intermediate in.
pub const CA_SECRET: &str = "mesh-ca";

fn labels() -> Value {
    json!({"app.kubernetes.io/part-of": "mesh", "app.kubernetes.io/name": PILOT})
}

/// The injector's settings for these values.
pub fn inject_config(v: &Values) -> mesh_injector::InjectConfig {
    let pilot = format!("https://{PILOT}.{}.svc:15012", v.namespace);
    let mut excluded = mesh_injector::InjectConfig::default().excluded_namespaces;
    if !excluded.contains(&v.namespace) {
        excluded.push(v.namespace.clone());
    }
    mesh_injector::InjectConfig {
        image: format!("{}/proxy:{}", v.hub, v.tag),
        discovery_address: pilot.clone(),
        ca_address: pilot,
        trust_domain: v.trust_domain.clone(),
        pilot_identity: format!("spiffe://{}/ns/{}/sa/{PILOT}", v.trust_domain, v.namespace),
        proxy_uid: 1337,
        requests: v.injector.requests.clone(),
        limits: v.injector.limits.clone(),
        native_sidecar: v.injector.native_sidecar,
        excluded_namespaces: excluded,
    }
}

/// The mesh's root namespace (pilot's default, as Istio's).
pub const ROOT_NAMESPACE: &str = mesh_pilot::model::peer_authentication::DEFAULT_ROOT_NAMESPACE;

/// Marks an object `meshctl uninstall` deletes only with `--purge`.
pub const PURGE_ONLY: &str = "mesh.dev/uninstall";

/// Every manifest of the values, in the order they apply (namespace and CRDs first).
pub fn render(v: &Values) -> Vec<Value> {
    let ns = v.namespace.as_str();
    let meta = |name: &str| json!({"name": name, "namespace": ns, "labels": labels()});
    let mut out = vec![json!({
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": ns, "labels": labels()},
    })];
    // The mesh's root namespace, where mesh-wide policy lives (Istio's name, so its YAML and
    // the seed's apply unchanged). Uninstall keeps it unless purging: it holds users' policies.
    if ns != ROOT_NAMESPACE {
        out.push(json!({
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {
                "name": ROOT_NAMESPACE,
                "labels": labels(),
                "annotations": {PURGE_ONLY: "true"},
            },
        }));
    }
    for (_, crd) in mesh_api::crd::all() {
        out.push(serde_json::to_value(crd).unwrap_or_default());
    }
    out.push(json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta(PILOT)}));
    let custom: Vec<Value> = [
        "networking.istio.io",
        "security.istio.io",
        "policy.mesh.dev",
        "gateway.networking.k8s.io",
    ]
    .iter()
    .map(|g| json!(g))
    .collect();
    out.push(json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": PILOT, "labels": labels()},
        "rules": [
            {"apiGroups": [""], "resources": ["services", "pods", "namespaces"], "verbs": ["get", "list", "watch"]},
            {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["get", "list", "watch"]},
            {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list", "watch", "create", "patch"]},
            // Gateways' credentialName certificates, as istiod reads them.
            {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "list", "watch"]},
            {"apiGroups": custom, "resources": ["*"], "verbs": ["get", "list", "watch"]},
            {"apiGroups": custom, "resources": ["*/status"], "verbs": ["get", "patch", "update"]},
            // The gateway each Gateway API Gateway asks for, as istiod deploys it.
            {"apiGroups": ["apps"], "resources": ["deployments"], "verbs": ["get", "list", "watch", "create", "patch"]},
            {"apiGroups": [""], "resources": ["services", "serviceaccounts"], "verbs": ["create", "patch"]},
            {"apiGroups": ["authentication.k8s.io"], "resources": ["tokenreviews"], "verbs": ["create"]},
            {"apiGroups": ["admissionregistration.k8s.io"], "resources": ["mutatingwebhookconfigurations"], "resourceNames": [WEBHOOK_CONFIGURATION], "verbs": ["get", "patch"]},
        ],
    }));
    out.push(json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": PILOT, "labels": labels()},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": PILOT},
        "subjects": [{"kind": "ServiceAccount", "name": PILOT, "namespace": ns}],
    }));
    // The CA keeps its root in a Secret of the control plane's namespace only.
    out.push(json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": meta(PILOT),
        "rules": [
            {"apiGroups": [""], "resources": ["secrets"], "resourceNames": [CA_SECRET], "verbs": ["get"]},
            {"apiGroups": [""], "resources": ["secrets"], "verbs": ["create"]},
        ],
    }));
    out.push(json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": meta(PILOT),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": PILOT},
        "subjects": [{"kind": "ServiceAccount", "name": PILOT, "namespace": ns}],
    }));
    out.push(json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "istio", "namespace": ROOT_NAMESPACE, "labels": labels()},
        "data": {"mesh": mesh_config(v)},
    }));
    let mut args = vec![
        "serve".to_string(),
        "--kubernetes".into(),
        "--ca-dir".into(),
        "/var/run/mesh/ca".into(),
        "--ca-secret".into(),
        CA_SECRET.into(),
        "--secure-discovery-address".into(),
        "0.0.0.0:15012".into(),
        "--debug-address".into(),
        "0.0.0.0:15014".into(),
        "--root-namespace".into(),
        ROOT_NAMESPACE.into(),
        "--domain".into(),
        v.domain.clone(),
        "--trust-domain".into(),
        v.trust_domain.clone(),
        "--service-name".into(),
        PILOT.into(),
    ];
    let mut volumes = vec![json!({"name": "ca", "emptyDir": {}})];
    let mut mounts = vec![json!({"name": "ca", "mountPath": "/var/run/mesh/ca"})];
    let mut ports = vec![
        json!({"name": "grpc-xds", "containerPort": 15012, "protocol": "TCP"}),
        json!({"name": "http-debug", "containerPort": 15014, "protocol": "TCP"}),
    ];
    let mut service_ports = vec![
        json!({"name": "grpc-xds", "port": 15012, "targetPort": 15012, "protocol": "TCP"}),
        json!({"name": "http-debug", "port": 15014, "targetPort": 15014, "protocol": "TCP"}),
    ];
    if v.injector.enabled {
        let cfg = inject_config(v);
        let text = serde_json::to_string_pretty(&cfg).unwrap_or_default();
        out.push(json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": meta("mesh-injector"),
            "data": {"injector.yaml": text},
        }));
        args.extend(
            [
                "--webhook-address",
                "0.0.0.0:15017",
                "--webhook-configuration",
                WEBHOOK_CONFIGURATION,
                "--injector-config",
                "/etc/mesh/injector/injector.yaml",
            ]
            .map(String::from),
        );
        volumes.push(json!({"name": "injector", "configMap": {"name": "mesh-injector"}}));
        mounts
            .push(json!({"name": "injector", "mountPath": "/etc/mesh/injector", "readOnly": true}));
        ports.push(json!({"name": "https-webhook", "containerPort": 15017, "protocol": "TCP"}));
        service_ports.push(
            json!({"name": "https-webhook", "port": 443, "targetPort": 15017, "protocol": "TCP"}),
        );
    }
    let env = |name: &str, path: &str| json!({"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}});
    out.push(json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": meta(PILOT),
        "spec": {
            "replicas": v.pilot.replicas,
            "selector": {"matchLabels": {"app.kubernetes.io/name": PILOT}},
            "template": {
                "metadata": {"labels": labels(), "annotations": {"sidecar.istio.io/inject": "false"}},
                "spec": {
                    "serviceAccountName": PILOT,
                    "containers": [{
                        "name": "pilot",
                        "image": format!("{}/pilot:{}", v.hub, v.tag),
                        "args": args,
                        "env": [env("POD_NAMESPACE", "metadata.namespace"), env("SERVICE_ACCOUNT", "spec.serviceAccountName")],
                        "ports": ports,
                        "readinessProbe": {"tcpSocket": {"port": 15012}, "periodSeconds": 3},
                        "resources": {"requests": v.pilot.requests, "limits": v.pilot.limits},
                        "securityContext": {
                            "runAsNonRoot": true, "runAsUser": 1337, "runAsGroup": 1337,
                            "allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true,
                            "capabilities": {"drop": ["ALL"]},
                        },
                        "volumeMounts": mounts,
                    }],
                    "volumes": volumes,
                },
            },
        },
    }));
    out.push(json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta(PILOT),
        "spec": {"selector": {"app.kubernetes.io/name": PILOT}, "ports": service_ports},
    }));
    if v.ingress_gateway.enabled {
        out.extend(ingress_gateway(v));
    }
    if v.injector.enabled {
        out.push(webhook_configuration(ns));
    }
    out
}

/// The ingress gateway's name, labels (which Gateways' selectors name) and service account, in
/// the root namespace, as Istio's.
const INGRESS_GATEWAY: &str = "istio-ingressgateway";
const INGRESS_GATEWAY_ACCOUNT: &str = "istio-ingressgateway-service-account";

fn ingress_gateway(v: &Values) -> Vec<Value> {
    let labels: BTreeMap<String, String> = [
        ("app".to_string(), INGRESS_GATEWAY.to_string()),
        ("istio".to_string(), "ingressgateway".to_string()),
    ]
    .into();
    let mut meta_labels = labels.clone();
    meta_labels.insert("app.kubernetes.io/part-of".into(), "mesh".into());
    let meta =
        |name: &str| json!({"name": name, "namespace": ROOT_NAMESPACE, "labels": meta_labels});
    let pod = mesh_injector::inject::gateway_pod(
        &labels,
        INGRESS_GATEWAY_ACCOUNT,
        INGRESS_GATEWAY,
        &inject_config(v),
    );
    let mut ports: Vec<Value> = v
        .ingress_gateway
        .ports
        .iter()
        .map(
            |p| json!({"name": format!("port-{p}"), "port": p, "targetPort": p, "protocol": "TCP"}),
        )
        .collect();
    ports.push(
        json!({"name": "status-port", "port": 15021, "targetPort": 15021, "protocol": "TCP"}),
    );
    vec![
        json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta(INGRESS_GATEWAY_ACCOUNT)}),
        json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": meta(INGRESS_GATEWAY),
            "spec": {
                "replicas": v.ingress_gateway.replicas,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels, "annotations": {"sidecar.istio.io/inject": "false"}},
                    "spec": pod,
                },
            },
        }),
        json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": meta(INGRESS_GATEWAY),
            "spec": {"type": v.ingress_gateway.service_type, "selector": labels, "ports": ports},
        }),
    ]
}

/// Three webhooks, as Kubernetes selectors cannot say "or": a namespace labelled
/// `istio-injection=enabled`; one labelled `mesh-injection=enabled` (and not the former); and a
/// pod labelled `sidecar.istio.io/inject=true` in a namespace labelled with neither. A pod's
/// `"false"` is left to the injector.
fn webhook_configuration(ns: &str) -> Value {
    let hook = |name: &str, namespace_selector: Value, object_selector: Value| {
        json!({
            "name": format!("{name}.sidecar-injector.mesh.dev"),
            "admissionReviewVersions": ["v1"],
            "sideEffects": "None",
            "failurePolicy": "Fail",
            "reinvocationPolicy": "Never",
            "timeoutSeconds": 10,
            "clientConfig": {"service": {"name": PILOT, "namespace": ns, "path": "/inject", "port": 443}},
            "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"]}],
            "namespaceSelector": namespace_selector,
            "objectSelector": object_selector,
        })
    };
    let not_false = json!({"matchExpressions": [{"key": "sidecar.istio.io/inject", "operator": "NotIn", "values": ["false"]}]});
    json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": WEBHOOK_CONFIGURATION, "labels": labels()},
        "webhooks": [
            hook("namespace", json!({"matchLabels": {"istio-injection": "enabled"}}), not_false.clone()),
            hook("mesh-namespace", json!({"matchExpressions": [
                {"key": "mesh-injection", "operator": "In", "values": ["enabled"]},
                {"key": "istio-injection", "operator": "DoesNotExist"},
            ]}), not_false),
            hook("object", json!({"matchExpressions": [
                {"key": "istio-injection", "operator": "DoesNotExist"},
                {"key": "mesh-injection", "operator": "DoesNotExist"},
            ]}), json!({"matchLabels": {"sidecar.istio.io/inject": "true"}})),
        ],
    })
}

/// The mesh configuration a profile starts with: the demo profile turns access logs on and
/// traces every request, as Istio's does, to the Jaeger addon's collector
/// (`manifests/addons/jaeger.yaml`) over OTLP/gRPC.
fn mesh_config(v: &Values) -> String {
    let mut mesh =
        String::from("# Istio's mesh configuration (docs/api-coverage.md: what is read)\n");
    if v.profile == "demo" {
        mesh.push_str("accessLogFile: /dev/stdout\n");
        mesh.push_str(&format!(
            "enableTracing: true\n\
             defaultConfig:\n  tracing:\n    sampling: 100\n\
             extensionProviders:\n\
             - name: otel-tracing\n  opentelemetry:\n    service: jaeger-collector.{}.svc.{}\n    port: 4317\n\
             defaultProviders:\n  tracing: [otel-tracing]\n",
            v.namespace, v.domain
        ));
    }
    mesh
}
