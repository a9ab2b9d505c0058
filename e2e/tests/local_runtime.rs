//! End-to-end scenarios about the local runtime itself (`meshctl down`, `ps`, `logs`,
//! `proxy-status`, `demo`, its pod registry), and those whose fault is made inside a pod's
//! network namespace (a zone going dark by iptables, which an application container on
//! Kubernetes may not do): they run on the local backend whatever `MESH_E2E_BACKEND` says,
//! and the Kubernetes run leaves them out. They need root, so they are
//! `#[ignore = "needs root"]`: `scripts/test.sh` (and so CI, as root) runs them with
//! `--run-ignored all`, and there a mesh that cannot start is a failure with its reason.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use mesh_e2e::harness::{self, Cluster, LocalCluster, echo_pod};
use meshctl::local::{PodSpec, wait_until};

const DEADLINE: Duration = Duration::from_secs(30);

fn sample() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/samples/order-app")
}

/// The seed application running on the local backend, with order's sidecar knowing both
/// shipping versions.
fn seed(scenario: &str) -> LocalCluster {
    let c = harness::local(scenario);
    c.apply(&sample()).expect("apply the sample");
    c.wait_endpoints("order-v1-0", "shipping-service.default", 2)
        .expect("order knows shipping");
    c
}

fn assert_all_ok(report: &mesh_e2e::load::Report) {
    assert_eq!(
        report.ok, report.requests,
        "every request succeeds: {report:?}"
    );
}

#[test]
#[ignore = "needs root: runs a mesh in network namespaces"]
fn an_endpoint_proving_another_identity_is_refused() {
    let c = harness::local("identity");
    c.apply_yaml(
        "
apiVersion: v1
kind: Service
metadata: {name: vault, namespace: default}
spec:
  selector: {app: vault}
  ports:
  - {name: http, port: 8080}
",
    )
    .unwrap();
    c.run(&echo_pod("client", "client", "v1", "client"))
        .unwrap();
    c.run(&echo_pod("vault-0", "vault", "v1", "intruder"))
        .unwrap();
    c.wait_endpoints("client", "vault.default", 1).unwrap();
    // As registered (service account `intruder`), its certificate matches: calls work.
    let ok = c
        .load("client", "http://vault:8080/", &["-n", "5", "-c", "1"])
        .unwrap();
    assert_all_ok(&ok);
    // The registry now claims the pod runs as `vault`, but its certificate still proves
    // `intruder`: the client's sidecar must refuse it.
    let registration = c.dir().join("config/pods/vault-0.json");
    let text = std::fs::read_to_string(&registration).unwrap();
    std::fs::write(
        &registration,
        text.replace(
            "\"serviceAccountName\": \"intruder\"",
            "\"serviceAccountName\": \"vault\"",
        ),
    )
    .unwrap();
    let expects_vault = wait_until(DEADLINE, || {
        c.mesh.proxy_config("client").is_ok_and(|cfg| {
            cfg.to_string()
                .contains("spiffe://cluster.local/ns/default/sa/vault")
        })
    });
    assert!(expects_vault, "the client never learned the new identity");
    let refused = c
        .load("client", "http://vault:8080/", &["-n", "5", "-c", "1"])
        .unwrap();
    assert_eq!(refused.ok, 0, "an impostor must be refused: {refused:?}");
    // The answer says why: the identity shown and the one expected.
    let why = refused.failures.keys().next().unwrap();
    assert!(
        why.contains("sa/intruder") && why.contains("sa/vault"),
        "the refusal names both identities: {why}"
    );
}

/// An echo pod of `app` (answering with `version`) in `zone` of region us-west.
fn zoned_pod(name: &str, app: &str, version: &str, zone: &str) -> PodSpec {
    let mut pod = echo_pod(name, app, version, app);
    pod.labels
        .insert("topology.kubernetes.io/region".into(), "us-west".into());
    pod.labels
        .insert("topology.kubernetes.io/zone".into(), zone.into());
    pod
}

