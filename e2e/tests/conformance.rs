//! The Gateway API conformance scenarios (`../shared/testdata/gateway-api-conformance/`) against
//! the local namespace backend: the suite's base manifests (Gateways of class `istio`, echo
//! backends run as `mesh-echo`), then each test's own manifests, then its traffic checks, sent
//! from a pod outside the mesh to the gateway pod deployed for the Gateway the test's routes
//! name. Every check must hold three times in a row within a deadline, as upstream retries.
//! The test prints passed, failed and not-run counts per feature, and fails when a test of a
//! feature the mesh claims does not pass.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mesh_e2e::conformance::{self, Check, ConformanceTest};
use mesh_e2e::harness::{self, Cluster, LocalCluster};
use meshctl::local::PodSpec;
use serde_json::Value;

/// Features whose every runnable test must pass.
const CLAIMED: &[&str] = &[
    "SupportHTTPRoute",
    "SupportHTTPRouteQueryParamMatching",
    "SupportHTTPRouteMethodMatching",
    "SupportHTTPRouteResponseHeaderModification",
    "SupportHTTPRoutePathRedirect",
    "SupportHTTPRoutePortRedirect",
    "SupportHTTPRouteSchemeRedirect",
    "SupportHTTPRouteHostRewrite",
    "SupportHTTPRoutePathRewrite",
    "SupportHTTPRoute303RedirectStatusCode",
    "SupportHTTPRoute307RedirectStatusCode",
    "SupportHTTPRoute308RedirectStatusCode",
    "SupportHTTPRouteBackendRequestHeaderModification",
    "SupportHTTPRouteBackendRequestRedirect",
    "SupportHTTPRouteBackendURLRewrite",
    "SupportHTTPRouteBackendTimeout",
    "SupportHTTPRouteRequestTimeout",
    "SupportHTTPRouteNamedRouteRule",
    "SupportHTTPRouteParentRefPort",
    "SupportReferenceGrant",
    "SupportGRPCRoute",
    "SupportGRPCRouteNamedRouteRule",
    "SupportMesh",
    "SupportMeshHTTPRouteBackendRequestHeaderModification",
    "SupportMeshHTTPRouteQueryParamMatching",
    "SupportMeshHTTPRouteRedirectPath",
    "SupportMeshHTTPRouteRedirectPort",
    "SupportMeshHTTPRouteRewritePath",
    "SupportMeshHTTPRouteSchemeRedirect",
];

/// Tests whose condensed checks contradict the manifests, left out with the reason.
const DATA_ERRORS: &[(&str, &str)] = &[(
    "MeshHTTPRouteNamedRule",
    "its second check expects path /named to reach the backend for a request to /unnamed, which no rule rewrites",
)];

/// Features the runner attempts (others are counted as not run).
fn attempted(t: &ConformanceTest) -> bool {
    t.features.iter().all(|f| {
        f == "SupportGateway"
            || f == "SupportReferenceGrant"
            || f == "SupportMesh"
            || f.starts_with("SupportHTTPRoute")
            || f.starts_with("SupportGRPCRoute")
            || f.starts_with("SupportMeshHTTPRoute")
    })
}

/// A mesh (GAMMA) test: requests go from a pod in the mesh to a Service.
fn is_mesh(t: &ConformanceTest) -> bool {
    t.features.iter().any(|f| f == "SupportMesh")
}

/// The pod the mesh tests send from, inside the mesh, in the Services' namespace.
fn mesh_client() -> PodSpec {
    PodSpec {
        name: "mesh-client".into(),
        namespace: MESH_NS.into(),
        service_account: "default".into(),
        labels: [("app".to_string(), "mesh-client".to_string())].into(),
        sidecar: true,
        command: vec!["mesh-echo".into(), "--port".into(), "8080".into()],
        ports: vec![8080],
        ..PodSpec::default()
    }
}

const MESH_NS: &str = "gateway-conformance-mesh";

