//! `mesh-bench`'s pieces: the processes under test (a backend, HAProxy, nginx, our proxy),
//! pinned to CPUs with `taskset`, the load generator (`oha`), and what is read from `/proc`
//! (CPU time, peak RSS). Every figure is a ratio measured in the same round, because these
//! machines' absolute speed drifts by tens of percent between rounds (docs/performance.md).

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A tool the bench needs, and how to get it.
#[derive(Clone, Copy, Debug)]
pub struct Tool {
    /// The command (or, with `file`, what the file is).
    pub name: &'static str,
    /// How to install it.
    pub install: &'static str,
    /// A file to look for instead of a command on PATH (a module, a font).
    pub file: Option<&'static str>,
}

/// nginx's stream (TCP proxy) module, loaded by the nginx under test for the TCP case.
pub const NGINX_STREAM_MODULE: &str = "/usr/lib/nginx/modules/ngx_stream_module.so";
/// The font the plot's labels are drawn with.
pub const PLOT_FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

/// What the bench runs besides our binaries.
pub const TOOLS: [Tool; 6] = [
    Tool {
        name: "haproxy",
        install: "apt-get install -y haproxy",
        file: None,
    },
    Tool {
        name: "nginx",
        install: "apt-get install -y nginx",
        file: None,
    },
    Tool {
        name: "nginx stream module",
        install: "apt-get install -y libnginx-mod-stream",
        file: Some(NGINX_STREAM_MODULE),
    },
    Tool {
        name: "oha",
        install: "cargo install oha --locked",
        file: None,
    },
    Tool {
        name: "taskset",
        install: "apt-get install -y util-linux",
        file: None,
    },
    Tool {
        name: "DejaVu font (plot labels)",
        install: "apt-get install -y fonts-dejavu-core",
        file: Some(PLOT_FONT),
    },
];

/// Finds `name` on PATH (and in the usual sbin folders, which a non-login root shell may
/// lack, and cargo's bin folder). `MESH_BENCH_PATH`, when set, is the only place looked in.
pub fn which(name: &str) -> Option<PathBuf> {
    if let Some(only) = std::env::var_os("MESH_BENCH_PATH") {
        return std::env::split_paths(&only)
            .map(|d| d.join(name))
            .find(|p| p.is_file());
    }
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.extend(["/usr/sbin", "/sbin", "/usr/local/sbin"].map(PathBuf::from));
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(Path::new(&home).join(".cargo/bin"));
    }
    dirs.into_iter().map(|d| d.join(name)).find(|p| p.is_file())
}

/// The tools missing, each with how to install it.
pub fn missing_tools() -> Vec<Tool> {
    TOOLS
        .iter()
        .filter(|t| match t.file {
            Some(f) => !Path::new(f).is_file(),
            None => which(t.name).is_none(),
        })
        .copied()
        .collect()
}

