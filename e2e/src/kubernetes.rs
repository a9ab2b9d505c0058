//! The Kubernetes backend of the harness (`MESH_E2E_BACKEND=kube`): the scenarios against the
//! cluster of the current kubeconfig, where the mesh is installed (`meshctl install --profile
//! demo`) and namespace `default` is labelled for injection. `make kind-e2e` prepares such a
//! cluster and runs the suite on it.
//!
//! - Configuration is applied by server-side apply, as `meshctl install` applies; the test
//!   application's image (`mesh-echo`, any tag) becomes the one loaded into the cluster
//!   (`MESH_E2E_IMAGE`, by default `mesh/echo:<version>`), never pulled.
//! - A scenario's pod names are the local runtime's: `order-v1-0` is the first running pod of
//!   Deployment `order-v1` (oldest first), and a pod started with [`Cluster::run`] keeps its name.
//! - The sidecar is asked from inside its container (`kubectl exec -c istio-proxy -- mesh-proxy
//!   request`), since its admin port listens on loopback only; pilot through the API server's
//!   service proxy; logs through the API.
//! - The backend owns namespace `default` of the cluster: a scenario deletes what it applied
//!   and ran, and the next one starts when every pod there is gone.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::Context;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{DeleteParams, ListParams, LogParams};
use kube::{Api, Client};
use meshctl::local::PodSpec;
use serde_json::{Value, json};

use crate::harness::Cluster;

/// Where the control plane runs.
pub const MESH_NAMESPACE: &str = "mesh-system";
/// The namespace the scenarios use.
pub const NAMESPACE: &str = "default";
const PILOT: &str = "mesh-pilot";
const SIDECAR: &str = "istio-proxy";

/// A mesh on a Kubernetes cluster.
pub struct KubeCluster {
    runtime: tokio::runtime::Runtime,
    client: Client,
    kubectl: PathBuf,
    image: String,
    /// How long pods and Deployments may take to become ready.
    pub within: Duration,
    /// Every document applied, in order (deleted in reverse when the scenario ends).
    applied: Mutex<Vec<Value>>,
}

fn key(doc: &Value) -> (String, String, String) {
    let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
    (
        s(&doc["kind"]),
        s(&doc["metadata"]["namespace"]),
        s(&doc["metadata"]["name"]),
    )
}

impl KubeCluster {
    /// Connects to the cluster of the current kubeconfig and checks the mesh is installed and
    /// `default` labelled for injection; the error says what to do.
    pub fn connect() -> anyhow::Result<KubeCluster> {
        Self::connect_to(None)
    }

