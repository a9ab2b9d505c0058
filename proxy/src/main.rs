//! The `mesh-proxy` binary: a thin command line over the library. Its flags become the typed
//! `mesh_proxy::run::RunConfig` (`run`) or `mesh_proxy::init::CaptureConfig` (`init`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use mesh_proxy::Listeners;
use mesh_proxy::init::{self, CaptureConfig, Iptables, NamespaceCheck, Variant};
use mesh_proxy::run::{
    self, CaTls, CredentialKind, IdentitySource, RunConfig, StateSource, WorkloadConfig,
};

/// mimalloc instead of the C library's allocator: every request allocates a dozen small
/// blocks (headers, buffers, futures), and glibc's malloc and free cost about 8% of a hop's
/// instructions (docs/performance.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The mesh's sidecar proxy.
#[derive(Parser)]
#[command(name = "mesh-proxy", version, about = "The mesh's sidecar proxy")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write the traffic-capture rules of this network namespace (as Istio's init container).
    Init(InitArgs),
    /// Run the proxy: outbound (15001) and inbound (15006) capture listeners, admin (15000),
    /// readiness (15021). Exits 0 after a graceful drain on SIGTERM or POST /drain.
    Run(RunArgs),
    /// Wait until the proxy in this pod is ready (the injector's postStart hook, so the
    /// application starts only then). Exits 1 when it is not ready in time.
    Wait(WaitArgs),
    /// Send one request to this proxy's admin (15000), metrics (15020) or readiness (15021)
    /// port on loopback and print the body, as Istio's `pilot-agent request`:
    /// `mesh-proxy request GET /config_dump`. Exits 1 unless the answer is 2xx.
    Request(RequestArgs),
}

#[derive(Args)]
struct RequestArgs {
    /// The method (GET, POST).
    method: String,
    /// The path, e.g. /config_dump, /stats, /clusters.
    path: String,
    /// The loopback port to ask.
    #[arg(long, default_value_t = 15000)]
    port: u16,
    /// How long to wait for the answer, in seconds.
    #[arg(long, default_value_t = 10)]
    timeout_secs: u64,
}

/// What the proxy is.
#[derive(Clone, Copy, clap::ValueEnum)]
enum Mode {
    /// Beside a workload, its traffic captured (15001, 15006).
    Sidecar,
    /// An ingress gateway: listens on the ports of the Istio Gateways that select it (from
    /// pilot), on --bind-address, and routes by Host through the VirtualServices bound to them.
    Gateway,
}

/// What the CA token file holds.
#[derive(Clone, Copy, clap::ValueEnum)]
enum CaCredential {
    /// The local runtime's bootstrap token.
    Bootstrap,
    /// A Kubernetes projected service-account token.
    Kubernetes,
}

#[derive(Args)]
struct WaitArgs {
    /// The readiness address to ask.
    #[arg(long, default_value = "127.0.0.1:15021")]
    address: std::net::SocketAddr,
    /// How long to wait, in seconds.
    #[arg(long, default_value_t = 60)]
    timeout_secs: u64,
}

