//! `meshctl demo`: starts a local mesh, applies the shipped order application
//! (`manifests/samples/order-app/`: order, inventory, shipping v1 and v2, the 90/10 split, the
//! circuit breaker on inventory, STRICT mutual TLS, the JWT policy), runs its Deployments as
//! pods with sidecars, sends requests from order to shipping and reports who answered, how fast
//! and whether mutual TLS carried them; then a short burst over two connections to inventory,
//! whose circuit breaker (one connection, one pending request) refuses some with 503, flag UO;
//! then requests through the ingress gateway to `/order`, as the seed's `gateway.yaml` routes
//! them.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde::Serialize;

use crate::local::{Mesh, RuntimeError, config};

/// The sample application, built into the binary so the demo runs from any folder.
pub const SAMPLE: [(&str, &str); 6] = [
    (
        "app.yaml",
        include_str!("../../manifests/samples/order-app/app.yaml"),
    ),
    (
        "gateway.yaml",
        include_str!("../../manifests/samples/order-app/gateway.yaml"),
    ),
    (
        "inventory-circuit-breaker.yaml",
        include_str!("../../manifests/samples/order-app/inventory-circuit-breaker.yaml"),
    ),
    (
        "mtls-strict.yaml",
        include_str!("../../manifests/samples/order-app/mtls-strict.yaml"),
    ),
    (
        "require-jwt.yaml",
        include_str!("../../manifests/samples/order-app/require-jwt.yaml"),
    ),
    (
        "shipping-split.yaml",
        include_str!("../../manifests/samples/order-app/shipping-split.yaml"),
    ),
];

/// How to run the demo.
#[derive(Clone, Debug)]
pub struct DemoOptions {
    /// The mesh's folder.
    pub dir: PathBuf,
    /// Requests from order to shipping.
    pub requests: usize,
    /// Their rate (requests per second), so they spread over a few seconds.
    pub rate: f64,
    /// Leave the mesh running afterwards.
    pub keep: bool,
    /// Show the load's progress bar (on standard error).
    pub progress: bool,
}

/// What the demo measured, for the calls from order to shipping (`--output json`).
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct DemoReport {
    /// Requests sent.
    pub requests: usize,
    /// Share answered 2xx.
    pub success_rate: f64,
    /// True when every answer saw the caller's mesh identity (mutual TLS all the way).
    pub mtls: bool,
    /// Answers by shipping version.
    pub by_version: std::collections::BTreeMap<String, usize>,
    /// Median latency.
    pub p50_ms: f64,
    /// 99th percentile latency.
    pub p99_ms: f64,
    /// Failures by reason (absent when none).
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub failures: std::collections::BTreeMap<String, usize>,
    /// The caller identities the destination saw.
    #[serde(skip)]
    pub peers: std::collections::BTreeMap<String, usize>,
    /// Wall time of the load, seconds.
    #[serde(skip)]
    pub elapsed_s: f64,
    /// The burst to inventory, through its circuit breaker.
    pub circuit_breaker: BurstReport,
    /// Requests through the ingress gateway.
    pub ingress: IngressReport,
}

/// What requests through the ingress gateway got.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct IngressReport {
    /// The URL asked, at the gateway.
    pub url: String,
    /// Requests sent.
    pub requests: usize,
    /// Answered 2xx (by order).
    pub ok: usize,
    /// True when order saw the gateway's mesh identity in every answer (mutual TLS from the
    /// gateway on).
    pub mtls: bool,
    /// Any failure, by reason (absent when none).
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub failures: std::collections::BTreeMap<String, usize>,
}

/// Requests sent through the ingress gateway.
const INGRESS_REQUESTS: usize = 100;
/// The gateway's identity, as order sees it.
const GATEWAY_ID: &str =
    "spiffe://cluster.local/ns/istio-system/sa/istio-ingressgateway-service-account";

