//! Pods: a network namespace with its own address, names that resolve to service VIPs, the
//! capture rules (`mesh-proxy init`), the sidecar as uid 1337 with a bootstrap token, and the
//! app. Registered as a `Pod` for pilot once its address exists.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use mesh_ca::auth::BootstrapTokens;

use super::control::{DEBUG_PORT, SECURE_DISCOVERY_PORT};

/// The mesh's trust bundle, as the CA writes it and as each sidecar gets a copy.
const ROOT_CERT_FILE: &str = "root-cert.pem";
use super::net::{self, HUB_ADDRESS};
use super::process::{self, Recorded};
use super::state::{self, PodRecord};
use super::{Mesh, RuntimeError, config, find_binary, log_tail, wait_until};

/// The sidecar's user and group: its own traffic is never captured.
pub const PROXY_UID: u32 = 1337;
/// Ports the sidecar holds in every pod; an app may not use them.
pub const SIDECAR_PORTS: [u16; 6] = [15000, 15001, 15006, 15020, 15021, 15090];
/// Where pods' secrets (bootstrap tokens) live: tmpfs, never in DIR.
pub const SECRETS_DIR: &str = "/run/mesh";
/// How long `run` waits for a pod to be ready.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest a pod's removal waits for its endpoint to leave every sidecar.
const PUSH_WAIT: Duration = Duration::from_secs(5);
/// How long after pilot's generation moves its pushes are taken to have started.
const PUSH_SETTLE: Duration = Duration::from_millis(200);

/// What to run.
#[derive(Clone, Debug, Default)]
pub struct PodSpec {
    /// Pod name (a DNS label, unique in the mesh).
    pub name: String,
    /// Namespace (`default`).
    pub namespace: String,
    /// Service account (`default`); the identity is `spiffe://cluster.local/ns/NS/sa/SA`.
    pub service_account: String,
    /// Labels (`app`, `version`, ...).
    pub labels: BTreeMap<String, String>,
    /// Ports the app serves (waited for before `run` returns).
    pub ports: Vec<u16>,
    /// Whether to run a sidecar.
    pub sidecar: bool,
    /// An ingress gateway (with `sidecar`): the proxy runs in gateway mode, with no capture
    /// rules, and there is no app (`command` empty).
    pub gateway: bool,
    /// The app's command line.
    pub command: Vec<String>,
    /// Extra environment for the app.
    pub env: Vec<(String, String)>,
    /// Extra environment for the sidecar (what the injector would set from the pod's
    /// annotations, such as `ISTIO_PROMETHEUS_ANNOTATIONS`).
    pub proxy_env: Vec<(String, String)>,
}

/// Parses `k=v,k2=v2` (`--labels`).
pub fn parse_labels(value: &str) -> Result<BTreeMap<String, String>, RuntimeError> {
    let mut out = BTreeMap::new();
    for part in value.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let Some((k, v)) = part.split_once('=') else {
            return Err(RuntimeError::BadFlag {
                flag: "--labels",
                value: value.into(),
                reason: format!("{part:?} is not key=value; write --labels app=order,version=v1"),
            });
        };
        out.insert(k.trim().to_string(), v.trim().to_string());
    }
    Ok(out)
}

