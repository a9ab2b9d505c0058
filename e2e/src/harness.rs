//! The harness the scenarios run through: a [`Cluster`] is a mesh with pods, config and a
//! way to send traffic from inside a pod. Two backends implement it: the local one (network
//! namespaces on this machine, `meshctl`'s runtime), which runs here and in CI, and the
//! Kubernetes one ([`crate::kubernetes::KubeCluster`], `MESH_E2E_BACKEND=kube`), which runs the same
//! scenarios against a cluster with the mesh installed (the kind run, `make kind-e2e`).

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use anyhow::Context;
use meshctl::local::{Mesh, PodSpec};

use crate::load::Report;

/// The longest a scenario keeps the control plane down.
const OUTAGE_MOST: Duration = Duration::from_secs(60);

/// A mesh the scenarios drive.
pub trait Cluster: Sync {
    /// Applies a file or folder of configuration (validated; Deployments start pods).
    fn apply(&self, path: &Path) -> anyhow::Result<()>;
    /// Applies YAML text.
    fn apply_yaml(&self, yaml: &str) -> anyhow::Result<()>;
    /// Removes what the YAML text describes.
    fn delete_yaml(&self, yaml: &str) -> anyhow::Result<()>;
    /// Starts a pod and waits until it is ready.
    fn run(&self, pod: &PodSpec) -> anyhow::Result<()>;
    /// Runs a command inside a pod, in its application's container.
    fn exec(&self, pod: &str, args: &[&str]) -> anyhow::Result<Output>;
    /// Runs a command in the sidecar's container of a pod (`mesh-proxy request ...`).
    fn exec_sidecar(&self, pod: &str, args: &[&str]) -> anyhow::Result<Output>;
    /// The sidecar's log of a pod (its access log among it).
    fn proxy_log(&self, pod: &str) -> anyhow::Result<String>;
    /// What pilot's debug endpoint `path` (`/debug/syncz`) answers.
    fn pilot_debug(&self, path: &str) -> anyhow::Result<serde_json::Value>;
    /// Kills the control plane as a crash would (SIGKILL) and waits until it serves again.
    fn restart_control_plane(&self) -> anyhow::Result<()> {
        self.restart_control_plane_when(&|| true)
    }
    /// Kills the control plane (pilot and the CA) as a crash would, keeps it down until `back`
    /// says (asked again and again, for at most a minute), then starts it and waits until it
    /// serves again.
    fn restart_control_plane_when(&self, back: &dyn Fn() -> bool) -> anyhow::Result<()>;
    /// Takes a pod away: `kill` as a crash would (SIGKILL to its app and sidecar at once),
    /// else as a rollout does (SIGTERM, the sidecar drains, then the rest); either way its
    /// endpoint leaves the mesh.
    fn remove_pod(&self, pod: &str, kill: bool) -> anyhow::Result<()>;
    /// A pod's address.
    fn pod_ip(&self, pod: &str) -> anyhow::Result<String>;
    /// Where the ingress gateway's port 80 is reached from a pod: `address:80`.
    fn ingress(&self) -> anyhow::Result<String>;

    /// The local backend, for the parts of a scenario about the local runtime itself.
    fn as_local(&self) -> Option<&LocalCluster> {
        None
    }

