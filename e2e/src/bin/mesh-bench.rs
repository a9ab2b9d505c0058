//! `mesh-bench`: how one mesh proxy hop compares with a direct connection, HAProxy and nginx on
//! this machine, measured side by side in interleaved rounds. Layout: the backend (nginx
//! returning a fixed 200) and the load generator (oha) on CPU 0; the proxy under test on CPU 1
//! with one worker thread; everything on 127.0.0.1. Figures are medians of per-round ratios.
//!
//! Measured so far for one plaintext HTTP/1.1 keep-alive hop: at saturation, requests per
//! second, CPU per 1000 requests, peak RSS and upstream connection reuse; open loop at 1000 rps
//! (coordinated-omission corrected), p50/p99 and what they add to direct in the same round.
//! The mTLS pair, HTTP/2, TCP, half-saturation latency and the plot come next (issue 7).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;

use clap::Parser;
use mesh_e2e::bench::{self, Running, median};

/// Compare one mesh proxy hop with HAProxy, nginx and a direct connection.
#[derive(Parser)]
#[command(name = "mesh-bench")]
struct Cli {
    /// A short run (about a minute): fewer, shorter rounds.
    #[arg(long)]
    quick: bool,
    /// `text` (a markdown table) or `json`.
    #[arg(long, short = 'o', default_value = "text")]
    output: String,
    /// Rounds (each target once per round, the starting target rotating).
    #[arg(long)]
    rounds: Option<usize>,
    /// Seconds of load per target per round.
    #[arg(long)]
    secs: Option<u64>,
}

