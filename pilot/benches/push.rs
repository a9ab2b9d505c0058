//! Push latency and size at scale: `mesh-pilot serve` on one core with a folder of 1000
//! services and 10,000 endpoints (WorkloadEntries), N discovery clients in this process on
//! the other core. Each round rewrites one endpoint of a service every client sees, and
//! measures, per client, the time from the write to its ACK of the delta that carries the
//! change (file watch, debounce, model rebuild, translation and push included). Reports
//! p50/p99/max over clients and rounds, the bytes of that delta against the client's full
//! state, and pilot's RSS.
//!
//! `cargo bench -p mesh-pilot --bench push` (N = 100, 1000, 2000); `MESH_PUSH_QUICK=1` for
//! N = 100 only; `MESH_PUSH_CLIENTS=a,b` to choose.

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::print_stdout,
    missing_docs
)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mesh_api::proto::discovery::v1 as pb;
use mesh_pilot::discovery::{SERVICE_TYPE, WORKLOAD_TYPE};
use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

const NAMESPACES: usize = 10;
const SERVICES_PER_NS: usize = 100;
const ENDPOINTS_PER_SERVICE: usize = 10;
const ROUNDS: usize = 5;
const CHANGED: &str = "svc-0.ns0.svc.cluster.local";

fn workload_entry(ns: usize, svc: usize, ep: usize, last_octet: usize) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: svc-{svc}-{ep}, namespace: ns{ns}}}\nspec:\n  address: 10.{}.{}.{last_octet}\n  labels: {{app: svc-{svc}, version: v{}, security.istio.io/tlsMode: istio}}\n  serviceAccount: svc-{svc}\n",
        100 + ns,
        svc,
        ep % 2 + 1
    )
}

/// Writes the mesh: per namespace one file of Services and DestinationRules and one of
/// WorkloadEntries, plus the file the rounds rewrite.
fn write_mesh(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    for ns in 0..NAMESPACES {
        let mut services = String::new();
        let mut entries = String::new();
        for svc in 0..SERVICES_PER_NS {
            services += &format!(
                "apiVersion: v1\nkind: Service\nmetadata: {{name: svc-{svc}, namespace: ns{ns}}}\nspec:\n  clusterIP: 10.96.{ns}.{svc}\n  selector: {{app: svc-{svc}}}\n  ports: [{{name: http, port: 80, targetPort: 8080}}]\n---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: svc-{svc}, namespace: ns{ns}}}\nspec:\n  host: svc-{svc}\n  subsets: [{{name: v1, labels: {{version: v1}}}}, {{name: v2, labels: {{version: v2}}}}]\n---\n"
            );
            for ep in 0..ENDPOINTS_PER_SERVICE {
                if (ns, svc, ep) != (0, 0, 0) {
                    entries += &workload_entry(ns, svc, ep, ep + 1);
                    entries += "---\n";
                }
            }
        }
        std::fs::write(dir.join(format!("ns{ns}-services.yaml")), services).unwrap();
        std::fs::write(dir.join(format!("ns{ns}-endpoints.yaml")), entries).unwrap();
    }
    std::fs::write(dir.join("changing.yaml"), workload_entry(0, 0, 0, 1)).unwrap();
}

fn rss_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

struct PilotProcess {
    child: Child,
    discovery: String,
}

impl Drop for PilotProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start_pilot(binary: &Path, dir: &Path) -> PilotProcess {
    let (d, g) = (free_port(), free_port());
    let mut cmd = Command::new("taskset");
    cmd.args(["-c", "1"]);
    // A profiler to run pilot under, e.g. MESH_PUSH_WRAP=heaptrack.
    if let Ok(wrap) = std::env::var("MESH_PUSH_WRAP") {
        cmd.args(wrap.split_whitespace());
    }
    cmd.arg(binary).args(["serve", "--config-dir"]).arg(dir);
    cmd.args(["--discovery-address", &format!("127.0.0.1:{d}")]);
    cmd.args(["--debug-address", &format!("127.0.0.1:{g}")]);
    let child = cmd
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("taskset and mesh-pilot run");
    PilotProcess {
        child,
        discovery: format!("http://127.0.0.1:{d}"),
    }
}

/// What one client saw of one round.
#[derive(Clone, Copy, Debug)]
struct Seen {
    at: Instant,
    delta_bytes: usize,
    full_bytes: usize,
}

