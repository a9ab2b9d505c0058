//! `meshctl dashboard`: serves the live service graph and golden signals of the local mesh on
//! localhost (see `meshctl::dashboard`).

use std::process::ExitCode;
use std::time::Duration;

use meshctl::dashboard::Dashboard;
use meshctl::local::Mesh;

use crate::local_cli::DirArg;

/// `meshctl dashboard`.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    dir: DirArg,
    /// The port on 127.0.0.1 (0: any free one; the address is printed).
    #[arg(long, default_value_t = 15300)]
    port: u16,
    /// Seconds between two scrapes of the sidecars' metrics.
    #[arg(long, default_value_t = 2)]
    interval: u64,
    /// Seconds the rates are taken over.
    #[arg(long, default_value_t = 30)]
    window: u64,
}

/// `meshctl dashboard`.
pub fn run(args: &Args) -> ExitCode {
    let fail = |e: String| {
        eprintln!("error: {e}");
        ExitCode::FAILURE
    };
    if args.interval == 0 {
        return fail("--interval must be at least 1 second".into());
    }
    let mesh = Mesh::new(&args.dir.dir);
    if let Err(e) = mesh.state() {
        return fail(e.to_string());
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => return fail(e.to_string()),
    };
    runtime.block_on(async {
        let listener = match tokio::net::TcpListener::bind(("127.0.0.1", args.port)).await {
            Ok(l) => l,
            Err(e) => {
                return fail(format!(
                    "port {} on 127.0.0.1: {e} (choose another with --port)",
                    args.port
                ));
            }
        };
        let addr = match listener.local_addr() {
            Ok(a) => a,
            Err(e) => return fail(e.to_string()),
        };
        let dashboard = Dashboard::new(mesh, Duration::from_secs(args.window.max(1)));
        // The first moment before the page is served: it has workloads and totals at once.
        dashboard.scrape().await;
        tokio::spawn(
            dashboard
                .clone()
                .keep_scraping(Duration::from_secs(args.interval)),
        );
        eprintln!("dashboard at http://{addr}/ (Ctrl-C to stop)");
        dashboard.serve(listener).await;
        ExitCode::SUCCESS
    })
}