    /// Connects to the cluster `config` names (the kubeconfig's when `None`); see
    /// [`KubeCluster::connect`].
    pub fn connect_to(config: Option<kube::Config>) -> anyhow::Result<KubeCluster> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let client = runtime
            .block_on(async {
                match config {
                    Some(config) => Client::try_from(config),
                    None => Client::try_default().await,
                }
            })
            .context("no Kubernetes cluster in the kubeconfig (KUBECONFIG, ~/.kube/config)")?;
        let c = KubeCluster {
            runtime,
            client,
            kubectl: std::env::var_os("KUBECTL").map_or_else(|| "kubectl".into(), PathBuf::from),
            image: std::env::var("MESH_E2E_IMAGE")
                .unwrap_or_else(|_| format!("mesh/echo:{}", env!("CARGO_PKG_VERSION"))),
            within: Duration::from_secs(180),
            applied: Mutex::new(Vec::new()),
        };
        c.check_installed()?;
        Ok(c)
    }

    fn check_installed(&self) -> anyhow::Result<()> {
        self.runtime.block_on(async {
            let deployments: Api<Deployment> = Api::namespaced(self.client.clone(), MESH_NAMESPACE);
            match deployments.get_opt(PILOT).await? {
                None => anyhow::bail!(
                    "the mesh is not installed: no Deployment {MESH_NAMESPACE}/{PILOT} (meshctl install --profile demo)"
                ),
                Some(d) => {
                    let (have, want) = meshctl::kube_install::availability(&d);
                    anyhow::ensure!(
                        have >= want,
                        "the control plane is not ready: {PILOT} {have}/{want} available (meshctl verify)"
                    );
                }
            }
            let namespaces: Api<Namespace> = Api::all(self.client.clone());
            let ns = namespaces.get(NAMESPACE).await?;
            let labels = ns.metadata.labels.unwrap_or_default();
            anyhow::ensure!(
                ["istio-injection", "mesh-injection"]
                    .iter()
                    .any(|k| labels.get(*k).is_some_and(|v| v == "enabled")),
                "namespace {NAMESPACE} is not labelled for injection (kubectl label namespace {NAMESPACE} istio-injection=enabled)"
            );
            Ok(())
        })
    }

    /// The documents of a file, or of the YAML files of a folder (by name), as applied: the
    /// test application's image replaced by the one loaded into the cluster.
    pub fn documents(&self, path: &Path) -> anyhow::Result<Vec<Value>> {
        let files = if path.is_dir() {
            let mut files: Vec<PathBuf> = std::fs::read_dir(path)
                .with_context(|| format!("reading {}", path.display()))?
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
                .collect();
            files.sort();
            files
        } else {
            vec![path.to_path_buf()]
        };
        let mut docs = Vec::new();
        for f in files {
            let text =
                std::fs::read_to_string(&f).with_context(|| format!("reading {}", f.display()))?;
            docs.extend(
                self.documents_of(&text)
                    .with_context(|| f.display().to_string())?,
            );
        }
        Ok(docs)
    }

    /// The documents of YAML text, as applied (see [`KubeCluster::documents`]).
    pub fn documents_of(&self, yaml: &str) -> anyhow::Result<Vec<Value>> {
        let mut docs = mesh_injector::template::documents(yaml).map_err(anyhow::Error::msg)?;
        for doc in &mut docs {
            if doc["metadata"]["namespace"].is_null() && doc["kind"] != "Namespace" {
                doc["metadata"]["namespace"] = json!(NAMESPACE);
            }
            let spec = match doc["kind"].as_str() {
                Some("Pod") => &mut doc["spec"],
                Some("Deployment") => &mut doc["spec"]["template"]["spec"],
                _ => continue,
            };
            for c in spec["containers"].as_array_mut().into_iter().flatten() {
                let image = c["image"].as_str().unwrap_or_default();
                let name = image.rsplit('/').next().unwrap_or("").split(':').next();
                if name == Some("mesh-echo") {
                    c["image"] = json!(self.image);
                    c["imagePullPolicy"] = json!("IfNotPresent");
                }
            }
        }
        Ok(docs)
    }

    fn apply_docs(&self, docs: Vec<Value>) -> anyhow::Result<()> {
        self.runtime.block_on(async {
            meshctl::kube_install::apply_all(&self.client, &docs, &mut |_| {}).await?;
            if let Ok(mut applied) = self.applied.lock() {
                applied.retain(|d| docs.iter().all(|n| key(n) != key(d)));
                applied.extend(docs.iter().cloned());
            }
            for d in docs.iter().filter(|d| d["kind"] == "Deployment") {
                let (_, ns, name) = key(d);
                meshctl::kube_install::wait_available(
                    &self.client,
                    &ns,
                    &name,
                    self.within,
                    &mut |_| {},
                )
                .await?;
            }
            for p in docs.iter().filter(|d| d["kind"] == "Pod") {
                let (_, ns, name) = key(p);
                self.wait_pod_ready(&ns, &name).await?;
            }
            Ok(())
        })
    }

    async fn wait_pod_ready(&self, namespace: &str, name: &str) -> anyhow::Result<()> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        let deadline = tokio::time::Instant::now() + self.within;
        let mut pace = tokio::time::interval(Duration::from_millis(500));
        let mut last = String::from("not created");
        while tokio::time::Instant::now() < deadline {
            pace.tick().await;
            match pods.get_opt(name).await? {
                Some(p) if is_ready(&p) => return Ok(()),
                Some(p) => {
                    last = p
                        .status
                        .and_then(|s| s.phase)
                        .unwrap_or_else(|| "Pending".into());
                }
                None => {}
            }
        }
        anyhow::bail!(
            "pod {namespace}/{name} not ready within {:?} ({last})",
            self.within
        )
    }

    /// The pod a scenario's name stands for: a pod of that name, else `DEPLOYMENT-N`, the
    /// N-th running pod of that Deployment, oldest first.
    pub fn resolve(&self, name: &str) -> anyhow::Result<Pod> {
        self.runtime.block_on(self.resolve_async(name))
    }

    async fn resolve_async(&self, name: &str) -> anyhow::Result<Pod> {
        if name == meshctl::local::INGRESS_GATEWAY_POD {
            // The local runtime's name for the ingress gateway: the profile's Deployment.
            let gateways: Api<Pod> = Api::namespaced(self.client.clone(), "istio-system");
            return gateways
                .list(&ListParams::default().labels("istio=ingressgateway"))
                .await?
                .items
                .into_iter()
                .filter(|p| p.metadata.deletion_timestamp.is_none())
                .min_by(|a, b| {
                    a.metadata
                        .creation_timestamp
                        .cmp(&b.metadata.creation_timestamp)
                })
                .context(
                    "no ingress gateway pod in istio-system (the profile installed has none)",
                );
        }
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), NAMESPACE);
        if let Some(p) = pods.get_opt(name).await? {
            return Ok(p);
        }
        let Some((deployment, index)) = name
            .rsplit_once('-')
            .and_then(|(d, i)| Some((d, i.parse::<usize>().ok()?)))
        else {
            anyhow::bail!("no pod {NAMESPACE}/{name}");
        };
        let deployments: Api<Deployment> = Api::namespaced(self.client.clone(), NAMESPACE);
        let d = deployments
            .get_opt(deployment)
            .await?
            .with_context(|| format!("no pod {name}, and no Deployment {deployment}"))?;
        let selector: BTreeMap<String, String> = d
            .spec
            .and_then(|s| s.selector.match_labels)
            .unwrap_or_default();
        let selector = selector
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut running: Vec<Pod> = pods
            .list(&ListParams::default().labels(&selector))
            .await?
            .items
            .into_iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .filter(|p| {
                p.status
                    .as_ref()
                    .and_then(|s| s.phase.as_deref())
                    .is_some_and(|phase| phase == "Running")
            })
            .collect();
        running.sort_by(|a, b| {
            (&a.metadata.creation_timestamp, &a.metadata.name)
                .cmp(&(&b.metadata.creation_timestamp, &b.metadata.name))
        });
        let count = running.len();
        running.into_iter().nth(index).with_context(|| {
            format!("pod {name}: Deployment {deployment} has {count} running pods")
        })
    }

    /// The `kubectl exec` command running `args` in `container` of the pod `name` stands for
    /// (the first container that is not the sidecar, when `container` is `None`).
    pub fn exec_command(
        &self,
        name: &str,
        container: Option<&str>,
        args: &[&str],
    ) -> anyhow::Result<Command> {
        let pod = self.resolve(name)?;
        let container = match container {
            Some(c) => c.to_string(),
            None => pod
                .spec
                .iter()
                .flat_map(|s| &s.containers)
                .map(|c| c.name.clone())
                .find(|c| c != SIDECAR)
                .with_context(|| format!("pod {name} has no application container"))?,
        };
        let namespace = pod
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| NAMESPACE.to_string());
        let mut cmd = Command::new(&self.kubectl);
        cmd.args(["exec", "-n", &namespace])
            .arg(pod.metadata.name.unwrap_or_default())
            .args(["-c", &container, "--"])
            .args(args);
        Ok(cmd)
    }

    /// The Pod (and its ServiceAccount) [`Cluster::run`] applies for `pod`: the test
    /// application's image, ready once every port answers on loopback.
    pub fn pod_documents(&self, pod: &PodSpec) -> Vec<Value> {
        let mut docs = Vec::new();
        if pod.service_account != "default" {
            docs.push(json!({
                "apiVersion": "v1", "kind": "ServiceAccount",
                "metadata": {"name": pod.service_account, "namespace": pod.namespace},
            }));
        }
        let mut container = json!({
            "name": "app",
            "image": self.image,
            "imagePullPolicy": "IfNotPresent",
            "command": pod.command,
            "env": pod.env.iter().map(|(k, v)| json!({"name": k, "value": v})).collect::<Vec<_>>(),
            "ports": pod.ports.iter().map(|p| json!({"containerPort": p})).collect::<Vec<_>>(),
        });
        if !pod.ports.is_empty() {
            // As the local runtime waits for the ports: an exec probe, which capture never
            // touches (a TCP probe would be answered by the sidecar's inbound listener).
            let check = pod
                .ports
                .iter()
                .map(|p| format!("exec 3<>/dev/tcp/127.0.0.1/{p}"))
                .collect::<Vec<_>>()
                .join(" && ");
            container["readinessProbe"] = json!({
                "exec": {"command": ["bash", "-c", check]},
                "periodSeconds": 1,
            });
        }
        let mut annotations = serde_json::Map::new();
        if !pod.sidecar {
            annotations.insert("sidecar.istio.io/inject".into(), json!("false"));
        }
        docs.push(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {
                "name": pod.name, "namespace": pod.namespace,
                "labels": pod.labels, "annotations": annotations,
            },
            "spec": {
                "serviceAccountName": pod.service_account,
                "terminationGracePeriodSeconds": 1,
                "containers": [container],
            },
        }));
        docs
    }

    /// Deletes everything the scenario applied, in reverse order, and waits until namespace
    /// `default` has no pod left.
    pub fn clean_up(&self) -> anyhow::Result<()> {
        let docs = self
            .applied
            .lock()
            .map(|mut a| std::mem::take(&mut *a))
            .unwrap_or_default();
        if docs.is_empty() {
            return Ok(());
        }
        self.runtime.block_on(async {
            meshctl::kube_install::delete_all(&self.client, &docs, true, &mut |_| {}).await?;
            let pods: Api<Pod> = Api::namespaced(self.client.clone(), NAMESPACE);
            let deadline = tokio::time::Instant::now() + self.within;
            let mut pace = tokio::time::interval(Duration::from_millis(500));
            loop {
                pace.tick().await;
                let left = pods.list(&ListParams::default()).await?.items.len();
                if left == 0 {
                    return Ok(());
                }
                anyhow::ensure!(
                    tokio::time::Instant::now() < deadline,
                    "{left} pods left in {NAMESPACE} after {:?}",
                    self.within
                );
            }
        })
    }
}

