//! The mutation: what a pod gets to join the mesh, as Istio's injector gives it.
//!
//! - `istio-init`: `mesh-proxy init` writes the pod's capture rules (NET_ADMIN, NET_RAW; the
//!   `traffic.sidecar.istio.io/*` annotations choose ports and ranges).
//! - `istio-proxy`: `mesh-proxy run`, told where pilot and the CA are, the pod's identity and
//!   labels; a native sidecar (an init container with `restartPolicy: Always`) that the
//!   application waits for, or, without native sidecars, the first container, whose
//!   `postStart` hook holds the application until the proxy is ready.
//! - HTTP liveness, readiness and startup probes go through the proxy's health port (15021,
//!   never captured) to the application, so kubelet's plaintext probes work under STRICT mTLS
//!   (`sidecar.istio.io/rewriteAppHTTPProbers: "false"` keeps them as they are). HTTPS, TCP,
//!   gRPC and exec probes are left as they are.
//! - A projected service-account token (audience `istio-ca`) proves the pod's identity to the
//!   CA; the mesh's root certificate comes from the `istio-ca-root-cert` ConfigMap.
//! - Labels `security.istio.io/tlsMode: istio` and the canonical service; the annotation
//!   `sidecar.istio.io/status` records what was added. A pod that has `istio-proxy` is left
//!   alone, so injecting twice changes nothing.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapVolumeSource, Container, ContainerPort, EnvVar, EnvVarSource,
    ExecAction, HTTPGetAction, Lifecycle, LifecycleHandler, ObjectFieldSelector, Pod,
    PodSecurityContext, PodSpec, Probe, ProjectedVolumeSource, ResourceRequirements,
    SecurityContext, ServiceAccountTokenProjection, Sysctl, Volume, VolumeMount, VolumeProjection,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::json;

use crate::config::InjectConfig;

/// The proxy container's name (Istio's, so `kubectl logs -c istio-proxy` works).
pub const PROXY_NAME: &str = "istio-proxy";
/// The capture init container's name.
pub const INIT_NAME: &str = "istio-init";
/// What the injector added, as JSON.
pub const STATUS_ANNOTATION: &str = "sidecar.istio.io/status";
/// The probes the proxy forwards to the application, as JSON (Istio's variable).
pub const APP_PROBERS_ENV: &str = "ISTIO_KUBE_APP_PROBERS";
/// The pod's original `prometheus.io/*` annotations, for the proxy to merge the application's
/// metrics into its own page (Istio's variable and JSON).
pub const PROMETHEUS_ANNOTATIONS_ENV: &str = "ISTIO_PROMETHEUS_ANNOTATIONS";
/// The proxy's health port (readiness, application probes).
pub const HEALTH_PORT: i32 = 15021;
/// The proxy's metrics port.
pub const METRICS_PORT: i32 = 15020;

const TOKEN_VOLUME: &str = "istio-token";
const TOKEN_DIR: &str = "/var/run/secrets/tokens";
const ROOT_VOLUME: &str = "istiod-ca-cert";
const ROOT_DIR: &str = "/var/run/secrets/istio";
/// The ConfigMap pilot keeps the mesh's root certificate in, in every namespace.
pub const ROOT_CONFIG_MAP: &str = "istio-ca-root-cert";
const TLS_MODE_LABEL: &str = "security.istio.io/tlsMode";

/// Ports of the proxy never captured inbound.
const PROXY_PORTS: &str = "15020,15021,15090";

