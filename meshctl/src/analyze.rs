//! `meshctl analyze`: Istio's analyzers (`istioctl analyze`) over configuration files, or over
//! what the local mesh holds: each message with its code and name, level, resource, what is
//! wrong and what to do. Exit 1 when an Error is found, 2 when the input cannot be read.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use mesh_api::analyze::{Level, Snapshot, analyze, analyzers, proxy_messages};

use crate::local_cli::DirArg;

/// `meshctl analyze`.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    dir: DirArg,
    /// A file, a folder (*.yaml, *.yml, *.json, recursively) or `-`; repeatable. Without it,
    /// what the local mesh in --dir holds.
    #[arg(short = 'f', long = "filename", value_name = "FILE|DIR|-")]
    files: Vec<PathBuf>,
    /// Run only this analyzer (`service.PortNameAnalyzer`; --list-analyzers names them).
    #[arg(long)]
    only: Option<String>,
    /// Name the analyzers and what each looks at, and exit.
    #[arg(long)]
    list_analyzers: bool,
    /// Output format.
    #[arg(short = 'o', long = "output", value_parser = ["text", "json", "yaml"], default_value = "text")]
    output: String,
}

/// `meshctl analyze`.
pub fn run(args: &Args) -> ExitCode {
    if args.list_analyzers {
        for a in analyzers() {
            println!("{:<38} {}", a.name, a.about);
        }
        return ExitCode::SUCCESS;
    }
    let mut snapshot = Snapshot::new();
    // What the user gave, for the summary: the installed defaults are not theirs.
    let mut base = 0;
    let read = if args.files.is_empty() {
        let config = meshctl::local::Mesh::new(&args.dir.dir).layout.config();
        if !config.is_dir() {
            eprintln!(
                "error: no files given (-f) and no local mesh in {} (meshctl up starts one)",
                args.dir.dir.display()
            );
            return ExitCode::from(2);
        }
        snapshot.add_path(&config).map(|()| {
            local_gateway_ports(&mut snapshot);
            base = 1;
        })
    } else {
        // Files alone: with what an install runs beside them (the ingress gateway).
        snapshot.add_installed_defaults();
        base = snapshot.objects.len();
        args.files.iter().try_for_each(|path| {
            if path.as_os_str() == "-" {
                let mut text = String::new();
                std::io::stdin()
                    .read_to_string(&mut text)
                    .map_err(|e| format!("cannot read standard input: {e}"))?;
                snapshot.add_text(&text, Some("-"))
            } else {
                snapshot.add_path(path)
            }
        })
    };
    if let Err(e) = read {
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }
    let mut messages = match analyze(&snapshot, args.only.as_deref()) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("error: --only: {e}");
            return ExitCode::from(2);
        }
    };
    // The local mesh: what its proxies report too (NACKs, what pilot could not apply, what is
    // accepted but not enforced yet).
    if args.files.is_empty() && args.only.is_none() {
        match meshctl::local::Mesh::new(&args.dir.dir).pilot_debug("/debug/syncz") {
            Ok(syncz) => messages.extend(proxy_messages(&syncz)),
            Err(e) => eprintln!("warning: the proxies' reports are left out: pilot: {e}"),
        }
        messages.sort_by(|a, b| {
            (a.level, &a.origin, a.code, &a.text).cmp(&(b.level, &b.origin, b.code, &b.text))
        });
    }
    match args.output.as_str() {
        "json" => match serde_json::to_string_pretty(&messages) {
            Ok(s) => println!("{s}"),
            Err(e) => eprintln!("error: {e}"),
        },
        "yaml" => match serde_saphyr::to_string(&messages) {
            Ok(s) => print!("{s}"),
            Err(e) => eprintln!("error: {e}"),
        },
        _ => {
            if messages.is_empty() {
                println!(
                    "✔ No validation issues found when analyzing {} resources.",
                    snapshot.objects.len() - base
                );
            }
            for m in &messages {
                println!("{m}");
            }
        }
    }
    if messages.iter().any(|m| m.level == Level::Error) {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// The local runtime's ingress gateway has no Service: its pod binds every port a Gateway's
/// server names, on its own address. Said as a Service, so the port check sees what is true.
fn local_gateway_ports(snapshot: &mut Snapshot) {
    let ports: std::collections::BTreeSet<u64> = snapshot
        .of_kind("Gateway")
        .flat_map(|g| g.spec()["servers"].as_array().cloned().unwrap_or_default())
        .filter_map(|s| s["port"]["number"].as_u64())
        .collect();
    let ports: Vec<serde_json::Value> = ports
        .into_iter()
        .map(|p| serde_json::json!({"name": format!("port-{p}"), "port": p, "protocol": "TCP"}))
        .collect();
    let service = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "istio-ingressgateway", "namespace": "istio-system"},
        "spec": {"selector": {"istio": "ingressgateway"}, "ports": ports},
    });
    let _ = snapshot.add_text(&service.to_string(), None);
}
