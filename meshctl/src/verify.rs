//! `meshctl verify`, in the spirit of `linkerd check`: what must hold before an install
//! (`--pre`) or of an installed mesh, each check passed or failed with what to do about it.

use std::collections::BTreeMap;

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{ListParams, PostParams};
use kube::{Api, Client};
use serde::Serialize;

/// The oldest Kubernetes the mesh supports, and the first with native sidecars on by default.
pub const MIN_MINOR: u32 = 29;

/// One check's outcome.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Check {
    /// What was checked.
    pub name: String,
    /// Whether it holds.
    pub ok: bool,
    /// What was found.
    pub detail: String,
    /// What to do when it does not hold.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

fn pass(name: &str, detail: impl Into<String>) -> Check {
    Check {
        name: name.into(),
        ok: true,
        detail: detail.into(),
        hint: None,
    }
}

fn fail(name: &str, detail: impl Into<String>, hint: impl Into<String>) -> Check {
    Check {
        name: name.into(),
        ok: false,
        detail: detail.into(),
        hint: Some(hint.into()),
    }
}

/// The checks before an install: the API server, its version, the permissions install
/// needs, and CRDs of the mesh's groups that another installation owns.
pub async fn pre_install(client: &Client) -> Vec<Check> {
    let mut out = Vec::new();
    match client.apiserver_version().await {
        Err(e) => {
            out.push(fail(
                "Kubernetes API reachable",
                e.to_string(),
                "check KUBECONFIG and the current context (kubectl cluster-info)",
            ));
            return out;
        }
        Ok(v) => {
            out.push(pass("Kubernetes API reachable", v.git_version.clone()));
            let minor: u32 = v.minor.trim_end_matches('+').parse().unwrap_or_default();
            let major: u32 = v.major.parse().unwrap_or_default();
            if major > 1 || minor >= MIN_MINOR {
                out.push(pass(
                    "Kubernetes version supported",
                    format!("{}.{minor}", v.major),
                ));
            } else {
                out.push(fail(
                    "Kubernetes version supported",
                    format!("{}.{minor}", v.major),
                    format!(
                        "the mesh needs 1.{MIN_MINOR} or later for native sidecars; on an older cluster install with --set injector.nativeSidecar=false"
                    ),
                ));
            }
        }
    }
    for (verb, group, resource) in [
        ("create", "", "namespaces"),
        (
            "create",
            "apiextensions.k8s.io",
            "customresourcedefinitions",
        ),
        ("create", "rbac.authorization.k8s.io", "clusterroles"),
        (
            "create",
            "admissionregistration.k8s.io",
            "mutatingwebhookconfigurations",
        ),
    ] {
        let name = format!("can {verb} {resource}");
        let review = SelfSubjectAccessReview {
            spec: SelfSubjectAccessReviewSpec {
                resource_attributes: Some(ResourceAttributes {
                    verb: Some(verb.into()),
                    group: Some(group.into()),
                    resource: Some(resource.into()),
                    ..Default::default()
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        let api: Api<SelfSubjectAccessReview> = Api::all(client.clone());
        match api.create(&PostParams::default(), &review).await {
            Ok(r) if r.status.as_ref().is_some_and(|s| s.allowed) => {
                out.push(pass(&name, "allowed"))
            }
            Ok(r) => out.push(fail(
                &name,
                r.status
                    .and_then(|s| s.reason)
                    .unwrap_or_else(|| "denied".into()),
                "install as a cluster administrator (cluster-admin)",
            )),
            Err(e) => out.push(fail(
                &name,
                e.to_string(),
                "install as a cluster administrator",
            )),
        }
    }
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    match crds.list(&ListParams::default()).await {
        Ok(list) => {
            let foreign: Vec<String> = list
                .items
                .iter()
                .filter(|c| {
                    let group = &c.spec.group;
                    let ours = c
                        .metadata
                        .labels
                        .as_ref()
                        .and_then(|l| l.get("app.kubernetes.io/part-of"))
                        .is_some_and(|v| v == "mesh");
                    !ours && mesh_api::Kind::ALL.iter().any(|k| k.group() == group)
                })
                .filter_map(|c| c.metadata.name.clone())
                .collect();
            if foreign.is_empty() {
                out.push(pass(
                    "no conflicting CRDs",
                    "none of the mesh's kinds is owned elsewhere",
                ));
            } else {
                out.push(fail(
                    "no conflicting CRDs",
                    format!("installed by something else: {}", foreign.join(", ")),
                    "another mesh (Istio?) owns these kinds; uninstall it first, or install knowing the mesh will take the CRDs over",
                ));
            }
        }
        Err(e) => out.push(fail(
            "no conflicting CRDs",
            e.to_string(),
            "check the permissions to list CRDs",
        )),
    }
    out
}

/// The checks of an installed mesh in `namespace`.
pub async fn installed(client: &Client, namespace: &str) -> Vec<Check> {
    let mut out = Vec::new();
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), namespace);
    match deployments.get_opt("mesh-pilot").await {
        Ok(Some(d)) => {
            let (have, want) = crate::kube_install::availability(&d);
            if have >= want {
                out.push(pass(
                    "control plane ready",
                    format!("mesh-pilot {have}/{want} available"),
                ));
            } else {
                out.push(fail(
                    "control plane ready",
                    format!("mesh-pilot {have}/{want} available"),
                    format!("kubectl -n {namespace} describe deployment mesh-pilot; kubectl -n {namespace} logs deploy/mesh-pilot"),
                ));
            }
        }
        Ok(None) => out.push(fail(
            "control plane ready",
            format!("no Deployment mesh-pilot in {namespace}"),
            "install the mesh: meshctl install --profile default",
        )),
        Err(e) => out.push(fail(
            "control plane ready",
            e.to_string(),
            "check the permissions to read Deployments",
        )),
    }
    // The ingress gateway, where the profile installed one (minimal has none).
    let gateways: Api<Deployment> = Api::namespaced(client.clone(), crate::profile::ROOT_NAMESPACE);
    if let Ok(Some(d)) = gateways.get_opt("istio-ingressgateway").await {
        let (have, want) = crate::kube_install::availability(&d);
        let detail = format!("istio-ingressgateway {have}/{want} available");
        out.push(if have >= want {
            pass("ingress gateway ready", detail)
        } else {
            fail(
                "ingress gateway ready",
                detail,
                format!("kubectl -n {0} describe deployment istio-ingressgateway; kubectl -n {0} logs deploy/istio-ingressgateway", crate::profile::ROOT_NAMESPACE),
            )
        });
    }
    let webhooks: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let mut injector = false;
    match webhooks
        .get_opt(crate::profile::WEBHOOK_CONFIGURATION)
        .await
    {
        Ok(Some(w)) => {
            injector = true;
            let hooks = w.webhooks.unwrap_or_default();
            let missing = hooks
                .iter()
                .filter(|h| h.client_config.ca_bundle.is_none())
                .count();
            if missing == 0 && !hooks.is_empty() {
                out.push(pass(
                    "injector webhook configured",
                    format!("{} webhooks with a caBundle", hooks.len()),
                ));
            } else {
                out.push(fail(
                    "injector webhook configured",
                    format!("{missing} of {} webhooks without a caBundle", hooks.len()),
                    "the control plane sets it at start; check its logs for \"caBundle\"",
                ));
            }
        }
        Ok(None) => out.push(pass(
            "injector webhook configured",
            "none (a profile without the injector)",
        )),
        Err(e) => out.push(fail(
            "injector webhook configured",
            e.to_string(),
            "check the permissions to read webhook configurations",
        )),
    }
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    match maps.get_opt("istio-ca-root-cert").await {
        Ok(Some(cm)) => {
            let pem = cm
                .data
                .unwrap_or_default()
                .remove("root-cert.pem")
                .unwrap_or_default();
            match days_left(&pem) {
                Some(days) if days > 30 => out.push(pass("mesh root certificate valid", format!("{days} days to expiry"))),
                Some(days) => out.push(fail(
                    "mesh root certificate valid",
                    format!("{days} days to expiry"),
                    "the root must be replaced before it expires (root rotation is not automated yet)",
                )),
                None => out.push(fail("mesh root certificate valid", "not a certificate", "restart the control plane to publish it again")),
            }
        }
        Ok(None) => out.push(fail(
            "mesh root certificate valid",
            format!("no ConfigMap istio-ca-root-cert in {namespace}"),
            "the control plane publishes it at start; check its logs",
        )),
        Err(e) => out.push(fail(
            "mesh root certificate valid",
            e.to_string(),
            "check the permissions to read ConfigMaps",
        )),
    }
    // The webhook over HTTPS, as the API server reaches it (its service proxy).
    if injector {
        let name = "injector webhook answers over HTTPS";
        let path =
            format!("/api/v1/namespaces/{namespace}/services/https:mesh-pilot:443/proxy/ready");
        match http::Request::get(path).body(Vec::new()) {
            Ok(req) => match within(client.request_text(req)).await {
                Ok(text) if text.contains("ready") => out.push(pass(name, "ready")),
                Ok(text) => out.push(fail(
                    name,
                    text.trim().to_string(),
                    "check the control plane's logs for the webhook",
                )),
                Err(e) => out.push(fail(
                    name,
                    e.to_string(),
                    format!("pods cannot be created while it does not answer (failurePolicy: Fail); kubectl -n {namespace} logs deploy/mesh-pilot"),
                )),
            },
            Err(e) => out.push(fail(name, e.to_string(), "")),
        }
    }
    // Pilot's /debug/syncz through the API server's service proxy.
    let path =
        format!("/api/v1/namespaces/{namespace}/services/mesh-pilot:15014/proxy/debug/syncz");
    let req = http::Request::get(path).body(Vec::new());
    match req {
        Ok(req) => match within(client.request_text(req)).await {
            Ok(text) => {
                out.push(proxies(&text));
                out.push(versions(&text, env!("CARGO_PKG_VERSION")));
            }
            Err(e) => out.push(fail(
                "proxies connected and in sync",
                e.to_string(),
                format!("kubectl -n {namespace} port-forward svc/mesh-pilot 15014 and meshctl proxy-status --pilot http://127.0.0.1:15014"),
            )),
        },
        Err(e) => out.push(fail("proxies connected and in sync", e.to_string(), "")),
    }
    let namespaces: Api<Namespace> = Api::all(client.clone());
    if let Ok(list) = namespaces.list(&ListParams::default()).await {
        let injected: Vec<String> = list
            .items
            .iter()
            .filter(|n| {
                let labels: BTreeMap<String, String> =
                    n.metadata.labels.clone().unwrap_or_default();
                ["istio-injection", "mesh-injection"]
                    .iter()
                    .any(|k| labels.get(*k).is_some_and(|v| v == "enabled"))
            })
            .filter_map(|n| n.metadata.name.clone())
            .collect();
        out.push(if injected.is_empty() {
            fail(
                "namespaces labelled for injection",
                "none",
                "kubectl label namespace default istio-injection=enabled",
            )
        } else {
            pass("namespaces labelled for injection", injected.join(", "))
        });
    }
    out
}

fn proxies(syncz: &str) -> Check {
    let name = "proxies connected and in sync";
    let Ok(v) = serde_json::from_str::<serde_json::Value>(syncz) else {
        return fail(
            name,
            "pilot answered something else than /debug/syncz",
            "check the control plane's version",
        );
    };
    let all = v["proxies"].as_array().cloned().unwrap_or_default();
    let mut trouble = Vec::new();
    for p in &all {
        let id = p["node"]["id"].as_str().unwrap_or("?");
        if p["connected"] != true {
            trouble.push(format!("{id} disconnected"));
        } else if let Some(n) = p["nack"].as_str() {
            trouble.push(format!("{id} refused a push: {n}"));
        } else if p["sent_version"] != p["acked_version"] {
            trouble.push(format!("{id} not in sync"));
        }
    }
    if trouble.is_empty() {
        pass(name, format!("{} connected, all in sync", all.len()))
    } else {
        fail(
            name,
            trouble.join("; "),
            "meshctl proxy-status shows each proxy and why",
        )
    }
}

/// Whether a proxy at `proxy` may run under a control plane at `pilot`: the same major
/// version, never newer, and at most one minor version older (the release before an
/// upgrade). Before 1.0 every minor release may break the discovery protocol, so there the
/// minor versions must match. `Err` says why not.
pub fn supported_skew(pilot: &str, proxy: &str) -> Result<(), String> {
    let parse = |v: &str| semver::Version::parse(v.trim_start_matches('v'));
    let pilot = parse(pilot).map_err(|e| format!("the control plane's version {pilot:?}: {e}"))?;
    if proxy.is_empty() {
        return Err("reports no version (a proxy older than the version check)".into());
    }
    let proxy = parse(proxy).map_err(|e| format!("version {proxy:?}: {e}"))?;
    let strip = |v: &semver::Version| semver::Version::new(v.major, v.minor, v.patch);
    if strip(&proxy) > strip(&pilot) {
        return Err(format!("{proxy} is newer than the control plane's {pilot}"));
    }
    let allowed_minors = if pilot.major == 0 { 0 } else { 1 };
    if proxy.major != pilot.major || pilot.minor - proxy.minor.min(pilot.minor) > allowed_minors {
        return Err(format!(
            "{proxy} is too old for the control plane's {pilot} (supported: {})",
            if allowed_minors == 0 {
                format!("{}.{}.x", pilot.major, pilot.minor)
            } else {
                format!(
                    "{}.{}.x and {}.{}.x",
                    pilot.major,
                    pilot.minor.saturating_sub(1),
                    pilot.major,
                    pilot.minor
                )
            }
        ));
    }
    Ok(())
}

/// The data plane's versions against the control plane's (`pilot_version` and each proxy's
/// `node.proxy_version` in `/debug/syncz`), and `meshctl`'s own (`cli`) as a note.
fn versions(syncz: &str, cli: &str) -> Check {
    let name = "data plane and control plane versions";
    let Ok(v) = serde_json::from_str::<serde_json::Value>(syncz) else {
        return fail(
            name,
            "pilot answered something else than /debug/syncz",
            "check the control plane's version",
        );
    };
    let Some(pilot) = v["pilot_version"].as_str() else {
        return fail(
            name,
            "the control plane does not report its version",
            "it predates the version check: meshctl install --profile P to upgrade it",
        );
    };
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    let mut trouble = Vec::new();
    let mut namespaces = std::collections::BTreeSet::new();
    for p in v["proxies"].as_array().into_iter().flatten() {
        let version = p["node"]["proxy_version"].as_str().unwrap_or_default();
        *counts
            .entry(
                if version.is_empty() {
                    "unknown"
                } else {
                    version
                }
                .to_string(),
            )
            .or_default() += 1;
        if let Err(why) = supported_skew(pilot, version) {
            let id = p["node"]["id"].as_str().unwrap_or("?");
            trouble.push(format!("{id}: {why}"));
            if let Some(ns) = p["node"]["namespace"].as_str() {
                namespaces.insert(ns.to_string());
            }
        }
    }
    let spread = counts
        .iter()
        .map(|(v, n)| format!("{n} at {v}"))
        .collect::<Vec<_>>()
        .join(", ");
    let cli_note = if cli == pilot {
        String::new()
    } else {
        format!("; meshctl is {cli}")
    };
    if trouble.is_empty() {
        let proxies = if spread.is_empty() {
            "no proxies".to_string()
        } else {
            format!("proxies {spread}")
        };
        pass(name, format!("control plane {pilot}, {proxies}{cli_note}"))
    } else {
        let restart = namespaces
            .iter()
            .map(|ns| format!("kubectl rollout restart deployment -n {ns}"))
            .collect::<Vec<_>>()
            .join("; ");
        fail(
            name,
            format!("control plane {pilot}{cli_note}; {}", trouble.join("; ")),
            format!(
                "restart those workloads so they are injected with the control plane's proxy: {restart}"
            ),
        )
    }
}

/// Days until the first certificate of `pem` expires.
fn days_left(pem: &str) -> Option<i64> {
    let (_, parsed) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).ok()?;
    let cert = parsed.parse_x509().ok()?;
    let not_after = cert.validity().not_after.timestamp();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_secs();
    Some((not_after - i64::try_from(now).ok()?) / 86_400)
}

/// The checks as lines (`✔ name: detail`, `✘ name: detail`, then `  → hint`).
pub fn render(checks: &[Check]) -> String {
    let mut out = String::new();
    for c in checks {
        let mark = if c.ok { "✔" } else { "✘" };
        out += &format!("{mark} {}: {}\n", c.name, c.detail);
        if let Some(h) = c.hint.as_ref().filter(|h| !h.is_empty()) {
            out += &format!("  → {h}\n");
        }
    }
    out
}

/// `request` given 10 s: kube's client retries an unavailable service for minutes, and a
/// check must answer.
async fn within(
    request: impl std::future::Future<Output = Result<String, kube::Error>>,
) -> Result<String, String> {
    match tokio::time::timeout(std::time::Duration::from_secs(10), request).await {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(_) => Err("no answer within 10 s".into()),
    }
}