/// A pod whose Ready condition holds.
fn is_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True")
}

fn output(mut cmd: Command) -> anyhow::Result<Output> {
    cmd.output().with_context(|| {
        format!(
            "running {:?} (is kubectl installed? KUBECTL names another)",
            cmd.get_program()
        )
    })
}

impl Cluster for KubeCluster {
    fn apply(&self, path: &Path) -> anyhow::Result<()> {
        self.apply_docs(self.documents(path)?)
    }

    fn apply_yaml(&self, yaml: &str) -> anyhow::Result<()> {
        self.apply_docs(self.documents_of(yaml)?)
    }

    fn delete_yaml(&self, yaml: &str) -> anyhow::Result<()> {
        let docs = self.documents_of(yaml)?;
        self.runtime.block_on(meshctl::kube_install::delete_all(
            &self.client,
            &docs,
            true,
            &mut |_| {},
        ))?;
        if let Ok(mut applied) = self.applied.lock() {
            applied.retain(|d| docs.iter().all(|n| key(n) != key(d)));
        }
        Ok(())
    }

    fn run(&self, pod: &PodSpec) -> anyhow::Result<()> {
        self.apply_docs(self.pod_documents(pod))
    }

    fn exec(&self, pod: &str, args: &[&str]) -> anyhow::Result<Output> {
        output(self.exec_command(pod, None, args)?)
    }