    /// What the sidecar of `pod` answers to GET `path` on its loopback `port` (admin 15000,
    /// metrics 15020), asked from inside the pod; an error unless it answers 2xx.
    fn sidecar_get(&self, pod: &str, port: u16, path: &str) -> anyhow::Result<String> {
        let port = port.to_string();
        let out = self.exec_sidecar(
            pod,
            &["mesh-proxy", "request", "GET", path, "--port", &port],
        )?;
        anyhow::ensure!(
            out.status.success(),
            "GET {path} from the sidecar of {pod}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The sidecar's configuration (admin `/config_dump`).
    fn proxy_config(&self, pod: &str) -> anyhow::Result<serde_json::Value> {
        let text = self.sidecar_get(pod, 15000, "/config_dump")?;
        serde_json::from_str(&text)
            .with_context(|| format!("the sidecar of {pod} answered /config_dump with {text}"))
    }

    /// Waits until `client`'s sidecar knows `n` endpoints of `host` (`shipping-service.default`).
    fn wait_endpoints(&self, client: &str, host: &str, n: usize) -> anyhow::Result<()> {
        let count = || -> usize {
            let Ok(cfg) = self.proxy_config(client) else {
                return 0;
            };
            meshctl::local::pods::endpoints_of(&cfg, host)
        };
        anyhow::ensure!(
            meshctl::local::wait_until(Duration::from_secs(60), || count() >= n),
            "{n} endpoints of {host} in the configuration of {client}'s sidecar (it has {})",
            count()
        );
        Ok(())
    }

    /// Runs `mesh-echo load` inside `pod` and returns its report.
    fn load(&self, pod: &str, url: &str, extra: &[&str]) -> anyhow::Result<Report> {
        let mut args = vec!["mesh-echo", "load", "--url", url, "-o", "json"];
        args.extend_from_slice(extra);
        let out = self.exec(pod, &args)?;
        serde_json::from_slice(&out.stdout).with_context(|| {
            format!(
                "mesh-echo load in {pod} printed no report: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        })
    }
}

/// Which backend the suite runs on: `local` (the default) or `kube`.
pub fn backend() -> String {
    std::env::var("MESH_E2E_BACKEND").unwrap_or_else(|_| "local".into())
}

/// The local backend: a mesh in a temporary folder, taken down when dropped.
pub struct LocalCluster {
    /// The runtime.
    pub mesh: Mesh,
    dir: tempfile::TempDir,
}

/// Why the local backend cannot run here, or `None` when it can. The scenarios are `#[ignore =
/// "needs root"]` tests: a plain `cargo test` lists them as ignored, and the test script (CI)
/// runs them with `--run-ignored all`, where a reason is a failure, never a silent pass.
pub fn unavailable() -> Option<String> {
    if let Err(e) = meshctl::local::net::check_prerequisites() {
        return Some(e.to_string());
    }
    for (name, package) in [
        ("meshctl", "meshctl"),
        ("mesh-proxy", "mesh-proxy"),
        ("mesh-echo", "mesh-e2e"),
    ] {
        if let Err(e) = meshctl::local::find_binary(name, package) {
            return Some(e.to_string());
        }
    }
    None
}

/// Checks that the scenario's backend can run here, failing the test with the reason when
/// not (the Kubernetes backend is checked when it connects).
pub fn require() {
    if backend() != "local" {
        return;
    }
    if let Some(why) = unavailable() {
        panic!("this end-to-end scenario cannot run here: {why}");
    }
}

/// The mesh for one scenario on the backend `MESH_E2E_BACKEND` names; fails the test with the
/// reason when it cannot start.
pub fn cluster(scenario: &str) -> Box<dyn Cluster> {
    match backend().as_str() {
        "local" => Box::new(local(scenario)),
        "kube" => Box::new(
            crate::kubernetes::KubeCluster::connect()
                .unwrap_or_else(|e| panic!("end-to-end scenario {scenario} on Kubernetes: {e:#}")),
        ),
        other => panic!(
            "MESH_E2E_BACKEND={other}: the backends are local (network namespaces here) and kube (the cluster of the current kubeconfig)"
        ),
    }
}

/// Starts a local mesh for one scenario; fails the test with the reason when it cannot. For
/// scenarios about the local runtime itself (`meshctl down`, `ps`, its pod registry), which
/// run on the local backend whatever `MESH_E2E_BACKEND` says.
pub fn local(scenario: &str) -> LocalCluster {
    if let Some(why) = unavailable() {
        panic!("end-to-end scenario {scenario} cannot run here: {why}");
    }
    let dir = tempfile::Builder::new()
        .prefix(&format!("mesh-e2e-{scenario}-"))
        .tempdir()
        .unwrap_or_else(|e| panic!("a temporary folder for {scenario}: {e}"));
    let mesh = Mesh::new(dir.path());
    if let Err(e) = mesh.up() {
        panic!("meshctl up for {scenario}: {e}");
    }
    LocalCluster { mesh, dir }
}

impl LocalCluster {
    /// The mesh's folder.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn yaml_file(&self, yaml: &str) -> anyhow::Result<PathBuf> {
        let path = self
            .dir
            .path()
            .join(format!("input-{}.yaml", fastrand::u64(..)));
        std::fs::write(&path, yaml)?;
        Ok(path)
    }
}

impl Cluster for LocalCluster {
    fn apply(&self, path: &Path) -> anyhow::Result<()> {
        self.mesh
            .apply(&[path.to_path_buf()], |_| {})
            .map(drop)
            .map_err(|e| match e {
                meshctl::local::config::ApplyError::Invalid(d) => anyhow::anyhow!(
                    "invalid: {}",
                    d.iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join("; ")
                ),
                other => other.into(),
            })
    }

    fn apply_yaml(&self, yaml: &str) -> anyhow::Result<()> {
        let path = self.yaml_file(yaml)?;
        self.apply(&path)
    }

    fn delete_yaml(&self, yaml: &str) -> anyhow::Result<()> {
        let path = self.yaml_file(yaml)?;
        self.mesh.delete(&[path])?;
        Ok(())
    }

    fn run(&self, pod: &PodSpec) -> anyhow::Result<()> {
        self.mesh.run(pod)?;
        Ok(())
    }

    fn exec(&self, pod: &str, args: &[&str]) -> anyhow::Result<Output> {
        let args: Vec<String> = args.iter().map(ToString::to_string).collect();
        Ok(self.mesh.exec_command(pod, &args)?.output()?)
    }

    fn exec_sidecar(&self, pod: &str, args: &[&str]) -> anyhow::Result<Output> {
        // The sidecar shares the pod's network namespace; its binary is found as the runtime
        // finds it.
        let mut args: Vec<String> = args.iter().map(ToString::to_string).collect();
        if args.first().is_some_and(|a| a == "mesh-proxy") {
            args[0] = meshctl::local::find_binary("mesh-proxy", "mesh-proxy")?
                .to_string_lossy()
                .into_owned();
        }
        Ok(self.mesh.exec_command(pod, &args)?.output()?)
    }

    fn proxy_log(&self, pod: &str) -> anyhow::Result<String> {
        let path = self.mesh.log_path(pod, true)?;
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
    }

    fn pilot_debug(&self, path: &str) -> anyhow::Result<serde_json::Value> {
        Ok(self.mesh.pilot_debug(path)?)
    }

    fn restart_control_plane_when(&self, back: &dyn Fn() -> bool) -> anyhow::Result<()> {
        let st = self.mesh.state()?;
        let cp = st.control_plane.context("no control plane recorded")?;
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(cp.pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
        anyhow::ensure!(
            meshctl::local::wait_until(Duration::from_secs(10), || !cp.alive()),
            "the control plane survived SIGKILL"
        );
        anyhow::ensure!(
            meshctl::local::wait_until(OUTAGE_MOST, back),
            "the outage's end never came within {OUTAGE_MOST:?}"
        );
        self.mesh.up()?;
        Ok(())
    }

    fn remove_pod(&self, pod: &str, kill: bool) -> anyhow::Result<()> {
        if kill {
            let record = self.mesh.pod(pod)?;
            for p in record.app.iter().chain(record.proxy.iter()) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(p.pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        self.mesh.remove(pod)?;
        Ok(())
    }

    fn pod_ip(&self, pod: &str) -> anyhow::Result<String> {
        Ok(self.mesh.pod(pod)?.address)
    }

    fn ingress(&self) -> anyhow::Result<String> {
        Ok(format!(
            "{}:80",
            self.mesh.pod(meshctl::local::INGRESS_GATEWAY_POD)?.address
        ))
    }

    fn as_local(&self) -> Option<&LocalCluster> {
        Some(self)
    }

    fn sidecar_get(&self, pod: &str, port: u16, path: &str) -> anyhow::Result<String> {
        let netns = self.mesh.pod(pod)?.netns;
        let (status, body) = meshctl::local::pods::http_get(
            &netns,
            std::net::SocketAddr::from(([127, 0, 0, 1], port)),
            path,
        )
        .with_context(|| format!("GET {path} from the sidecar of {pod}"))?;
        anyhow::ensure!(
            (200..300).contains(&status),
            "GET {path} from the sidecar of {pod}: {status} {body}"
        );
        Ok(body)
    }

    fn wait_endpoints(&self, client: &str, host: &str, n: usize) -> anyhow::Result<()> {
        self.mesh
            .wait_endpoints(client, host, n, Duration::from_secs(30))?;
        Ok(())
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        if let Err(e) = self.mesh.down() {
            eprintln!("meshctl down in {}: {e}", self.dir.path().display());
        }
    }
}

/// An echo pod: `mesh-echo` serving HTTP and WebSocket on 8080, TCP on 9000 and gRPC on 9090,
/// with a sidecar.
pub fn echo_pod(name: &str, app: &str, version: &str, service_account: &str) -> PodSpec {
    PodSpec {
        name: name.into(),
        namespace: "default".into(),
        service_account: service_account.into(),
        labels: [
            ("app".into(), app.into()),
            ("version".into(), version.into()),
        ]
        .into(),
        ports: vec![8080, 9000, 9090],
        sidecar: true,
        gateway: false,
        command: [
            "mesh-echo",
            "--port",
            "8080",
            "--tcp-port",
            "9000",
            "--grpc-port",
            "9090",
            "--service",
            app,
            "--version",
            version,
        ]
        .map(String::from)
        .to_vec(),
        ..PodSpec::default()
    }
}
