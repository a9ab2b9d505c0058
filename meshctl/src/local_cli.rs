//! The local runtime's commands: `up`, `down`, `run`, `ps`, `logs`, `exec`, `apply`, `delete`,
//! `demo`, and the hidden `control-plane` that `up` starts.

use std::path::PathBuf;
use std::process::ExitCode;

use meshctl::demo::{self, DemoOptions};
use meshctl::local::{self, Mesh, PodSpec, config, pods};

/// Where the mesh's files are.
#[derive(clap::Args, Clone)]
pub struct DirArg {
    /// The mesh's folder: configuration, CA, logs and the record of what was created.
    #[arg(long, default_value = local::DEFAULT_DIR, env = "MESH_DIR")]
    pub dir: PathBuf,
}

/// `meshctl run`.
#[derive(clap::Args)]
pub struct RunArgs {
    #[command(flatten)]
    dir: DirArg,
    /// Pod name (lowercase letters, digits, '-').
    #[arg(long)]
    name: String,
    /// Namespace.
    #[arg(long, default_value = "default")]
    namespace: String,
    /// Service account: the pod's identity is spiffe://cluster.local/ns/NS/sa/SA.
    #[arg(long, default_value = "default")]
    service_account: String,
    /// Labels (`app=order,version=v1`): Services select pods by them.
    #[arg(long, default_value = "")]
    labels: String,
    /// A port the app serves (repeatable); `run` waits until it listens.
    #[arg(long = "port")]
    ports: Vec<u16>,
    /// Run without a sidecar (no capture, no identity).
    #[arg(long)]
    no_sidecar: bool,
    /// The command to run.
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

/// `meshctl logs` and `meshctl rm`.
#[derive(clap::Args)]
pub struct LogsArgs {
    #[command(flatten)]
    dir: DirArg,
    /// The pod.
    name: String,
    /// (logs) The sidecar's log instead of the app's.
    #[arg(long)]
    proxy: bool,
}

/// `meshctl exec`.
#[derive(clap::Args)]
pub struct ExecArgs {
    #[command(flatten)]
    dir: DirArg,
    /// The pod.
    name: String,
    /// The command.
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

/// `meshctl apply` / `delete`.
#[derive(clap::Args)]
pub struct FilesArgs {
    #[command(flatten)]
    dir: DirArg,
    /// A file or a folder of YAML/JSON (repeatable).
    #[arg(short = 'f', long = "filename", required = true)]
    files: Vec<PathBuf>,
}

/// `meshctl demo`.
#[derive(clap::Args)]
pub struct DemoArgs {
    #[command(flatten)]
    dir: DirArg,
    /// Leave the mesh running and print what to try next.
    #[arg(long)]
    keep: bool,
    /// `text` (a table) or `json` (one object).
    #[arg(short = 'o', long = "output", value_enum, default_value = "text")]
    output: Output,
    /// Requests from order to shipping.
    #[arg(long, default_value_t = 1000)]
    requests: usize,
    /// Their rate per second.
    #[arg(long, default_value_t = 300.0)]
    rate: f64,
}

/// Output format.
#[derive(Clone, Copy, clap::ValueEnum, PartialEq, Eq)]
pub enum Output {
    /// For people.
    Text,
    /// One JSON object.
    Json,
}

fn fail(e: impl std::fmt::Display) -> ExitCode {
    eprintln!("error: {e}");
    ExitCode::FAILURE
}

/// `meshctl up`.
pub fn up(args: &DirArg) -> ExitCode {
    match Mesh::new(&args.dir).up() {
        Ok(r) => {
            let verb = if r.restarted { "restarted" } else { "started" };
            println!(
                "mesh {verb} in {} (network namespace {}; pilot and CA on {})",
                args.dir.display(),
                r.hub,
                local::net::HUB_ADDRESS
            );
            if let Some(addr) = r.gateway {
                println!(
                    "ingress gateway istio-system/istio-ingressgateway at {addr} (pod {}): it serves the ports of Gateways selecting istio: ingressgateway",
                    local::INGRESS_GATEWAY_POD
                );
            }
            println!("next: meshctl apply -f FILE, meshctl run --name NAME -- CMD, meshctl ps");
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    }
}

/// `meshctl down`.
pub fn down(args: &DirArg) -> ExitCode {
    match Mesh::new(&args.dir).down() {
        Ok(r) if r.namespaces == 0 && r.pods == 0 => {
            println!("nothing to remove in {}", args.dir.display());
            ExitCode::SUCCESS
        }
        Ok(r) => {
            println!(
                "removed {} pods and {} network namespaces; configuration and CA stay in {}",
                r.pods,
                r.namespaces,
                args.dir.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    }
}

/// `meshctl run`.
pub fn run(args: &RunArgs) -> ExitCode {
    let labels = match pods::parse_labels(&args.labels) {
        Ok(l) => l,
        Err(e) => return fail(e),
    };
    let spec = PodSpec {
        name: args.name.clone(),
        namespace: args.namespace.clone(),
        service_account: args.service_account.clone(),
        labels,
        ports: args.ports.clone(),
        sidecar: !args.no_sidecar,
        gateway: false,
        command: args.command.clone(),
        ..PodSpec::default()
    };
    match Mesh::new(&args.dir.dir).run(&spec) {
        Ok(pod) => {
            println!(
                "pod {} running at {}{}",
                pod.name,
                pod.address,
                if pod.sidecar {
                    format!(
                        " with its sidecar (spiffe://cluster.local/ns/{}/sa/{})",
                        pod.namespace, pod.service_account
                    )
                } else {
                    " without a sidecar".into()
                }
            );
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    }
}

/// `meshctl ps`.
pub fn ps(args: &DirArg) -> ExitCode {
    let st = match Mesh::new(&args.dir).state() {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    let cp = if st.control_plane.is_some_and(|p| p.alive()) {
        "running"
    } else {
        "STOPPED (meshctl up starts it again)"
    };
    println!("control plane: {cp}");
    println!(
        "{:<24} {:<12} {:<14} {:<8} {:<9} {:<26} PORTS",
        "NAME", "NAMESPACE", "ADDRESS", "SIDECAR", "STATUS", "LABELS"
    );
    for pod in st.pods.values() {
        // A gateway pod has no app: its proxy is the workload.
        let app = pod.command.is_empty() || pod.app.is_some_and(|p| p.alive());
        let proxy = !pod.sidecar || pod.proxy.is_some_and(|p| p.alive());
        let status = match (app, proxy) {
            (true, true) => "running",
            (false, _) => "exited",
            (true, false) => "no-proxy",
        };
        let labels = pod.labels_text();
        let ports = pod
            .ports
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",");
        println!(
            "{:<24} {:<12} {:<14} {:<8} {:<9} {:<26} {}",
            pod.name,
            pod.namespace,
            pod.address,
            match (pod.gateway, pod.sidecar) {
                (true, _) => "gateway",
                (false, true) => "yes",
                (false, false) => "no",
            },
            status,
            labels,
            ports
        );
    }
    ExitCode::SUCCESS
}

/// `meshctl rm`.
pub fn rm(args: &LogsArgs) -> ExitCode {
    match Mesh::new(&args.dir.dir).remove(&args.name) {
        Ok(()) => {
            println!("pod {} removed", args.name);
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    }
}

/// `meshctl logs`.
pub fn logs(args: &LogsArgs) -> ExitCode {
    let path = match Mesh::new(&args.dir.dir).log_path(&args.name, args.proxy) {
        Ok(p) => p,
        Err(e) => return fail(e),
    };
    match std::fs::read(&path) {
        Ok(bytes) => {
            use std::io::Write;
            let _ = std::io::stdout().write_all(&bytes);
            ExitCode::SUCCESS
        }
        Err(e) => fail(format!("{}: {e}", path.display())),
    }
}

/// `meshctl exec`.
pub fn exec(args: &ExecArgs) -> ExitCode {
    let mut cmd = match Mesh::new(&args.dir.dir).exec_command(&args.name, &args.command) {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    match cmd.status() {
        Ok(status) => ExitCode::from(status.code().unwrap_or(1).clamp(0, 255) as u8),
        Err(e) => fail(format!("running {:?}: {e}", args.command)),
    }
}

fn print_invalid(e: &config::ApplyError) {
    if let config::ApplyError::Invalid(diags) = e {
        for d in diags {
            println!("{d}");
        }
    }
    eprintln!("error: {e}");
}

/// `meshctl apply`.
pub fn apply(args: &FilesArgs) -> ExitCode {
    let mesh = Mesh::new(&args.dir.dir);
    let deployed = match mesh.apply(&args.files, |name| println!("pod {name} starting")) {
        Ok(d) => d,
        Err(e) => {
            print_invalid(&e);
            return ExitCode::FAILURE;
        }
    };
    for w in &deployed.applied.warnings {
        eprintln!("{w}");
    }
    for line in &deployed.applied.lines {
        println!("{line}");
    }
    for s in &deployed.skipped {
        eprintln!("warning: {s}");
    }
    ExitCode::SUCCESS
}

/// `meshctl delete`.
pub fn delete(args: &FilesArgs) -> ExitCode {
    match Mesh::new(&args.dir.dir).delete(&args.files) {
        Ok(lines) => {
            for line in lines {
                println!("{line}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            print_invalid(&e);
            ExitCode::FAILURE
        }
    }
}

/// `meshctl demo`.
pub fn demo(args: &DemoArgs) -> ExitCode {
    let options = DemoOptions {
        dir: args.dir.dir.clone(),
        requests: args.requests,
        rate: args.rate,
        keep: args.keep,
        progress: true,
    };
    let mut log = std::io::stderr();
    match demo::run(&options, &mut log) {
        Ok(report) => {
            if args.output == Output::Json {
                println!("{}", serde_json::to_string(&report).unwrap_or_default());
            } else {
                print!("{}", demo::table(&report));
                if args.keep {
                    print!("{}", demo::next_steps(&args.dir.dir));
                }
            }
            if report.success_rate < 1.0 {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(e) => fail(format!("{e:#}")),
    }
}

/// `meshctl control-plane` (started by `up` inside the hub namespace).
pub fn control_plane(args: &DirArg) -> ExitCode {
    let _ = rustls::crypto::ring::default_provider().install_default();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => return fail(e),
    };
    let layout = local::state::Layout {
        dir: args.dir.clone(),
    };
    match runtime.block_on(local::control::serve(
        layout,
        std::net::IpAddr::V4(local::net::HUB_ADDRESS),
    )) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(format!("{e:#}")),
    }
}