/// Where a mesh check goes: the virtual IP of the Service its Host names (`name`, or
/// `name.namespace`, the mesh namespace by default; `echo` when unset), on the Host's port
/// (80 by default).
fn mesh_target(c: &LocalCluster, check: &Check) -> Option<SocketAddr> {
    let host = check.host.as_deref().unwrap_or("echo");
    let (name, port) = match host.rsplit_once(':') {
        Some((n, p)) => (n, p.parse().ok()?),
        None => (host, 80),
    };
    let mut labels = name.split('.');
    let service = labels.next()?;
    let ns = labels.next().unwrap_or(MESH_NS);
    let vip = meshctl::local::config::services(&c.mesh.layout)
        .into_iter()
        .find(|s| s.name == service && s.namespace == ns)?
        .vip;
    Some(SocketAddr::from((vip, port)))
}

fn outside() -> PodSpec {
    PodSpec {
        name: "client".into(),
        namespace: "default".into(),
        service_account: "default".into(),
        sidecar: false,
        command: vec!["mesh-echo".into(), "--port".into(), "8080".into()],
        ports: vec![8080],
        ..PodSpec::default()
    }
}

/// The manifests as the local runtime runs them: the placeholders filled, every echo backend
/// as `mesh-echo` on its container port, the suite's DNS server left out.
fn documents(text: &str) -> Vec<Value> {
    let text = text
        .replace("{GATEWAY_CLASS_NAME}", "istio")
        .replace("{GATEWAY_CONTROLLER_NAME}", "istio.io/gateway-controller");
    let mut docs = mesh_injector::template::documents(&text).unwrap();
    docs.retain(|d| !d.is_null());
    docs.retain(|d| {
        d["kind"] != "Deployment"
            || !d["spec"]["template"]["spec"]["containers"][0]["image"]
                .as_str()
                .unwrap_or("")
                .contains("coredns")
    });
    for d in docs.iter_mut().filter(|d| d["kind"] == "Deployment") {
        // Pod names are the runtime's own keys: the consumer namespace's copies of the mesh
        // echo get names of their own.
        if d["metadata"]["namespace"] == "gateway-conformance-mesh-consumer" {
            let name = format!("consumer-{}", d["metadata"]["name"].as_str().unwrap_or(""));
            d["metadata"]["name"] = serde_json::json!(name);
        }
        let name = d["metadata"]["name"].as_str().unwrap_or("").to_string();
        let container = &mut d["spec"]["template"]["spec"]["containers"][0];
        // echo-basic listens on 3000 (gRPC there when GRPC_ECHO_SERVER is set); echo-advanced
        // on its first declared port (8080).
        let grpc = container["env"]
            .as_array()
            .is_some_and(|e| e.iter().any(|v| v["name"] == "GRPC_ECHO_SERVER"));
        let port = container["ports"][0]["containerPort"]
            .as_u64()
            .unwrap_or(3000);
        container["image"] = serde_json::json!("mesh-echo:latest");
        if grpc {
            container["args"] = serde_json::json!([
                "--port",
                "3100",
                "--grpc-port",
                port.to_string(),
                "--service",
                name
            ]);
            container["ports"] =
                serde_json::json!([{"containerPort": port}, {"containerPort": 3100}]);
        } else {
            container["args"] = serde_json::json!(["--port", port.to_string(), "--service", name]);
            container["ports"] = serde_json::json!([{"containerPort": port}]);
        }
        container.as_object_mut().unwrap().remove("env");
        container.as_object_mut().unwrap().remove("command");
        container.as_object_mut().unwrap().remove("volumeMounts");
    }
    docs
}

/// Applies documents one by one (as kubectl does, one refusal does not stop the rest);
/// returns the refusals.
fn apply_each(c: &LocalCluster, docs: &[Value]) -> Vec<String> {
    let mut refused = Vec::new();
    for d in docs {
        let yaml = mesh_injector::template::to_yaml(std::slice::from_ref(d)).unwrap();
        if let Err(e) = c.apply_yaml(&yaml) {
            refused.push(format!(
                "{} {}/{}: {e}",
                d["kind"].as_str().unwrap_or(""),
                d["metadata"]["namespace"].as_str().unwrap_or(""),
                d["metadata"]["name"].as_str().unwrap_or("")
            ));
        }
    }
    refused
}

