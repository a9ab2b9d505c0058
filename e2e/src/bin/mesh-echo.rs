//! `mesh-echo`: the test application of the demo and the end-to-end suite. Without a
//! subcommand it serves (HTTP/1.1 and h2c on `--port`, TCP echo on `--tcp-port`); `load` sends
//! requests and prints a report.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use mesh_e2e::echo::{self, EchoConfig};
use mesh_e2e::load::{self, LoadConfig, Progress};

/// Echo server and load generator for testing the mesh.
#[derive(Parser)]
#[command(
    name = "mesh-echo",
    disable_version_flag = true,
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: Serve,
}

#[derive(Subcommand)]
enum Command {
    /// Send requests to a URL and report who answered, with what identity, how fast.
    Load(Load),
    /// Connect to a TCP echo, send a message and print the greeting and the echo.
    Tcp(Tcp),
    /// Open a WebSocket (`ws://host:port/ws`), send a message, print the greeting and the echo.
    Ws(Ws),
    /// Call mesh.echo.v1.Echo at `http://host:port` and print the answer as JSON.
    Grpc(Grpc),
}

#[derive(Args)]
struct Ws {
    /// `ws://HOST:PORT/PATH`.
    #[arg(long)]
    url: String,
    /// What to send.
    #[arg(long, default_value = "hello")]
    message: String,
}

#[derive(Args)]
struct Grpc {
    /// `http://HOST:PORT`.
    #[arg(long)]
    address: String,
    /// What to send.
    #[arg(long, default_value = "hello")]
    message: String,
}

#[derive(Args)]
struct Tcp {
    /// `HOST:PORT` (`shipping-service:9000`).
    #[arg(long)]
    address: String,
    /// What to send.
    #[arg(long, default_value = "hello")]
    message: String,
}

#[derive(Args)]
struct Serve {
    /// HTTP port (HTTP/1.1 and h2c).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// TCP echo port (a greeting line, then every byte back).
    #[arg(long)]
    tcp_port: Option<u16>,
    /// gRPC port (`mesh.echo.v1.Echo`, h2c).
    #[arg(long)]
    grpc_port: Option<u16>,
    /// Service name reported in answers.
    #[arg(long, env = "SERVICE_NAME", default_value = "echo")]
    service: String,
    /// Version reported in answers.
    #[arg(long, env = "SERVICE_VERSION", default_value = "v1")]
    version: String,
    /// Pod name reported in answers (the local runtime sets POD_NAME).
    #[arg(long, env = "POD_NAME", default_value = "")]
    pod: String,
    /// Namespace reported in answers.
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    namespace: String,
    /// Milliseconds added to every answer.
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    /// Share of requests answered 503 (0.0 to 1.0).
    #[arg(long, default_value_t = 0.0)]
    error_rate: f64,
    /// Serve a file's contents as JSON at a path, `/PATH=FILE` (repeatable): a JWKS document
    /// for a RequestAuthentication's `jwksUri`, say. `/PATH=env:NAME` serves the value of
    /// environment variable NAME instead (a container's `env`, on any backend).
    #[arg(long = "file", value_name = "/PATH=FILE")]
    files: Vec<String>,
    /// Answer every HTTP request as Istio's ext-authz sample does (an external authorizer
    /// for CUSTOM policies): allow `x-ext-authz: allow`, deny the rest with 403.
    #[arg(long)]
    ext_authz: bool,
    /// Receive spans as an OpenTelemetry collector's OTLP/gRPC receiver does (`TraceService/
    /// Export`, on the HTTP port as h2c) and list them as JSON at `GET /spans`.
    #[arg(long)]
    otlp: bool,
    /// Call this URL for every request and include its answer (repeatable; in order), passing
    /// on the routing and tracing headers, as bookinfo's services call each other. A failed
    /// call makes the answer 502.
    #[arg(long = "upstream", value_name = "URL")]
    upstreams: Vec<String>,
}

