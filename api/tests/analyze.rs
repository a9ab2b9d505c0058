//! `meshctl analyze`'s analyzers against Istio's own cases (`../shared/testdata/istio-analyze`,
//! its EXPECTED.md): each case runs only its analyzer over its input files, and the multiset of
//! (code, resource) must equal the one Istio's tests expect. The test prints the pass counts per
//! analyzer; every case of an analyzer we have must pass.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::collections::BTreeMap;

use mesh_api::analyze::{Snapshot, analyze, analyzers};

/// What Istio's analyzer tests have in every cluster besides a case's files: the default
/// ingress gateway (pod and Service, in `istio-system`), as an install of Istio leaves it.
const DEFAULT_RESOURCES: &str = "\
apiVersion: v1
kind: Pod
metadata:
  name: istio-ingressgateway-5f7c9
  namespace: istio-system
  labels: {app: istio-ingressgateway, istio: ingressgateway}
spec:
  containers: [{name: istio-proxy, image: proxyv2}]
---
apiVersion: v1
kind: Service
metadata: {name: istio-ingressgateway, namespace: istio-system}
spec:
  type: LoadBalancer
  selector: {app: istio-ingressgateway, istio: ingressgateway}
  ports:
  - {name: status-port, port: 15021, targetPort: 15021, protocol: TCP}
  - {name: http2, port: 80, targetPort: 8080, protocol: TCP}
  - {name: https, port: 443, targetPort: 8443, protocol: TCP}
";

struct Case {
    analyzer: String,
    name: String,
    files: Vec<String>,
    extra: Option<String>,
    expected: Vec<(String, String)>,
}

fn backticked(s: &str) -> Vec<String> {
    s.split('`')
        .enumerate()
        .filter(|(i, _)| i % 2 == 1)
        .map(|(_, t)| t.to_string())
        .collect()
}

fn cases(expected_md: &str) -> Vec<Case> {
    let mut out = Vec::new();
    let mut analyzer = String::new();
    for line in expected_md.lines() {
        if line.starts_with("## ") {
            // Another part of the file (the code catalogue): no cases there.
            analyzer.clear();
            continue;
        }
        if let Some(rest) = line.strip_prefix("### ") {
            analyzer = backticked(rest)
                .first()
                .map(|s| s.split(' ').next().unwrap_or("").to_string())
                .unwrap_or_default();
            continue;
        }
        if analyzer.is_empty() || !line.starts_with("| ") || line.starts_with("| Case") {
            continue;
        }
        let cells: Vec<&str> = line.trim_matches('|').split(" | ").map(str::trim).collect();
        if cells.len() != 4 {
            continue;
        }
        let mut expected = Vec::new();
        if !cells[3].contains("no messages") {
            for m in cells[3].split("<br>") {
                let code = m.split_whitespace().next().unwrap().to_string();
                let origin = backticked(m).pop().unwrap();
                let times = m
                    .rsplit('×')
                    .next()
                    .filter(|_| m.contains('×'))
                    .and_then(|n| n.trim().parse::<usize>().ok())
                    .unwrap_or(1);
                for _ in 0..times {
                    expected.push((code.clone(), origin.clone()));
                }
            }
        }
        expected.sort();
        out.push(Case {
            analyzer: analyzer.clone(),
            name: cells[0].to_string(),
            files: backticked(cells[1]),
            extra: (cells[2] != "—").then(|| cells[2].to_string()),
            expected,
        });
    }
    out
}

#[test]
#[ignore = "needs shared testdata"]
fn istios_analyzer_cases_pass_for_every_analyzer_we_have() {
    let dir = mesh_api::testing::shared_testdata().join("istio-analyze");
    let all = cases(&std::fs::read_to_string(dir.join("EXPECTED.md")).unwrap());
    assert!(all.len() > 60, "EXPECTED.md read as {} cases", all.len());
    let ours: Vec<&str> = analyzers().iter().map(|a| a.name).collect();
    let mut tally: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    let mut failures = Vec::new();
    for case in &all {
        let implemented = ours.contains(&case.analyzer.as_str());
        let entry = tally.entry(&case.analyzer).or_default();
        entry.1 += 1;
        if !implemented {
            continue;
        }
        let mesh_config = case
            .extra
            .as_deref()
            .filter(|e| e.starts_with("mesh config:"))
            .and_then(|e| backticked(e).pop());
        if (case.extra.is_some() && mesh_config.is_none())
            || case.files.iter().any(|f| f.contains(": "))
        {
            failures.push(format!(
                "{} / {}: needs {:?}, which the harness cannot give yet",
                case.analyzer, case.name, case.extra
            ));
            continue;
        }
        let mut snapshot = Snapshot::new();
        snapshot.add_text(DEFAULT_RESOURCES, None).unwrap();
        if let Some(m) = &mesh_config {
            snapshot.set_mesh_config(&dir.join(m)).unwrap();
        }
        for f in &case.files {
            snapshot.add_path(&dir.join(f)).unwrap();
        }
        let mut got: Vec<(String, String)> = analyze(&snapshot, Some(&case.analyzer))
            .unwrap()
            .into_iter()
            .map(|m| (m.code.to_string(), m.origin))
            .collect();
        got.sort();
        if got == case.expected {
            entry.0 += 1;
        } else {
            failures.push(format!(
                "{} / {} ({:?}):\n  want {:?}\n  got  {:?}",
                case.analyzer, case.name, case.files, case.expected, got
            ));
        }
    }
    let mut report = String::from("Istio's analyzer cases (passed/cases; - = not ours yet):\n");
    for (name, (passed, total)) in &tally {
        if ours.contains(name) {
            report += &format!("  {name}: {passed}/{total}\n");
        } else {
            report += &format!("  {name}: -/{total}\n");
        }
    }
    eprintln!("{report}");
    assert!(failures.is_empty(), "{report}\n{}", failures.join("\n"));
    for a in analyzers()
        .iter()
        .filter(|a| a.name != "schema.ValidationAnalyzer")
    {
        assert!(
            tally.get(a.name).is_some_and(|(p, _)| *p > 0),
            "{} has no passing upstream case",
            a.name
        );
    }
}

#[test]
fn what_proxies_report_becomes_messages_on_the_resources_they_name() {
    let syncz = serde_json::json!({"proxies": [
        {"node": {"id": "sidecar~10.0.0.3~order-v1-0.default"}, "nack": "Service shipping: bad CA",
         "rejections": ["DestinationRule shop/x: spec.trafficPolicy.tls.caCertificates: file missing"],
         "not_enforced_workload": [], "not_enforced_services": ["Telemetry default/t: spec.metrics[0].overrides: accepted, not enforced yet"]},
        {"node": {"id": "sidecar~10.0.0.4~shipping-v1-0.default"}, "nack": null, "rejections": [],
         "not_enforced_workload": ["Telemetry default/t: spec.metrics[0].overrides: accepted, not enforced yet"], "not_enforced_services": []}
    ]});
    let m = mesh_api::analyze::proxy_messages(&syncz);
    let got: Vec<(&str, &str)> = m.iter().map(|m| (m.code, m.origin.as_str())).collect();
    assert_eq!(
        got,
        [
            ("MESH0001", "Pod default/order-v1-0"),
            ("MESH0002", "DestinationRule shop/x"),
            ("MESH0003", "Telemetry default/t"),
        ],
        "each once, on what it names: {m:?}"
    );
    assert!(m[0].text.contains("bad CA"));
}
