//! The mesh on one machine (`meshctl up`, `run`, `demo`, ...): pilot and the CA in one
//! process, each workload in a network namespace of its own (a "pod") with real capture rules
//! and its sidecar, all joined by a bridge that lives in a namespace of its own. Everything the
//! runtime creates is recorded in DIR first, so `meshctl down` removes it even after a crash.
//! See docs/local.md.

pub mod config;
pub mod control;
pub mod deploy;
pub mod net;
pub mod observe;
pub mod pods;
pub mod process;
pub mod state;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub use pods::PodSpec;
use state::{Layout, RuntimeState};

/// Why the runtime could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// Namespaces, links and capture rules need root.
    #[error(
        "the local mesh needs root: it creates network namespaces, links and capture rules (run with sudo)"
    )]
    NotRoot,
    /// A tool is missing.
    #[error("`{tool}` is not installed: install it with `apt-get install -y {package}`")]
    MissingTool {
        /// The command.
        tool: &'static str,
        /// The Debian package providing it.
        package: &'static str,
    },
    /// A command failed.
    #[error("`{command}` failed: {message}")]
    Command {
        /// The command line.
        command: String,
        /// What it printed.
        message: String,
    },
    /// A file operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The record in DIR cannot be read.
    #[error("{path} is not a mesh record ({message}); if no mesh runs, remove it")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        message: String,
    },
    /// No mesh runs in DIR.
    #[error("no mesh is running in {0}: start one with `meshctl up --dir {0}`")]
    NotUp(String),
    /// A mesh already runs in DIR.
    #[error(
        "a mesh is already running in {0} (`meshctl ps --dir {0}` lists it; `meshctl down --dir {0}` removes it)"
    )]
    AlreadyUp(String),
    /// A pod name is taken.
    #[error("pod {0:?} already exists: choose another --name, or remove it with `meshctl rm {0}`")]
    NameInUse(String),
    /// A name or value cannot be used.
    #[error("{flag} {value:?}: {reason}")]
    BadFlag {
        /// The flag.
        flag: &'static str,
        /// The value.
        value: String,
        /// What is wrong and what is expected.
        reason: String,
    },
    /// No such pod.
    #[error("no pod {0:?} in this mesh (`meshctl ps` lists them)")]
    NoPod(String),
    /// What a `tap` or `dashboard` names matches no pod.
    #[error("{0}")]
    Target(String),
    /// Something did not become ready in time.
    #[error("{what} was not ready within {secs} s{hint}")]
    NotReady {
        /// What.
        what: String,
        /// The deadline.
        secs: u64,
        /// Where to look (a log's last lines).
        hint: String,
    },
    /// A binary the runtime starts was not found.
    #[error(
        "{name} not found (looked in {looked}): build it with `cargo build -p {package}` or set MESH_BIN_DIR"
    )]
    MissingBinary {
        /// The binary.
        name: &'static str,
        /// Its package.
        package: &'static str,
        /// Where it looked.
        looked: String,
    },
}

impl RuntimeError {
    /// An I/O error with what was being done.
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        RuntimeError::Io {
            what: what.into(),
            source,
        }
    }
}

/// A local mesh, by its folder.
#[derive(Clone, Debug)]
pub struct Mesh {
    /// Its files.
    pub layout: Layout,
}

/// The default folder.
pub const DEFAULT_DIR: &str = ".mesh";