#[derive(Args)]
struct RunArgs {
    /// Sidecar or gateway.
    #[arg(long, value_enum, default_value = "sidecar")]
    mode: Mode,
    /// The proxy's state (mesh.state.v1.ProxyState as YAML or JSON); watched for changes.
    /// Without pilot, this is how the proxy is configured.
    #[arg(
        long,
        value_name = "FILE",
        required_unless_present = "discovery_address",
        conflicts_with = "discovery_address"
    )]
    state_file: Option<PathBuf>,
    /// Pilot's discovery address (e.g. http://127.0.0.1:15010): the state comes from pilot,
    /// and destinations not yet known are asked for on demand.
    #[arg(long, value_name = "URL")]
    discovery_address: Option<String>,
    /// The identity pilot must prove over mTLS (`https://` discovery addresses); by default
    /// `spiffe://<trust domain>/ns/istio-system/sa/istiod`.
    #[arg(long, value_name = "SPIFFE_ID")]
    pilot_identity: Option<String>,
    /// Labels of the workload (`app=order,version=v1`), sent to pilot.
    #[arg(long, default_value = "", value_name = "K=V,...")]
    labels: String,
    /// Addresses of the workload, sent to pilot (comma-separated).
    #[arg(long, default_value = "", value_name = "IP,...")]
    workload_ips: String,
    /// Name of the workload (pod), sent to pilot.
    #[arg(long, default_value = "")]
    workload_name: String,
    /// The workload the pod belongs to (its Deployment), as metrics name it
    /// (`source_workload`, `destination_workload`); by default the pod's name.
    #[arg(long, default_value = "", value_name = "NAME")]
    workload: String,
    /// How often the state file is checked for changes, in milliseconds.
    #[arg(long, default_value_t = 500)]
    state_poll_ms: u64,
    /// Outbound capture port.
    #[arg(long, default_value_t = 15001)]
    outbound_port: u16,
    /// Inbound capture port.
    #[arg(long, default_value_t = 15006)]
    inbound_port: u16,
    /// Admin port (on 127.0.0.1).
    #[arg(long, default_value_t = 15000)]
    admin_port: u16,
    /// Readiness port (/healthz/ready).
    #[arg(long, default_value_t = 15021)]
    readiness_port: u16,
    /// Metrics port (/stats/prometheus, /healthz/ready), where Prometheus scrapes.
    #[arg(long, default_value_t = 15020)]
    metrics_port: u16,
    /// How long connections in flight may take to finish after a drain begins, in seconds.
    #[arg(long, default_value_t = 5)]
    drain_timeout_secs: u64,
    /// The most connections each traffic listener (outbound, inbound, gateway) holds open at
    /// once; more are closed as they are accepted, and counted in
    /// `mesh_proxy_refused_total{reason="connection_limit"}`. By default a quarter of the
    /// open-file limit (raised to its hard limit at start), at most 100000.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    max_connections: Option<u64>,
    /// The CA to get the workload certificate from: `https://PILOT:15012` (with
    /// --ca-root-file), or `http://` to a CA on loopback only. Without it the proxy has no
    /// identity: no mTLS, plaintext between proxies.
    #[arg(long, value_name = "URL", requires = "bootstrap_token_file")]
    ca_address: Option<String>,
    /// The mesh's root certificates (PEM), to check an `https://` CA before the bootstrap
    /// token is sent to it (Istio mounts the same as `root-cert.pem`).
    #[arg(long, value_name = "FILE")]
    ca_root_file: Option<PathBuf>,
    /// The identity an `https://` CA must prove; by default pilot's,
    /// `spiffe://<trust domain>/ns/istio-system/sa/istiod`.
    #[arg(long, value_name = "SPIFFE_ID")]
    ca_identity: Option<String>,
    /// What the token file holds: `bootstrap` (the local runtime's) or `kubernetes` (a
    /// projected service-account token, which the CA reviews with the API server).
    #[arg(long, value_enum, default_value = "bootstrap")]
    ca_credential: CaCredential,
    /// File holding the workload's bootstrap token (written by the local runtime).
    #[arg(long, value_name = "FILE")]
    bootstrap_token_file: Option<PathBuf>,
    /// The workload's identity.
    #[arg(long, default_value = "cluster.local")]
    trust_domain: String,
    /// The workload's namespace.
    #[arg(long, default_value = "default")]
    namespace: String,
    /// The workload's service account.
    #[arg(long, default_value = "default")]
    service_account: String,
    /// Lifetime asked for the workload certificate, in hours (the CA may cap it).
    #[arg(long, default_value_t = 24)]
    cert_ttl_hours: u64,
    /// Lifetime asked for the workload certificate as a duration (`24h`, `90m`, `30s`), read
    /// from `SECRET_TTL` as Istio's agent reads it; overrides --cert-ttl-hours.
    #[arg(long, env = "SECRET_TTL", value_name = "DURATION", value_parser = cert_ttl)]
    cert_ttl: Option<Duration>,
    /// Address the outbound, inbound and readiness listeners bind (the admin port is always
    /// on 127.0.0.1).
    #[arg(long, default_value = "0.0.0.0")]
    bind_address: std::net::IpAddr,
    /// Treat every outbound connection as addressed to IP:PORT instead of asking the kernel
    /// where capture redirected it from: a proxy without capture rules (benchmarks, tests).
    #[arg(long, value_name = "IP:PORT")]
    outbound_original_dst: Option<std::net::SocketAddr>,
    /// Treat every inbound connection as addressed to IP:PORT (see --outbound-original-dst).
    #[arg(long, value_name = "IP:PORT")]
    inbound_original_dst: Option<std::net::SocketAddr>,
    /// Worker threads (default: one per core).
    #[arg(long)]
    worker_threads: Option<usize>,
    /// Say in an `x-mesh-authz` response header which AuthorizationPolicy and rule decided
    /// each inbound request (for debugging; it shows callers the names of policies).
    #[arg(long, env = "MESH_DEBUG_AUTHZ")]
    debug_authz_header: bool,
    /// PEM file of CA certificates trusted, besides the system's roots, when fetching a
    /// RequestAuthentication's https `jwksUri` (an issuer with a private CA).
    #[arg(long, env = "MESH_JWKS_CA_FILE", value_name = "FILE")]
    jwks_ca_file: Option<std::path::PathBuf>,
    /// The application's HTTP probes, answered through the readiness port's
    /// `/app-health/...` paths (the injector writes them; Istio's JSON).
    #[arg(
        long,
        env = "ISTIO_KUBE_APP_PROBERS",
        value_name = "JSON",
        hide_env_values = true
    )]
    app_probers: Option<String>,
    /// Where the application serves its own Prometheus metrics, merged into the metrics
    /// port's page (the injector writes the pod's original `prometheus.io/*`; Istio's JSON).
    #[arg(long, env = "ISTIO_PROMETHEUS_ANNOTATIONS", value_name = "JSON")]
    app_metrics: Option<String>,
    /// Check the flags (and the application probes) and exit without starting.
    #[arg(long)]
    dry_run: bool,
}