/// The Gateway (namespace, name, listener port) the test's routes attach to first.
fn target(docs: &[Value], base: &[Value]) -> Option<(String, String, u16)> {
    let route = docs.iter().find(|d| {
        (d["kind"] == "HTTPRoute" || d["kind"] == "GRPCRoute") && d["spec"]["parentRefs"].is_array()
    })?;
    let ns = route["metadata"]["namespace"].as_str().unwrap_or("default");
    let parent = route["spec"]["parentRefs"]
        .as_array()?
        .iter()
        .find(|p| p["kind"].as_str().unwrap_or("Gateway") == "Gateway")?;
    let gw_ns = parent["namespace"].as_str().unwrap_or(ns).to_string();
    let gw_name = parent["name"].as_str()?.to_string();
    let gateway = docs.iter().chain(base).find(|d| {
        d["kind"] == "Gateway"
            && d["metadata"]["name"] == gw_name.as_str()
            && d["metadata"]["namespace"].as_str().unwrap_or("default") == gw_ns
    })?;
    let listeners = gateway["spec"]["listeners"].as_array()?;
    let listener = listeners.iter().find(|l| {
        parent["sectionName"]
            .as_str()
            .is_none_or(|s| l["name"] == s)
            && parent["port"].as_u64().is_none_or(|p| l["port"] == p)
            && l["protocol"] == "HTTP"
    })?;
    Some((
        gw_ns,
        gw_name,
        u16::try_from(listener["port"].as_u64()?).ok()?,
    ))
}

/// How many Gateways the routes among `docs` name.
fn gateways_named(docs: &[Value]) -> usize {
    let mut names = std::collections::BTreeSet::new();
    for d in docs
        .iter()
        .filter(|d| d["kind"] == "HTTPRoute" || d["kind"] == "GRPCRoute")
    {
        let ns = d["metadata"]["namespace"].as_str().unwrap_or("default");
        for p in d["spec"]["parentRefs"].as_array().into_iter().flatten() {
            if p["kind"].as_str().unwrap_or("Gateway") == "Gateway" {
                names.insert((
                    p["namespace"].as_str().unwrap_or(ns).to_string(),
                    p["name"].as_str().unwrap_or("").to_string(),
                ));
            }
        }
    }
    names.len()
}

/// Requests sent to check a weighted split, and how far (in share of requests) each backend
/// may be from its weight's share: four standard deviations of a 70/30 split at this count.
const WEIGHT_SAMPLES: u32 = 400;
const WEIGHT_TOLERANCE: f64 = 0.09;

/// Sends `check` [`WEIGHT_SAMPLES`] times and holds the backends that answered against the
/// weights of the first rule of the first route in `docs` (as upstream's weighted tests do).
fn distribution(
    netns: &str,
    addr: SocketAddr,
    check: &Check,
    docs: &[Value],
) -> Result<(), String> {
    let route = docs
        .iter()
        .find(|d| d["kind"] == "HTTPRoute" || d["kind"] == "GRPCRoute")
        .ok_or("no route")?;
    let weights: Vec<(String, f64)> = route["spec"]["rules"][0]["backendRefs"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|b| {
            (
                b["name"].as_str().unwrap_or("").to_string(),
                b["weight"].as_f64().unwrap_or(1.0),
            )
        })
        .collect();
    let total: f64 = weights.iter().map(|(_, w)| w).sum();
    let mut seen: BTreeMap<String, u32> = BTreeMap::new();
    for _ in 0..WEIGHT_SAMPLES {
        let answer = conformance::send(netns, addr, check).map_err(|e| e.to_string())?;
        let echo: Value = serde_json::from_str(&answer.body).unwrap_or_default();
        // Pods are named DEPLOYMENT-N, and the suite's Deployments after their Services.
        let pod = echo["pod"].as_str().unwrap_or("");
        let backend = pod.rsplit_once('-').map_or(pod, |(d, _)| d).to_string();
        *seen.entry(backend).or_default() += 1;
    }
    for (name, w) in &weights {
        let want = w / total;
        let got = f64::from(seen.get(name).copied().unwrap_or(0)) / f64::from(WEIGHT_SAMPLES);
        if (got - want).abs() > WEIGHT_TOLERANCE {
            return Err(format!(
                "weights: {name} answered {got:.2} of {WEIGHT_SAMPLES} requests, its weight asks {want:.2} (seen {seen:?})"
            ));
        }
    }
    Ok(())
}

