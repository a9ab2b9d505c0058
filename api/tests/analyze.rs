//! `meshctl analyze`'s analyzers against Istio's own cases (`../shared/testdata/istio-analyze`,
//! its EXPECTED.md): each case runs only its analyzer over its input files, and the multiset of
//! (code, resource) must equal the one Istio's tests expect. The test prints the pass counts per
//! analyzer; every case of an analyzer we have must pass. Analyzers (and codes) the folder has
//! no case for have cases of ours, written the same way.

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

/// Analyzers the upstream folder has no case for: each has cases of ours below.
const WITHOUT_UPSTREAM_CASES: [&str; 4] = [
    "schema.ValidationAnalyzer",
    "auth.AuthorizationPoliciesAnalyzer",
    "auth.MTLSAnalyzer",
    // The mesh's own RateLimitPolicy.
    "ratelimit.SelectorAnalyzer",
];

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
        .filter(|a| !WITHOUT_UPSTREAM_CASES.contains(&a.name))
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

/// (code, resource) of `analyzer` over `yaml` (with the default ingress gateway), sorted.
fn found(analyzer: &str, yaml: &str) -> Vec<(String, String)> {
    let mut snapshot = Snapshot::new();
    snapshot.add_text(DEFAULT_RESOURCES, None).unwrap();
    snapshot.add_text(yaml, None).unwrap();
    let mut got: Vec<(String, String)> = analyze(&snapshot, Some(analyzer))
        .unwrap()
        .into_iter()
        .map(|m| (m.code.to_string(), m.origin))
        .collect();
    got.sort();
    got
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(c, o)| (c.to_string(), o.to_string()))
        .collect()
}

const SHOP: &str = "\
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {istio-injection: enabled}}
---
apiVersion: v1
kind: Service
metadata: {name: orders, namespace: shop}
spec:
  selector: {app: orders}
  ports: [{name: http, port: 8080}, {name: grpc-admin, port: 9090}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: orders, namespace: shop}
spec:
  selector: {matchLabels: {app: orders}}
  template:
    metadata: {labels: {app: orders, version: v1}}
    spec: {containers: [{name: orders, image: orders}]}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: payments, namespace: shop}
spec:
  hosts: ['*.payments.example.com']
  ports: [{number: 443, name: tls, protocol: TLS}]
  resolution: DNS
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: private, namespace: billing}
spec:
  hosts: [ledger.example.com]
  exportTo: ['.']
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: DNS
";

#[test]
fn destination_hosts_and_ports_must_exist_and_gateways_must_name_a_port() {
    let yaml = format!(
        "{SHOP}---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: fine, namespace: shop}}
spec:
  hosts: [orders]
  http:
  - route: [{{destination: {{host: orders}}}}]
    mirror: {{host: api.payments.example.com, port: {{number: 443}}}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: typo, namespace: shop}}
spec:
  hosts: [orders]
  http:
  - route: [{{destination: {{host: ordres}}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: wrong-port, namespace: shop}}
spec:
  hosts: [orders]
  tcp:
  - route: [{{destination: {{host: orders.shop.svc.cluster.local, port: {{number: 8081}}}}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: not-exported, namespace: shop}}
spec:
  hosts: [ledger.example.com]
  http:
  - route: [{{destination: {{host: ledger.example.com}}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: edge, namespace: shop}}
spec:
  hosts: [shop.example.com]
  gateways: [istio-system/public]
  http:
  - route: [{{destination: {{host: orders}}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: edge-port, namespace: shop}}
spec:
  hosts: [shop.example.com]
  gateways: [istio-system/public]
  http:
  - route: [{{destination: {{host: orders, port: {{number: 8080}}}}}}]
"
    );
    assert_eq!(
        found("virtualservice.DestinationHostAnalyzer", &yaml),
        pairs(&[
            ("IST0101", "VirtualService shop/not-exported"),
            ("IST0101", "VirtualService shop/typo"),
            ("IST0101", "VirtualService shop/wrong-port"),
            ("IST0112", "VirtualService shop/edge"),
            // The mesh's routes for orders do not apply to what the gateway sends.
            ("IST0140", "VirtualService shop/edge"),
            ("IST0140", "VirtualService shop/edge-port"),
        ])
    );
}

#[test]
fn authorization_policies_must_select_meshed_workloads_and_name_real_namespaces() {
    let yaml = format!(
        "{SHOP}---
apiVersion: v1
kind: Namespace
metadata: {{name: front}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: orders, namespace: shop}}
spec:
  selector: {{matchLabels: {{app: orders}}}}
  rules: [{{from: [{{source: {{namespaces: [front, 'shop*', fornt]}}}}]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: typo, namespace: shop}}
spec:
  selector: {{matchLabels: {{app: ordrs}}}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: whole-namespace, namespace: front}}
spec: {{}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: mesh-wide, namespace: istio-system}}
spec:
  selector: {{matchLabels: {{app: orders}}}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: mesh-wide-typo, namespace: istio-system}}
spec:
  selector: {{matchLabels: {{app: nothing}}}}
"
    );
    assert_eq!(
        found("auth.AuthorizationPoliciesAnalyzer", &yaml),
        pairs(&[
            ("IST0101", "AuthorizationPolicy shop/orders"),
            ("IST0127", "AuthorizationPolicy front/whole-namespace"),
            ("IST0127", "AuthorizationPolicy istio-system/mesh-wide-typo"),
            ("IST0127", "AuthorizationPolicy shop/typo"),
        ])
    );
}