/// A free port on 127.0.0.1.
pub fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Waits until `addr` accepts connections.
pub fn wait_listening(addr: SocketAddr, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// A process under test, killed when dropped.
pub struct Running {
    /// What it is (`haproxy`).
    pub name: String,
    /// Where it listens.
    pub addr: SocketAddr,
    child: Child,
}

impl Running {
    /// Starts `program args` on CPU `cpu` and waits until `addr` listens.
    pub fn start(
        name: &str,
        cpu: usize,
        program: &Path,
        args: &[String],
        env: &[(&str, &str)],
        addr: SocketAddr,
        log: &Path,
    ) -> anyhow::Result<Running> {
        let log_file = std::fs::File::create(log)?;
        let mut cmd = Command::new(which("taskset").unwrap_or_else(|| "taskset".into()));
        cmd.arg("-c")
            .arg(cpu.to_string())
            .arg(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd
            .spawn()
            .map_err(|e| anyhow::anyhow!("starting {name} ({}): {e}", program.display()))?;
        remember_started(child.id());
        let mut running = Running {
            name: name.into(),
            addr,
            child,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut listening = false;
        while Instant::now() < deadline && running.child.try_wait().ok().flatten().is_none() {
            if wait_listening(addr, Duration::from_millis(200)) {
                listening = true;
                break;
            }
        }
        if !listening {
            let status = running.child.try_wait().ok().flatten();
            let log = std::fs::read_to_string(log).unwrap_or_default();
            anyhow::bail!(
                "{name} did not listen on {addr} ({}): {}",
                status.map_or("still running".into(), |s| s.to_string()),
                log.lines().rev().take(5).collect::<Vec<_>>().join(" | ")
            );
        }
        Ok(running)
    }

    /// The pids of the process and its descendants (nginx's workers, for instance).
    pub fn pids(&self) -> Vec<u32> {
        tree(self.child.id())
    }

    /// CPU time used so far (user + system) by the process and its descendants.
    pub fn cpu(&self) -> Duration {
        self.pids().into_iter().map(cpu_of).sum()
    }

    /// Peak resident memory (VmHWM) of the process and its descendants, in bytes.
    pub fn peak_rss(&self) -> u64 {
        self.pids()
            .into_iter()
            .filter_map(|p| status_kb(p, "VmHWM:"))
            .sum::<u64>()
            * 1024
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let pid = self.child.id();
        forget_started(pid);
        stop_trees(&[pid], &mut || {
            self.child.try_wait().ok().flatten().is_some()
        });
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `pid` and its descendants, parents first.
fn tree(pid: u32) -> Vec<u32> {
    let mut pids = vec![pid];
    let mut i = 0;
    while i < pids.len() {
        let children = std::fs::read_dir(format!("/proc/{}/task", pids[i]))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
            .flat_map(|s| {
                s.split_whitespace()
                    .filter_map(|p| p.parse::<u32>().ok())
                    .collect::<Vec<_>>()
            })
            .collect::<Vec<_>>();
        pids.extend(children);
        i += 1;
    }
    pids
}

fn signal(pid: u32, sig: nix::sys::signal::Signal) {
    if let Ok(pid) = i32::try_from(pid) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig);
    }
}

/// SIGTERM to each of `roots` first, so a master (nginx) stops and reaps its own workers;
/// whatever of their trees is left once `exited` holds or after 2 s is killed.
fn stop_trees(roots: &[u32], exited: &mut dyn FnMut() -> bool) {
    let all: Vec<u32> = roots.iter().flat_map(|p| tree(*p)).collect();
    for pid in roots {
        signal(*pid, nix::sys::signal::Signal::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline && !exited() {
        std::thread::sleep(Duration::from_millis(10));
    }
    for pid in all {
        signal(pid, nix::sys::signal::Signal::SIGKILL);
    }
}

/// The process has exited (reaped, or a zombie waiting for this process to reap it).
fn gone(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return true;
    };
    stat.rfind(')')
        .and_then(|i| stat[i + 1..].split_whitespace().next())
        .is_none_or(|state| state == "Z" || state == "X")
}

/// Processes started and not yet stopped, and folders to remove, for an interrupted run.
static STARTED: std::sync::Mutex<Vec<u32>> = std::sync::Mutex::new(Vec::new());
static FOLDERS: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());

fn remember_started(pid: u32) {
    STARTED.lock().unwrap_or_else(|e| e.into_inner()).push(pid);
}

fn forget_started(pid: u32) {
    STARTED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .retain(|p| *p != pid);
}

/// Removes `dir` too if the run is interrupted.
pub fn remove_on_interrupt(dir: &Path) {
    FOLDERS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(dir.to_path_buf());
}

/// Makes Ctrl-C, SIGTERM and SIGHUP stop every process the bench started (HAProxy, nginx and
/// its workers, the proxies) and remove its folders before exiting, instead of leaving them
/// running. Call first, before any other thread exists: the signals are blocked in every
/// thread and taken by one that waits for them (started processes get a clean mask).
pub fn stop_everything_on_interrupt() -> anyhow::Result<()> {
    use nix::sys::signal::{SigSet, Signal};
    let mut set = SigSet::empty();
    for s in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        set.add(s);
    }
    set.thread_block()?;
    std::thread::Builder::new()
        .name("interrupt".into())
        .spawn(move || {
            let Ok(sig) = set.wait() else { return };
            eprintln!("mesh-bench: {sig}: stopping what it started");
            let roots = std::mem::take(&mut *STARTED.lock().unwrap_or_else(|e| e.into_inner()));
            stop_trees(&roots, &mut || roots.iter().all(|p| gone(*p)));
            for dir in FOLDERS.lock().unwrap_or_else(|e| e.into_inner()).iter() {
                let _ = std::fs::remove_dir_all(dir);
            }
            std::process::exit(130);
        })?;
    Ok(())
}

/// Clock ticks per second for `/proc/PID/stat` times (100 on Linux).
const TICKS: u64 = 100;

fn cpu_of(pid: u32) -> Duration {
    let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return Duration::ZERO;
    };
    let Some(close) = text.rfind(')') else {
        return Duration::ZERO;
    };
    let fields: Vec<&str> = text[close + 2..].split_whitespace().collect();
    // Fields 14 and 15 (utime, stime) are at 11 and 12 after the state (field 3).
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|i| fields.get(*i)?.parse::<u64>().ok())
        .sum();
    Duration::from_millis(ticks * 1000 / TICKS)
}