/// Where the runtime finds `mesh-proxy`, `mesh-echo` and `meshctl`: `MESH_BIN_DIR`, else next
/// to the running program (and its parent, for test binaries in `target/*/deps`).
pub fn find_binary(name: &'static str, package: &'static str) -> Result<PathBuf, RuntimeError> {
    let mut dirs = Vec::new();
    if let Some(d) = std::env::var_os("MESH_BIN_DIR") {
        dirs.push(PathBuf::from(d));
    }
    if let Ok(exe) = std::env::current_exe()
        && let Some(dir) = exe.parent()
    {
        dirs.push(dir.to_path_buf());
        if let Some(parent) = dir.parent() {
            dirs.push(parent.to_path_buf());
        }
    }
    for d in &dirs {
        let candidate = d.join(name);
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    Err(RuntimeError::MissingBinary {
        name,
        package,
        looked: dirs
            .iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(", "),
    })
}

/// The last lines of a log, as a hint for an error message.
pub fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    let tail = all[all.len().saturating_sub(lines)..].join("\n    ");
    if tail.is_empty() {
        format!(" (log: {})", path.display())
    } else {
        format!("; last lines of {}:\n    {tail}", path.display())
    }
}

/// Waits for `ready` to hold, checking every 20 ms until `deadline`.
pub fn wait_until(within: Duration, mut ready: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if ready() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Mesh {
    /// The mesh in `dir` (which need not run).
    pub fn new(dir: impl Into<PathBuf>) -> Mesh {
        Mesh {
            layout: Layout { dir: dir.into() },
        }
    }

    fn dir_name(&self) -> String {
        self.layout.dir.display().to_string()
    }

    /// The record of the running mesh.
    pub fn state(&self) -> Result<RuntimeState, RuntimeError> {
        state::load(&self.layout)?.ok_or_else(|| RuntimeError::NotUp(self.dir_name()))
    }

    /// Starts the mesh: the hub and its bridge, then the control plane; returns once it serves.
    /// On a mesh whose control plane stopped (killed, crashed), starts it again.
    pub fn up(&self) -> Result<UpReport, RuntimeError> {
        net::check_prerequisites()?;
        let meshctl = find_binary("meshctl", "meshctl")?;
        let lock = state::lock(&self.layout.dir)?;
        let mut st = match state::load(&self.layout)? {
            Some(st) => {
                if st.control_plane.is_some_and(|p| p.alive()) {
                    return Err(RuntimeError::AlreadyUp(self.dir_name()));
                }
                st
            }
            None => {
                let st = RuntimeState {
                    prefix: format!("mesh-{:04x}", fastrand::u16(..)),
                    next_index: 2,
                    ..RuntimeState::default()
                };
                // Recorded before anything is created: a crash from here on is cleaned up by
                // `down`.
                state::save(&self.layout, &st)?;
                config::write_default_mesh_config(&self.layout)?;
                st
            }
        };
        let restarted = st.control_plane.is_some();
        if !net::netns_exists(&st.hub()) {
            net::create_hub(&st.hub())?;
        }
        control::ensure_ca(&self.layout).map_err(|e| RuntimeError::Command {
            command: "creating the CA".into(),
            message: format!("{e:#}"),
        })?;
        let log_path = self.layout.control_log();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| RuntimeError::io(format!("opening {}", log_path.display()), e))?;
        let _ = std::fs::remove_file(self.layout.control_ready());
        let dir = std::path::absolute(&self.layout.dir)
            .map_err(|e| RuntimeError::io("resolving DIR", e))?;
        let child = net::in_netns(&st.hub(), || {
            use std::os::unix::process::CommandExt;
            std::process::Command::new(&meshctl)
                .arg("control-plane")
                .arg("--dir")
                .arg(&dir)
                .stdin(std::process::Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .process_group(0)
                .spawn()
        })
        .map_err(|e| RuntimeError::io("starting the control plane", e))?;
        let mut child = child;
        let recorded = process::Recorded::of(child.id());
        st.control_plane = Some(recorded);
        state::save(&self.layout, &st)?;
        let mut exited = None;
        let ready = wait_until(Duration::from_secs(30), || {
            exited = child.try_wait().ok().flatten();
            self.layout.control_ready().exists() || exited.is_some()
        });
        if let Some(status) = exited.filter(|_| !self.layout.control_ready().exists()) {
            return Err(RuntimeError::Command {
                command: "the control plane".into(),
                message: format!("exited ({status}){}", log_tail(&log_path, 10)),
            });
        }
        if !ready {
            recorded.stop(Duration::from_secs(2));
            return Err(RuntimeError::NotReady {
                what: "the control plane".into(),
                secs: 30,
                hint: log_tail(&log_path, 10),
            });
        }
        drop(lock);
        // The ingress gateway, as Istio's demo profile has one; started once, kept across
        // control-plane restarts.
        let gateway = if st.pods.contains_key(INGRESS_GATEWAY_POD) {
            None
        } else {
            Some(self.run(&ingress_gateway())?.address)
        };
        Ok(UpReport {
            hub: st.hub(),
            restarted,
            gateway,
        })
    }

    /// Removes everything the mesh created: processes, namespaces (with their links and
    /// rules), `/etc/netns` files and pod registrations. Idempotent; works from the record
    /// after a crash. Configuration applied and the CA stay in DIR.
    pub fn down(&self) -> Result<DownReport, RuntimeError> {
        net::check_prerequisites()?;
        let _lock = state::lock(&self.layout.dir)?;
        let Some(st) = state::load(&self.layout)? else {
            return Ok(DownReport::default());
        };
        let mut report = DownReport::default();
        let grace = Duration::from_secs(5);
        let mut namespaces: Vec<String> = st.pods.values().map(|p| p.netns.clone()).collect();
        // Namespaces created but not yet recorded in a pod (a crash in between).
        for n in net::netns_with_prefix(&format!("{}-", st.prefix)) {
            if !namespaces.contains(&n) && n != st.hub() {
                namespaces.push(n);
            }
        }
        for ns in &namespaces {
            process::terminate_netns(ns, grace);
        }
        for pod in st.pods.values() {
            let procs: Vec<_> = pod.app.iter().chain(pod.proxy.iter()).copied().collect();
            process::terminate(&procs, grace);
            config::unregister_pod(&self.layout, &pod.name)?;
            report.pods += 1;
        }
        if let Some(cp) = st.control_plane {
            if cp.alive() {
                report.processes += 1;
            }
            cp.stop(grace);
        }
        process::terminate_netns(&st.hub(), grace);
        namespaces.push(st.hub());
        for ns in &namespaces {
            if net::netns_exists(ns) {
                report.namespaces += 1;
            }
            net::delete_netns(ns)?;
        }
        let _ = std::fs::remove_file(self.layout.control_ready());
        let path = self.layout.state_file();
        std::fs::remove_file(&path)
            .map_err(|e| RuntimeError::io(format!("removing {}", path.display()), e))?;
        Ok(report)
    }
}

/// What `up` did.
#[derive(Debug)]
pub struct UpReport {
    /// The hub namespace.
    pub hub: String,
    /// True when an existing mesh's control plane was started again.
    pub restarted: bool,
    /// The ingress gateway's address, when this call started it.
    pub gateway: Option<String>,
}

/// The ingress gateway's pod (namespace `istio-system`; its workload, as metrics name it, is
/// `istio-ingressgateway`).
pub const INGRESS_GATEWAY_POD: &str = "istio-ingressgateway-0";

/// The ingress gateway pod, labelled as Istio's (`istio: ingressgateway`, which Gateways'
/// selectors name) and with its service account.
pub fn ingress_gateway() -> PodSpec {
    PodSpec {
        name: INGRESS_GATEWAY_POD.into(),
        namespace: "istio-system".into(),
        service_account: "istio-ingressgateway-service-account".into(),
        labels: [
            ("app".to_string(), "istio-ingressgateway".to_string()),
            ("istio".to_string(), "ingressgateway".to_string()),
        ]
        .into(),
        sidecar: true,
        gateway: true,
        ..PodSpec::default()
    }
}

/// What `down` removed.
#[derive(Debug, Default)]
pub struct DownReport {
    /// Pods.
    pub pods: usize,
    /// Namespaces.
    pub namespaces: usize,
    /// Control-plane processes still running.
    pub processes: usize,
}