fn is_dns_label(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// Longest pod name: a DNS label, as in Kubernetes (gateway pods are named after their
/// Gateway, `NAME-istio-0`).
pub const MAX_POD_NAME: usize = 63;

impl PodSpec {
    fn check(&self) -> Result<(), RuntimeError> {
        let bad = |flag, value: &str, reason: String| RuntimeError::BadFlag {
            flag,
            value: value.into(),
            reason,
        };
        if !is_dns_label(&self.name, MAX_POD_NAME) {
            return Err(bad(
                "--name",
                &self.name,
                format!("must be lowercase letters, digits and '-', at most {MAX_POD_NAME} long"),
            ));
        }
        if !is_dns_label(&self.namespace, 63) {
            return Err(bad(
                "--namespace",
                &self.namespace,
                "must be a DNS label (lowercase letters, digits, '-')".into(),
            ));
        }
        if !is_dns_label(&self.service_account, 63) {
            return Err(bad(
                "--service-account",
                &self.service_account,
                "must be a DNS label (lowercase letters, digits, '-')".into(),
            ));
        }
        if self.command.is_empty() && !self.gateway {
            return Err(bad(
                "--",
                "",
                "give the command to run after --, e.g. `-- mesh-echo --port 8080`".into(),
            ));
        }
        if self.sidecar
            && let Some(p) = self.ports.iter().find(|p| SIDECAR_PORTS.contains(p))
        {
            return Err(bad(
                "--port",
                &p.to_string(),
                format!(
                    "port {p} is already in use by the sidecar (it holds {SIDECAR_PORTS:?}); serve on another port"
                ),
            ));
        }
        Ok(())
    }
}

impl Mesh {
    /// Starts a pod and returns once its sidecar is ready and its app listens on its ports.
    pub fn run(&self, spec: &PodSpec) -> Result<PodRecord, RuntimeError> {
        spec.check()?;
        net::check_prerequisites()?;
        let proxy_bin = find_binary("mesh-proxy", "mesh-proxy")?;
        let lock = state::lock(&self.layout.dir)?;
        let mut st = self.state()?;
        if st.pods.contains_key(&spec.name) {
            return Err(RuntimeError::NameInUse(spec.name.clone()));
        }
        let index = st.next_index;
        st.next_index += 1;
        let address = net::pod_address(index);
        let pod = PodRecord {
            name: spec.name.clone(),
            namespace: spec.namespace.clone(),
            service_account: spec.service_account.clone(),
            labels: spec.labels.clone(),
            ports: spec.ports.clone(),
            sidecar: spec.sidecar || spec.gateway,
            gateway: spec.gateway,
            address: address.to_string(),
            netns: format!("{}-{}", st.prefix, spec.name),
            hub_link: format!("p{index}"),
            command: spec.command.clone(),
            env: spec.env.clone(),
            proxy_env: spec.proxy_env.clone(),
            app: None,
            proxy: None,
        };
        if net::netns_exists(&pod.netns) {
            return Err(RuntimeError::NameInUse(spec.name.clone()));
        }
        // Recorded first, so `down` removes it whatever happens next.
        st.pods.insert(pod.name.clone(), pod.clone());
        state::save(&self.layout, &st)?;
        let result = self.start_pod(&st, pod, &proxy_bin);
        let pod = match result {
            Ok(p) => p,
            Err(e) => {
                self.remove_pod_locked(&mut st, &spec.name);
                return Err(e);
            }
        };
        st.pods.insert(pod.name.clone(), pod.clone());
        state::save(&self.layout, &st)?;
        drop(lock);
        self.wait_ready(&pod)?;
        Ok(pod)
    }

    fn start_pod(
        &self,
        st: &state::RuntimeState,
        mut pod: PodRecord,
        proxy_bin: &std::path::Path,
    ) -> Result<PodRecord, RuntimeError> {
        let address: std::net::Ipv4Addr =
            pod.address.parse().map_err(|_| RuntimeError::Command {
                command: "allocating an address".into(),
                message: pod.address.clone(),
            })?;
        net::create_pod_network(&st.hub(), &pod.netns, &pod.hub_link, address)?;
        config::write_hosts(&self.layout, st)?;
        net::blackhole_vips(&pod.netns)?;
        let pod_dir = self.layout.pod_dir(&pod.name);
        std::fs::create_dir_all(&pod_dir)
            .map_err(|e| RuntimeError::io(format!("creating {}", pod_dir.display()), e))?;
        if pod.gateway {
            // As Istio's gateway pods: the proxy (uid 1337) may bind ports below 1024.
            let out = net::in_netns(&pod.netns, || {
                Command::new("sysctl")
                    .args(["-w", "net.ipv4.ip_unprivileged_port_start=0"])
                    .output()
            })
            .map_err(|e| RuntimeError::io("running sysctl", e))?;
            if !out.status.success() {
                return Err(RuntimeError::Command {
                    command: format!(
                        "sysctl net.ipv4.ip_unprivileged_port_start=0 (in {})",
                        pod.netns
                    ),
                    message: String::from_utf8_lossy(&out.stderr).trim().to_string(),
                });
            }
        } else if pod.sidecar {
            let out = net::in_netns(&pod.netns, || Command::new(proxy_bin).arg("init").output())
                .map_err(|e| RuntimeError::io("running mesh-proxy init", e))?;
            if !out.status.success() {
                return Err(RuntimeError::Command {
                    command: format!("mesh-proxy init (in {})", pod.netns),
                    message: String::from_utf8_lossy(&out.stderr).trim().to_string(),
                });
            }
        }
        if pod.sidecar {
            let token = self.issue_token(&pod)?;
            pod.proxy = Some(self.spawn_sidecar(&pod, proxy_bin, &token)?);
        }
        config::register_pod(&self.layout, &pod)?;
        if !pod.command.is_empty() {
            pod.app = Some(self.spawn_app(&pod)?);
        }
        Ok(pod)
    }

    /// Registers a bootstrap token for the pod's identity and writes it where only the
    /// sidecar's user can read it.
    fn issue_token(&self, pod: &PodRecord) -> Result<PathBuf, RuntimeError> {
        let tokens_path = self.layout.tokens();
        let registry = BootstrapTokens::load(&tokens_path).map_err(|e| RuntimeError::Command {
            command: "reading the bootstrap tokens".into(),
            message: e.to_string(),
        })?;
        let token = registry.issue(&pod.namespace, &pod.service_account);
        registry
            .save(&tokens_path)
            .map_err(|e| RuntimeError::Command {
                command: "saving the bootstrap tokens".into(),
                message: e.to_string(),
            })?;
        let dir = PathBuf::from(SECRETS_DIR).join(&pod.netns);
        std::fs::create_dir_all(&dir)
            .map_err(|e| RuntimeError::io(format!("creating {}", dir.display()), e))?;
        let path = dir.join("token");
        let write = || -> std::io::Result<()> {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .truncate(true)
                .write(true)
                .mode(0o600)
                .open(&path)?;
            f.write_all(token.as_bytes())?;
            std::os::unix::fs::chown(&path, Some(PROXY_UID), Some(PROXY_UID))
        };
        write().map_err(|e| RuntimeError::io(format!("writing {}", path.display()), e))?;
        // The mesh root beside it, for the sidecar to check pilot before it sends the token
        // (Istio mounts the same as root-cert.pem).
        let root = dir.join(ROOT_CERT_FILE);
        std::fs::copy(self.layout.ca().join(ROOT_CERT_FILE), &root)
            .and_then(|_| std::os::unix::fs::chown(&root, Some(PROXY_UID), Some(PROXY_UID)))
            .map_err(|e| RuntimeError::io(format!("writing {}", root.display()), e))?;
        Ok(path)
    }

    fn open_log(&self, pod: &PodRecord, which: &str) -> Result<std::fs::File, RuntimeError> {
        let path = self.layout.pod_dir(&pod.name).join(which);
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| RuntimeError::io(format!("opening {}", path.display()), e))
    }

    fn spawn_sidecar(
        &self,
        pod: &PodRecord,
        proxy_bin: &std::path::Path,
        token: &std::path::Path,
    ) -> Result<Recorded, RuntimeError> {
        let log = self.open_log(pod, "proxy.log")?;
        let labels = pod.labels_text();
        let child = net::in_netns(&pod.netns, || {
            Command::new(proxy_bin)
                .arg("run")
                .arg("--discovery-address")
                .arg(format!("https://{HUB_ADDRESS}:{SECURE_DISCOVERY_PORT}"))
                .arg("--ca-address")
                .arg(format!("https://{HUB_ADDRESS}:{SECURE_DISCOVERY_PORT}"))
                .arg("--ca-root-file")
                .arg(token.with_file_name(ROOT_CERT_FILE))
                .arg("--bootstrap-token-file")
                .arg(token)
                .args(["--namespace", &pod.namespace])
                .args(["--service-account", &pod.service_account])
                .args(["--labels", &labels])
                .args(["--workload-ips", &pod.address])
                .args(["--workload-name", &pod.name])
                .args(["--workload", pod.workload()])
                .args(if pod.gateway {
                    &["--mode", "gateway"][..]
                } else {
                    &[]
                })
                .env(
                    "RUST_LOG",
                    std::env::var("MESH_PROXY_LOG").unwrap_or_else(|_| "info".into()),
                )
                .envs(pod.proxy_env.iter().map(|(k, v)| (k, v)))
                .current_dir("/")
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .uid(PROXY_UID)
                .gid(PROXY_UID)
                .process_group(0)
                .spawn()
        })
        .map_err(|e| RuntimeError::io("starting the sidecar", e))?;
        Ok(Recorded::of(child.id()))
    }

    fn spawn_app(&self, pod: &PodRecord) -> Result<Recorded, RuntimeError> {
        let log = self.open_log(pod, "app.log")?;
        let child = Command::new("ip")
            .args(["netns", "exec", &pod.netns])
            .args(&pod.command)
            .env("PATH", app_path())
            .env("POD_NAME", &pod.name)
            .env("POD_NAMESPACE", &pod.namespace)
            .env("POD_IP", &pod.address)
            .env("SERVICE_ACCOUNT", &pod.service_account)
            .envs(pod.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(
                log.try_clone()
                    .map_err(|e| RuntimeError::io("opening the app log", e))?,
            )
            .stderr(log)
            .process_group(0)
            .spawn()
            .map_err(|e| RuntimeError::io(format!("starting {:?}", pod.command), e))?;
        Ok(Recorded::of(child.id()))
    }

    /// Waits until the sidecar says it is ready (it has its certificate and its configuration)
    /// and the app listens on its ports.
    fn wait_ready(&self, pod: &PodRecord) -> Result<(), RuntimeError> {
        let st = self.state()?;
        let pod_dir = self.layout.pod_dir(&pod.name);
        if pod.sidecar {
            let addr = SocketAddr::new(
                pod.address.parse().unwrap_or(IpAddr::from(HUB_ADDRESS)),
                15021,
            );
            let ok = wait_until(READY_TIMEOUT, || {
                pod.proxy.is_some_and(|p| p.alive())
                    && http_get(&st.hub(), addr, "/healthz/ready").is_ok_and(|(s, _)| s == 200)
            });
            if !ok {
                return Err(RuntimeError::NotReady {
                    what: format!("the sidecar of pod {}", pod.name),
                    secs: READY_TIMEOUT.as_secs(),
                    hint: log_tail(&pod_dir.join("proxy.log"), 10),
                });
            }
        }
        for port in &pod.ports {
            let addr = SocketAddr::from(([127, 0, 0, 1], *port));
            let ok = wait_until(READY_TIMEOUT, || {
                pod.app.is_some_and(|p| p.alive())
                    && net::in_netns(&pod.netns, || {
                        std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1))
                    })
                    .is_ok()
            });
            if !ok {
                return Err(RuntimeError::NotReady {
                    what: format!("port {port} of pod {}", pod.name),
                    secs: READY_TIMEOUT.as_secs(),
                    hint: log_tail(&pod_dir.join("app.log"), 10),
                });
            }
        }
        Ok(())
    }

    /// Takes a pod away as Kubernetes does in a rollout: its endpoint leaves the mesh first
    /// (and every sidecar has taken that in), then its processes get SIGTERM (the sidecar
    /// drains), and only then does its address go. Removed the other way round, callers would
    /// still send to an address that no longer answers at all, and wait out a connect timeout.
    fn remove_pod_locked(&self, st: &mut state::RuntimeState, name: &str) {
        if let Some(pod) = st.pods.remove(name) {
            let procs: Vec<_> = pod.app.iter().chain(pod.proxy.iter()).copied().collect();
            // A pod that never started (its start failed) has no callers to wait for.
            let started = !procs.is_empty();
            let before = started.then(|| self.pilot_generation()).flatten();
            let _ = config::unregister_pod(&self.layout, name);
            self.wait_pushed(before);
            process::terminate_netns(&pod.netns, Duration::from_secs(2));
            process::terminate(&procs, Duration::from_secs(2));
            let _ = net::delete_netns(&pod.netns);
            let _ = std::fs::remove_dir_all(PathBuf::from(SECRETS_DIR).join(&pod.netns));
            let _ = state::save(&self.layout, st);
        }
    }

    /// Pilot's current generation, when it runs.
    fn pilot_generation(&self) -> Option<u64> {
        self.pilot_debug("/debug/syncz").ok()?["generation"].as_u64()
    }

    /// Waits (at most [`PUSH_WAIT`]) until pilot has moved past generation `before` and no
    /// connected sidecar has a response outstanding: what changed has reached every sidecar
    /// it concerns. Nothing to wait for when pilot does not run.
    fn wait_pushed(&self, before: Option<u64>) {
        let Some(before) = before else { return };
        let mut moved_at = None;
        wait_until(PUSH_WAIT, || {
            let Ok(v) = self.pilot_debug("/debug/syncz") else {
                return false;
            };
            if v["generation"].as_u64().is_none_or(|g| g <= before) {
                return false;
            }
            // Pushes follow the new generation within a moment: settle before trusting that
            // none is outstanding.
            let since = *moved_at.get_or_insert_with(std::time::Instant::now);
            since.elapsed() >= PUSH_SETTLE
                && v["proxies"].as_array().is_some_and(|ps| {
                    ps.iter()
                        .filter(|p| p["connected"] == true)
                        .all(|p| p["sent_version"] == p["acked_version"] || !p["nack"].is_null())
                })
        });
    }

    /// Stops a pod and removes its namespace and registration.
    pub fn remove(&self, name: &str) -> Result<(), RuntimeError> {
        net::check_prerequisites()?;
        let _lock = state::lock(&self.layout.dir)?;
        let mut st = self.state()?;
        if !st.pods.contains_key(name) {
            return Err(RuntimeError::NoPod(name.into()));
        }
        self.remove_pod_locked(&mut st, name);
        Ok(())
    }

    /// The pod named `name`.
    pub fn pod(&self, name: &str) -> Result<PodRecord, RuntimeError> {
        self.state()?
            .pods
            .get(name)
            .cloned()
            .ok_or_else(|| RuntimeError::NoPod(name.into()))
    }

    /// A command that runs `args` inside the pod's namespace (with its `/etc/hosts`), as root.
    pub fn exec_command(&self, name: &str, args: &[String]) -> Result<Command, RuntimeError> {
        let pod = self.pod(name)?;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &pod.netns])
            .args(args)
            .env("PATH", app_path());
        Ok(cmd)
    }

    /// A pod's log file (the app's, or its sidecar's).
    pub fn log_path(&self, name: &str, proxy: bool) -> Result<PathBuf, RuntimeError> {
        let pod = self.pod(name)?;
        if proxy && !pod.sidecar {
            return Err(RuntimeError::BadFlag {
                flag: "--proxy",
                value: name.into(),
                reason: "this pod runs without a sidecar".into(),
            });
        }
        Ok(self
            .layout
            .pod_dir(name)
            .join(if proxy { "proxy.log" } else { "app.log" }))
    }

    /// GETs `path` from pilot's debug endpoints.
    pub fn pilot_debug(&self, path: &str) -> Result<serde_json::Value, RuntimeError> {
        let st = self.state()?;
        let addr = SocketAddr::from((HUB_ADDRESS, DEBUG_PORT));
        let (status, body) = http_get(&st.hub(), addr, path)
            .map_err(|e| RuntimeError::io(format!("asking pilot for {path}"), e))?;
        if status != 200 {
            return Err(RuntimeError::Command {
                command: format!("GET {path} from pilot"),
                message: format!("{status}: {body}"),
            });
        }
        serde_json::from_str(&body).map_err(|e| RuntimeError::Command {
            command: format!("GET {path} from pilot"),
            message: e.to_string(),
        })
    }

    /// The sidecar's current configuration (its admin `/config_dump`).
    pub fn proxy_config(&self, name: &str) -> Result<serde_json::Value, RuntimeError> {
        let pod = self.pod(name)?;
        let addr = SocketAddr::from(([127, 0, 0, 1], 15000));
        let (status, body) = http_get(&pod.netns, addr, "/config_dump")
            .map_err(|e| RuntimeError::io(format!("asking the sidecar of {name}"), e))?;
        if status != 200 {
            return Err(RuntimeError::Command {
                command: format!("GET /config_dump from the sidecar of {name}"),
                message: format!("{status}: {body}"),
            });
        }
        serde_json::from_str(&body).map_err(|e| RuntimeError::Command {
            command: format!("GET /config_dump from the sidecar of {name}"),
            message: e.to_string(),
        })
    }

    /// Waits until pod `client`'s sidecar knows `endpoints` endpoints for the service whose
    /// host name starts with `host` (`shipping-service.default`), i.e. until configuration has
    /// reached it.
    pub fn wait_endpoints(
        &self,
        client: &str,
        host: &str,
        endpoints: usize,
        within: Duration,
    ) -> Result<(), RuntimeError> {
        let count = || -> usize {
            self.proxy_config(client)
                .map_or(0, |cfg| endpoints_of(&cfg, host))
        };
        if wait_until(within, || count() >= endpoints) {
            Ok(())
        } else {
            Err(RuntimeError::NotReady {
                what: format!(
                    "{endpoints} endpoints of {host} in the configuration of {client}'s sidecar (it has {})",
                    count()
                ),
                secs: within.as_secs(),
                hint: log_tail(&self.layout.pod_dir(client).join("proxy.log"), 5),
            })
        }
    }
}