#[test]
#[ignore = "needs root: runs a mesh in network namespaces"]
fn locality_keeps_traffic_in_the_zone_and_fails_over_without_outlier_detection() {
    harness::require();
    // A client in us-west/zone1 calls `catalog`, which has a pod in zone1 and one in zone2,
    // with no DestinationRule at all: Istio's default locality load balancing, and no
    // outlierDetection to tell the proxy when zone1 is gone.
    let c = harness::local("locality");
    c.apply_yaml(
        "
apiVersion: v1
kind: Service
metadata: {name: catalog, namespace: default}
spec:
  selector: {app: catalog}
  ports: [{name: http, port: 8080, targetPort: 8080}]
",
    )
    .unwrap();
    for pod in [
        zoned_pod("web-0", "web", "v1", "zone1"),
        zoned_pod("catalog-z1-0", "catalog", "zone1", "zone1"),
        zoned_pod("catalog-z2-0", "catalog", "zone2", "zone2"),
    ] {
        c.run(&pod).unwrap();
    }
    c.wait_endpoints("web-0", "catalog.default", 2)
        .expect("web knows both catalog pods");
    let url = "http://catalog:8080/";
    let local = c.load("web-0", url, &["-n", "40", "-c", "2"]).unwrap();
    assert_all_ok(&local);
    assert_eq!(
        local.by_version.get("zone1"),
        Some(&40),
        "every answer from the client's zone: {local:?}"
    );
    // Zone 1 goes dark: every TCP packet into its pod is answered with a reset, its
    // registration left as it was (as when a zone fails before the registry notices).
    c.exec(
        "catalog-z1-0",
        &[
            "iptables",
            "-I",
            "INPUT",
            "-p",
            "tcp",
            "-j",
            "REJECT",
            "--reject-with",
            "tcp-reset",
        ],
    )
    .unwrap();
    let failed_over = wait_until(DEADLINE, || {
        c.load("web-0", url, &["-n", "10", "-c", "1"])
            .is_ok_and(|r| r.by_version.get("zone2") == Some(&10))
    });
    assert!(failed_over, "traffic never moved to zone2");
    let after = c.load("web-0", url, &["-n", "40", "-c", "2"]).unwrap();
    assert_all_ok(&after);
    assert_eq!(after.by_version.get("zone2"), Some(&40), "{after:?}");
    // The sidecar says why: the zone1 endpoint ejected for its connection failures.
    let clusters = c.sidecar_get("web-0", 15000, "/clusters").unwrap();
    assert!(
        clusters.lines().any(|l| l
            .starts_with("outbound|8080||catalog.default.svc.cluster.local::")
            && l.ends_with("health_flags::/failed_outlier_check")),
        "{clusters}"
    );
}

/// Host state the mesh must never change.
fn host_snapshot() -> Vec<String> {
    let run = |cmd: &str, args: &[&str]| {
        std::process::Command::new(cmd)
            .args(args)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    };
    // Counters differ from moment to moment: compare the rules only.
    let rules: String = run("iptables-save", &[])
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| l.split(" [").next().unwrap_or(l).to_string() + "\n")
        .collect();
    vec![
        rules,
        run("ip", &["-o", "link", "show"])
            .lines()
            .map(|l| l.split(" link/").next().unwrap_or(l).to_string() + "\n")
            .collect(),
        run("ip", &["route", "show", "table", "all"]),
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap_or_default(),
    ]
}

