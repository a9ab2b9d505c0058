//! `mesh-bench`: how the mesh compares with a direct connection, HAProxy and nginx on this
//! machine, measured side by side in interleaved rounds. Layout: the backend (nginx returning
//! a fixed 200) and the load generator (oha) on CPU 0; the proxies under test on CPU 1, each
//! with one worker thread; everything on 127.0.0.1. Figures are medians of per-round ratios.
//!
//! Cases: HTTP/1.1 keep-alive, HTTP/2 (h2c) and TCP (HTTP/1.1 carried as opaque bytes), each
//! direct, through HAProxy, through nginx, through one mesh proxy and through the mesh's
//! sidecar pair (client → sidecar → mTLS → sidecar → server, certificates from a CA run in
//! this process). Per case: saturated requests per second, CPU per 1000 requests, upstream
//! connection reuse, peak RSS, and open-loop latency (coordinated-omission corrected) at 1000
//! rps and at half of HAProxy's saturation, with what each adds to direct in the same round.
//! Output: a markdown table (or `--output json`) and a PNG of latency percentiles.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use mesh_e2e::bench::{self, LoadResult, Running, median};
use mesh_e2e::plot;

/// Compare the mesh with HAProxy, nginx and a direct connection.
#[derive(Parser)]
#[command(name = "mesh-bench")]
struct Cli {
    /// A short run (under 3 minutes): fewer, shorter rounds.
    #[arg(long)]
    quick: bool,
    /// `text` (a markdown table) or `json`.
    #[arg(long, short = 'o', default_value = "text")]
    output: String,
    /// Rounds (each case once per round, the starting target rotating).
    #[arg(long)]
    rounds: Option<usize>,
    /// Seconds of load per run (each case runs three times per round: saturated, at 1000
    /// rps, at half saturation).
    #[arg(long)]
    secs: Option<f64>,
    /// Where the latency plot is written.
    #[arg(long, default_value = "mesh-bench.png")]
    plot: PathBuf,
    /// Start every target, print where each case listens and which processes serve it, and
    /// keep them running until stdin closes: for profiling by hand (perf, strace, callgrind).
    #[arg(long)]
    serve: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Proto {
    Http1,
    Http2,
    Tcp,
}

impl Proto {
    const ALL: [Proto; 3] = [Proto::Http1, Proto::Http2, Proto::Tcp];

    fn key(self) -> &'static str {
        match self {
            Proto::Http1 => "http1",
            Proto::Http2 => "http2",
            Proto::Tcp => "tcp",
        }
    }

    fn title(self) -> &'static str {
        match self {
            Proto::Http1 => "HTTP/1.1 keep-alive",
            Proto::Http2 => "HTTP/2 (h2c)",
            Proto::Tcp => "TCP (HTTP/1.1 as opaque bytes)",
        }
    }
}