    fn exec_sidecar(&self, pod: &str, args: &[&str]) -> anyhow::Result<Output> {
        output(self.exec_command(pod, Some(SIDECAR), args)?)
    }

    fn proxy_log(&self, pod: &str) -> anyhow::Result<String> {
        let p = self.resolve(pod)?;
        let pods: Api<Pod> = Api::namespaced(
            self.client.clone(),
            p.metadata.namespace.as_deref().unwrap_or(NAMESPACE),
        );
        let params = LogParams {
            container: Some(SIDECAR.into()),
            ..LogParams::default()
        };
        Ok(self
            .runtime
            .block_on(pods.logs(&p.metadata.name.unwrap_or_default(), &params))?)
    }

    fn pilot_debug(&self, path: &str) -> anyhow::Result<Value> {
        let req = http::Request::get(format!(
            "/api/v1/namespaces/{MESH_NAMESPACE}/services/{PILOT}:15014/proxy{path}"
        ))
        .body(Vec::new())?;
        let text = self.runtime.block_on(self.client.request_text(req))?;
        serde_json::from_str(&text).with_context(|| format!("pilot answered {path} with {text}"))
    }

    fn restart_control_plane_when(&self, back: &dyn Fn() -> bool) -> anyhow::Result<()> {
        let held = !back();
        self.runtime.block_on(async {
            let pods: Api<Pod> = Api::namespaced(self.client.clone(), MESH_NAMESPACE);
            let deployments: Api<Deployment> = Api::namespaced(self.client.clone(), MESH_NAMESPACE);
            let scale = |n: i32| {
                let deployments = deployments.clone();
                async move {
                    let patch = serde_json::json!({"spec": {"replicas": n}});
                    deployments
                        .patch_scale(
                            PILOT,
                            &kube::api::PatchParams::default(),
                            &kube::api::Patch::Merge(&patch),
                        )
                        .await
                }
            };
            if held {
                // Held down: no replica, so Kubernetes does not start one meanwhile.
                scale(0).await?;
            }
            let selector = format!("app.kubernetes.io/name={PILOT}");
            let old = pods
                .list(&ListParams::default().labels(&selector))
                .await?
                .items;
            anyhow::ensure!(!old.is_empty(), "no pod of {MESH_NAMESPACE}/{PILOT}");
            // Grace period 0: the kubelet kills the process at once, as a crash would.
            let now = DeleteParams {
                grace_period_seconds: Some(0),
                ..DeleteParams::default()
            };
            let old: Vec<String> = old.into_iter().filter_map(|p| p.metadata.name).collect();
            for name in &old {
                pods.delete(name, &now).await?;
            }
            if held {
                let until = tokio::time::Instant::now() + Duration::from_secs(60);
                let mut pace = tokio::time::interval(Duration::from_millis(100));
                while !back() {
                    anyhow::ensure!(
                        tokio::time::Instant::now() < until,
                        "the outage's end never came within a minute"
                    );
                    pace.tick().await;
                }
                scale(1).await?;
            }
            let deadline = tokio::time::Instant::now() + self.within;
            let mut pace = tokio::time::interval(Duration::from_millis(500));
            loop {
                pace.tick().await;
                let ready: Vec<Pod> = pods
                    .list(&ListParams::default().labels(&selector))
                    .await?
                    .items
                    .into_iter()
                    .filter(|p| p.metadata.name.as_ref().is_some_and(|n| !old.contains(n)))
                    .filter(is_ready)
                    .collect();
                if !ready.is_empty() {
                    return Ok(());
                }
                anyhow::ensure!(
                    tokio::time::Instant::now() < deadline,
                    "no new {PILOT} pod ready within {:?}",
                    self.within
                );
            }
        })
    }