#[test]
#[ignore = "needs root: runs a mesh in network namespaces"]
fn down_leaves_nothing_behind() {
    harness::require();
    let before = host_snapshot();
    let c = seed("down");
    c.run(&PodSpec {
        name: "plain".into(),
        namespace: "default".into(),
        service_account: "default".into(),
        command: vec!["sleep".into(), "600".into()],
        ..PodSpec::default()
    })
    .unwrap();
    // A stray process started with `meshctl exec` goes too.
    let mut stray = c
        .mesh
        .exec_command("order-v1-0", &["sleep".into(), "600".into()])
        .unwrap()
        .spawn()
        .unwrap();
    let st = c.mesh.state().unwrap();
    let prefix = st.prefix.clone();
    let mut procs: Vec<_> = st.control_plane.into_iter().collect();
    for pod in st.pods.values() {
        procs.extend(pod.app);
        procs.extend(pod.proxy);
    }
    assert_eq!(
        procs.len(),
        1 + 5 + 4 + 1,
        "control plane, 5 apps, 4 sidecars, the ingress gateway"
    );
    // A crash: the control plane dies and nothing is cleaned up.
    let cp = st.control_plane.unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(cp.pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    assert!(wait_until(DEADLINE, || !cp.alive()));

    let report = c.mesh.down().unwrap();
    assert_eq!(report.pods, 6, "five pods and the ingress gateway");
    assert_eq!(report.namespaces, 7, "six pods and the hub");
    let _ = stray.wait();
    for p in &procs {
        assert!(!p.alive(), "process {} still runs", p.pid);
    }
    let namespaces = meshctl::local::net::netns_with_prefix(&prefix);
    assert!(namespaces.is_empty(), "namespaces left: {namespaces:?}");
    for dir in ["/etc/netns", "/run/mesh"] {
        let left: Vec<String> = std::fs::read_dir(dir)
            .map(|d| {
                d.flatten()
                    .filter_map(|e| e.file_name().into_string().ok())
                    .filter(|n| n.starts_with(&prefix))
                    .collect()
            })
            .unwrap_or_default();
        assert!(left.is_empty(), "{dir} still holds {left:?}");
    }
    assert!(!c.dir().join("runtime.json").exists());
    assert!(
        std::fs::read_dir(c.dir().join("config/pods"))
            .map(|d| d.count() == 0)
            .unwrap_or(true),
        "pod registrations left"
    );
    assert_eq!(
        host_snapshot(),
        before,
        "the host's rules, links and routes are untouched"
    );
    // Idempotent.
    let again = c.mesh.down().unwrap();
    assert_eq!((again.pods, again.namespaces), (0, 0));
}

fn meshctl(args: &[&str]) -> std::process::Output {
    let bin = meshctl::local::find_binary("meshctl", "meshctl").unwrap();
    std::process::Command::new(bin).args(args).output().unwrap()
}

#[test]
#[ignore = "needs root: runs a mesh in network namespaces"]
fn ps_logs_and_proxy_status_show_the_running_mesh() {
    let c = seed("cli");
    let dir = c.dir().to_str().unwrap().to_string();
    let ps = meshctl(&["ps", "--dir", &dir]);
    let text = String::from_utf8_lossy(&ps.stdout);
    assert!(ps.status.success(), "{text}");
    assert!(text.contains("control plane: running"), "{text}");
    for pod in [
        "order-v1-0",
        "inventory-v1-0",
        "shipping-v1-0",
        "shipping-v2-0",
    ] {
        let line = text.lines().find(|l| l.starts_with(pod)).unwrap_or("");
        assert!(
            line.contains("running") && line.contains("yes"),
            "{pod}: {text}"
        );
    }
    // `meshctl up` started the ingress gateway beside them.
    let gateway = text
        .lines()
        .find(|l| l.starts_with("istio-ingressgateway-0"))
        .unwrap_or("");
    assert!(
        gateway.contains("istio-system")
            && gateway.contains("gateway")
            && gateway.contains("running")
            && gateway.contains("istio=ingressgateway"),
        "{text}"
    );
    c.load("order-v1-0", "http://shipping-service:8080/", &["-n", "20"])
        .unwrap();
    let logs = meshctl(&["logs", "--dir", &dir, "shipping-v1-0", "--proxy"]);
    let text = String::from_utf8_lossy(&logs.stdout);
    // The local mesh starts with access logs on (as Istio's demo profile): JSON lines.
    assert!(
        text.contains(r#""direction":"inbound","method":"GET""#),
        "access log lines: {text}"
    );
    let app = meshctl(&["logs", "--dir", &dir, "shipping-v1-0"]);
    assert!(String::from_utf8_lossy(&app.stdout).contains("mesh-echo shipping v1 listening"));
    let status = meshctl(&["proxy-status", "--dir", &dir]);
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(
        status.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&status.stderr)
    );
    // Four sidecars and the ingress gateway.
    assert_eq!(text.matches("SYNCED").count(), 5, "{text}");
    // Every sidecar told pilot its version, which `meshctl verify` compares with pilot's.
    let version = format!("  {}  ", env!("CARGO_PKG_VERSION"));
    assert_eq!(
        text.lines()
            .filter(|l| l.contains("SYNCED") && l.contains(&version))
            .count(),
        5,
        "{text}"
    );
    // The seed's DestinationRule is held by every sidecar that sees inventory and enforced
    // whole (circuit breaker, outlier detection): nothing of it is listed as not enforced.
    assert!(
        !text.contains("DestinationRule default/inventory-service"),
        "{text}"
    );

    // `meshctl proxy-config`: what order's sidecar holds, as tables.
    let config = |what: &str| {
        let out = meshctl(&["proxy-config", "--dir", &dir, "order-v1-0", what]);
        assert!(
            out.status.success(),
            "{what}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let clusters = config("clusters");
    for subset in ["v1", "v2"] {
        let cluster = format!("outbound|8080|{subset}|shipping-service.default.svc.cluster.local");
        assert!(clusters.contains(&cluster), "{clusters}");
    }
    let routes = config("routes");
    assert!(
        routes.contains("shipping-service.default.svc.cluster.local|v1 90%, shipping-service.default.svc.cluster.local|v2 10%"),
        "the seed's split: {routes}"
    );
    let endpoints = config("endpoints");
    assert_eq!(
        endpoints
            .lines()
            .filter(|l| l.contains("HEALTHY") && l.contains("sa/shipping"))
            .count(),
        2,
        "{endpoints}"
    );
    assert!(config("policies").contains("mTLS STRICT"));
    let secrets = config("secrets");
    assert!(
        secrets.contains("default        Cert Chain  spiffe://cluster.local/ns/default/sa/order"),
        "{secrets}"
    );
    assert!(secrets.contains("ROOTCA"), "{secrets}");

    // `meshctl describe pod`: what applies to shipping v1.
    let out = meshctl(&["describe", "pod", "--dir", &dir, "shipping-v1-0"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    for line in [
        "Service: shipping-service (shipping-service.default.svc.cluster.local), ports: http 8080",
        "VirtualService:   default/shipping-service (1 rule(s); for mesh)",
        "DestinationRule:  default/shipping-service (this pod is in subset v1)",
        "mTLS:          STRICT (PeerAuthentication istio-system/default, mesh-wide)",
    ] {
        assert!(text.contains(line), "{line}: {text}");
    }

    // `meshctl analyze` on the running mesh: the seed, its pods and its gateway, all in order
    // but for its JWT policy, whose booking-service the seed does not run.
    let analyze = meshctl(&["analyze", "--dir", &dir]);
    let text = String::from_utf8_lossy(&analyze.stdout);
    assert!(analyze.status.success(), "{text}");
    let found: Vec<&str> = text.lines().filter(|l| !l.starts_with("  →")).collect();
    assert_eq!(found.len(), 1, "{text}");
    assert!(
        found[0].starts_with("Warning [IST0127] (AuthorizationPolicy default/require-jwt)"),
        "{text}"
    );
    // A Sidecar selecting nothing that runs is an Error, naming it.
    c.apply_yaml(
        "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {name: typo, namespace: default}\nspec:\n  workloadSelector: {labels: {app: ordr}}\n  egress: [{hosts: [\"./*\"]}]\n",
    )
    .unwrap();
    let analyze = meshctl(&["analyze", "--dir", &dir]);
    let text = String::from_utf8_lossy(&analyze.stdout);
    assert_eq!(analyze.status.code(), Some(1), "{text}");
    assert!(
        text.contains(
            "Error [IST0101] (Sidecar default/typo) its selector (app=ordr) selects no pod"
        ),
        "{text}"
    );
    // What the proxies report is there too: a field accepted but not enforced yet, by name.
    c.apply_yaml(
        "apiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata: {name: quiet-metrics, namespace: default}\nspec:\n  metrics: [{providers: [{name: prometheus}], overrides: [{match: {metric: REQUEST_COUNT}, disabled: true}]}]\n",
    )
    .unwrap();
    let reported = "Warning [MESH0003] (Telemetry default/quiet-metrics) spec.metrics[0].overrides: accepted, not enforced yet";
    let mut text = String::new();
    wait_until(DEADLINE, || {
        text = String::from_utf8_lossy(&meshctl(&["analyze", "--dir", &dir]).stdout).into_owned();
        text.contains(reported)
    });
    assert!(text.contains(reported), "{text}");
}

#[test]
#[ignore = "needs root: runs a mesh in network namespaces"]
fn demo_reports_the_seed_in_json_and_cleans_up() {
    harness::require();
    let dir = tempfile::tempdir().unwrap();
    let out = meshctl(&[
        "demo",
        "--dir",
        dir.path().to_str().unwrap(),
        "--output",
        "json",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(r["requests"], 1000);
    assert_eq!(r["success_rate"], 1.0);
    assert_eq!(r["mtls"], true);
    let v1 = r["by_version"]["v1"].as_u64().unwrap();
    let v2 = r["by_version"]["v2"].as_u64().unwrap();
    assert_eq!(v1 + v2, 1000);
    // 10% to v2: sd = sqrt(1000 * 0.1 * 0.9) ≈ 9.5; five of them.
    assert!((52..=148).contains(&v2), "v2 got {v2}");
    assert!(r["p50_ms"].as_f64().unwrap() > 0.0);
    assert!(r["p99_ms"].as_f64().unwrap() >= r["p50_ms"].as_f64().unwrap());
    // The circuit breaker acts: two connections at once to inventory, some refused with UO.
    let cb = &r["circuit_breaker"];
    let (ok, uo) = (
        cb["ok"].as_u64().unwrap(),
        cb["overflow_503_uo"].as_u64().unwrap(),
    );
    assert!(uo > 0 && ok > 0, "{cb}");
    assert_eq!(ok + uo, cb["requests"].as_u64().unwrap(), "{cb}");
    // The seed's gateway.yaml serves /order through the ingress gateway, over mutual TLS
    // from the gateway to order.
    let ingress = &r["ingress"];
    assert_eq!(ingress["requests"], 100, "{ingress}");
    assert_eq!(ingress["ok"], 100, "{ingress}");
    assert_eq!(ingress["mtls"], true, "{ingress}");
    assert!(ingress["url"].as_str().unwrap().ends_with(":80/order"));
    // The demo claims only what is enforced: the seed holds nothing it does not act on, so
    // nothing is listed as not enforced.
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(!log.contains("not enforced"), "{log}");
    // Cleaned up: no record, so no namespace of it either.
    assert!(!dir.path().join("runtime.json").exists());
}

/// A running `meshctl` whose stdout is read once it exits and whose stderr lines come as
/// they are written.
struct Watching {
    child: std::process::Child,
    stderr: std::sync::mpsc::Receiver<String>,
}

impl Drop for Watching {
    fn drop(&mut self) {
        // Never left running after its test, whatever the test's outcome.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Watching {
    fn start(args: &[&str]) -> Watching {
        use std::io::BufRead;
        use std::process::Stdio;
        let bin = meshctl::local::find_binary("meshctl", "meshctl").unwrap();
        let mut child = std::process::Command::new(bin)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, stderr) = std::sync::mpsc::channel();
        let err = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(err).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Watching { child, stderr }
    }

    /// Waits (within a deadline) for a stderr line containing `words`.
    fn wait_for(&self, words: &str) -> String {
        let deadline = std::time::Instant::now() + DEADLINE;
        let mut seen = Vec::new();
        while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
            match self.stderr.recv_timeout(left) {
                Ok(line) if line.contains(words) => return line,
                Ok(line) => seen.push(line),
                Err(_) => break,
            }
        }
        panic!("no {words:?} on meshctl's stderr within {DEADLINE:?}: {seen:?}");
    }

    /// Its stdout once it exits (within a deadline; killed and failed otherwise).
    fn output(mut self) -> (std::process::ExitStatus, String) {
        use std::io::Read;
        let exited = wait_until(DEADLINE, || matches!(self.child.try_wait(), Ok(Some(_))));
        if !exited {
            let _ = self.child.kill();
        }
        assert!(exited, "meshctl did not finish within {DEADLINE:?}");
        let status = self.child.wait().unwrap();
        let mut out = String::new();
        self.child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut out)
            .unwrap();
        (status, out)
    }
}

#[test]
#[ignore = "needs root: runs a mesh in network namespaces"]
fn tap_streams_a_services_requests_live_with_filters() {
    let c = seed("tap");
    let dir = c.dir().to_str().unwrap().to_string();
    let order = "spiffe://cluster.local/ns/default/sa/order";

    // Every request shipping's sidecars receive, as JSON; both versions' pods are watched.
    let tap = Watching::start(&[
        "tap",
        "svc/shipping-service",
        "--direction",
        "inbound",
        "--max",
        "6",
        "-o",
        "json",
        "--dir",
        &dir,
    ]);
    let started = tap.wait_for("tapping");
    assert!(
        started.contains("shipping-v1-0") && started.contains("shipping-v2-0"),
        "{started}"
    );
    let report = c
        .load("order-v1-0", "http://shipping-service:8080/", &["-n", "6"])
        .unwrap();
    assert_all_ok(&report);
    let (status, out) = tap.output();
    assert!(status.success(), "{out}");
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 6, "{out}");
    for l in &lines {
        assert!(l["pod"].as_str().unwrap().starts_with("shipping-v"), "{l}");
        assert_eq!(l["direction"], "inbound", "{l}");
        assert_eq!(l["method"], "GET", "{l}");
        assert_eq!(l["path"], "/", "{l}");
        assert_eq!(l["response_code"], 200, "{l}");
        assert_eq!(
            l["downstream_peer_principal"], order,
            "over mutual TLS: {l}"
        );
        assert!(l["duration"].is_u64(), "{l}");
    }

    // One pod, as lines, only what goes to inventory: the shipping traffic passes unshown.
    let tap = Watching::start(&[
        "tap",
        "order-v1-0",
        "--authority",
        "inventory-service",
        "--max",
        "1",
        "--dir",
        &dir,
    ]);
    tap.wait_for("tapping 1 sidecar");
    c.wait_endpoints("order-v1-0", "inventory-service.default", 1)
        .unwrap();
    let shipping = c
        .load("order-v1-0", "http://shipping-service:8080/", &["-n", "3"])
        .unwrap();
    assert_all_ok(&shipping);
    let inventory = c
        .load(
            "order-v1-0",
            "http://inventory-service:8080/stock",
            &["-n", "1"],
        )
        .unwrap();
    assert_all_ok(&inventory);
    let (status, out) = tap.output();
    assert!(status.success(), "{out}");
    assert_eq!(out.lines().count(), 1, "{out}");
    assert!(
        out.starts_with("order-v1-0 outbound GET inventory-service:8080/stock 200 "),
        "{out}"
    );
    assert!(
        out.contains("-> default/inventory mtls"),
        "the identity inventory proved: {out}"
    );

    // A target that names nothing says what there is.
    let wrong = meshctl(&["tap", "svc/nothing", "--dir", &dir]);
    assert!(!wrong.status.success());
    let err = String::from_utf8_lossy(&wrong.stderr);
    assert!(
        err.contains("\"svc/nothing\"") && err.contains("order-v1-0"),
        "{err}"
    );
}

/// The browser the dashboard test drives: `MESH_CHROMIUM`, else Debian's `chromium`.
fn chromium() -> PathBuf {
    if let Ok(p) = std::env::var("MESH_CHROMIUM") {
        return PathBuf::from(p);
    }
    ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .find_map(|name| {
            std::env::var_os("PATH").and_then(|paths| {
                std::env::split_paths(&paths)
                    .map(|d| d.join(name))
                    .find(|p| p.is_file())
            })
        })
        .expect(
            "the dashboard test drives a headless Chromium: install it with \
             `apt-get install -y chromium` (scripts/test.sh does) or set MESH_CHROMIUM",
        )
}

/// Headless Chromium on `url` with `args` (`--dump-dom`, `--screenshot=...`): its stdout.
fn browse(url: &str, args: &[&str]) -> String {
    let out = std::process::Command::new(chromium())
        .args([
            "--headless",
            // As root, Chromium runs only without its sandbox.
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--window-size=1400,760",
            // The page's first fetch of /api/graph is drawn before the page counts as loaded.
            "--virtual-time-budget=3000",
        ])
        .args(args)
        .arg(url)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "chromium {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// GET `url` (http://127.0.0.1:PORT/path) with HTTP/1.0: the body.
fn http_get(url: &str) -> String {
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://").unwrap();
    let (addr, path) = rest.split_at(rest.find('/').unwrap());
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    text.split_once("\r\n\r\n").unwrap().1.to_string()
}

#[test]
#[ignore = "needs root (a mesh in network namespaces) and a headless Chromium"]
fn the_dashboard_draws_the_live_service_graph_in_a_browser() {
    let browser = chromium();
    let c = seed("dashboard");
    let dir = c.dir().to_str().unwrap().to_string();
    let dashboard = Watching::start(&[
        "dashboard",
        "--port",
        "0",
        "--interval",
        "1",
        "--window",
        "10",
        "--dir",
        &dir,
    ]);
    let line = dashboard.wait_for("dashboard at http://127.0.0.1:");
    let url = line.split_whitespace().nth(2).unwrap().to_string();

    std::thread::scope(|s| {
        // 100 rps from order to shipping for 8 s, while the dashboard scrapes every second.
        let load = s.spawn(|| {
            c.load(
                "order-v1-0",
                "http://shipping-service:8080/",
                &["-n", "800", "-c", "2", "--rate", "100"],
            )
            .unwrap()
        });
        // Once two scrapes have seen the traffic, the edge has a rate.
        let graph_url = format!("{url}api/graph");
        let flowing = || {
            let v: serde_json::Value = serde_json::from_str(&http_get(&graph_url)).unwrap();
            v["edges"].as_array().unwrap().iter().any(|e| {
                e["source"] == "default/order-v1"
                    && e["target"] == "default/shipping-v1"
                    && e["rps"].as_f64().unwrap_or(0.0) > 10.0
            })
        };
        assert!(
            wait_until(DEADLINE, flowing),
            "the graph never showed order -> shipping-v1 with a rate: {}",
            http_get(&graph_url)
        );
        let v: serde_json::Value = serde_json::from_str(&http_get(&graph_url)).unwrap();
        let edge = v["edges"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["source"] == "default/order-v1" && e["target"] == "default/shipping-v1")
            .unwrap();
        assert_eq!(edge["success_rate"], 1.0, "{edge}");
        assert_eq!(edge["mtls"], "mutual_tls", "{edge}");
        assert!(edge["p99_ms"].as_f64().unwrap() > 0.0, "{edge}");

        // What a browser draws of it: the DOM after the page's script ran...
        let dom = browse(&url, &["--dump-dom"]);
        for node in [
            "default/order-v1",
            "default/shipping-v1",
            "default/shipping-v2",
        ] {
            assert!(
                dom.contains(&format!("data-id=\"{node}\"")),
                "{node} in {dom}"
            );
        }
        assert!(
            dom.contains(
                "data-source=\"default/order-v1\" data-target=\"default/shipping-v1\" data-mtls=\"mutual_tls\""
            ),
            "{dom}"
        );
        assert!(
            dom.contains(" rps · 100% · p99 ") && dom.contains(" · mTLS</text>"),
            "an edge's label: {dom}"
        );
        assert!(
            dom.contains("data-service=\"shipping-service.default.svc.cluster.local\""),
            "the golden signals row: {dom}"
        );
        assert!(dom.contains("data-ready=\"true\""), "{dom}");

        // ... and a screenshot of it among the test artefacts.
        let artefacts = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .parent()
            .unwrap()
            .join("test-artefacts");
        std::fs::create_dir_all(&artefacts).unwrap();
        let png = artefacts.join("dashboard.png");
        let _ = std::fs::remove_file(&png);
        browse(&url, &[&format!("--screenshot={}", png.display())]);
        let bytes = std::fs::read(&png).unwrap();
        assert!(
            bytes.starts_with(b"\x89PNG\r\n\x1a\n") && bytes.len() > 20_000,
            "{} is {} bytes",
            png.display(),
            bytes.len()
        );
        eprintln!(
            "the dashboard as {} drew it: {}",
            browser.display(),
            png.display()
        );

        assert_all_ok(&load.join().unwrap());
    });
    drop(dashboard);
}

#[test]
#[ignore = "needs root: runs a mesh in network namespaces"]
fn why_explains_a_routed_a_denied_and_an_unrouted_request() {
    let c = seed("why");
    let dir = c.dir().to_str().unwrap().to_string();
    let why = |url: &str| {
        let out = meshctl(&["why", "--dir", &dir, "order-v1-0", url]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // The seed: the 90/10 split over mutual TLS, nothing denies it.
    let text = why("http://shipping-service:8080/orders");
    for line in [
        "1. Service: shipping-service.default.svc.cluster.local port 8080 (HTTP)",
        "2. Route: http[0] of VirtualService default/shipping-service",
        "Destination shipping-service.default.svc.cluster.local|v1 (90%) (DestinationRule default/shipping-service): 1 endpoint(s)",
        "shipping-v2-0 (10.244.",
        "mutual TLS (order-v1-0 proves spiffe://cluster.local/ns/default/sa/order), STRICT there; no AuthorizationPolicy: allowed",
        "Verdict: 90%: shipping-v1-0 answers; 10%: shipping-v2-0 answers.",
    ] {
        assert!(text.contains(line), "{line}: {text}");
    }
    // What the sidecars answer agrees: every request answered, by both versions.
    let report = c
        .load(
            "order-v1-0",
            "http://shipping-service:8080/orders",
            &["-n", "40"],
        )
        .unwrap();
    assert_all_ok(&report);

    // A DENY policy at shipping and a route for inventory that takes /stock only.
    c.apply_yaml(
        "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-admin, namespace: default}
spec:
  selector: {matchLabels: {app: shipping}}
  action: DENY
  rules: [{to: [{operation: {paths: [\"/admin*\"]}}]}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: inventory-stock, namespace: default}
spec:
  hosts: [inventory-service]
  http: [{match: [{uri: {prefix: /stock}}], route: [{destination: {host: inventory-service}}]}]
",
    )
    .unwrap();
    let denied = "403 from shipping-v1-0's sidecar: denied by default/deny-admin rules[0] (DENY)";
    let mut text = String::new();
    wait_until(DEADLINE, || {
        text = why("http://shipping-service:8080/admin/users");
        text.contains(denied)
    });
    assert!(text.contains(denied), "{text}");
    assert!(
        text.contains("10%: 403 from shipping-v2-0's sidecar"),
        "{text}"
    );
    // The sidecars agree.
    let report = c
        .load(
            "order-v1-0",
            "http://shipping-service:8080/admin/users",
            &["-n", "10"],
        )
        .unwrap();
    assert_eq!(failed_with(&report, 403), 10, "{report:?}");

    let unrouted = "Verdict: 404 from the caller's sidecar (flag NR): no route matches";
    wait_until(DEADLINE, || {
        text = why("http://inventory-service:8080/other");
        text.contains(unrouted)
    });
    assert!(text.contains(unrouted), "{text}");
    assert!(
        text.contains("of VirtualService default/inventory-stock"),
        "{text}"
    );
    assert!(
        why("http://inventory-service:8080/stock/7")
            .contains("Verdict: 100%: inventory-v1-0 answers.")
    );

    // A TCP port with a TCP route: told as a connection, and a DENY on the port closes it.
    c.apply_yaml(
        "apiVersion: v1
kind: Service
metadata: {name: stock-tcp, namespace: default}
spec:
  selector: {app: inventory}
  ports: [{name: tcp-stock, port: 9000, targetPort: 8080}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: stock-tcp, namespace: default}
spec:
  hosts: [stock-tcp]
  tcp: [{match: [{port: 9000}], route: [{destination: {host: inventory-service, port: {number: 8080}}}]}]
",
    )
    .unwrap();
    let routed = "2. Route: tcp[0] of VirtualService default/stock-tcp (port 9000); a TCP connection, so no retries, timeouts or faults";
    wait_until(DEADLINE, || {
        text = why("tcp://stock-tcp:9000");
        text.contains(routed) && text.contains("Verdict: 100%: inventory-v1-0 answers.")
    });
    assert!(text.contains(routed), "{text}");
    // The seed's circuit breaker on inventory holds for its TCP connections too: one at a time.
    for line in [
        "circuit breaker (DestinationRule default/inventory-service): at most 1 connection(s), 1 pending request(s); beyond them order-v1-0 answers 503 (flag UO) or closes the connection",
        "outlier detection (DestinationRule default/inventory-service): an endpoint is ejected after 1 consecutive 5xx, for 180 s at first",
        "Verdict: 100%: inventory-v1-0 answers.",
    ] {
        assert!(text.contains(line), "{line}: {text}");
    }
    let report = c
        .load(
            "order-v1-0",
            "http://stock-tcp:9000/stock",
            &["-n", "20", "-c", "1"],
        )
        .unwrap();
    assert_all_ok(&report);
    c.apply_yaml(
        "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-order-tcp, namespace: default}
spec:
  selector: {matchLabels: {app: inventory}}
  action: DENY
  rules: [{from: [{source: {principals: [cluster.local/ns/default/sa/order]}}]}]
",
    )
    .unwrap();
    let closed = "Verdict: 100%: the connection closed by inventory-v1-0's sidecar: denied by default/deny-order-tcp rules[0] (DENY).";
    wait_until(DEADLINE, || {
        text = why("tcp://stock-tcp:9000");
        text.contains(closed)
    });
    assert!(text.contains(closed), "{text}");
    let report = c
        .load("order-v1-0", "http://stock-tcp:9000/stock", &["-n", "5"])
        .unwrap();
    assert_eq!(report.ok, 0, "{report:?}");
}

/// Requests of `report` that failed with `status`.
fn failed_with(report: &mesh_e2e::load::Report, status: u16) -> usize {
    let prefix = format!("{status} ");
    report
        .failures
        .iter()
        .filter(|(why, _)| why.starts_with(&prefix))
        .map(|(_, n)| n)
        .sum()
}