/// A lightweight client: holds the resources, ACKs every response, and reports the time it
/// ACKed a response carrying a new version of the changed service.
async fn client(
    address: String,
    id: usize,
    seen: mpsc::UnboundedSender<(usize, Seen)>,
    ready: mpsc::UnboundedSender<()>,
) {
    // As a proxy does: a failed connection or stream is retried after a short pause.
    let mut announced = false;
    loop {
        let result = stream_once(&address, id, &seen, &ready, &mut announced).await;
        if let (Err(e), 0) = (result, id) {
            eprintln!("client 0: {e}; retrying");
        }
        tokio::time::sleep(Duration::from_millis(100 + fastrand::u64(0..100))).await;
    }
}

async fn stream_once(
    address: &str,
    id: usize,
    seen: &mpsc::UnboundedSender<(usize, Seen)>,
    ready: &mpsc::UnboundedSender<()>,
    announced: &mut bool,
) -> Result<(), String> {
    let channel = tonic::transport::Endpoint::from_shared(address.to_string())
        .map_err(|e| e.to_string())?
        .connect()
        .await
        .map_err(|e| e.to_string())?;
    let (tx, rx) = mpsc::channel(16);
    let node = pb::Node {
        id: format!("sidecar~10.200.{}.{}~bench-{id}.ns0", id / 250, id % 250),
        namespace: "ns0".into(),
        service_account: "bench".into(),
        labels: [("app".to_string(), "bench".to_string())].into(),
        ..Default::default()
    };
    let send = |r| {
        let tx = tx.clone();
        async move { tx.send(r).await.map_err(|e| e.to_string()) }
    };
    send(pb::DeltaDiscoveryRequest {
        node: Some(node),
        type_url: WORKLOAD_TYPE.into(),
        ..Default::default()
    })
    .await?;
    send(pb::DeltaDiscoveryRequest {
        type_url: SERVICE_TYPE.into(),
        ..Default::default()
    })
    .await?;
    let mut stream = pb::discovery_client::DiscoveryClient::new(channel)
        .delta_resources(ReceiverStream::new(rx))
        .await
        .map_err(|e| e.to_string())?
        .into_inner();
    let mut held: HashMap<String, usize> = HashMap::new();
    let mut complete = false;
    loop {
        let r = match stream.message().await {
            Ok(Some(r)) => r,
            Ok(None) => return Err("stream ended".into()),
            Err(e) => return Err(e.to_string()),
        };
        for res in &r.resources {
            held.insert(res.name.clone(), res.encoded_len());
        }
        for name in &r.removed_resources {
            held.remove(name);
        }
        send(pb::DeltaDiscoveryRequest {
            type_url: r.type_url.clone(),
            response_nonce: r.nonce.clone(),
            ..Default::default()
        })
        .await?;
        if r.type_url == SERVICE_TYPE {
            // The first view may come in several responses: ready once it is all here.
            if !complete {
                complete = held.len() > SERVICES_PER_NS;
                if complete && !*announced {
                    *announced = true;
                    let _ = ready.send(());
                }
            } else if r.resources.iter().any(|x| x.name == CHANGED) {
                let full = held.values().sum();
                let _ = seen.send((
                    id,
                    Seen {
                        at: Instant::now(),
                        delta_bytes: r.encoded_len(),
                        full_bytes: full,
                    },
                ));
            }
        }
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

struct Row {
    clients: usize,
    p50: f64,
    p99: f64,
    max: f64,
    delta: usize,
    full: usize,
    rss_mib: f64,
    hwm_mib: f64,
}

fn pin_to_cpu0() {
    let mut set = nix::sched::CpuSet::new();
    if set.set(0).is_ok() {
        let _ = nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set);
    }
}

fn measure(binary: &Path, dir: &Path, clients: usize) -> Row {
    write_mesh(dir);
    let pilot = start_pilot(binary, dir);
    let pid = pilot.child.id();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let (seen_tx, mut seen_rx) = mpsc::unbounded_channel();
        let (ready_tx, mut ready_rx) = mpsc::unbounded_channel();
        for id in 0..clients {
            tokio::spawn(client(
                pilot.discovery.clone(),
                id,
                seen_tx.clone(),
                ready_tx.clone(),
            ));
        }
        for _ in 0..clients {
            tokio::time::timeout(Duration::from_secs(120), ready_rx.recv())
                .await
                .expect("every client gets its view")
                .unwrap();
        }
        let mut latencies = Vec::new();
        let (mut delta, mut full) = (0, 0);
        for round in 0..ROUNDS {
            // Let pilot settle before the change (the previous push fully acknowledged).
            tokio::time::sleep(Duration::from_millis(300)).await;
            let start = Instant::now();
            std::fs::write(
                dir.join("changing.yaml"),
                workload_entry(0, 0, 0, 2 + round % 2),
            )
            .unwrap();
            let mut got = 0;
            while got < clients {
                let (_, s): (usize, Seen) =
                    tokio::time::timeout(Duration::from_secs(60), seen_rx.recv())
                        .await
                        .expect("every client sees the change")
                        .unwrap();
                latencies.push(s.at.duration_since(start).as_secs_f64() * 1000.0);
                delta = s.delta_bytes;
                full = s.full_bytes;
                got += 1;
            }
        }
        latencies.sort_by(f64::total_cmp);
        Row {
            clients,
            p50: percentile(&latencies, 0.5),
            p99: percentile(&latencies, 0.99),
            max: latencies.last().copied().unwrap_or(f64::NAN),
            delta,
            full,
            rss_mib: rss_kib(pid, "VmRSS:") as f64 / 1024.0,
            hwm_mib: rss_kib(pid, "VmHWM:") as f64 / 1024.0,
        }
    })
}