    fn ingress(&self) -> anyhow::Result<String> {
        self.ingress_service()
    }

    fn remove_pod(&self, pod: &str, kill: bool) -> anyhow::Result<()> {
        let name = self
            .resolve(pod)?
            .metadata
            .name
            .context("the pod has no name")?;
        self.runtime.block_on(async {
            let pods: Api<Pod> = Api::namespaced(self.client.clone(), NAMESPACE);
            // Grace period 0: killed at once, as a crash; else the pod's own grace period,
            // in which its sidecar drains.
            let params = DeleteParams {
                grace_period_seconds: kill.then_some(0),
                ..DeleteParams::default()
            };
            pods.delete(&name, &params).await?;
            Ok(())
        })
    }

    fn pod_ip(&self, pod: &str) -> anyhow::Result<String> {
        self.resolve(pod)?
            .status
            .and_then(|s| s.pod_ip)
            .with_context(|| format!("pod {pod} has no address yet"))
    }
}

impl KubeCluster {
    /// The ingress gateway's Service, `istio-system/istio-ingressgateway`, by its cluster IP.
    fn ingress_service(&self) -> anyhow::Result<String> {
        let services: Api<k8s_openapi::api::core::v1::Service> =
            Api::namespaced(self.client.clone(), "istio-system");
        let svc = self
            .runtime
            .block_on(services.get_opt("istio-ingressgateway"))?
            .context("no Service istio-system/istio-ingressgateway: the profile installed has no ingress gateway")?;
        let ip = svc
            .spec
            .and_then(|s| s.cluster_ip)
            .context("Service istio-system/istio-ingressgateway has no cluster IP")?;
        Ok(format!("{ip}:80"))
    }
}

impl Drop for KubeCluster {
    fn drop(&mut self) {
        if let Err(e) = self.clean_up() {
            eprintln!("cleaning up namespace {NAMESPACE}: {e:#}");
        }
    }
}