/// PATH for commands run in pods: the folder holding mesh-echo (and the other mesh binaries)
/// first, so `mesh-echo` resolves without installing it.
/// Endpoints of the services whose host name is `host` or starts with `host.`
/// (`shipping-service.default`), in a sidecar's `/config_dump`.
pub fn endpoints_of(config_dump: &serde_json::Value, host: &str) -> usize {
    config_dump["services"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| {
            s["hostname"]
                .as_str()
                .is_some_and(|h| h.starts_with(&format!("{host}.")) || h == host)
        })
        .map(|s| s["endpoints"].as_array().map_or(0, Vec::len))
        .sum()
}

fn app_path() -> std::ffi::OsString {
    let inherited = std::env::var_os("PATH").unwrap_or_default();
    match find_binary("mesh-echo", "mesh-e2e") {
        Ok(echo) => {
            let mut p = echo
                .parent()
                .map(std::ffi::OsString::from)
                .unwrap_or_default();
            p.push(":");
            p.push(&inherited);
            p
        }
        Err(_) => inherited,
    }
}

/// One HTTP/1.1 GET from inside network namespace `netns`: (status, body).
pub fn http_get(netns: &str, addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    http_get_with(netns, addr, path, &hyper::HeaderMap::new())
}

/// [`http_get`] with `headers` on the request too.
pub fn http_get_with(
    netns: &str,
    addr: SocketAddr,
    path: &str,
    headers: &hyper::HeaderMap,
) -> std::io::Result<(u16, String)> {
    use http_body_util::BodyExt;
    let stream = net::in_netns(netns, || {
        std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))
    })?;
    stream.set_nonblocking(true)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let stream = tokio::net::TcpStream::from_std(stream)?;
        let io = hyper_util::rt::TokioIo::new(stream);
        let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(std::io::Error::other)?;
        tokio::spawn(conn);
        let mut req = hyper::Request::get(path)
            .header(hyper::header::HOST, addr.to_string())
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .map_err(std::io::Error::other)?;
        for (name, value) in headers {
            if name != hyper::header::HOST {
                req.headers_mut().append(name, value.clone());
            }
        }
        let fut = async {
            let resp = sender
                .send_request(req)
                .await
                .map_err(std::io::Error::other)?;
            let status = resp.status().as_u16();
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(std::io::Error::other)?
                .to_bytes();
            Ok::<_, std::io::Error>((status, String::from_utf8_lossy(&body).into_owned()))
        };
        tokio::time::timeout(Duration::from_secs(5), fut)
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer in 5 s"))?
    })
}