#[derive(Args)]
struct InitArgs {
    /// User id of the proxy; its traffic is never captured.
    #[arg(short = 'u', long, default_value_t = 1337)]
    proxy_uid: u32,
    /// Group id of the proxy; its traffic is never captured. Defaults to the user id.
    #[arg(short = 'g', long)]
    proxy_gid: Option<u32>,
    /// Port outbound connections are redirected to.
    #[arg(short = 'p', long, default_value_t = 15001)]
    outbound_port: u16,
    /// Port inbound connections are redirected to.
    #[arg(short = 'z', long, default_value_t = 15006)]
    inbound_port: u16,
    /// Inbound ports to capture: `*` for all, a comma-separated list, or empty for none.
    #[arg(short = 'b', long, default_value = "*")]
    include_inbound_ports: String,
    /// Inbound ports never captured.
    #[arg(short = 'd', long, default_value = "15020,15021,15090")]
    exclude_inbound_ports: String,
    /// Outbound destination ranges to capture: `*` for all, a comma-separated list of CIDRs,
    /// or empty for none.
    #[arg(short = 'i', long, default_value = "*")]
    include_outbound_cidrs: String,
    /// Outbound destination ranges never captured.
    #[arg(short = 'x', long, default_value = "")]
    exclude_outbound_cidrs: String,
    /// Outbound destination ports to capture: `*` for all or a comma-separated list.
    #[arg(short = 'q', long, default_value = "*")]
    include_outbound_ports: String,
    /// Outbound destination ports never captured.
    #[arg(short = 'o', long, default_value = "")]
    exclude_outbound_ports: String,
    /// Print the rules instead of applying them.
    #[arg(long)]
    dry_run: bool,
    /// Remove the rules instead of writing them.
    #[arg(long, conflicts_with = "dry_run")]
    cleanup: bool,
    /// iptables back end.
    #[arg(long, value_enum, default_value = "auto")]
    iptables_variant: Variant,
    /// Write rules even in a namespace not created with `ip netns add` (a Kubernetes pod's
    /// init container). Never use it on a host: the rules would capture the host's traffic.
    #[arg(long)]
    allow_unregistered_namespace: bool,
    /// Where `ip netns add` registers namespaces.
    #[arg(long, default_value = "/run/netns", hide = true)]
    netns_dir: PathBuf,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Init(args) => run_init(&args),
        Command::Run(args) => run_proxy(&args),
        Command::Wait(args) => {
            run::wait_ready(args.address, Duration::from_secs(args.timeout_secs))
                .map_err(anyhow::Error::from)
        }
        Command::Request(args) => run_request(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mesh-proxy: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run_request(a: &RequestArgs) -> anyhow::Result<()> {
    use std::io::Write;
    let answer = run::request(
        &a.method,
        a.port,
        &a.path,
        Duration::from_secs(a.timeout_secs),
    )?;
    std::io::stdout().write_all(&answer.body)?;
    anyhow::ensure!(
        (200..300).contains(&answer.status),
        "{} {} on port {} answered {}",
        a.method,
        a.path,
        a.port,
        answer.status
    );
    Ok(())
}

fn capture_config(a: &InitArgs) -> anyhow::Result<CaptureConfig> {
    Ok(CaptureConfig {
        proxy_uid: a.proxy_uid,
        proxy_gid: a.proxy_gid.unwrap_or(a.proxy_uid),
        outbound_port: a.outbound_port,
        inbound_port: a.inbound_port,
        include_inbound_ports: init::parse_ports(
            "--include-inbound-ports",
            &a.include_inbound_ports,
        )?,
        exclude_inbound_ports: init::parse_port_list(
            "--exclude-inbound-ports",
            &a.exclude_inbound_ports,
        )?,
        include_outbound_cidrs: init::parse_cidrs(
            "--include-outbound-cidrs",
            &a.include_outbound_cidrs,
        )?,
        exclude_outbound_cidrs: init::parse_cidr_list(
            "--exclude-outbound-cidrs",
            &a.exclude_outbound_cidrs,
        )?,
        include_outbound_ports: init::parse_ports(
            "--include-outbound-ports",
            &a.include_outbound_ports,
        )?,
        exclude_outbound_ports: init::parse_port_list(
            "--exclude-outbound-ports",
            &a.exclude_outbound_ports,
        )?,
    })
}

fn run_init(args: &InitArgs) -> anyhow::Result<()> {
    let cfg = capture_config(args)?;
    let rules = init::render(&cfg);
    if args.dry_run {
        print!("{rules}");
        return Ok(());
    }
    match init::check_namespace(&args.netns_dir)? {
        NamespaceCheck::Created(name) => eprintln!("mesh-proxy init: network namespace {name}"),
        NamespaceCheck::Unknown if args.allow_unregistered_namespace => {}
        NamespaceCheck::Unknown => anyhow::bail!(
            "refusing to write capture rules: this network namespace was not created with `ip netns add` \
             (it may be the host's own, whose traffic would then be redirected). Run inside a pod's \
             namespace (`ip netns exec NAME mesh-proxy init`), or pass --allow-unregistered-namespace \
             in a Kubernetes init container"
        ),
    }
    let iptables = Iptables::select(args.iptables_variant)?;
    if args.cleanup {
        iptables.cleanup()?;
        eprintln!("mesh-proxy init: capture rules removed");
    } else {
        iptables.apply(&rules)?;
        eprintln!(
            "mesh-proxy init: capture rules written with {}",
            iptables.restore
        );
    }
    Ok(())
}

fn run_proxy(args: &RunArgs) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    let config = run_config(args)?;
    if args.dry_run {
        if let Some(json) = config.app_probers.as_deref() {
            mesh_proxy::admin::AppProbers::parse(json).map_err(anyhow::Error::msg)?;
        }
        if let Some(json) = config.app_metrics.as_deref() {
            mesh_proxy::admin::AppMetrics::parse(json).map_err(anyhow::Error::msg)?;
        }
        println!("mesh-proxy run: the flags are in order");
        return Ok(());
    }
    run::run(&config)?;
    Ok(())
}

/// The typed configuration the flags say.
fn run_config(args: &RunArgs) -> anyhow::Result<RunConfig> {
    let state = match (&args.state_file, &args.discovery_address) {
        (Some(path), _) => StateSource::File {
            path: path.clone(),
            poll: Duration::from_millis(args.state_poll_ms),
        },
        (None, Some(address)) => StateSource::Pilot {
            address: address.clone(),
            pilot_identity: args.pilot_identity.clone(),
        },
        (None, None) => anyhow::bail!("give --state-file or --discovery-address"),
    };
    let identity = match (&args.ca_address, &args.bootstrap_token_file) {
        (None, _) => None,
        (Some(ca), Some(token)) => Some(IdentitySource {
            ca_address: ca.clone(),
            bootstrap_token_file: token.clone(),
            credential: match args.ca_credential {
                CaCredential::Bootstrap => CredentialKind::Bootstrap,
                CaCredential::Kubernetes => CredentialKind::Kubernetes,
            },
            cert_ttl: args
                .cert_ttl
                .unwrap_or(Duration::from_secs(args.cert_ttl_hours * 3600)),
            ca_tls: args.ca_root_file.as_ref().map(|f| CaTls {
                root_file: f.clone(),
                identity: args.ca_identity.clone().unwrap_or_else(|| {
                    format!("spiffe://{}/ns/istio-system/sa/istiod", args.trust_domain)
                }),
            }),
        }),
        (Some(_), None) => anyhow::bail!("--bootstrap-token-file is needed with --ca-address"),
    };
    let bind = args.bind_address;
    Ok(RunConfig {
        state,
        identity,
        workload: WorkloadConfig {
            pod_name: args.workload_name.clone(),
            workload: args.workload.clone(),
            namespace: args.namespace.clone(),
            service_account: args.service_account.clone(),
            trust_domain: args.trust_domain.clone(),
            labels: parse_labels(&args.labels)?,
            ips: args
                .workload_ips
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect(),
        },
        listeners: Listeners {
            outbound: (bind, args.outbound_port).into(),
            inbound: (bind, args.inbound_port).into(),
            admin: ([127, 0, 0, 1], args.admin_port).into(),
            readiness: (bind, args.readiness_port).into(),
            metrics: (bind, args.metrics_port).into(),
        },
        outbound_original_dst: args.outbound_original_dst,
        inbound_original_dst: args.inbound_original_dst,
        worker_threads: args.worker_threads,
        drain_timeout: Duration::from_secs(args.drain_timeout_secs),
        debug_authz: args.debug_authz_header,
        jwks_ca_file: args.jwks_ca_file.clone(),
        app_probers: args.app_probers.clone(),
        app_metrics: args.app_metrics.clone(),
        gateway: matches!(args.mode, Mode::Gateway).then_some(bind),
        max_connections: args
            .max_connections
            .map(|n| usize::try_from(n).unwrap_or(usize::MAX)),
    })
}

/// A certificate lifetime: a duration as Istio writes them, at least a second.
fn cert_ttl(text: &str) -> Result<Duration, String> {
    let ttl = mesh_api::validate::parse_duration(text)
        .map_err(|e| format!("{e} (given by --cert-ttl or SECRET_TTL)"))?;
    if ttl < Duration::from_secs(1) {
        return Err(format!(
            "{text:?} is shorter than a second (given by --cert-ttl or SECRET_TTL)"
        ));
    }
    Ok(ttl)
}

/// Parses `k=v,k=v`.
fn parse_labels(text: &str) -> anyhow::Result<std::collections::HashMap<String, String>> {
    text.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair
                .split_once('=')
                .ok_or_else(|| anyhow::anyhow!("--labels: {pair:?} is not KEY=VALUE"))?;
            Ok((k.trim().to_string(), v.trim().to_string()))
        })
        .collect()
}