/// What a burst over a few connections to a service with a circuit breaker got.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct BurstReport {
    /// The service's URL.
    pub url: String,
    /// Requests sent.
    pub requests: usize,
    /// Connections they were sent over, at once.
    pub connections: usize,
    /// Answered 2xx.
    pub ok: usize,
    /// Refused by the caller's sidecar at once: 503 with flag UO (circuit breaker overflow).
    pub overflow_503_uo: usize,
    /// Any other failure, by reason (absent when none).
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub failures: std::collections::BTreeMap<String, usize>,
}

/// Requests and connections of the burst to inventory.
const BURST: (usize, usize) = (40, 2);
const INVENTORY_URL: &str = "http://inventory-service:8080/";

/// Whether a load failure is a circuit breaker's overflow (the sidecar's answer, as Envoy words
/// it, for the requests it flags UO).
fn is_overflow(reason: &str) -> bool {
    reason.starts_with("503 ") && reason.contains("reset reason: overflow")
}

/// Writes the sample into `dir` and returns the folder.
fn write_sample(dir: &Path) -> Result<PathBuf, RuntimeError> {
    let folder = dir.join("samples").join("order-app");
    for (name, text) in SAMPLE {
        config::write_atomically(&folder.join(name), text)?;
    }
    Ok(folder)
}

/// Runs the demo; progress lines go to `log` (standard error).
pub fn run(options: &DemoOptions, log: &mut dyn Write) -> anyhow::Result<DemoReport> {
    let mesh = Mesh::new(&options.dir);
    if crate::local::state::load(&mesh.layout)?.is_some() {
        anyhow::bail!(
            "a mesh already runs in {0}: remove it with `meshctl down --dir {0}`, or give the demo another --dir",
            options.dir.display()
        );
    }
    let result = run_in(&mesh, options, log);
    if !options.keep || result.is_err() {
        let _ = writeln!(log, "cleaning up (meshctl down)");
        if let Err(e) = mesh.down() {
            let _ = writeln!(log, "cleaning up failed: {e}");
        }
    }
    result
}

fn run_in(mesh: &Mesh, options: &DemoOptions, log: &mut dyn Write) -> anyhow::Result<DemoReport> {
    let _ = writeln!(
        log,
        "starting the mesh in {} (pilot + CA)",
        options.dir.display()
    );
    mesh.up()?;
    let sample = write_sample(&mesh.layout.dir)?;
    let applied = config::apply(&mesh.layout, &[sample]).map_err(|e| match e {
        config::ApplyError::Invalid(diags) => anyhow::anyhow!(
            "the sample is invalid:\n{}",
            diags
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n")
        ),
        other => other.into(),
    })?;
    let _ = writeln!(
        log,
        "applied manifests/samples/order-app/ ({} resources)",
        applied.resources.len()
    );
    // What the sample holds that the mesh does not act on yet, said as plainly as the rest.
    for w in applied
        .warnings
        .iter()
        .filter(|w| w.message.starts_with(mesh_api::validate::NOT_ENFORCED))
    {
        let _ = writeln!(
            log,
            "  {} {}: {}: {}",
            w.kind.as_deref().unwrap_or(""),
            w.resource.as_deref().unwrap_or(""),
            w.field.as_deref().unwrap_or("spec"),
            w.message
        );
    }
    let (_, skipped) = mesh.start_deployments(&applied.resources, |name| {
        let _ = writeln!(
            log,
            "  starting pod {name} (sidecar, mTLS identity, capture rules)"
        );
    })?;
    for s in skipped {
        let _ = writeln!(log, "  skipped {s}");
    }
    let client = "order-v1-0";
    mesh.wait_endpoints(
        client,
        "shipping-service.default",
        2,
        Duration::from_secs(30),
    )?;
    let _ = writeln!(
        log,
        "sending {} requests from order to http://shipping-service:8080/ ...",
        options.requests
    );
    let report = load(
        mesh,
        client,
        "http://shipping-service:8080/",
        &[
            "-n",
            &options.requests.to_string(),
            "-c",
            "4",
            "--rate",
            &options.rate.to_string(),
        ],
        options.progress,
    )?;
    let (requests, connections) = BURST;
    let _ = writeln!(
        log,
        "sending a burst of {requests} requests over {connections} connections from order to {INVENTORY_URL} (its circuit breaker: 1 connection, 1 pending request) ..."
    );
    let burst = load(
        mesh,
        client,
        INVENTORY_URL,
        &["-n", &requests.to_string(), "-c", &connections.to_string()],
        false,
    )?;
    let (overflow, failures): (Vec<_>, Vec<_>) = burst
        .failures
        .into_iter()
        .partition(|(why, _)| is_overflow(why));
    let circuit_breaker = BurstReport {
        url: INVENTORY_URL.into(),
        requests: burst.requests,
        connections,
        ok: burst.ok,
        overflow_503_uo: overflow.iter().map(|(_, n)| n).sum(),
        failures: failures.into_iter().collect(),
    };
    let gateway = crate::local::INGRESS_GATEWAY_POD;
    let url = format!("http://{}:80/order", mesh.pod(gateway)?.address);
    let _ = writeln!(
        log,
        "sending {INGRESS_REQUESTS} requests to {url} through the ingress gateway (the seed's gateway.yaml) ..."
    );
    // The gateway routes once pilot's view reaches it; the first answer says it has.
    let ready = crate::local::wait_until(Duration::from_secs(30), || {
        load(mesh, gateway, &url, &["-n", "1"], false).is_ok_and(|r| r.ok == 1)
    });
    if !ready {
        anyhow::bail!("the ingress gateway did not route {url} within 30 s");
    }
    let through = load(
        mesh,
        gateway,
        &url,
        &["-n", &INGRESS_REQUESTS.to_string(), "-c", "2"],
        false,
    )?;
    let ingress = IngressReport {
        url,
        requests: through.requests,
        ok: through.ok,
        mtls: through.ok > 0 && through.by_peer.get(GATEWAY_ID) == Some(&through.ok),
        failures: through.failures,
    };
    let demo = DemoReport {
        requests: report.requests,
        success_rate: if report.requests == 0 {
            0.0
        } else {
            report.ok as f64 / report.requests as f64
        },
        mtls: report.ok > 0 && !report.by_peer.contains_key("none"),
        by_version: report.by_version,
        p50_ms: report.p50_ms,
        p99_ms: report.p99_ms,
        failures: report.failures,
        peers: report.by_peer,
        elapsed_s: report.elapsed_s,
        circuit_breaker,
        ingress,
    };
    Ok(demo)
}