/// Returns `pod` with the sidecar added. `workload` names what created it (its Deployment,
/// Job, ...) for the proxy's metrics; by default the pod's own name.
pub fn inject(pod: &Pod, workload: Option<&str>, cfg: &InjectConfig) -> Pod {
    let mut out = pod.clone();
    let meta = &mut out.metadata;
    let labels = meta.labels.get_or_insert_with(BTreeMap::new);
    labels.insert(TLS_MODE_LABEL.into(), "istio".into());
    let app = labels
        .get("app.kubernetes.io/name")
        .or_else(|| labels.get("app"))
        .cloned()
        .or_else(|| workload.map(str::to_string))
        .unwrap_or_else(|| "unknown".into());
    labels
        .entry("service.istio.io/canonical-name".into())
        .or_insert(app);
    let revision = labels
        .get("app.kubernetes.io/version")
        .or_else(|| labels.get("version"))
        .cloned()
        .unwrap_or_else(|| "latest".into());
    labels
        .entry("service.istio.io/canonical-revision".into())
        .or_insert(revision);
    let labels_arg = labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    let annotations = meta.annotations.get_or_insert_with(BTreeMap::new);
    let annotation = |k: &str| annotations.get(k).cloned();
    let init_args = init_args(cfg, &annotation);
    let rewrite_probes = annotation("sidecar.istio.io/rewriteAppHTTPProbers")
        .is_none_or(|v| !v.eq_ignore_ascii_case("false"));
    let resources = resources(cfg, &annotation);
    let prometheus = prometheus_merge(&annotation);

    let spec = out.spec.get_or_insert_with(Default::default);
    let probers = if rewrite_probes {
        rewrite_probes_of(&mut spec.containers)
    } else {
        serde_json::Map::new()
    };
    let workload_name = workload
        .map(str::to_string)
        .or_else(|| out.metadata.name.clone())
        .unwrap_or_default();
    let mut proxy = proxy_container(cfg, &labels_arg, &workload_name, resources.clone());
    if !probers.is_empty() {
        proxy.env.get_or_insert_with(Vec::new).push(EnvVar {
            name: APP_PROBERS_ENV.into(),
            value: Some(serde_json::Value::Object(probers).to_string()),
            value_from: None,
        });
    }
    if let Some(PrometheusMerge {
        original: Some(json),
    }) = &prometheus
    {
        proxy.env.get_or_insert_with(Vec::new).push(EnvVar {
            name: PROMETHEUS_ANNOTATIONS_ENV.into(),
            value: Some(json.clone()),
            value_from: None,
        });
    }
    let init = Container {
        name: INIT_NAME.into(),
        image: Some(cfg.image.clone()),
        args: Some(init_args),
        resources: Some(resources),
        security_context: Some(SecurityContext {
            capabilities: Some(Capabilities {
                add: Some(vec!["NET_ADMIN".into(), "NET_RAW".into()]),
                drop: Some(vec!["ALL".into()]),
            }),
            run_as_user: Some(0),
            run_as_group: Some(0),
            run_as_non_root: Some(false),
            privileged: Some(false),
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(false),
            ..Default::default()
        }),
        ..Default::default()
    };
    let inits = spec.init_containers.get_or_insert_with(Vec::new);
    inits.insert(0, init);
    let (status_inits, status_containers) = if cfg.native_sidecar {
        proxy.restart_policy = Some("Always".into());
        proxy.startup_probe = Some(health_probe(1, 600));
        inits.insert(1, proxy);
        (vec![INIT_NAME, PROXY_NAME], vec![])
    } else {
        // The application starts once this hook returns: when the proxy is ready.
        proxy.lifecycle = Some(Lifecycle {
            post_start: Some(LifecycleHandler {
                exec: Some(ExecAction {
                    command: Some(
                        ["mesh-proxy", "wait", "--timeout-secs", "60"]
                            .map(String::from)
                            .to_vec(),
                    ),
                }),
                ..Default::default()
            }),
            ..Default::default()
        });
        spec.containers.insert(0, proxy);
        (vec![INIT_NAME], vec![PROXY_NAME])
    };
    spec.volumes
        .get_or_insert_with(Vec::new)
        .extend(proxy_volumes());
    let annotations = out.metadata.annotations.get_or_insert_with(BTreeMap::new);
    annotations.insert(
        STATUS_ANNOTATION.into(),
        json!({
            "initContainers": status_inits,
            "containers": status_containers,
            "volumes": [TOKEN_VOLUME, ROOT_VOLUME],
            "version": env!("CARGO_PKG_VERSION"),
        })
        .to_string(),
    );
    if prometheus.is_some() {
        for (k, v) in [
            ("prometheus.io/scrape", "true".to_string()),
            ("prometheus.io/port", METRICS_PORT.to_string()),
            ("prometheus.io/path", "/stats/prometheus".to_string()),
        ] {
            annotations.insert(k.into(), v);
        }
    }
    out
}