#[derive(Args)]
struct Load {
    /// The URL to call (`http://shipping-service:8080/`).
    #[arg(long)]
    url: String,
    /// Number of requests.
    #[arg(long, short = 'n', default_value_t = 1000)]
    requests: usize,
    /// Requests in flight at once.
    #[arg(long, short = 'c', default_value_t = 4)]
    concurrency: usize,
    /// Requests per second (0 = as fast as answers come).
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Extra header `name: value` (repeatable).
    #[arg(long = "header", short = 'H')]
    headers: Vec<String>,
    /// Use HTTP/2 without TLS (h2c).
    #[arg(long)]
    http2: bool,
    /// Show a progress bar on standard error.
    #[arg(long)]
    progress: bool,
    /// `text` or `json`.
    #[arg(long, short = 'o', default_value = "text")]
    output: String,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("mesh-echo: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            None => serve(cli.serve).await,
            Some(Command::Load(args)) => run_load(args).await,
            Some(Command::Tcp(args)) => run_tcp(args).await,
            Some(Command::Ws(args)) => {
                let (greeting, echoed) =
                    mesh_e2e::ws_grpc::websocket_call(&args.url, &args.message).await?;
                println!("{greeting}\n{echoed}");
                Ok(if echoed == args.message {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::FAILURE
                })
            }
            Some(Command::Grpc(args)) => {
                let r = mesh_e2e::ws_grpc::grpc_call(&args.address, &args.message).await?;
                println!(
                    "{}",
                    serde_json::json!({"message": r.message, "service": r.service,
                        "version": r.version, "pod": r.pod, "peer": r.peer})
                );
                Ok(ExitCode::SUCCESS)
            }
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("mesh-echo: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(args: Serve) -> anyhow::Result<ExitCode> {
    if !(0.0..=1.0).contains(&args.error_rate) {
        anyhow::bail!(
            "--error-rate {}: must be between 0.0 and 1.0",
            args.error_rate
        );
    }
    let bind = |port: u16| async move {
        tokio::net::TcpListener::bind(("0.0.0.0", port))
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on port {port}: {e}"))
    };
    let http = bind(args.port).await?;
    let tcp = match args.tcp_port {
        Some(p) => Some(bind(p).await?),
        None => None,
    };
    let grpc = match args.grpc_port {
        Some(p) => Some(bind(p).await?),
        None => None,
    };
    eprintln!(
        "mesh-echo {} {} listening on :{}{}",
        args.service,
        args.version,
        args.port,
        args.tcp_port
            .map(|p| format!(" (tcp :{p})"))
            .unwrap_or_default()
    );
    let mut files = std::collections::BTreeMap::new();
    for spec in &args.files {
        let Some((path, file)) = spec.split_once('=').filter(|(p, _)| p.starts_with('/')) else {
            anyhow::bail!("--file {spec:?}: expected /PATH=FILE (/jwks.json=keys.json)");
        };
        let body = match file.strip_prefix("env:") {
            Some(var) => std::env::var(var)
                .map_err(|e| anyhow::anyhow!("--file {spec:?}: environment variable {var}: {e}"))?
                .into_bytes(),
            None => std::fs::read(file)
                .map_err(|e| anyhow::anyhow!("--file {spec:?}: cannot read {file}: {e}"))?,
        };
        files.insert(path.to_string(), bytes::Bytes::from(body));
    }
    let config = EchoConfig {
        service: args.service,
        version: args.version,
        pod: args.pod,
        namespace: args.namespace,
        latency: Duration::from_millis(args.latency_ms),
        error_rate: args.error_rate,
        files,
        ext_authz: args.ext_authz,
        otlp: args.otlp,
        upstreams: args.upstreams,
    };
    tokio::select! {
        () = echo::serve(config, http, tcp, grpc) => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    Ok(ExitCode::SUCCESS)
}

async fn run_load(args: Load) -> anyhow::Result<ExitCode> {
    let headers = args
        .headers
        .iter()
        .map(|h| {
            h.split_once(':')
                .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                .ok_or_else(|| anyhow::anyhow!("--header {h:?}: expected \"name: value\""))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let config = LoadConfig {
        url: args.url,
        requests: Some(args.requests),
        concurrency: args.concurrency,
        rate: (args.rate > 0.0).then_some(args.rate),
        headers,
        http2: args.http2,
        ..LoadConfig::default()
    };
    let progress = Progress::default();
    let total = args.requests;
    let bar = args.progress.then(|| {
        let progress = progress.clone();
        tokio::spawn(async move {
            loop {
                draw(progress.done(), total);
                if progress.done() >= total {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    });
    let report = load::run(config, progress).await?;
    if let Some(bar) = bar {
        let _ = bar.await;
        eprintln!();
    }
    if args.output == "json" {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "{} requests, {} ok ({:.1}%), p50 {:.2} ms, p99 {:.2} ms",
            report.requests,
            report.ok,
            report.success_rate() * 100.0,
            report.p50_ms,
            report.p99_ms
        );
        for (version, n) in &report.by_version {
            println!("  version {version}: {n}");
        }
        for (peer, n) in &report.by_peer {
            println!("  caller identity seen {peer}: {n}");
        }
        for (why, n) in &report.failures {
            println!("  failed {n}: {why}");
        }
    }
    Ok(if report.ok == report.requests {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn draw(done: usize, total: usize) {
    const WIDTH: usize = 30;
    let filled = (done * WIDTH)
        .checked_div(total)
        .unwrap_or(WIDTH)
        .min(WIDTH);
    let mut err = std::io::stderr().lock();
    let _ = write!(
        err,
        "\r  [{}{}] {done}/{total} requests",
        "#".repeat(filled),
        " ".repeat(WIDTH - filled)
    );
    let _ = err.flush();
}

async fn run_tcp(args: Tcp) -> anyhow::Result<ExitCode> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::net::TcpStream::connect(&args.address),
    )
    .await
    .map_err(|_| anyhow::anyhow!("connecting to {}: timed out", args.address))?
    .map_err(|e| anyhow::anyhow!("connecting to {}: {e}", args.address))?;
    let greeting = echo::tcp_greeting(&mut stream).await?;
    println!("{greeting}");
    stream.write_all(args.message.as_bytes()).await?;
    let mut back = vec![0u8; args.message.len()];
    tokio::time::timeout(Duration::from_secs(10), stream.read_exact(&mut back))
        .await
        .map_err(|_| anyhow::anyhow!("no echo within 10 s"))??;
    let back = String::from_utf8_lossy(&back).into_owned();
    println!("{back}");
    Ok(if back == args.message {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
