//! `meshctl proxy-status`: every proxy pilot knows, whether it is connected, the last version
//! it was sent and acknowledged, and why it refused a push if it did. Reads pilot's
//! `/debug/syncz`.

use std::process::ExitCode;

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;

/// Arguments of `meshctl proxy-status`.
#[derive(clap::Args)]
pub struct Args {
    /// Pilot's debug address; by default the local mesh's pilot (in `--dir`) when one runs,
    /// else http://127.0.0.1:15014.
    #[arg(long, env = "MESH_PILOT_DEBUG")]
    pilot: Option<String>,
    /// The local mesh's folder (see `meshctl up`).
    #[arg(long, default_value = meshctl::local::DEFAULT_DIR, env = "MESH_DIR")]
    dir: std::path::PathBuf,
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value = "text")]
    output: Output,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Output {
    /// A table.
    Text,
    /// Pilot's JSON as is.
    Json,
}

/// What `/debug/syncz` answers.
#[derive(Debug, Deserialize)]
pub struct Syncz {
    /// Pilot's current generation.
    pub generation: u64,
    /// Every proxy.
    pub proxies: Vec<Proxy>,
}

/// One proxy.
#[derive(Debug, Deserialize)]
pub struct Proxy {
    node: Node,
    connected: bool,
    sent_version: Option<u64>,
    acked_version: Option<u64>,
    nack: Option<String>,
    services: usize,
    #[serde(default)]
    rejections: Vec<String>,
    #[serde(default)]
    not_enforced_workload: Vec<String>,
    #[serde(default)]
    not_enforced_services: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct Node {
    id: String,
    namespace: String,
    #[serde(default)]
    proxy_version: String,
}

/// Fetches `/debug/syncz` from `pilot`.
pub async fn fetch(pilot: &str) -> anyhow::Result<String> {
    fetch_path(pilot, "/debug/syncz").await
}

/// Fetches `path` from pilot's debug address `pilot`.
pub async fn fetch_path(pilot: &str, path: &str) -> anyhow::Result<String> {
    let url = format!("{}{path}", pilot.trim_end_matches('/'));
    let uri: hyper::Uri = url
        .parse()
        .with_context(|| format!("--pilot: {pilot:?} is not a URL"))?;
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let fetch = async {
        let resp = client.get(uri).await?;
        let body = resp.into_body().collect().await?.to_bytes();
        anyhow::Ok(String::from_utf8_lossy(&body).into_owned())
    };
    tokio::time::timeout(std::time::Duration::from_secs(5), fetch)
        .await
        .map_err(|_| anyhow::anyhow!("no answer within 5 s"))?
        .with_context(|| {
            format!(
                "cannot reach pilot at {pilot}; is it running? (`meshctl up` starts the local mesh; \
                 `--pilot URL` points elsewhere)"
            )
        })
}

fn status_of(p: &Proxy, generation: u64) -> String {
    if !p.connected {
        return "DISCONNECTED (serving its last state)".into();
    }
    if let Some(n) = &p.nack {
        return format!("NACK: {n}");
    }
    match (p.sent_version, p.acked_version) {
        (_, None) => "WAITING (nothing acknowledged yet)".into(),
        (Some(s), Some(a)) if s == a && a == generation => "SYNCED".into(),
        (Some(s), Some(a)) if s == a => "SYNCED (no change for it since)".into(),
        _ => "STALE (a push is not acknowledged yet)".into(),
    }
}

/// Renders the table.
pub fn render(syncz: &Syncz) -> String {
    let mut rows = vec![[
        "NAME".to_string(),
        "NAMESPACE".into(),
        "SENT".into(),
        "ACKED".into(),
        "SERVICES".into(),
        "VERSION".into(),
        "STATUS".into(),
    ]];
    let v = |x: Option<u64>| x.map_or("-".to_string(), |x| x.to_string());
    for p in &syncz.proxies {
        rows.push([
            p.node.id.clone(),
            p.node.namespace.clone(),
            v(p.sent_version),
            v(p.acked_version),
            p.services.to_string(),
            if p.node.proxy_version.is_empty() {
                "-".into()
            } else {
                p.node.proxy_version.clone()
            },
            status_of(p, syncz.generation),
        ]);
    }
    let widths: Vec<usize> = (0..7)
        .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in &rows {
        let line: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(i, c)| {
                if i == 6 {
                    c.clone()
                } else {
                    format!("{c:<w$}", w = widths[i])
                }
            })
            .collect();
        out += line.join("  ").trim_end();
        out.push('\n');
    }
    for p in syncz.proxies.iter().filter(|p| !p.rejections.is_empty()) {
        out += &format!("\n{}: configuration left out of its view:\n", p.node.id);
        for r in &p.rejections {
            out += &format!("  {r}\n");
        }
    }
    for p in &syncz.proxies {
        let lines: Vec<&String> = p
            .not_enforced_workload
            .iter()
            .chain(&p.not_enforced_services)
            .collect();
        if lines.is_empty() {
            continue;
        }
        out += &format!(
            "\n{}: configuration it holds but does not enforce yet:\n",
            p.node.id
        );
        for l in lines {
            out += &format!("  {l}\n");
        }
    }
    if syncz.proxies.is_empty() {
        out += "(no proxy has connected to pilot yet)\n";
    }
    out
}