/// `pair-authz` is the pair with one ALLOW AuthorizationPolicy (the client's principal) on
/// the server sidecar: what enforcing policy adds. `mesh-policy` is the one hop with a retry
/// policy on its route and a connection pool on its cluster (limits never reached): what
/// resilience settings add.
const TARGETS: [&str; 7] = [
    "direct",
    "haproxy",
    "nginx",
    "mesh",
    "mesh-policy",
    "pair",
    "pair-authz",
];
const CONNECTIONS: usize = 64;
/// The open-loop rate every case is measured at (requests per second).
const LATENCY_RATE: u64 = 1000;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(e) = bench::stop_everything_on_interrupt() {
        eprintln!("mesh-bench: cannot handle interruptions: {e}");
        return ExitCode::FAILURE;
    }
    match run(&cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("mesh-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Where a case sends its load and whose CPU it counts.
struct Case {
    addr: SocketAddr,
    procs: Vec<&'static str>,
}

struct Setup {
    _backend: Running,
    status: SocketAddr,
    procs: BTreeMap<&'static str, Running>,
    cases: BTreeMap<(Proto, &'static str), Case>,
    /// Serves the CA; dropped (and so stopped) with the setup.
    _ca: tokio::runtime::Runtime,
}

impl Setup {
    fn cpu(&self, case: &Case) -> Duration {
        case.procs.iter().map(|p| self.procs[p].cpu()).sum()
    }

    fn peak_rss(&self, case: &Case) -> u64 {
        case.procs.iter().map(|p| self.procs[p].peak_rss()).sum()
    }
}

/// Service addresses in the mesh proxies' state: only matched against the fixed original
/// destination, never connected to.
const TCP_VIP: &str = "127.0.0.3";
const PAIR_VIP: &str = "127.0.0.4";
const PAIR_AUTHZ_VIP: &str = "127.0.0.5";
const POLICY_VIP: &str = "127.0.0.7";
const TCP_PORT: u16 = 7000;
const PAIR_HTTP_PORT: u16 = 7001;
const PAIR_TCP_PORT: u16 = 7002;
const SERVER_SA: &str = "server";
const CLIENT_SA: &str = "client";

fn start(dir: &Path) -> anyhow::Result<Setup> {
    let nginx = bench::which("nginx").ok_or_else(|| anyhow::anyhow!("nginx is missing"))?;
    let haproxy = bench::which("haproxy").ok_or_else(|| anyhow::anyhow!("haproxy is missing"))?;
    let proxy = meshctl::local::find_binary("mesh-proxy", "mesh-proxy")?;
    // Which build is measured matters (`release`, or `dist` with MESH_BIN_DIR=target/dist).
    eprintln!("mesh-bench: measuring {}", proxy.display());
    let mut procs = BTreeMap::new();
    let mut cases = BTreeMap::new();
    let port = bench::free_port;

    // The backend: HTTP/1.1 and h2c, a fixed 200; /xfcc echoes the client certificate header
    // a server sidecar adds, which proves the pair's hop is mTLS.
    let (b, b2, s) = (port()?, port()?, port()?);
    let conf = dir.join("backend.conf");
    std::fs::write(
        &conf,
        format!(
            "worker_processes 1;\ndaemon off;\npid {dir}/backend.pid;\nerror_log {dir}/backend.err warn;\n\
             events {{ worker_connections 4096; }}\n\
             http {{\n  access_log off;\n  keepalive_requests 1000000;\n\
               server {{ listen 127.0.0.1:{b}; location / {{ return 200 \"ok\"; }} \
                 location /xfcc {{ return 200 \"$http_x_forwarded_client_cert\"; }} }}\n\
               server {{ listen 127.0.0.1:{b2} http2; location / {{ return 200 \"ok\"; }} }}\n\
               server {{ listen 127.0.0.1:{s}; location / {{ stub_status; }} }}\n}}\n",
            dir = dir.display()
        ),
    )?;
    let nginx_args = |conf: &Path| -> Vec<String> {
        vec![
            "-c".into(),
            conf.display().to_string(),
            "-e".into(),
            "stderr".into(),
        ]
    };
    let backend = Running::start(
        "backend",
        0,
        &nginx,
        &nginx_args(&conf),
        &[],
        addr(b),
        &dir.join("backend.log"),
    )?;
    if !bench::wait_listening(addr(b2), Duration::from_secs(5)) {
        anyhow::bail!("the backend's h2c port {b2} did not listen");
    }
    cases.insert(
        (Proto::Http1, "direct"),
        Case {
            addr: addr(b),
            procs: vec![],
        },
    );
    cases.insert(
        (Proto::Http2, "direct"),
        Case {
            addr: addr(b2),
            procs: vec![],
        },
    );
    cases.insert(
        (Proto::Tcp, "direct"),
        Case {
            addr: addr(b),
            procs: vec![],
        },
    );

    // HAProxy: one thread, HTTP/1.1 and h2c frontends onto one HTTP/1.1 backend, and a TCP
    // frontend.
    let (h1, h2, ht) = (port()?, port()?, port()?);
    let conf = dir.join("haproxy.cfg");
    std::fs::write(
        &conf,
        format!(
            "global\n  nbthread 1\n  maxconn 4000\n\
             defaults\n  mode http\n  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\n  http-reuse always\n\
             frontend f1\n  bind 127.0.0.1:{h1}\n  default_backend b\n\
             frontend f2\n  bind 127.0.0.1:{h2} proto h2\n  default_backend b\n\
             backend b\n  server s1 127.0.0.1:{b}\n\
             frontend ft\n  mode tcp\n  bind 127.0.0.1:{ht}\n  default_backend bt\n\
             backend bt\n  mode tcp\n  server s1 127.0.0.1:{b}\n"
        ),
    )?;
    procs.insert(
        "haproxy",
        Running::start(
            "haproxy",
            1,
            &haproxy,
            &["-f".into(), conf.display().to_string(), "-db".into()],
            &[],
            addr(h1),
            &dir.join("haproxy.log"),
        )?,
    );
    for (proto, p) in [(Proto::Http1, h1), (Proto::Http2, h2), (Proto::Tcp, ht)] {
        cases.insert(
            (proto, "haproxy"),
            Case {
                addr: addr(p),
                procs: vec!["haproxy"],
            },
        );
    }

    // nginx: one worker, HTTP/1.1 and h2c servers onto a keep-alive upstream, and a stream
    // (TCP) server.
    let (n1, n2, nt) = (port()?, port()?, port()?);
    let conf = dir.join("proxy.conf");
    std::fs::write(
        &conf,
        format!(
            "load_module {module};\nworker_processes 1;\ndaemon off;\npid {dir}/proxy.pid;\nerror_log {dir}/proxy.err warn;\n\
             events {{ worker_connections 4096; }}\n\
             http {{\n  access_log off;\n  keepalive_requests 1000000;\n\
               upstream u {{ server 127.0.0.1:{b}; keepalive 128; keepalive_requests 1000000; }}\n\
               server {{ listen 127.0.0.1:{n1}; location / {{ proxy_pass http://u; \
                 proxy_http_version 1.1; proxy_set_header Connection \"\"; }} }}\n\
               server {{ listen 127.0.0.1:{n2} http2; location / {{ proxy_pass http://u; \
                 proxy_http_version 1.1; proxy_set_header Connection \"\"; }} }}\n}}\n\
             stream {{ server {{ listen 127.0.0.1:{nt}; proxy_pass 127.0.0.1:{b}; }} }}\n",
            module = bench::NGINX_STREAM_MODULE,
            dir = dir.display()
        ),
    )?;
    procs.insert(
        "nginx",
        Running::start(
            "nginx",
            1,
            &nginx,
            &nginx_args(&conf),
            &[],
            addr(n1),
            &dir.join("nginx.log"),
        )?,
    );
    for (proto, p) in [(Proto::Http1, n1), (Proto::Http2, n2), (Proto::Tcp, nt)] {
        cases.insert(
            (proto, "nginx"),
            Case {
                addr: addr(p),
                procs: vec!["nginx"],
            },
        );
    }

    // The mesh: a CA, then one state for every proxy. The pair's service has one endpoint, the
    // server sidecar's inbound listener, which must prove the server identity over mTLS.
    let (ca_runtime, ca_addr, tokens) = start_ca(dir)?;
    let server_inbound = port()?;
    let authz_inbound = port()?;
    let server_id = format!("spiffe://cluster.local/ns/bench/sa/{SERVER_SA}");
    let state = dir.join("state.yaml");
    std::fs::write(
        &state,
        format!(
            "version: bench\nservices:\n\
             - hostname: backend.bench.svc.cluster.local\n  namespace: bench\n  addresses: [127.0.0.1]\n  \
               ports: [{{port: {b}, name: http}}]\n  endpoints: [{{address: 127.0.0.1}}]\n\
             - hostname: backend-tcp.bench.svc.cluster.local\n  namespace: bench\n  addresses: [{TCP_VIP}]\n  \
               ports: [{{port: {TCP_PORT}, name: tcp}}]\n  endpoints: [{{address: 127.0.0.1, ports: {{tcp: {b}}}}}]\n\
             - hostname: pair.bench.svc.cluster.local\n  namespace: bench\n  addresses: [{PAIR_VIP}]\n  \
               ports: [{{port: {PAIR_HTTP_PORT}, name: http}}, {{port: {PAIR_TCP_PORT}, name: tcp}}]\n  \
               endpoints: [{{address: 127.0.0.1, ports: {{http: {server_inbound}, tcp: {server_inbound}}}, \
                 identity: \"{server_id}\", mesh: true}}]\n\
             - hostname: pair-authz.bench.svc.cluster.local\n  namespace: bench\n  addresses: [{PAIR_AUTHZ_VIP}]\n  \
               ports: [{{port: {PAIR_HTTP_PORT}, name: http}}, {{port: {PAIR_TCP_PORT}, name: tcp}}]\n  \
               endpoints: [{{address: 127.0.0.1, ports: {{http: {authz_inbound}, tcp: {authz_inbound}}}, \
                 identity: \"{server_id}\", mesh: true}}]\n\
             - hostname: backend-policy.bench.svc.cluster.local\n  namespace: bench\n  addresses: [{POLICY_VIP}]\n  \
               ports: [{{port: {PAIR_HTTP_PORT}, name: http}}, {{port: {PAIR_TCP_PORT}, name: tcp}}]\n  \
               endpoints: [{{address: 127.0.0.1, ports: {{http: {b}, tcp: {b}}}}}]\n  \
               trafficPolicy:\n    connectionPool: {{maxConnections: 1000, http1MaxPendingRequests: 1000, \
                 http2MaxRequests: 10000, maxRetries: 10}}\n  \
               httpRoutes:\n  - destinations: [{{host: backend-policy.bench.svc.cluster.local, weight: 100}}]\n    \
                 timeoutMs: 10000\n    retries: 3\n    \
                 retry: {{attempts: 3, retryOn: [5xx, connect-failure], perTryTimeoutMs: 2000}}\n"
        ),
    )?;
    // The same state with one ALLOW policy for the client's principal, for pair-authz's server.
    let allow = serde_json::json!({"action": "ALLOW", "rules": [{"from": [{"source": {
        "principals": [format!("cluster.local/ns/bench/sa/{CLIENT_SA}")]}}]}]});
    let state_authz = dir.join("state-authz.yaml");
    std::fs::write(
        &state_authz,
        format!(
            "{}authorizationPolicies:\n- name: allow-client\n  namespace: bench\n  specJson: {}\n",
            std::fs::read_to_string(&state)?,
            serde_json::to_string(&allow.to_string())?
        ),
    )?;
    let mesh = MeshProxy {
        program: &proxy,
        dir,
        state: &state,
        identity: Some((ca_addr, &tokens)),
    };
    let (p, _) = mesh.start(
        &mut procs,
        "mesh",
        None,
        Some(Fixed::Outbound(format!("127.0.0.1:{b}"))),
        None,
    )?;
    for proto in [Proto::Http1, Proto::Http2] {
        cases.insert(
            (proto, "mesh"),
            Case {
                addr: addr(p),
                procs: vec!["mesh"],
            },
        );
    }
    mesh.start_clients(
        &mut procs,
        &mut cases,
        "mesh-policy",
        ["mesh-policy", "mesh-policy-tcp"],
        None,
        POLICY_VIP,
        None,
    )?;
    let (p, _) = mesh.start(
        &mut procs,
        "mesh-tcp",
        None,
        Some(Fixed::Outbound(format!("{TCP_VIP}:{TCP_PORT}"))),
        None,
    )?;
    cases.insert(
        (Proto::Tcp, "mesh"),
        Case {
            addr: addr(p),
            procs: vec!["mesh-tcp"],
        },
    );
    mesh.start(
        &mut procs,
        "pair-server",
        Some(SERVER_SA),
        Some(Fixed::Inbound(format!("127.0.0.1:{b}"))),
        Some(server_inbound),
    )?;
    let (p, _) = mesh.start(
        &mut procs,
        "pair-client",
        Some(CLIENT_SA),
        Some(Fixed::Outbound(format!("{PAIR_VIP}:{PAIR_HTTP_PORT}"))),
        None,
    )?;
    for proto in [Proto::Http1, Proto::Http2] {
        cases.insert(
            (proto, "pair"),
            Case {
                addr: addr(p),
                procs: vec!["pair-client", "pair-server"],
            },
        );
    }
    let (p, _) = mesh.start(
        &mut procs,
        "pair-client-tcp",
        Some(CLIENT_SA),
        Some(Fixed::Outbound(format!("{PAIR_VIP}:{PAIR_TCP_PORT}"))),
        None,
    )?;
    cases.insert(
        (Proto::Tcp, "pair"),
        Case {
            addr: addr(p),
            procs: vec!["pair-client-tcp", "pair-server"],
        },
    );
    let authz = MeshProxy {
        state: &state_authz,
        ..mesh
    };
    authz.start(
        &mut procs,
        "pair-authz-server",
        Some(SERVER_SA),
        Some(Fixed::Inbound(format!("127.0.0.1:{b}"))),
        Some(authz_inbound),
    )?;
    mesh.start_clients(
        &mut procs,
        &mut cases,
        "pair-authz",
        ["pair-authz-client", "pair-authz-client-tcp"],
        Some(CLIENT_SA),
        PAIR_AUTHZ_VIP,
        Some("pair-authz-server"),
    )?;
    let setup = Setup {
        _backend: backend,
        status: addr(s),
        procs,
        cases,
        _ca: ca_runtime,
    };
    check(&setup, &server_id, addr(authz_inbound))?;
    Ok(setup)
}

/// Every case answers before anything is measured, and the pair's hop is mTLS with the
/// identities the CA signed.
fn check(setup: &Setup, server_id: &str, authz_inbound: SocketAddr) -> anyhow::Result<()> {
    for ((proto, target), case) in &setup.cases {
        if *proto == Proto::Http2 {
            continue; // plain HTTP/1.1 below; oha's first round shows h2 failures
        }
        let (status, _) = bench::http_get(case.addr, "/").map_err(|e| {
            anyhow::anyhow!(
                "{target} ({}) at {} did not answer: {e}",
                proto.key(),
                case.addr
            )
        })?;
        anyhow::ensure!(
            status == 200,
            "{target} ({}) at {} answered {status}",
            proto.key(),
            case.addr
        );
    }
    let pair = &setup.cases[&(Proto::Http1, "pair")];
    let (_, xfcc) = bench::http_get(pair.addr, "/xfcc")?;
    let client_id = format!("spiffe://cluster.local/ns/bench/sa/{CLIENT_SA}");
    anyhow::ensure!(
        xfcc.contains(&format!("URI={client_id}")) && xfcc.contains(server_id),
        "the pair's hop is not mTLS between {client_id} and {server_id}: the server saw \
         x-forwarded-client-cert {xfcc:?}"
    );
    // pair-authz's policy is enforced: a caller without the client's certificate is refused.
    let (status, _) = bench::http_get(authz_inbound, "/")?;
    anyhow::ensure!(
        status == 403,
        "pair-authz's server let a plaintext caller through ({status}): its policy is not in force"
    );
    Ok(())
}

/// The CA, served from a runtime of its own in this process (it only signs at start-up), and
/// the bootstrap tokens it accepts.
fn start_ca(
    dir: &Path,
) -> anyhow::Result<(
    tokio::runtime::Runtime,
    SocketAddr,
    Arc<mesh_ca::auth::BootstrapTokens>,
)> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let (authority, _) =
        mesh_ca::Authority::load_or_create(&dir.join("ca"), mesh_ca::CaConfig::default())?;
    let tokens = Arc::new(mesh_ca::auth::BootstrapTokens::default());
    let service = mesh_ca::service::CaService::new(Arc::new(authority), tokens.clone());
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
    let ca_addr = listener.local_addr()?;
    rt.spawn(mesh_ca::service::serve(
        listener,
        service,
        std::future::pending(),
    ));
    Ok((rt, ca_addr, tokens))
}

/// Which listener of a mesh proxy gets a fixed original destination.
enum Fixed {
    Outbound(String),
    Inbound(String),
}

struct MeshProxy<'a> {
    program: &'a Path,
    dir: &'a Path,
    state: &'a Path,
    /// The CA and the bootstrap tokens it accepts, for proxies given an identity.
    identity: Option<(SocketAddr, &'a mesh_ca::auth::BootstrapTokens)>,
}

impl MeshProxy<'_> {
    /// Starts the two client proxies of `target`, `names[0]` for HTTP (its HTTP/1.1 and HTTP/2
    /// cases) and `names[1]` for TCP, both sending to the service at `vip`; the CPU of
    /// `server`, when given, counts in the cases too.
    #[allow(clippy::too_many_arguments)]
    fn start_clients(
        &self,
        procs: &mut BTreeMap<&'static str, Running>,
        cases: &mut BTreeMap<(Proto, &'static str), Case>,
        target: &'static str,
        names: [&'static str; 2],
        sa: Option<&str>,
        vip: &str,
        server: Option<&'static str>,
    ) -> anyhow::Result<()> {
        let http: &[Proto] = &[Proto::Http1, Proto::Http2];
        for (name, port, protos) in [
            (names[0], PAIR_HTTP_PORT, http),
            (names[1], PAIR_TCP_PORT, &[Proto::Tcp]),
        ] {
            let (p, _) = self.start(
                procs,
                name,
                sa,
                Some(Fixed::Outbound(format!("{vip}:{port}"))),
                None,
            )?;
            for proto in protos {
                let mut counted = vec![name];
                counted.extend(server);
                cases.insert(
                    (*proto, target),
                    Case {
                        addr: addr(p),
                        procs: counted,
                    },
                );
            }
        }
        Ok(())
    }

    /// Starts `mesh-proxy run` on CPU 1 with one worker thread and access logs off (as in
    /// Istio's default profile), with the identity `bench/<sa>` when given, and waits until it
    /// is ready (state loaded, certificate in hand). Returns the outbound and inbound ports.
    fn start(
        &self,
        procs: &mut BTreeMap<&'static str, Running>,
        name: &'static str,
        sa: Option<&str>,
        fixed: Option<Fixed>,
        inbound: Option<u16>,
    ) -> anyhow::Result<(u16, u16)> {
        let outbound = bench::free_port()?;
        let inbound = match inbound {
            Some(p) => p,
            None => bench::free_port()?,
        };
        let (admin, ready, metrics) = (
            bench::free_port()?,
            bench::free_port()?,
            bench::free_port()?,
        );
        let mut args: Vec<String> = [
            "run",
            "--state-file",
            &self.state.display().to_string(),
            "--bind-address",
            "127.0.0.1",
            "--outbound-port",
            &outbound.to_string(),
            "--inbound-port",
            &inbound.to_string(),
            "--admin-port",
            &admin.to_string(),
            "--readiness-port",
            &ready.to_string(),
            "--metrics-port",
            &metrics.to_string(),
            "--worker-threads",
            "1",
            // Stopped at once when the bench ends: nothing is in flight by then.
            "--drain-timeout-secs",
            "0",
        ]
        .map(String::from)
        .to_vec();
        let listens = match &fixed {
            None => outbound,
            Some(Fixed::Outbound(dst)) => {
                args.extend(["--outbound-original-dst".into(), dst.clone()]);
                outbound
            }
            Some(Fixed::Inbound(dst)) => {
                args.extend(["--inbound-original-dst".into(), dst.clone()]);
                inbound
            }
        };
        if let Some(sa) = sa {
            let (ca, tokens) = self
                .identity
                .ok_or_else(|| anyhow::anyhow!("{name}: an identity needs the CA"))?;
            let token = self.dir.join(format!("{name}.token"));
            std::fs::write(&token, tokens.issue("bench", sa))?;
            args.extend(
                [
                    "--ca-address",
                    &format!("http://{ca}"),
                    "--bootstrap-token-file",
                    &token.display().to_string(),
                    "--namespace",
                    "bench",
                    "--service-account",
                    sa,
                ]
                .map(String::from),
            );
        }
        let running = Running::start(
            name,
            1,
            self.program,
            &args,
            &[("RUST_LOG", "warn")],
            addr(listens),
            &self.dir.join(format!("{name}.log")),
        )?;
        if !bench::wait_ok(addr(ready), "/healthz/ready", Duration::from_secs(15)) {
            let log =
                std::fs::read_to_string(self.dir.join(format!("{name}.log"))).unwrap_or_default();
            anyhow::bail!(
                "{name} was not ready within 15 s: {}",
                log.lines().rev().take(5).collect::<Vec<_>>().join(" | ")
            );
        }
        procs.insert(name, running);
        Ok((outbound, inbound))
    }
}

/// Connections the backend has accepted so far (nginx stub_status).
fn backend_accepts(status: SocketAddr) -> anyhow::Result<u64> {
    let (_, text) = bench::http_get(status, "/")?;
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

/// Open-loop latency at one rate.
#[derive(Default)]
struct Latency {
    p50_ms: Vec<f64>,
    p99_ms: Vec<f64>,
    added_p50_ms: Vec<f64>,
    added_p99_ms: Vec<f64>,
    /// Per percentile, the round's values.
    percentiles: BTreeMap<u64, (f64, Vec<f64>)>,
    failed: u64,
}

impl Latency {
    fn push(&mut self, r: &LoadResult) {
        self.p50_ms.push(r.p50_ms);
        self.p99_ms.push(r.p99_ms);
        self.failed += r.failed;
        for (p, ms) in &r.percentiles {
            self.percentiles
                .entry((p * 1000.0) as u64)
                .or_insert((*p, Vec::new()))
                .1
                .push(*ms);
        }
    }

    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "p50_ms": median(self.p50_ms.clone()),
            "p99_ms": median(self.p99_ms.clone()),
            "added_p50_ms": median(self.added_p50_ms.clone()),
            "added_p99_ms": median(self.added_p99_ms.clone()),
            "failed": self.failed,
        })
    }

    fn series(&self, label: &str) -> plot::Series {
        plot::Series {
            label: label.into(),
            points: self
                .percentiles
                .values()
                .map(|(p, v)| (*p, median(v.clone())))
                .collect(),
        }
    }
}

#[derive(Default)]
struct Figures {
    rps: Vec<f64>,
    cpu_ms_per_1000: Vec<f64>,
    reuse: Vec<f64>,
    failed: u64,
    at_rate: Latency,
    at_half: Latency,
}

/// Ratios of one case to another, one per round.
#[derive(Default)]
struct Ratios {
    cpu: Vec<f64>,
    rps: Vec<f64>,
    added_p50: Vec<f64>,
    added_p99: Vec<f64>,
}

fn run(cli: &Cli) -> anyhow::Result<ExitCode> {
    let missing = bench::missing_tools();
    if !missing.is_empty() {
        eprintln!("mesh-bench needs tools that are not installed:");
        for t in &missing {
            eprintln!("  {:<26} install with: {}", t.name, t.install);
        }
        return Ok(ExitCode::from(2));
    }
    let began = Instant::now();
    let rounds = cli.rounds.unwrap_or(if cli.quick { 2 } else { 5 });
    let secs = cli.secs.unwrap_or(if cli.quick { 1.0 } else { 3.0 });
    let run_for = Duration::from_secs_f64(secs);
    let dir = tempfile::TempDir::new()?;
    bench::remove_on_interrupt(dir.path());
    let setup = start(dir.path())?;
    if cli.serve {
        for ((proto, target), case) in &setup.cases {
            let pids: Vec<String> = case
                .procs
                .iter()
                .map(|p| format!("{p}={}", setup.procs[p].pids()[0]))
                .collect();
            println!(
                "{:<6} {target:<8} {}  {}",
                proto.key(),
                case.addr,
                pids.join(" ")
            );
        }
        println!(
            "serving until stdin closes (logs in {})",
            dir.path().display()
        );
        let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
        return Ok(ExitCode::SUCCESS);
    }
    let idle_rss = setup.procs["mesh"].peak_rss();

    // Half of HAProxy's saturation, per protocol: the second fixed rate, the same for every
    // target so their latencies compare.
    let mut half_rate = BTreeMap::new();
    for proto in Proto::ALL {
        let case = &setup.cases[&(proto, "haproxy")];
        let r = load(case, proto, run_for, None)?;
        let rate = ((r.rps / 2.0 / 100.0).round() as u64 * 100).max(LATENCY_RATE);
        eprintln!(
            "{}: HAProxy saturates at {:.0} rps; half-saturation rate {rate} rps",
            proto.key(),
            r.rps
        );
        half_rate.insert(proto, rate);
    }

    let mut figures: BTreeMap<(Proto, &str), Figures> = BTreeMap::new();
    let mut vs_haproxy: BTreeMap<(Proto, &str), Ratios> = BTreeMap::new();
    // pair-authz ÷ pair and mesh-policy ÷ mesh, CPU per request saturated, per round
    // (HTTP/1.1).
    let mut authz_vs_pair = Vec::new();
    let mut policy_vs_mesh = Vec::new();
    for round in 0..rounds {
        for proto in Proto::ALL {
            let mut saturated: BTreeMap<&str, (f64, f64)> = BTreeMap::new();
            let mut at_rate: BTreeMap<&str, (f64, f64)> = BTreeMap::new();
            let mut at_half: BTreeMap<&str, (f64, f64)> = BTreeMap::new();
            for i in 0..TARGETS.len() {
                let target = TARGETS[(i + round) % TARGETS.len()];
                let case = &setup.cases[&(proto, target)];
                let accepts_before = backend_accepts(setup.status)?;
                let cpu_before = setup.cpu(case);
                let r = load(case, proto, run_for, None)?;
                let cpu = setup.cpu(case) - cpu_before;
                let accepts = backend_accepts(setup.status)? - accepts_before;
                let f = figures.entry((proto, target)).or_default();
                f.rps.push(r.rps);
                f.failed += r.failed;
                let per_1000 = if r.ok > 0 {
                    cpu.as_secs_f64() * 1000.0 * 1000.0 / r.ok as f64
                } else {
                    0.0
                };
                f.cpu_ms_per_1000.push(per_1000);
                if r.ok > 0 && target != "direct" && proto != Proto::Tcp {
                    // Every backend connection during a proxy's run is that proxy's.
                    f.reuse.push(1.0 - accepts as f64 / r.ok as f64);
                }
                saturated.insert(target, (r.rps, per_1000));
                let lat = load(case, proto, run_for, Some(LATENCY_RATE))?;
                f.at_rate.push(&lat);
                at_rate.insert(target, (lat.p50_ms, lat.p99_ms));
                let half = load(case, proto, run_for, Some(half_rate[&proto]))?;
                f.at_half.push(&half);
                at_half.insert(target, (half.p50_ms, half.p99_ms));
                eprintln!(
                    "round {}/{rounds} {:<5} {target:<7} {:>7.0} rps {:>6.1} CPU-ms/1000  @{LATENCY_RATE}: p50 {:.3} p99 {:.3} ms  @{}: p50 {:.3} p99 {:.3} ms",
                    round + 1,
                    proto.key(),
                    r.rps,
                    per_1000,
                    lat.p50_ms,
                    lat.p99_ms,
                    half_rate[&proto],
                    half.p50_ms,
                    half.p99_ms
                );
            }
            let added = |m: &BTreeMap<&str, (f64, f64)>, t: &str| {
                let (d, x) = (m["direct"], m[t]);
                (x.0 - d.0, x.1 - d.1)
            };
            for target in TARGETS {
                let f = figures.entry((proto, target)).or_default();
                let (a50, a99) = added(&at_rate, target);
                f.at_rate.added_p50_ms.push(a50);
                f.at_rate.added_p99_ms.push(a99);
                let (h50, h99) = added(&at_half, target);
                f.at_half.added_p50_ms.push(h50);
                f.at_half.added_p99_ms.push(h99);
            }
            let (pair, authz) = (saturated["pair"].1, saturated["pair-authz"].1);
            if proto == Proto::Http1 && pair > 0.0 {
                authz_vs_pair.push(authz / pair);
            }
            let (one, policy) = (saturated["mesh"].1, saturated["mesh-policy"].1);
            if proto == Proto::Http1 && one > 0.0 {
                policy_vs_mesh.push(policy / one);
            }
            let (h_sat, h_lat) = (saturated["haproxy"], added(&at_rate, "haproxy"));
            for target in ["mesh", "pair", "nginx"] {
                let r = vs_haproxy.entry((proto, target)).or_default();
                let (sat, lat) = (saturated[target], added(&at_rate, target));
                if h_sat.0 > 0.0 && h_sat.1 > 0.0 {
                    r.rps.push(sat.0 / h_sat.0);
                    r.cpu.push(sat.1 / h_sat.1);
                }
                // A hop that adds nothing measurable gives no ratio.
                if h_lat.0 > 0.0 {
                    r.added_p50.push(lat.0 / h_lat.0);
                }
                if h_lat.1 > 0.0 {
                    r.added_p99.push(lat.1 / h_lat.1);
                }
            }
        }
    }

    let rss_mb = |b: u64| b as f64 / (1024.0 * 1024.0);
    let rss_1000 = rss_with_services(dir.path(), 1000)?;
    let ratio = |proto: Proto, target: &str, pick: fn(&Ratios) -> &Vec<f64>| {
        vs_haproxy
            .get(&(proto, target))
            .map_or(0.0, |r| median(pick(r).clone()))
    };
    let cpu_vs = ratio(Proto::Http1, "mesh", |r| &r.cpu);
    let rps_vs = ratio(Proto::Http1, "mesh", |r| &r.rps);
    let pair_p50 = ratio(Proto::Http1, "pair", |r| &r.added_p50);
    let pair_p99 = ratio(Proto::Http1, "pair", |r| &r.added_p99);
    let reuse = median(figures[&(Proto::Http1, "mesh")].reuse.clone());
    let authz_cpu = median(authz_vs_pair);
    let policy_cpu = median(policy_vs_mesh);
    let failed: u64 = figures
        .values()
        .map(|f| f.failed + f.at_rate.failed + f.at_half.failed)
        .sum();

    let mut panels = Vec::new();
    for proto in Proto::ALL {
        for (rate, pick) in [
            (
                LATENCY_RATE,
                (|f: &Figures| &f.at_rate) as fn(&Figures) -> &Latency,
            ),
            (half_rate[&proto], |f: &Figures| &f.at_half),
        ] {
            panels.push(plot::Panel {
                title: format!("{} at {rate} rps", proto.title()),
                series: TARGETS
                    .iter()
                    .map(|t| pick(&figures[&(proto, *t)]).series(t))
                    .collect(),
            });
        }
    }
    plot::latency_png(
        &cli.plot,
        Path::new(bench::PLOT_FONT),
        &format!(
            "Latency percentiles, open loop with coordinated-omission correction ({rounds} rounds × {secs} s, medians)"
        ),
        &panels,
    )?;

    let elapsed = began.elapsed().as_secs_f64();
    if cli.output == "json" {
        let mut cases = serde_json::Map::new();
        for proto in Proto::ALL {
            let mut per_target = serde_json::Map::new();
            for t in TARGETS {
                let f = &figures[&(proto, t)];
                let case = &setup.cases[&(proto, t)];
                per_target.insert(
                    t.to_string(),
                    serde_json::json!({
                        "rps": median(f.rps.clone()),
                        "cpu_ms_per_1000": median(f.cpu_ms_per_1000.clone()),
                        "upstream_reuse": (!f.reuse.is_empty()).then(|| median(f.reuse.clone())),
                        "rss_peak_mb": (t != "direct").then(|| rss_mb(setup.peak_rss(case))),
                        "failed": f.failed,
                        "latency_1000rps": f.at_rate.json(),
                        "latency_half_saturation": f.at_half.json(),
                        "rps_vs_haproxy": vs_haproxy.get(&(proto, t)).map(|r| median(r.rps.clone())),
                        "cpu_per_req_vs_haproxy": vs_haproxy.get(&(proto, t)).map(|r| median(r.cpu.clone())),
                    }),
                );
            }
            cases.insert(
                proto.key().to_string(),
                serde_json::json!({
                    "half_saturation_rps": half_rate[&proto],
                    "targets": per_target,
                }),
            );
        }
        let out = serde_json::json!({
            "rounds": rounds,
            "secs_per_run": secs,
            "elapsed_s": elapsed,
            "cpu_per_req_vs_haproxy": cpu_vs,
            "rps_vs_haproxy": rps_vs,
            "added_p50_pair_vs_haproxy": pair_p50,
            "added_p99_pair_vs_haproxy": pair_p99,
            "cpu_per_req_pair_authz_vs_pair": authz_cpu,
            "cpu_per_req_mesh_policy_vs_mesh": policy_cpu,
            "upstream_reuse": reuse,
            "rss_idle_mb": rss_mb(idle_rss),
            "rss_peak_mb": rss_mb(setup.procs["mesh"].peak_rss()),
            "rss_1000_services_mb": rss_mb(rss_1000),
            "failed_requests": failed,
            "plot": cli.plot.display().to_string(),
            "cases": cases,
        });
        println!("{out}");
    } else {
        println!(
            "\n{rounds} rounds × {secs} s per run, {CONNECTIONS} connections when saturated; medians; `pair` is two sidecars with mTLS between them (CPU and RSS of both)\n"
        );
        for proto in Proto::ALL {
            println!("### {}\n", proto.title());
            println!(
                "| target | requests/s | CPU-ms per 1000 | upstream reuse | peak RSS | p50 / p99 at {LATENCY_RATE} rps | added vs direct | p50 / p99 at {} rps | added vs direct |",
                half_rate[&proto]
            );
            println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
            for t in TARGETS {
                let f = &figures[&(proto, t)];
                let case = &setup.cases[&(proto, t)];
                let rss = match t {
                    "direct" => "-".to_string(),
                    _ => format!("{:.1} MiB", rss_mb(setup.peak_rss(case))),
                };
                let reuse = if f.reuse.is_empty() {
                    "-".to_string()
                } else {
                    format!("{:.4}", median(f.reuse.clone()))
                };
                let lat = |l: &Latency| {
                    (
                        format!(
                            "{:.3} / {:.3} ms",
                            median(l.p50_ms.clone()),
                            median(l.p99_ms.clone())
                        ),
                        format!(
                            "{:+.3} / {:+.3} ms",
                            median(l.added_p50_ms.clone()),
                            median(l.added_p99_ms.clone())
                        ),
                    )
                };
                let (r, ra) = lat(&f.at_rate);
                let (h, ha) = lat(&f.at_half);
                println!(
                    "| {t} | {:.0} | {:.1} | {reuse} | {rss} | {r} | {ra} | {h} | {ha} |",
                    median(f.rps.clone()),
                    median(f.cpu_ms_per_1000.clone()),
                );
            }
            println!();
        }
        println!(
            "one mesh hop ÷ HAProxy (HTTP/1.1, saturated, median of per-round ratios): CPU per request {cpu_vs:.2} (target ≤ 1.0), requests/s {rps_vs:.2} (target ≥ 1.0)"
        );
        println!(
            "mTLS sidecar pair's added latency ÷ one HAProxy hop's (HTTP/1.1 at {LATENCY_RATE} rps): p50 {pair_p50:.2}, p99 {pair_p99:.2} (target ≤ 2.0 each)"
        );
        println!(
            "one ALLOW AuthorizationPolicy on the pair's server ÷ none (HTTP/1.1, saturated): CPU per request {authz_cpu:.3}"
        );
        println!(
            "one hop with a retry policy and a connection pool ÷ without (HTTP/1.1, saturated): CPU per request {policy_cpu:.3} (target ≤ 1.05)"
        );
        println!(
            "mesh proxy RSS: {:.1} MiB idle (target ≤ 10 MB), {:.1} MiB idle with 1000 services and 10,000 endpoints (target ≤ 20 MB); upstream reuse {reuse:.4} (target ≥ 0.99)",
            rss_mb(idle_rss),
            rss_mb(rss_1000)
        );
        println!(
            "failed requests: {failed}; plot: {}; {elapsed:.0} s in all",
            cli.plot.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// One oha run against `case`: saturated (closed loop) without `rate`, open loop with it.
fn load(
    case: &Case,
    proto: Proto,
    run_for: Duration,
    rate: Option<u64>,
) -> anyhow::Result<LoadResult> {
    bench::oha(
        &format!("http://{}/", case.addr),
        run_for,
        CONNECTIONS,
        rate,
        proto == Proto::Http2,
    )
}

/// Peak RSS of a proxy holding `services` services of 10 endpoints each (as pilot would send
/// a proxy that sees the whole mesh), idle.
fn rss_with_services(dir: &Path, services: usize) -> anyhow::Result<u64> {
    use std::fmt::Write;
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
    let proxy = meshctl::local::find_binary("mesh-proxy", "mesh-proxy")?;
    let mesh = MeshProxy {
        program: &proxy,
        dir,
        state: &file,
        identity: None,
    };
    let mut procs = BTreeMap::new();
    mesh.start(&mut procs, "mesh-1000", None, None, None)?;
    Ok(procs["mesh-1000"].peak_rss())
}