const TARGETS: [&str; 4] = ["direct", "haproxy", "nginx", "mesh"];
const CONNECTIONS: usize = 64;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("mesh-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

struct Setup {
    backend: Running,
    status_url: String,
    proxies: BTreeMap<&'static str, Running>,
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn start(dir: &Path) -> anyhow::Result<Setup> {
    let nginx = bench::which("nginx").ok_or_else(|| anyhow::anyhow!("nginx is missing"))?;
    let haproxy = bench::which("haproxy").ok_or_else(|| anyhow::anyhow!("haproxy is missing"))?;
    let proxy = meshctl::local::find_binary("mesh-proxy", "mesh-proxy")?;
    let (b, s) = (bench::free_port()?, bench::free_port()?);
    let backend_conf = dir.join("backend.conf");
    std::fs::write(
        &backend_conf,
        format!(
            "worker_processes 1;\ndaemon off;\npid {dir}/backend.pid;\nerror_log {dir}/backend.err warn;\n\
             events {{ worker_connections 4096; }}\n\
             http {{\n  access_log off;\n  keepalive_requests 1000000;\n\
               server {{ listen 127.0.0.1:{b}; location / {{ return 200 \"ok\"; }} }}\n\
               server {{ listen 127.0.0.1:{s}; location / {{ stub_status; }} }}\n}}\n",
            dir = dir.display()
        ),
    )?;
    let backend = Running::start(
        "backend",
        0,
        &nginx,
        &[
            "-c".into(),
            backend_conf.display().to_string(),
            "-e".into(),
            "stderr".into(),
        ],
        &[],
        addr(b),
        &dir.join("backend.log"),
    )?;
    let mut proxies = BTreeMap::new();

    let h = bench::free_port()?;
    let haproxy_conf = dir.join("haproxy.cfg");
    std::fs::write(
        &haproxy_conf,
        format!(
            "global\n  nbthread 1\n  maxconn 4000\n\
             defaults\n  mode http\n  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\n  http-reuse always\n\
             frontend f\n  bind 127.0.0.1:{h}\n  default_backend b\n\
             backend b\n  server s1 127.0.0.1:{b}\n"
        ),
    )?;
    proxies.insert(
        "haproxy",
        Running::start(
            "haproxy",
            1,
            &haproxy,
            &[
                "-f".into(),
                haproxy_conf.display().to_string(),
                "-db".into(),
            ],
            &[],
            addr(h),
            &dir.join("haproxy.log"),
        )?,
    );

    let n = bench::free_port()?;
    let nginx_conf = dir.join("proxy.conf");
    std::fs::write(
        &nginx_conf,
        format!(
            "worker_processes 1;\ndaemon off;\npid {dir}/proxy.pid;\nerror_log {dir}/proxy.err warn;\n\
             events {{ worker_connections 4096; }}\n\
             http {{\n  access_log off;\n  keepalive_requests 1000000;\n\
               upstream u {{ server 127.0.0.1:{b}; keepalive 128; keepalive_requests 1000000; }}\n\
               server {{ listen 127.0.0.1:{n}; location / {{ proxy_pass http://u; \
                 proxy_http_version 1.1; proxy_set_header Connection \"\"; }} }}\n}}\n",
            dir = dir.display()
        ),
    )?;
    proxies.insert(
        "nginx",
        Running::start(
            "nginx",
            1,
            &nginx,
            &[
                "-c".into(),
                nginx_conf.display().to_string(),
                "-e".into(),
                "stderr".into(),
            ],
            &[],
            addr(n),
            &dir.join("nginx.log"),
        )?,
    );

    let (m, inbound, admin, ready) = (
        bench::free_port()?,
        bench::free_port()?,
        bench::free_port()?,
        bench::free_port()?,
    );
    let state = dir.join("state.yaml");
    std::fs::write(
        &state,
        format!(
            "version: bench\nservices:\n- hostname: backend.bench.svc.cluster.local\n  namespace: bench\n  \
             addresses: [127.0.0.1]\n  ports: [{{port: {b}, name: http}}]\n  endpoints: [{{address: 127.0.0.1}}]\n"
        ),
    )?;
    let args: Vec<String> = [
        "run",
        "--state-file",
        &state.display().to_string(),
        "--bind-address",
        "127.0.0.1",
        "--outbound-port",
        &m.to_string(),
        "--inbound-port",
        &inbound.to_string(),
        "--admin-port",
        &admin.to_string(),
        "--readiness-port",
        &ready.to_string(),
        "--outbound-original-dst",
        &format!("127.0.0.1:{b}"),
        "--worker-threads",
        "1",
    ]
    .map(String::from)
    .to_vec();
    proxies.insert(
        "mesh",
        Running::start(
            "mesh",
            1,
            &proxy,
            &args,
            // Access logs off, as in Istio's default profile.
            &[("RUST_LOG", "warn")],
            addr(m),
            &dir.join("mesh.log"),
        )?,
    );
    Ok(Setup {
        backend,
        status_url: format!("127.0.0.1:{s}"),
        proxies,
    })
}

/// Connections the backend has accepted so far (nginx stub_status).
fn backend_accepts(status: &str) -> anyhow::Result<u64> {
    use std::io::{Read, Write};
    let mut conn = std::net::TcpStream::connect(status)?;
    conn.write_all(b"GET / HTTP/1.0\r\nHost: status\r\n\r\n")?;
    let mut text = String::new();
    conn.read_to_string(&mut text)?;
    // "server accepts handled requests\n A H R"
    let line = text
        .lines()
        .skip_while(|l| !l.contains("accepts"))
        .nth(1)
        .ok_or_else(|| anyhow::anyhow!("stub_status: unexpected answer {text:?}"))?;
    Ok(line
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0))
}

#[derive(Default)]
struct Figures {
    rps: Vec<f64>,
    cpu_ms_per_1000: Vec<f64>,
    reuse: Vec<f64>,
    /// Open-loop at 1000 rps: p50 and p99, and what they add to direct's in the same round.
    p50_ms: Vec<f64>,
    p99_ms: Vec<f64>,
    added_p50_ms: Vec<f64>,
    added_p99_ms: Vec<f64>,
}

/// The open-loop rate latency is measured at (requests per second).
const LATENCY_RATE: u64 = 1000;

fn run(cli: &Cli) -> anyhow::Result<ExitCode> {
    let missing = bench::missing_tools();
    if !missing.is_empty() {
        eprintln!("mesh-bench needs tools that are not installed:");
        for t in &missing {
            eprintln!("  {:<8} install with: {}", t.name, t.install);
        }
        return Ok(ExitCode::from(2));
    }
    let rounds = cli.rounds.unwrap_or(if cli.quick { 3 } else { 7 });
    let secs = cli.secs.unwrap_or(if cli.quick { 3 } else { 8 });
    let dir = tempfile::TempDir::new()?;
    let setup = start(dir.path())?;
    let idle_rss = setup.proxies["mesh"].peak_rss();
    let mut figures: BTreeMap<&str, Figures> = BTreeMap::new();
    let mut cpu_ratio = Vec::new();
    let mut rps_ratio = Vec::new();
    for round in 0..rounds {
        let mut this_round: BTreeMap<&str, (f64, f64)> = BTreeMap::new();
        let mut latencies: BTreeMap<&str, (f64, f64)> = BTreeMap::new();
        for i in 0..TARGETS.len() {
            let target = TARGETS[(i + round) % TARGETS.len()];
            let (url_addr, proc) = match target {
                "direct" => (setup.backend.addr, None),
                t => (setup.proxies[t].addr, Some(&setup.proxies[t])),
            };
            let accepts_before = backend_accepts(&setup.status_url)?;
            let cpu_before = proc.map(Running::cpu).unwrap_or_default();
            let r = bench::oha(
                &format!("http://{url_addr}/"),
                secs,
                CONNECTIONS,
                None,
                false,
            )?;
            let cpu = proc.map(Running::cpu).unwrap_or_default() - cpu_before;
            let accepts = backend_accepts(&setup.status_url)? - accepts_before;
            let f = figures.entry(target).or_default();
            f.rps.push(r.rps);
            let per_1000 = if r.ok > 0 {
                cpu.as_secs_f64() * 1000.0 * 1000.0 / r.ok as f64
            } else {
                0.0
            };
            f.cpu_ms_per_1000.push(per_1000);
            if r.ok > 0 {
                // oha's own connections count for the direct case; for proxies every
                // backend connection is the proxy's.
                f.reuse.push(1.0 - accepts as f64 / r.ok as f64);
            }
            this_round.insert(target, (r.rps, per_1000));
            // Open loop at a fixed rate, with coordinated-omission correction.
            let lat = bench::oha(
                &format!("http://{url_addr}/"),
                secs,
                CONNECTIONS,
                Some(LATENCY_RATE),
                false,
            )?;
            latencies.insert(target, (lat.p50_ms, lat.p99_ms));
            f.p50_ms.push(lat.p50_ms);
            f.p99_ms.push(lat.p99_ms);
            eprintln!(
                "round {}/{rounds} {target:<8} {:>8.0} rps  {:>6.1} CPU-ms/1000 req  at {LATENCY_RATE} rps: p50 {:.3} ms p99 {:.3} ms",
                round + 1,
                r.rps,
                per_1000,
                lat.p50_ms,
                lat.p99_ms
            );
        }
        let direct = latencies["direct"];
        for (target, (p50, p99)) in &latencies {
            if let Some(f) = figures.get_mut(target) {
                f.added_p50_ms.push(p50 - direct.0);
                f.added_p99_ms.push(p99 - direct.1);
            }
        }
        let (m, h) = (this_round["mesh"], this_round["haproxy"]);
        if h.0 > 0.0 && h.1 > 0.0 {
            rps_ratio.push(m.0 / h.0);
            cpu_ratio.push(m.1 / h.1);
        }
    }
    let rss_mb = |b: u64| b as f64 / (1024.0 * 1024.0);
    let rss_1000 = rss_with_services(dir.path(), 1000)?;
    let mesh_peak = rss_mb(setup.proxies["mesh"].peak_rss());
    let cpu_vs = median(cpu_ratio);
    let rps_vs = median(rps_ratio);
    let reuse = median(figures["mesh"].reuse.clone());
    if cli.output == "json" {
        let out = serde_json::json!({
            "rounds": rounds,
            "secs_per_target": secs,
            "cpu_per_req_vs_haproxy": cpu_vs,
            "rps_vs_haproxy": rps_vs,
            "upstream_reuse": reuse,
            "rss_idle_mb": rss_mb(idle_rss),
            "rss_peak_mb": mesh_peak,
            "added_p50_pair_vs_haproxy": null,
            "added_p99_pair_vs_haproxy": null,
            "rss_1000_services_mb": rss_mb(rss_1000),
            "latency_1000rps": TARGETS.iter().map(|t| (t.to_string(), serde_json::json!({
                "p50_ms": median(figures[t].p50_ms.clone()),
                "p99_ms": median(figures[t].p99_ms.clone()),
                "added_p50_ms": median(figures[t].added_p50_ms.clone()),
                "added_p99_ms": median(figures[t].added_p99_ms.clone()),
            }))).collect::<serde_json::Map<_, _>>(),
        });
        println!("{out}");
    } else {
        println!(
            "\nOne plaintext HTTP/1.1 hop at saturation ({rounds} rounds × {secs} s, {CONNECTIONS} connections; medians)\n"
        );
        println!(
            "| target | requests/s | CPU-ms per 1000 requests | upstream reuse | peak RSS | p50 / p99 at {LATENCY_RATE} rps | added p50 / p99 vs direct |"
        );
        println!("|---|---:|---:|---:|---:|---:|---:|");
        for t in TARGETS {
            let f = &figures[t];
            let rss = match t {
                "direct" => "-".to_string(),
                t => format!("{:.1} MiB", rss_mb(setup.proxies[t].peak_rss())),
            };
            let reuse = if t == "direct" {
                "-".to_string()
            } else {
                format!("{:.4}", median(f.reuse.clone()))
            };
            println!(
                "| {t} | {:.0} | {:.1} | {reuse} | {rss} | {:.3} / {:.3} ms | {:+.3} / {:+.3} ms |",
                median(f.rps.clone()),
                median(f.cpu_ms_per_1000.clone()),
                median(f.p50_ms.clone()),
                median(f.p99_ms.clone()),
                median(f.added_p50_ms.clone()),
                median(f.added_p99_ms.clone()),
            );
        }
        println!(
            "\nmesh ÷ HAProxy (median of per-round ratios): CPU per request {cpu_vs:.2} (target ≤ 1.0), requests/s {rps_vs:.2} (target ≥ 1.0)"
        );
        println!(
            "mesh proxy RSS: {:.1} MiB idle (target ≤ 10 MB), {:.1} MiB idle with 1000 services and 10,000 endpoints (target ≤ 20 MB), {mesh_peak:.1} MiB peak under load; upstream reuse {reuse:.4} (target ≥ 0.99)",
            rss_mb(idle_rss),
            rss_mb(rss_1000)
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Peak RSS of a proxy holding `services` services of 10 endpoints each (as pilot would send
/// a proxy that sees the whole mesh), idle.
fn rss_with_services(dir: &Path, services: usize) -> anyhow::Result<u64> {
    use std::fmt::Write;
    let proxy = meshctl::local::find_binary("mesh-proxy", "mesh-proxy")?;
    let mut state = String::from("version: big\nservices:\n");
    for i in 0..services {
        let _ = write!(
            state,
            "- hostname: svc-{i}.bench.svc.cluster.local\n  namespace: bench\n  addresses: [10.96.{}.{}]\n  ports: [{{port: 8080, name: http}}]\n  endpoints: [",
            i / 250,
            i % 250 + 1
        );
        for e in 0..10 {
            let n = i * 10 + e;
            let sep = if e == 0 { "" } else { ", " };
            let _ = write!(
                state,
                "{sep}{{address: 10.244.{}.{}}}",
                n / 250,
                n % 250 + 1
            );
        }
        state.push_str("]\n");
    }
    let file = dir.join("state-1000.yaml");
    std::fs::write(&file, state)?;
    let ports: Vec<u16> = (0..4)
        .map(|_| bench::free_port())
        .collect::<Result<_, _>>()?;
    let args: Vec<String> = [
        "run",
        "--state-file",
        &file.display().to_string(),
        "--bind-address",
        "127.0.0.1",
        "--outbound-port",
        &ports[0].to_string(),
        "--inbound-port",
        &ports[1].to_string(),
        "--admin-port",
        &ports[2].to_string(),
        "--readiness-port",
        &ports[3].to_string(),
        "--worker-threads",
        "1",
    ]
    .map(String::from)
    .to_vec();
    let big = Running::start(
        "mesh-1000",
        1,
        &proxy,
        &args,
        &[("RUST_LOG", "warn")],
        addr(ports[0]),
        &dir.join("mesh-1000.log"),
    )?;
    Ok(big.peak_rss())
}