/// Metrics merging, as Istio's injector does it: Prometheus is pointed at the proxy's
/// 15020, which serves the proxy's metrics and the application's, unless the pod says
/// `prometheus.io/scrape: "false"`.
struct PrometheusMerge {
    /// The pod's own `prometheus.io/*` annotations as `ISTIO_PROMETHEUS_ANNOTATIONS` JSON,
    /// when it had any.
    original: Option<String>,
}

/// The pod's own `prometheus.io/*` annotations as the `ISTIO_PROMETHEUS_ANNOTATIONS` JSON the
/// proxy reads, when it has any and has not opted out of scraping.
pub fn original_prometheus_annotations(annotations: &BTreeMap<String, String>) -> Option<String> {
    prometheus_merge(&|k| annotations.get(k).cloned()).and_then(|m| m.original)
}

fn prometheus_merge(annotation: &dyn Fn(&str) -> Option<String>) -> Option<PrometheusMerge> {
    let scrape = annotation("prometheus.io/scrape");
    if scrape
        .as_deref()
        .is_some_and(|s| s.trim().eq_ignore_ascii_case("false"))
    {
        return None;
    }
    let port = annotation("prometheus.io/port");
    if port.as_deref().map(str::trim) == Some(&METRICS_PORT.to_string()) {
        // Injected before (or pointed at the proxy by hand): nothing more to merge, and a
        // second pass changes nothing.
        return Some(PrometheusMerge { original: None });
    }
    let path = annotation("prometheus.io/path");
    if scrape.is_none() && port.is_none() && path.is_none() {
        return Some(PrometheusMerge { original: None });
    }
    let original = serde_json::json!({
        "scrape": scrape.unwrap_or_default(),
        "path": path.unwrap_or_default(),
        "port": port.unwrap_or_default(),
    });
    Some(PrometheusMerge {
        original: Some(original.to_string()),
    })
}

