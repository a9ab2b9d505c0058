//! `meshctl tap TARGET`: the requests the sidecars of a pod, Service or Deployment carry, live,
//! one line each (method, authority and path, status, latency, Envoy's response flags, and the
//! identities on both ends), with filters the sidecars apply. The local mesh only for now.

use std::process::ExitCode;

use meshctl::local::Mesh;
use meshctl::local::observe::TapStream;
use serde_json::Value;

use crate::local_cli::DirArg;

/// `meshctl tap`.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    dir: DirArg,
    /// What to watch: a pod, `svc/NAME`, `deploy/NAME` (a bare name: a pod, else a Service,
    /// else a Deployment).
    target: String,
    /// The namespace of the target.
    #[arg(short = 'n', long, default_value = "default")]
    namespace: String,
    /// Only requests with this method (GET).
    #[arg(long)]
    method: Option<String>,
    /// Only requests whose path starts with this (/api).
    #[arg(long)]
    path: Option<String>,
    /// Only requests to this host (shipping-service matches shipping-service:8080 and
    /// shipping-service.default.svc.cluster.local).
    #[arg(long)]
    authority: Option<String>,
    /// Only requests the sidecars received (inbound) or sent (outbound).
    #[arg(long, value_parser = ["inbound", "outbound", "gateway"])]
    direction: Option<String>,
    /// Only answers with this status (503) or class (5xx).
    #[arg(long)]
    status: Option<String>,
    /// Only requests where either end's identity contains this (sa/order).
    #[arg(long)]
    identity: Option<String>,
    /// TCP connections too.
    #[arg(long)]
    tcp: bool,
    /// Stop after this many.
    #[arg(long)]
    max: Option<usize>,
    /// `text` (a line each) or `json` (the access log's keys, plus `pod`).
    #[arg(short = 'o', long = "output", value_parser = ["text", "json"], default_value = "text")]
    output: String,
}

impl Args {
    /// The sidecars' `/tap` query.
    fn query(&self) -> String {
        let mut q = form_urlencoded::Serializer::new(String::new());
        for (k, v) in [
            ("method", &self.method),
            ("path", &self.path),
            ("authority", &self.authority),
            ("direction", &self.direction),
            ("status", &self.status),
            ("identity", &self.identity),
        ] {
            if let Some(v) = v {
                q.append_pair(k, v);
            }
        }
        if self.tcp {
            q.append_pair("tcp", "true");
        }
        q.finish()
    }
}

/// `meshctl tap`.
pub fn run(args: &Args) -> ExitCode {
    let pods = match Mesh::new(&args.dir.dir).pods_of(&args.target, &args.namespace) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let query = args.query();
        let mut streams = Vec::new();
        for pod in &pods {
            match TapStream::open(pod, &query).await {
                Ok(s) => streams.push(s),
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::FAILURE;
                }
            }
        }
        let names: Vec<&str> = pods.iter().map(|p| p.name.as_str()).collect();
        eprintln!(
            "tapping {} (Ctrl-C to stop): {}",
            if names.len() == 1 {
                "1 sidecar".to_string()
            } else {
                format!("{} sidecars", names.len())
            },
            names.join(", ")
        );
        let (tx, mut rx) = tokio::sync::mpsc::channel::<(String, String)>(256);
        for mut s in streams {
            let tx = tx.clone();
            tokio::spawn(async move {
                while let Some(line) = s.next_line().await {
                    if tx.send((s.pod.clone(), line)).await.is_err() {
                        return;
                    }
                }
                let _ = tx
                    .send((s.pod.clone(), r#"{"ended":true}"#.to_string()))
                    .await;
            });
        }
        drop(tx);
        let mut shown = 0;
        while let Some((pod, line)) = rx.recv().await {
            let Ok(mut v) = serde_json::from_str::<Value>(&line) else {
                continue;
            };
            if v.get("ended").is_some() {
                eprintln!("{pod}: the sidecar ended the stream (drained or restarted)");
                continue;
            }
            if let Some(n) = v.get("missed").and_then(Value::as_u64) {
                eprintln!("{pod}: {n} requests went by while this terminal fell behind");
                continue;
            }
            if args.output == "json" {
                if let Some(map) = v.as_object_mut() {
                    map.insert("pod".into(), Value::String(pod));
                }
                println!("{v}");
            } else {
                println!("{}", line_of(&pod, &v));
            }
            shown += 1;
            if args.max.is_some_and(|m| shown >= m) {
                break;
            }
        }
        ExitCode::SUCCESS
    })
}

/// One request as a line:
/// `order-v1-0 outbound GET shipping-service:8080/ 200 3ms - order -> shipping mtls`.
pub fn line_of(pod: &str, v: &Value) -> String {
    let s = |k: &str| v[k].as_str().unwrap_or("-").to_string();
    // spiffe://cluster.local/ns/NS/sa/SA is said NS/SA; with no identity, the address.
    let peer = |id_key: &str, addr_key: &str| match v[id_key].as_str() {
        Some(id) => match id.split_once("/ns/") {
            Some((_, rest)) => rest.replacen("/sa/", "/", 1),
            None => id.to_string(),
        },
        None => s(addr_key),
    };
    let direction = s("direction");
    let (from, to) = match direction.as_str() {
        "inbound" => (
            peer("downstream_peer_principal", "downstream_remote_address"),
            pod.to_string(),
        ),
        _ => (
            pod.to_string(),
            peer("upstream_peer_principal", "upstream_host"),
        ),
    };
    let mtls = if v["downstream_peer_principal"].is_string() && direction == "inbound"
        || v["upstream_peer_principal"].is_string() && direction != "inbound"
    {
        "mtls"
    } else {
        "plaintext"
    };
    let what = match v["method"].as_str() {
        Some(m) => format!("{m} {}{}", s("authority"), s("path")),
        None => format!("TCP {}", s("upstream_cluster")),
    };
    let mut line = format!(
        "{pod} {direction} {what} {} {}ms {} {from} -> {to} {mtls}",
        v["response_code"].as_u64().unwrap_or(0),
        v["duration"].as_u64().unwrap_or(0),
        s("response_flags"),
    );
    if let Some(by) = v["denied_by"].as_str() {
        line.push_str(&format!(" ({by})"));
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_says_who_asked_whom_and_how_it_went() {
        let v: Value = serde_json::from_str(
            r#"{"direction":"outbound","method":"GET","authority":"shipping-service:8080","path":"/","response_code":200,"duration":3,"response_flags":"-","upstream_peer_principal":"spiffe://cluster.local/ns/default/sa/shipping","upstream_host":"10.0.0.3:8080"}"#,
        )
        .unwrap();
        assert_eq!(
            line_of("order-v1-0", &v),
            "order-v1-0 outbound GET shipping-service:8080/ 200 3ms - order-v1-0 -> default/shipping mtls"
        );
        let v: Value = serde_json::from_str(
            r#"{"direction":"inbound","method":"GET","authority":"shipping","path":"/orders/7","response_code":403,"duration":0,"response_flags":"-","downstream_peer_principal":null,"downstream_remote_address":"10.0.0.9:4000","denied_by":"denied by default/deny rules[0] (DENY)"}"#,
        )
        .unwrap();
        assert_eq!(
            line_of("shipping-v1-0", &v),
            "shipping-v1-0 inbound GET shipping/orders/7 403 0ms - 10.0.0.9:4000 -> shipping-v1-0 plaintext (denied by default/deny rules[0] (DENY))"
        );
    }
}