/// Runs the command.
pub fn run(args: &Args) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("meshctl: {e}");
            return ExitCode::from(2);
        }
    };
    let local = meshctl::local::Mesh::new(&args.dir);
    let fetched = match &args.pilot {
        None if local.state().is_ok() => local
            .pilot_debug("/debug/syncz")
            .map(|v| v.to_string())
            .map_err(|e| anyhow::anyhow!("the local mesh's pilot: {e}")),
        pilot => runtime.block_on(fetch(pilot.as_deref().unwrap_or("http://127.0.0.1:15014"))),
    };
    let text = match fetched {
        Ok(t) => t,
        Err(e) => {
            eprintln!("meshctl proxy-status: {e:#}");
            return ExitCode::from(2);
        }
    };
    match args.output {
        Output::Json => print!("{text}"),
        Output::Text => match serde_json::from_str::<Syncz>(&text) {
            Ok(s) => print!("{}", render(&s)),
            Err(e) => {
                eprintln!(
                    "meshctl proxy-status: pilot answered something unexpected ({e}): {text}"
                );
                return ExitCode::from(2);
            }
        },
    }
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names_every_state() {
        let json = r#"{"generation": 7, "proxies": [
          {"node": {"id": "sidecar~a", "namespace": "default"}, "connected": true, "sent_version": 7, "acked_version": 7, "nack": null, "services": 3, "rejections": []},
          {"node": {"id": "sidecar~b", "namespace": "shop"}, "connected": true, "sent_version": 7, "acked_version": 6, "nack": "Service: shipping: bad CA", "services": 2, "rejections": ["DestinationRule shop/x: spec.trafficPolicy.tls.caCertificates: file missing"]},
          {"node": {"id": "sidecar~c", "namespace": "shop"}, "connected": false, "sent_version": 5, "acked_version": 5, "nack": null, "services": 1, "rejections": []}
        ]}"#;
        let t = render(&serde_json::from_str(json).unwrap());
        assert!(t.contains("sidecar~a") && t.contains("SYNCED"), "{t}");
        assert!(t.contains("NACK: Service: shipping: bad CA"), "{t}");
        assert!(t.contains("DISCONNECTED"), "{t}");
        assert!(t.contains("caCertificates: file missing"), "{t}");
    }

    #[test]
    fn fields_not_enforced_are_listed_under_their_proxy() {
        let json = r#"{"generation": 2, "proxies": [
          {"node": {"id": "sidecar~inventory", "namespace": "default"}, "connected": true, "sent_version": 2, "acked_version": 2, "nack": null, "services": 3, "rejections": [],
           "not_enforced_workload": ["AuthorizationPolicy default/ext: spec.provider.name: provider \"opa\" is not among the mesh configuration's extensionProviders (ConfigMap istio in istio-system, key mesh): the requests this policy matches are denied"],
           "not_enforced_services": ["DestinationRule default/inventory-cb: spec.trafficPolicy.connectionPool: accepted, not enforced yet: connection limits"]}
        ]}"#;
        let t = render(&serde_json::from_str(json).unwrap());
        let section = t
            .split_once("sidecar~inventory: configuration it holds but does not enforce yet:\n")
            .map(|(_, rest)| rest)
            .unwrap_or_else(|| panic!("no section: {t}"));
        assert!(
            section.contains(
                "  AuthorizationPolicy default/ext: spec.provider.name: provider \"opa\" is not among"
            ) && section.contains(
                "  DestinationRule default/inventory-cb: spec.trafficPolicy.connectionPool"
            ),
            "{t}"
        );
    }
}