/// `mesh-proxy init`'s arguments, with the pod's `traffic.sidecar.istio.io/*` choices.
/// The volumes the proxy mounts: its projected service-account token (audience `istio-ca`)
/// and the mesh root (ConfigMap `istio-ca-root-cert`).
fn proxy_volumes() -> [Volume; 2] {
    [
        Volume {
            name: TOKEN_VOLUME.into(),
            projected: Some(ProjectedVolumeSource {
                sources: Some(vec![VolumeProjection {
                    service_account_token: Some(ServiceAccountTokenProjection {
                        audience: Some("istio-ca".into()),
                        expiration_seconds: Some(43_200),
                        path: TOKEN_VOLUME.into(),
                    }),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        },
        Volume {
            name: ROOT_VOLUME.into(),
            config_map: Some(ConfigMapVolumeSource {
                name: ROOT_CONFIG_MAP.into(),
                ..Default::default()
            }),
            ..Default::default()
        },
    ]
}

/// The pod of an ingress gateway (Istio's `gateway` injection template): the proxy alone, in
/// gateway mode, with the pod's `labels` and `service_account`, its token and the mesh root
/// mounted, and ports below 1024 open to its unprivileged user (the gateway binds each Gateway
/// server's port number itself).
pub fn gateway_pod(
    labels: &BTreeMap<String, String>,
    service_account: &str,
    workload: &str,
    cfg: &InjectConfig,
) -> PodSpec {
    let labels_arg = labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    let mut proxy = proxy_container(cfg, &labels_arg, workload, resources(cfg, &|_| None));
    if let Some(args) = proxy.args.as_mut() {
        args.splice(1..1, ["--mode".to_string(), "gateway".to_string()]);
    }
    PodSpec {
        service_account_name: Some(service_account.into()),
        containers: vec![proxy],
        volumes: Some(proxy_volumes().to_vec()),
        security_context: Some(PodSecurityContext {
            sysctls: Some(vec![Sysctl {
                name: "net.ipv4.ip_unprivileged_port_start".into(),
                value: "0".into(),
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn init_args(cfg: &InjectConfig, annotation: &dyn Fn(&str) -> Option<String>) -> Vec<String> {
    let traffic = |name: &str| annotation(&format!("traffic.sidecar.istio.io/{name}"));
    let mut excluded_inbound = PROXY_PORTS.to_string();
    if let Some(more) = traffic("excludeInboundPorts").filter(|v| !v.trim().is_empty()) {
        excluded_inbound = format!("{excluded_inbound},{}", more.trim());
    }
    let uid = cfg.proxy_uid.to_string();
    let mut args = vec![
        "init".to_string(),
        "--allow-unregistered-namespace".into(),
        "-u".into(),
        uid.clone(),
        "-g".into(),
        uid,
        "-p".into(),
        "15001".into(),
        "-z".into(),
        "15006".into(),
        "-b".into(),
        traffic("includeInboundPorts").unwrap_or_else(|| "*".into()),
        "-d".into(),
        excluded_inbound,
        "-i".into(),
        traffic("includeOutboundIPRanges").unwrap_or_else(|| "*".into()),
    ];
    for (flag, name) in [
        ("-x", "excludeOutboundIPRanges"),
        ("-q", "includeOutboundPorts"),
        ("-o", "excludeOutboundPorts"),
    ] {
        if let Some(v) = traffic(name) {
            args.push(flag.into());
            args.push(v);
        }
    }
    args
}

/// The proxy's resources: the profile's, each overridden by the pod's
/// `sidecar.istio.io/proxyCPU`, `proxyMemory`, `proxyCPULimit`, `proxyMemoryLimit`.
fn resources(
    cfg: &InjectConfig,
    annotation: &dyn Fn(&str) -> Option<String>,
) -> ResourceRequirements {
    let mut requests = cfg.requests.clone();
    let mut limits = cfg.limits.clone();
    for (name, limit, key) in [
        ("proxyCPU", false, "cpu"),
        ("proxyMemory", false, "memory"),
        ("proxyCPULimit", true, "cpu"),
        ("proxyMemoryLimit", true, "memory"),
    ] {
        if let Some(v) = annotation(&format!("sidecar.istio.io/{name}")) {
            let map = if limit { &mut limits } else { &mut requests };
            map.insert(key.into(), v);
        }
    }
    let q = |m: BTreeMap<String, String>| {
        (!m.is_empty()).then(|| m.into_iter().map(|(k, v)| (k, Quantity(v))).collect())
    };
    ResourceRequirements {
        requests: q(requests),
        limits: q(limits),
        ..Default::default()
    }
}

fn field_env(name: &str, path: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: None,
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.into(),
                api_version: None,
            }),
            ..Default::default()
        }),
    }
}

fn health_probe(period: i32, failures: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some("/healthz/ready".into()),
            port: IntOrString::Int(HEALTH_PORT),
            ..Default::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        timeout_seconds: Some(3),
        ..Default::default()
    }
}

fn proxy_container(
    cfg: &InjectConfig,
    labels: &str,
    workload: &str,
    resources: ResourceRequirements,
) -> Container {
    let args = [
        "run",
        "--discovery-address",
        &cfg.discovery_address,
        "--pilot-identity",
        &cfg.pilot_identity,
        "--ca-address",
        &cfg.ca_address,
        "--ca-identity",
        &cfg.pilot_identity,
        "--ca-root-file",
        &format!("{ROOT_DIR}/root-cert.pem"),
        "--bootstrap-token-file",
        &format!("{TOKEN_DIR}/{TOKEN_VOLUME}"),
        "--ca-credential",
        "kubernetes",
        "--trust-domain",
        &cfg.trust_domain,
        "--namespace",
        "$(POD_NAMESPACE)",
        "--service-account",
        "$(SERVICE_ACCOUNT)",
        "--workload-name",
        "$(POD_NAME)",
        "--workload-ips",
        "$(INSTANCE_IP)",
        "--workload",
        workload,
        "--labels",
        labels,
    ]
    .map(String::from)
    .to_vec();
    let uid = cfg.proxy_uid;
    Container {
        name: PROXY_NAME.into(),
        image: Some(cfg.image.clone()),
        args: Some(args),
        env: Some(vec![
            field_env("POD_NAME", "metadata.name"),
            field_env("POD_NAMESPACE", "metadata.namespace"),
            field_env("INSTANCE_IP", "status.podIP"),
            field_env("SERVICE_ACCOUNT", "spec.serviceAccountName"),
        ]),
        ports: Some(vec![ContainerPort {
            container_port: METRICS_PORT,
            name: Some("http-envoy-prom".into()),
            protocol: Some("TCP".into()),
            ..Default::default()
        }]),
        readiness_probe: Some(health_probe(2, 30)),
        resources: Some(resources),
        security_context: Some(SecurityContext {
            run_as_user: Some(uid),
            run_as_group: Some(uid),
            run_as_non_root: Some(true),
            allow_privilege_escalation: Some(false),
            privileged: Some(false),
            read_only_root_filesystem: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                add: None,
            }),
            ..Default::default()
        }),
        volume_mounts: Some(vec![
            VolumeMount {
                name: TOKEN_VOLUME.into(),
                mount_path: TOKEN_DIR.into(),
                read_only: Some(true),
                ..Default::default()
            },
            VolumeMount {
                name: ROOT_VOLUME.into(),
                mount_path: ROOT_DIR.into(),
                read_only: Some(true),
                ..Default::default()
            },
        ]),
        ..Default::default()
    }
}

/// Points every HTTP probe of `containers` at the proxy's health port, and returns what the
/// proxy must ask the application instead: `/app-health/<container>/<livez|readyz|startupz>`
/// → the original `httpGet` (a named port resolved to its number) and timeout.
fn rewrite_probes_of(containers: &mut [Container]) -> serde_json::Map<String, serde_json::Value> {
    let mut probers = serde_json::Map::new();
    for c in containers.iter_mut() {
        let name = c.name.clone();
        let named_ports: BTreeMap<String, i32> = c
            .ports
            .iter()
            .flatten()
            .filter_map(|p| Some((p.name.clone()?, p.container_port)))
            .collect();
        for (kind, probe) in [
            ("livez", &mut c.liveness_probe),
            ("readyz", &mut c.readiness_probe),
            ("startupz", &mut c.startup_probe),
        ] {
            let Some(probe) = probe.as_mut() else {
                continue;
            };
            let Some(get) = probe.http_get.as_mut() else {
                continue;
            };
            // HTTPS probes are the application's own TLS, which kubelet reaches as it is.
            if get
                .scheme
                .as_deref()
                .is_some_and(|s| !s.eq_ignore_ascii_case("http"))
            {
                continue;
            }
            let port = match &get.port {
                IntOrString::Int(p) => Some(*p),
                IntOrString::String(n) => named_ports.get(n).copied().or_else(|| n.parse().ok()),
            };
            let Some(port) = port else { continue };
            let path = format!("/app-health/{name}/{kind}");
            let mut original = serde_json::to_value(&*get).unwrap_or_default();
            original["port"] = json!(port);
            probers.insert(
                path.clone(),
                json!({
                    "httpGet": original,
                    "timeoutSeconds": probe.timeout_seconds.unwrap_or(1),
                }),
            );
            *get = HTTPGetAction {
                path: Some(path),
                port: IntOrString::Int(HEALTH_PORT),
                scheme: Some("HTTP".into()),
                ..Default::default()
            };
        }
    }
    probers
}