fn status_kb(pid: u32, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = text.lines().find(|l| l.starts_with(key))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// What one load run measured.
#[derive(Clone, Debug, Default)]
pub struct LoadResult {
    /// Requests answered successfully.
    pub ok: u64,
    /// Requests that failed (non-200 answers and errors; requests cut at the deadline are
    /// not counted).
    pub failed: u64,
    /// Requests per second.
    pub rps: f64,
    /// Latency percentiles, milliseconds.
    pub p50_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Every percentile oha reports: (percentile, milliseconds), ascending.
    pub percentiles: Vec<(f64, f64)>,
}

/// Runs `oha` on CPU 0 against `url` for `duration`, with `connections` keep-alive
/// connections; `rate` makes it open-loop at that many requests per second, with
/// coordinated-omission correction.
pub fn oha(
    url: &str,
    duration: Duration,
    connections: usize,
    rate: Option<u64>,
    http2: bool,
) -> anyhow::Result<LoadResult> {
    let oha = which("oha").ok_or_else(|| anyhow::anyhow!("oha is missing"))?;
    let mut cmd = Command::new(which("taskset").unwrap_or_else(|| "taskset".into()));
    cmd.args(["-c", "0"])
        .arg(oha)
        .args(["--no-tui", "--output-format", "json"])
        .args(["-z", &format!("{}ms", duration.as_millis())]);
    if http2 {
        // One connection carries many streams: `connections` requests in flight as 8 streams
        // on each of connections ÷ 8 connections.
        let conns = (connections / 8).max(1);
        cmd.args(["--http2", "-c", &conns.to_string(), "-p", "8"]);
    } else {
        cmd.args(["-c", &connections.to_string()]);
    }
    if let Some(r) = rate {
        cmd.args(["-q", &r.to_string(), "--latency-correction"]);
    }
    let out = cmd.arg(url).output()?;
    if !out.status.success() {
        anyhow::bail!(
            "oha against {url} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).map_err(|e| {
        anyhow::anyhow!(
            "oha printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })?;
    parse_oha(&v)
}

/// Reads oha's JSON summary.
fn parse_oha(v: &serde_json::Value) -> anyhow::Result<LoadResult> {
    let codes = v["statusCodeDistribution"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    let ok = codes.get("200").and_then(|n| n.as_u64()).unwrap_or(0);
    let other: u64 = codes
        .iter()
        .filter(|(k, _)| *k != "200")
        .filter_map(|(_, n)| n.as_u64())
        .sum();
    // Requests still in flight when the time is up are cut ("aborted due to deadline"):
    // that is how the run ends, not a failure.
    let errors: u64 = v["errorDistribution"]
        .as_object()
        .map(|m| {
            m.iter()
                .filter(|(k, _)| !k.contains("deadline"))
                .filter_map(|(_, n)| n.as_u64())
                .sum()
        })
        .unwrap_or(0);
    let total = v["summary"]["total"].as_f64().unwrap_or(0.0);
    let mut percentiles: Vec<(f64, f64)> = v["latencyPercentiles"]
        .as_object()
        .map(|m| {
            m.iter()
                .filter_map(|(k, s)| {
                    Some((k.strip_prefix('p')?.parse().ok()?, s.as_f64()? * 1000.0))
                })
                .collect()
        })
        .unwrap_or_default();
    percentiles.sort_by(|a, b| a.0.total_cmp(&b.0));
    let at = |p: f64| {
        percentiles
            .iter()
            .find(|(q, _)| (q - p).abs() < 1e-9)
            .map_or(0.0, |(_, ms)| *ms)
    };
    Ok(LoadResult {
        ok,
        failed: other + errors,
        rps: if total > 0.0 { ok as f64 / total } else { 0.0 },
        p50_ms: at(50.0),
        p99_ms: at(99.0),
        percentiles,
    })
}

/// One HTTP/1.1 GET to `addr` (connection closed after): status code and body.
pub fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut conn = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    conn.set_read_timeout(Some(Duration::from_secs(5)))?;
    conn.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n").as_bytes(),
    )?;
    let mut text = String::new();
    conn.read_to_string(&mut text)?;
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP answer: {text:?}")))?;
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    Ok((status, body))
}

/// Waits until `GET path` on `addr` answers 200.
pub fn wait_ok(addr: SocketAddr, path: &str, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if http_get(addr, path).is_ok_and(|(s, _)| s == 200) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// The median of `xs` (0 when empty).
pub fn median(mut xs: Vec<f64>) -> f64 {
    if xs.is_empty() {
        return 0.0;
    }
    xs.sort_by(|a, b| a.total_cmp(b));
    let n = xs.len();
    if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(vec![]), 0.0);
    }

    #[test]
    fn oha_summary_is_read() {
        let v = serde_json::json!({
            "summary": {"total": 2.0},
            "statusCodeDistribution": {"200": 1000, "503": 3},
            "errorDistribution": {"aborted due to deadline": 12, "connection refused": 2},
            "latencyPercentiles": {"p50": 0.0002, "p99": 0.001, "p99.9": 0.004, "p10": 0.0001}
        });
        let r = parse_oha(&v).unwrap();
        assert_eq!(r.ok, 1000);
        assert_eq!(
            r.failed, 5,
            "503s and errors count, the deadline's cut does not"
        );
        assert_eq!(r.rps, 500.0);
        assert!((r.p50_ms - 0.2).abs() < 1e-9 && (r.p99_ms - 1.0).abs() < 1e-9);
        let pcts: Vec<f64> = r.percentiles.iter().map(|p| p.0).collect();
        assert_eq!(pcts, vec![10.0, 50.0, 99.0, 99.9]);
    }

    #[test]
    fn own_cpu_time_is_read() {
        // Busy until the process's own CPU time says 50 ms went by (on a loaded machine that
        // takes longer than 50 ms of wall time; the deadline only bounds a broken reading).
        let before = cpu_of(std::process::id());
        let start = Instant::now();
        let mut x = 0u64;
        let mut spent = Duration::ZERO;
        while spent < Duration::from_millis(50) && start.elapsed() < Duration::from_secs(20) {
            for _ in 0..100_000 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
            }
            spent = cpu_of(std::process::id()) - before;
        }
        assert!(
            spent >= Duration::from_millis(50),
            "busy {:?}, counted {spent:?}",
            start.elapsed()
        );
    }
}