#[test]
fn a_destination_rule_without_mesh_mtls_to_strict_workloads_conflicts() {
    let strict = "\
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec: {mtls: {mode: STRICT}}
";
    let dr = |name: &str, policy: &str| {
        format!(
            "---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: {name}, namespace: shop}}\nspec:\n  host: orders\n  trafficPolicy: {policy}\n"
        )
    };
    let disable = dr("plain", "{tls: {mode: DISABLE}}");
    let mesh = dr("mesh", "{tls: {mode: ISTIO_MUTUAL}}");
    let port = dr(
        "port",
        "{portLevelSettings: [{port: {number: 9090}, tls: {mode: SIMPLE}}]}",
    );
    let yaml = format!("{SHOP}---\n{strict}{disable}{mesh}{port}");
    assert_eq!(
        found("auth.MTLSAnalyzer", &yaml),
        pairs(&[
            ("IST0113", "DestinationRule shop/plain"),
            ("IST0113", "DestinationRule shop/port"),
        ])
    );
    // The workload itself accepts plaintext on one port: no conflict there.
    let plain_8080 = dr(
        "plain-8080",
        "{portLevelSettings: [{port: {number: 8080}, tls: {mode: DISABLE}}]}",
    );
    let permissive = "\
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: orders, namespace: shop}
spec:
  selector: {matchLabels: {app: orders}}
  mtls: {mode: STRICT}
  portLevelMtls: {'8080': {mode: PERMISSIVE}}
";
    let yaml = format!("{SHOP}---\n{strict}{plain_8080}{port}{permissive}");
    assert_eq!(
        found("auth.MTLSAnalyzer", &yaml),
        pairs(&[("IST0113", "DestinationRule shop/port")])
    );
    // Without a STRICT PeerAuthentication nothing conflicts.
    assert_eq!(
        found("auth.MTLSAnalyzer", &format!("{SHOP}{disable}{port}")),
        []
    );
}

#[test]
fn the_analyzers_messages_read_as_a_user_needs_them() {
    let mut snapshot = Snapshot::new();
    snapshot
        .add_text(
            &format!(
                "{SHOP}---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {{name: default, namespace: istio-system}}
spec: {{mtls: {{mode: STRICT}}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: plain, namespace: shop}}
spec: {{host: orders, trafficPolicy: {{tls: {{mode: DISABLE}}}}}}
"
            ),
            Some("shop.yaml"),
        )
        .unwrap();
    let m = analyze(&snapshot, Some("auth.MTLSAnalyzer")).unwrap();
    assert_eq!(m.len(), 1);
    let text = m[0].to_string();
    assert!(
        text.starts_with("Error [IST0113] (DestinationRule shop/plain) spec.trafficPolicy.tls.mode is DISABLE: requests to orders.shop.svc.cluster.local port 8080 go without the mesh's mutual TLS, but PeerAuthentication istio-system/default makes Deployment orders accept only mutual TLS (STRICT)"),
        "{text}"
    );
    assert!(text.contains("(shop.yaml:"), "{text}");
    assert!(text.contains("→ drop the tls setting"), "{text}");
}

#[test]
fn service_entries_giving_one_port_two_protocols_conflict_where_both_are_seen() {
    let se = |name: &str, ns: &str, protocol: &str, export: &str| {
        format!(
            "---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  hosts: [api.example.com]\n  ports: [{{number: 443, name: p, protocol: {protocol}}}]\n  resolution: DNS\n  exportTo: [{export}]\n"
        )
    };
    let yaml = [
        se("api-http", "shop", "HTTP", "'*'"),
        se("api-tls", "shop", "TLS", "'*'"),
        // Seen only in its own namespace, where the exported HTTP one is seen too.
        se("api-tcp", "billing", "TCP", "'.'"),
        se("api-tls-again", "other", "TLS", "'.'"),
    ]
    .concat();
    assert_eq!(
        found(
            "serviceentry.ConflictingServiceEntryProtocolAnalyzer",
            &yaml
        ),
        pairs(&[
            ("IST0177", "ServiceEntry billing/api-tcp"),
            ("IST0177", "ServiceEntry other/api-tls-again"),
            ("IST0177", "ServiceEntry shop/api-http"),
            ("IST0177", "ServiceEntry shop/api-tls"),
        ])
    );
}

#[test]
fn a_rate_limit_policy_for_no_workload_limits_nothing() {
    let rl = |name: &str, selector: &str| {
        format!(
            "---\napiVersion: policy.mesh.dev/v1alpha1\nkind: RateLimitPolicy\nmetadata: {{name: {name}, namespace: shop}}\nspec:\n  selector: {{matchLabels: {selector}}}\n  limits: [{{tokenBucket: {{maxTokens: 3, fillInterval: 1s}}}}]\n"
        )
    };
    let yaml = format!(
        "{SHOP}{}{}",
        rl("orders", "{app: orders}"),
        rl("typo", "{app: ordrs}")
    );
    assert_eq!(
        found("ratelimit.SelectorAnalyzer", &yaml),
        pairs(&[("MESH0004", "RateLimitPolicy shop/typo")])
    );
}