/// Runs `mesh-echo load` against `url` in `client`'s pod; its report.
fn load(
    mesh: &Mesh,
    client: &str,
    url: &str,
    args: &[&str],
    progress: bool,
) -> anyhow::Result<mesh_e2e_report::Report> {
    let mut argv: Vec<String> = ["mesh-echo", "load", "--url", url, "-o", "json"]
        .iter()
        .chain(args)
        .map(ToString::to_string)
        .collect();
    if progress {
        argv.push("--progress".into());
    }
    let out = mesh
        .exec_command(client, &argv)?
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| anyhow::anyhow!("running the load from {client}: {e}"))?;
    serde_json::from_slice(&out.stdout).map_err(|e| {
        anyhow::anyhow!(
            "the load from {client} to {url} printed no report ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// The part of `mesh-echo load`'s JSON report the demo reads.
mod mesh_e2e_report {
    use std::collections::BTreeMap;

    #[derive(serde::Deserialize)]
    pub struct Report {
        pub requests: usize,
        pub ok: usize,
        #[serde(default)]
        pub failures: BTreeMap<String, usize>,
        #[serde(default)]
        pub by_version: BTreeMap<String, usize>,
        #[serde(default)]
        pub by_peer: BTreeMap<String, usize>,
        pub p50_ms: f64,
        pub p99_ms: f64,
        pub elapsed_s: f64,
    }
}

/// The demo's table.
pub fn table(r: &DemoReport) -> String {
    let mut s = format!(
        "\nRequests from order to shipping-service: {} in {:.1} s\n\n",
        r.requests, r.elapsed_s
    );
    s.push_str("  destination       version  requests   share\n");
    let ok: usize = r.by_version.values().sum();
    for (version, n) in &r.by_version {
        s.push_str(&format!(
            "  shipping-service  {version:<7}  {n:>8}  {:>5.1}%\n",
            *n as f64 * 100.0 / ok.max(1) as f64
        ));
    }
    s.push_str(&format!(
        "\n  success rate  {:.1}% ({} of {})\n",
        r.success_rate * 100.0,
        ok,
        r.requests
    ));
    let peers: Vec<&str> = r.peers.keys().map(String::as_str).collect();
    s.push_str(&format!(
        "  mutual TLS    {}\n",
        if r.mtls {
            format!("yes (shipping saw the caller as {})", peers.join(", "))
        } else {
            "NO: some answers saw no caller identity".to_string()
        }
    ));
    s.push_str(&format!(
        "  latency       p50 {:.2} ms, p99 {:.2} ms\n",
        r.p50_ms, r.p99_ms
    ));
    for (why, n) in &r.failures {
        s.push_str(&format!("  failed        {n} × {why}\n"));
    }
    let b = &r.circuit_breaker;
    s.push_str(&format!(
        "\nCircuit breaker on inventory-service (1 connection, 1 pending request): a burst of {} requests over {} connections\n\n",
        b.requests, b.connections
    ));
    s.push_str(&format!("  answered               {:>4}\n", b.ok));
    s.push_str(&format!(
        "  refused at once        {:>4}  (503, flag UO: overflow, by order's sidecar)\n",
        b.overflow_503_uo
    ));
    for (why, n) in &b.failures {
        s.push_str(&format!("  failed                 {n:>4}  {why}\n"));
    }
    let g = &r.ingress;
    s.push_str(&format!(
        "\nThrough the ingress gateway (Gateway order-gateway, VirtualService order): {}\n\n",
        g.url
    ));
    s.push_str(&format!(
        "  answered by order      {:>4} of {}\n",
        g.ok, g.requests
    ));
    s.push_str(&format!(
        "  mutual TLS             {}\n",
        if g.mtls {
            "yes (order saw the gateway's identity)"
        } else {
            "NO"
        }
    ));
    for (why, n) in &g.failures {
        s.push_str(&format!("  failed                 {n:>4}  {why}\n"));
    }
    s
}

/// What to try next when the demo left the mesh running.
pub fn next_steps(dir: &Path) -> String {
    let d = dir.display();
    format!(
        "\nThe mesh keeps running in {d}. Try:\n\
         \x20 meshctl ps --dir {d}\n\
         \x20 meshctl exec --dir {d} order-v1-0 -- mesh-echo load --url http://shipping-service:8080/ -n 200\n\
         \x20 meshctl logs --dir {d} shipping-v2-0 --proxy\n\
         \x20 meshctl tap --dir {d} svc/shipping-service      (live requests; Ctrl-C stops)\n\
         \x20 meshctl dashboard --dir {d}                     (http://127.0.0.1:15300/)\n\
         \x20 meshctl proxy-status --dir {d}\n\
         \x20 meshctl apply --dir {d} -f my-change.yaml\n\
         \x20 meshctl down --dir {d}\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::local::PodSpec;
    use crate::local::deploy::pods_for_deployment;
    use mesh_api::Resource;

    #[test]
    fn the_samples_deployments_become_echo_pods() {
        let report = mesh_api::load::load_str(SAMPLE[0].1, Some("app.yaml"));
        assert!(report.is_valid());
        let pods: Vec<PodSpec> = report
            .documents
            .iter()
            .filter_map(|d| match &d.resource {
                Resource::Deployment(d) => Some(pods_for_deployment(d).unwrap()),
                _ => None,
            })
            .flatten()
            .collect();
        let names: Vec<&str> = pods.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "order-v1-0",
                "inventory-v1-0",
                "shipping-v1-0",
                "shipping-v2-0"
            ]
        );
        let v2 = &pods[3];
        assert_eq!(v2.service_account, "shipping");
        assert_eq!(v2.labels["version"], "v2");
        assert_eq!(v2.ports, [8080]);
        assert!(v2.sidecar);
        assert_eq!(
            v2.command,
            [
                "mesh-echo",
                "--port",
                "8080",
                "--service",
                "shipping",
                "--version",
                "v2"
            ]
        );
    }
}