fn pilot_binary() -> PathBuf {
    // Built by the same `cargo bench`, with the bench profile.
    PathBuf::from(env!("CARGO_BIN_EXE_mesh-pilot"))
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let clients: Vec<usize> = match (
        std::env::var("MESH_PUSH_CLIENTS"),
        std::env::var("MESH_PUSH_QUICK"),
    ) {
        (Ok(list), _) => list
            .split(',')
            .filter_map(|s| s.trim().parse().ok())
            .collect(),
        (_, Ok(_)) => vec![100],
        _ => vec![100, 1000, 2000],
    };
    if Command::new("taskset").arg("-V").output().is_err() {
        eprintln!("push bench: `taskset` is missing (apt-get install -y util-linux)");
        std::process::exit(2);
    }
    let binary = pilot_binary();
    pin_to_cpu0();
    let dir = std::env::temp_dir().join(format!("mesh-push-bench-{}", std::process::id()));
    println!(
        "mesh: {} services, {} endpoints ({NAMESPACES} namespaces); every client in ns0 sees {SERVICES_PER_NS} services; {ROUNDS} rounds",
        NAMESPACES * SERVICES_PER_NS,
        NAMESPACES * SERVICES_PER_NS * ENDPOINTS_PER_SERVICE
    );
    println!("pilot: release build, pinned to CPU 1 (one core); clients pinned to CPU 0\n");
    println!(
        "| clients | change→ACK p50 | p99 | max | delta bytes | full state bytes | pilot RSS | pilot peak RSS |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut targets = Vec::new();
    for n in clients {
        let r = measure(&binary, &dir, n);
        println!(
            "| {} | {:.0} ms | {:.0} ms | {:.0} ms | {} | {} | {:.0} MiB | {:.0} MiB |",
            r.clients, r.p50, r.p99, r.max, r.delta, r.full, r.rss_mib, r.hwm_mib
        );
        // The targets of docs/performance.md, for the sizes they are set at.
        if n == 1000 {
            targets.push(target("change→ACK p99 at 1000 proxies", r.p99, 500.0, "ms"));
        }
        if n == 2000 {
            let peak_mb = r.hwm_mib * 1024.0 * 1024.0 / 1e6;
            targets.push(target(
                "pilot peak RSS at 2000 proxies",
                peak_mb,
                250.0,
                "MB",
            ));
        }
    }
    if !targets.is_empty() {
        println!("\n{}", targets.join("\n"));
    }
    let _ = std::fs::remove_dir_all(&dir);
}

fn target(what: &str, got: f64, at_most: f64, unit: &str) -> String {
    let verdict = if got <= at_most { "met" } else { "NOT met" };
    format!("target: {what} ≤ {at_most:.0} {unit}: {got:.0} {unit}, {verdict}")
}
