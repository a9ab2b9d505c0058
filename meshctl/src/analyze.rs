//! `meshctl analyze`: Istio's analyzers (`istioctl analyze`) over configuration files, over
//! what the local mesh holds, or over a cluster (`--kube`, with files applied over it): each
//! message with its code and name, level, resource, what is wrong and what to do. Exit 1 when
//! an Error is found, 2 when the input cannot be read.

use std::io::Read;

use anyhow::Context;
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
    /// what the local mesh in --dir holds; with --kube, applied over what the cluster holds.
    #[arg(short = 'f', long = "filename", value_name = "FILE|DIR|-")]
    files: Vec<PathBuf>,
    /// Analyze the cluster of the current kubeconfig context (KUBECONFIG): its Namespaces,
    /// Services, Pods, mesh configuration and every Istio and Gateway API object.
    #[arg(short = 'k', long)]
    kube: bool,
    /// Pilot's debug address, to add what the proxies report (NACKs, what is not applied or
    /// not enforced yet): with --kube say after `kubectl -n istio-system port-forward
    /// deploy/mesh-pilot 15014`; by default the local mesh's pilot.
    #[arg(long, env = "MESH_PILOT_DEBUG")]
    pilot: Option<String>,
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
    // Analyzers whose input could not be read, whose messages would not be true.
    let mut blind: Vec<&str> = Vec::new();
    let read = if args.kube {
        read_cluster(&mut snapshot, &args.files).map(|b| blind = b)
    } else if args.files.is_empty() {
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
        add_files(&mut snapshot, &args.files)
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
    for name in blind {
        if let Ok(unfounded) = analyze(&snapshot, Some(name)) {
            messages.retain(|m| !unfounded.contains(m));
        }
    }
    // The local mesh, or a cluster's pilot when named: what its proxies report too (NACKs,
    // what pilot could not apply, what is accepted but not enforced yet).
    let syncz = match (&args.pilot, args.kube) {
        _ if args.only.is_some() => None,
        (Some(pilot), kube) if kube || args.files.is_empty() => Some(syncz(pilot)),
        (None, false) if args.files.is_empty() => Some(
            meshctl::local::Mesh::new(&args.dir.dir)
                .pilot_debug("/debug/syncz")
                .map_err(|e| e.to_string()),
        ),
        _ => None,
    };
    if let Some(syncz) = syncz {
        match syncz {
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

fn add_files(snapshot: &mut Snapshot, files: &[PathBuf]) -> Result<(), String> {
    files.iter().try_for_each(|path| {
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
}

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())
}

/// Pilot's `/debug/syncz` at `pilot`.
fn syncz(pilot: &str) -> Result<serde_json::Value, String> {
    let text = runtime()?
        .block_on(crate::proxy_status::fetch(pilot))
        .map_err(|e| format!("{e:#}"))?;
    serde_json::from_str(&text).map_err(|e| format!("{pilot} answered something unexpected: {e}"))
}

/// What the cluster holds, with `files` applied over it: an object of a file replaces the
/// cluster's of the same kind, namespace and name, as `kubectl apply` would. The analyzers
/// whose input the cluster would not give.
fn read_cluster(snapshot: &mut Snapshot, files: &[PathBuf]) -> Result<Vec<&'static str>, String> {
    let mut given = Snapshot::new();
    add_files(&mut given, files)?;
    let blind = runtime()?
        .block_on(list_cluster(snapshot))
        .map_err(|e| format!("--kube: {e:#}"))?;
    let key = |o: &mesh_api::analyze::Object| (o.kind.clone(), o.ns().to_string(), o.name.clone());
    let replaced: std::collections::BTreeSet<_> = given.objects.iter().map(key).collect();
    snapshot.objects.retain(|o| !replaced.contains(&key(o)));
    snapshot.objects.extend(given.objects);
    Ok(blind)
}

async fn list_cluster(snapshot: &mut Snapshot) -> anyhow::Result<Vec<&'static str>> {
    use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Secret, Service};
    use kube::api::{Api, DynamicObject, ListParams};

    let client = crate::install::client().await?;
    let lp = ListParams::default();
    fn add<K: serde::Serialize>(snapshot: &mut Snapshot, items: Vec<K>) {
        for item in items {
            if let Ok(mut v) = serde_json::to_value(item) {
                // What no analyzer reads, and the bulk of a listed object.
                if let Some(m) = v["metadata"].as_object_mut() {
                    m.remove("managedFields");
                }
                snapshot.add_value(v, None, 0);
            }
        }
    }
    let what = |kind: &str| format!("cannot list {kind} in the cluster");
    add(
        snapshot,
        Api::<Namespace>::all(client.clone())
            .list(&lp)
            .await
            .with_context(|| what("Namespaces"))?
            .items,
    );
    add(
        snapshot,
        Api::<Service>::all(client.clone())
            .list(&lp)
            .await
            .with_context(|| what("Services"))?
            .items,
    );
    add(
        snapshot,
        Api::<Pod>::all(client.clone())
            .list(&lp)
            .await
            .with_context(|| what("Pods"))?
            .items,
    );
    let root = snapshot.root_namespace.clone();
    let mesh = Api::<ConfigMap>::namespaced(client.clone(), &root)
        .get_opt(mesh_api::mesh_config::CONFIG_MAP)
        .await
        .with_context(|| what("the mesh configuration"))?;
    add(snapshot, mesh.into_iter().collect());
    for kind in mesh_pilot::source::kube::CUSTOM_KINDS {
        let ar = mesh_pilot::source::kube::api_resource(kind);
        match Api::<DynamicObject>::all_with(client.clone(), &ar)
            .list(&lp)
            .await
        {
            Ok(list) => {
                let items: Vec<serde_json::Value> = list
                    .items
                    .into_iter()
                    .filter_map(|o| serde_json::to_value(o).ok())
                    .map(|mut v| {
                        // List items may omit their type.
                        v["apiVersion"] = kind.api_version().into();
                        v["kind"] = kind.name().into();
                        v
                    })
                    .collect();
                add(snapshot, items);
            }
            Err(kube::Error::Api(status)) if status.is_not_found() => eprintln!(
                "note: the cluster does not serve {}/{} {} (its CRD is not installed): no {kind} analyzed",
                ar.group, ar.version, ar.plural
            ),
            Err(e) => return Err(e).with_context(|| what(kind.name())),
        }
    }
    // Of the Secrets, only those Gateways name as credentials (as pilot reads them).
    let named: std::collections::BTreeSet<String> = snapshot
        .of_kind("Gateway")
        .flat_map(|g| g.spec()["servers"].as_array().cloned().unwrap_or_default())
        .filter_map(|s| s["tls"]["credentialName"].as_str().map(str::to_string))
        .filter(|n| !n.is_empty())
        .collect();
    let mut blind = Vec::new();
    if !named.is_empty() {
        match Api::<Secret>::all(client.clone()).list(&lp).await {
            Ok(list) => add(
                snapshot,
                list.items
                    .into_iter()
                    .filter(|s| s.metadata.name.as_ref().is_some_and(|n| named.contains(n)))
                    .collect(),
            ),
            Err(e) => {
                eprintln!(
                    "note: cannot list Secrets ({e}): Gateways' credentials are not checked (gateway.SecretAnalyzer left out)"
                );
                blind.push("gateway.SecretAnalyzer");
            }
        }
    }
    Ok(blind)
}