/// Waits until `check` holds three times in a row; the last failure when it never does.
fn settle(netns: &str, addr: SocketAddr, check: &Check, deadline: Duration) -> Result<(), String> {
    let end = Instant::now() + deadline;
    let mut streak = 0;
    let mut last = String::from("never answered");
    let mut tick = std::time::Duration::from_millis(100);
    while Instant::now() < end {
        match conformance::send(netns, addr, check) {
            Ok(answer) => match conformance::verdict(check, &answer, addr) {
                None => {
                    streak += 1;
                    if streak == 3 {
                        return Ok(());
                    }
                    continue;
                }
                Some(why) => last = why,
            },
            Err(e) => last = e.to_string(),
        }
        streak = 0;
        // Waiting on the configuration to reach the gateway: poll, backing off a little.
        std::thread::park_timeout(tick);
        tick = (tick * 2).min(Duration::from_millis(500));
    }
    Err(last)
}

#[derive(Default)]
struct Tally {
    passed: Vec<String>,
    failed: Vec<String>,
    not_run: Vec<String>,
}

#[test]
#[ignore = "needs root: runs a mesh in network namespaces"]
fn gateway_api_conformance_on_the_local_backend() {
    let dir = mesh_api::testing::shared_testdata().join("gateway-api-conformance");
    let expected = std::fs::read_to_string(dir.join("EXPECTED.md")).unwrap();
    let tests = conformance::parse(&expected);
    assert!(tests.len() > 100, "EXPECTED.md lists {} tests", tests.len());

    let c = harness::local("gateway-conformance");
    let base = documents(&std::fs::read_to_string(dir.join("base/manifests.yaml")).unwrap());
    let refused = apply_each(&c, &base);
    eprintln!(
        "base manifests: {} documents, refused: {refused:#?}",
        base.len()
    );
    let mesh = documents(&std::fs::read_to_string(dir.join("mesh/manifests.yaml")).unwrap());
    let refused_mesh = apply_each(&c, &mesh);
    eprintln!(
        "mesh manifests: {} documents, refused: {refused_mesh:#?}",
        mesh.len()
    );
    c.run(&outside()).unwrap();
    c.run(&mesh_client()).unwrap();
    let client = c.mesh.pod("client").unwrap().netns;
    let mesh_client = c.mesh.pod("mesh-client").unwrap().netns;

    let mut by_feature: BTreeMap<String, Tally> = BTreeMap::new();
    for t in &tests {
        let tally = by_feature.entry(t.feature().to_string()).or_default();
        if !attempted(t) {
            tally
                .not_run
                .push(format!("{} (features not attempted)", t.name));
            continue;
        }
        if let Some((_, why)) = DATA_ERRORS.iter().find(|(n, _)| *n == t.name) {
            tally.not_run.push(format!("{} ({why})", t.name));
            continue;
        }
        if t.checks.is_empty() {
            tally
                .not_run
                .push(format!("{} (no traffic checks: status only)", t.name));
            continue;
        }
        if let Some(line) = t.unsupported.first() {
            let what: String = line.chars().take(90).collect();
            tally.not_run.push(format!(
                "{} (a check the runner cannot verify: {what})",
                t.name
            ));
            continue;
        }
        // The same request expected to answer differently needs a step upstream takes between
        // the checks (deleting a ReferenceGrant, say), which the condensed form does not say.
        let stepwise = t.checks.iter().enumerate().any(|(i, a)| {
            t.checks[..i].iter().any(|b| {
                (&a.method, &a.host, &a.path, &a.headers)
                    == (&b.method, &b.host, &b.path, &b.headers)
                    && a.statuses != b.statuses
            })
        });
        if stepwise {
            tally
                .not_run
                .push(format!("{} (steps between checks)", t.name));
            continue;
        }
        let docs: Vec<Value> = t
            .manifests
            .iter()
            .flat_map(|m| documents(&std::fs::read_to_string(dir.join(m)).unwrap()))
            .collect();
        if is_mesh(t) {
            let refused = apply_each(&c, &docs);
            let outcome = (|| {
                if !refused.is_empty() {
                    return Err(format!("refused: {refused:?}"));
                }
                for check in &t.checks {
                    let addr = mesh_target(&c, check)
                        .ok_or_else(|| format!("{}\n      no such Service", check.line))?;
                    let mut check = check.clone();
                    check.host.get_or_insert_with(|| "echo".into());
                    settle(&mesh_client, addr, &check, Duration::from_secs(20))
                        .map_err(|why| format!("{}\n      {why}", check.line))?;
                }
                if t.name.ends_with("Weight") {
                    let check = &t.checks[0];
                    let addr = mesh_target(&c, check).ok_or("no such Service")?;
                    let mut check = check.clone();
                    check.host.get_or_insert_with(|| "echo".into());
                    distribution(&mesh_client, addr, &check, &docs)?;
                }
                Ok(())
            })();
            match outcome {
                Ok(()) => tally.passed.push(t.name.clone()),
                Err(why) => tally.failed.push(format!("{}: {why}", t.name)),
            }
            for d in &docs {
                let yaml = mesh_injector::template::to_yaml(std::slice::from_ref(d)).unwrap();
                let _ = c.delete_yaml(&yaml);
            }
            continue;
        }
        let Some((gw_ns, gw_name, port)) = target(&docs, &base) else {
            tally
                .not_run
                .push(format!("{} (no HTTP listener found to send to)", t.name));
            continue;
        };
        if gateways_named(&docs) > 1 {
            tally
                .not_run
                .push(format!("{} (checks against several Gateways)", t.name));
            continue;
        }
        let refused = apply_each(&c, &docs);
        let outcome = (|| {
            if !refused.is_empty() {
                return Err(format!("refused: {refused:?}"));
            }
            let pod = format!("{gw_name}-istio-0");
            let address = c
                .mesh
                .pod(&pod)
                .map_err(|e| format!("gateway pod {pod} ({gw_ns}): {e}"))?
                .address;
            let addr: SocketAddr = format!("{address}:{port}").parse().unwrap();
            for check in &t.checks {
                // A Host with a port names the listener's port.
                let port = check
                    .host
                    .as_deref()
                    .and_then(|h| h.rsplit_once(':'))
                    .and_then(|(_, p)| p.parse::<u16>().ok())
                    .unwrap_or(addr.port());
                let addr = SocketAddr::new(addr.ip(), port);
                settle(&client, addr, check, Duration::from_secs(20))
                    .map_err(|why| format!("{}\n      {why}", check.line))?;
            }
            if t.name.ends_with("Weight") {
                distribution(&client, addr, &t.checks[0], &docs)?;
            }
            Ok(())
        })();
        match outcome {
            Ok(()) => tally.passed.push(t.name.clone()),
            Err(why) => tally.failed.push(format!("{}: {why}", t.name)),
        }
        // Each test's resources go away before the next one, as upstream cleans up.
        for d in &docs {
            let yaml = mesh_injector::template::to_yaml(std::slice::from_ref(d)).unwrap();
            let _ = c.delete_yaml(&yaml);
        }
    }

    let mut broken = Vec::new();
    eprintln!("\nGateway API conformance, local backend (passed / failed / not run):");
    for (feature, t) in &by_feature {
        eprintln!(
            "  {feature:<48} {:>3} {:>3} {:>3}",
            t.passed.len(),
            t.failed.len(),
            t.not_run.len()
        );
        if CLAIMED.contains(&feature.as_str()) {
            for n in &t.not_run {
                eprintln!("    not run: {n}");
            }
        }
        for f in &t.failed {
            eprintln!("    FAILED {f}");
            if CLAIMED.contains(&feature.as_str()) {
                broken.push(f.clone());
            }
        }
    }
    let count = |f: fn(&Tally) -> usize| by_feature.values().map(f).sum::<usize>();
    eprintln!(
        "  all: {} passed, {} failed, {} not run, of {} tests\n",
        count(|t| t.passed.len()),
        count(|t| t.failed.len()),
        count(|t| t.not_run.len()),
        tests.len()
    );
    let claimed_passed: usize = CLAIMED
        .iter()
        .filter_map(|f| by_feature.get(*f))
        .map(|t| t.passed.len())
        .sum();
    assert!(claimed_passed > 0, "no test of a claimed feature ran");
    assert!(
        broken.is_empty(),
        "claimed features failed:\n{}",
        broken.join("\n")
    );
}
