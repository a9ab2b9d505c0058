//! The harness the scenarios run through: a [`Cluster`] is a mesh with pods, config and a
//! way to send traffic from inside a pod. The local backend (network namespaces on this
//! machine, `meshctl`'s runtime) is what runs here; a kind backend (`MESH_E2E_BACKEND=kind`)
//! would implement the same trait with `kubectl` against a cluster where Docker exists.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use anyhow::Context;
use meshctl::local::{Mesh, PodSpec};

use crate::load::Report;

/// A mesh the scenarios drive.
pub trait Cluster {
    /// Applies a file or folder of configuration (validated; Deployments start pods).
    fn apply(&self, path: &Path) -> anyhow::Result<()>;
    /// Applies YAML text.
    fn apply_yaml(&self, yaml: &str) -> anyhow::Result<()>;
    /// Removes what the YAML text describes.
    fn delete_yaml(&self, yaml: &str) -> anyhow::Result<()>;
    /// Starts a pod and waits until it is ready.
    fn run(&self, pod: &PodSpec) -> anyhow::Result<()>;
    /// Runs a command inside a pod.
    fn exec(&self, pod: &str, args: &[&str]) -> anyhow::Result<Output>;
    /// Waits until `client`'s sidecar knows `n` endpoints of `host`.
    fn wait_endpoints(&self, client: &str, host: &str, n: usize) -> anyhow::Result<()>;

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

/// Which backend the suite runs on.
pub fn backend() -> String {
    std::env::var("MESH_E2E_BACKEND").unwrap_or_else(|_| "local".into())
}

/// The local backend: a mesh in a temporary folder, taken down when dropped.
pub struct LocalCluster {
    /// The runtime.
    pub mesh: Mesh,
    dir: tempfile::TempDir,
}

/// Why the suite cannot run here, or `None` when it can. The scenarios are `#[ignore = "needs
/// root"]` tests: a plain `cargo test` lists them as ignored, and the test script (CI) runs
/// them with `--run-ignored all`, where a reason is a failure, never a silent pass.
pub fn unavailable() -> Option<String> {
    if backend() != "local" {
        return Some(format!(
            "MESH_E2E_BACKEND={}: only the local backend is implemented (kind needs Docker, which these machines lack)",
            backend()
        ));
    }
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

/// Checks that the scenarios can run here, failing the test with the reason when not.
pub fn require() {
    if let Some(why) = unavailable() {
        panic!("this end-to-end scenario cannot run here: {why}");
    }
}

/// Starts a local mesh for one scenario; fails the test with the reason when it cannot.
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

    /// Kills the control plane (SIGKILL, as a crash would) and starts it again.
    pub fn restart_control_plane(&self) -> anyhow::Result<()> {
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
        self.mesh.up()?;
        Ok(())
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
        env: Vec::new(),
    }
}
