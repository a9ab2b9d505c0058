//! Test support (feature `test-util`): where the shared test data is. Tests that read it are
//! `#[ignore = "needs shared testdata"]` and run by the test script, so its absence is a
//! failure that names the path, never a silent pass.

use std::path::{Path, PathBuf};

/// `../shared/testdata` beside the repository (the seed scenario, Istio's samples and
/// validation cases, analyzer inputs, Gateway API conformance data).
///
/// # Panics
/// When the folder is absent.
pub fn shared_testdata() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/testdata");
    assert!(
        dir.is_dir(),
        "{} is missing: these tests need shared/ beside the repository",
        dir.display()
    );
    dir
}

/// The repository's `manifests/addons/dashboards` folder (Grafana dashboards).
pub fn dashboards() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/addons/dashboards")
}

/// The metric names (samples, as Prometheus stores them: `istio_requests_total`,
/// `pilot_proxy_convergence_time_bucket`) the queries of every dashboard in
/// [`dashboards()`] name, mapped to the dashboards and panels that use them. Only the mesh's
/// own families count (`istio_`, `pilot_`, `citadel_`, `mesh_`), so PromQL's functions and
/// label names never do.
///
/// # Panics
/// When the folder or a dashboard cannot be read or is not JSON.
pub fn dashboard_metrics() -> std::collections::BTreeMap<String, Vec<String>> {
    let mut out: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    let dir = dashboards();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no dashboards in {}", dir.display());
    for file in files {
        let text =
            std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let json: serde_json::Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{}: not JSON: {e}", file.display()));
        let name = file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut queries = Vec::new();
        collect_queries(&json, "", &mut queries);
        assert!(!queries.is_empty(), "{name}: no queries");
        for (title, query) in queries {
            for metric in metric_names(&query) {
                out.entry(metric)
                    .or_default()
                    .push(format!("{name}: {title}"));
            }
        }
    }
    out
}

/// Every PromQL query under `v` (targets' `expr`, template variables' `definition`), with the
/// title of the panel it is in.
fn collect_queries(v: &serde_json::Value, title: &str, out: &mut Vec<(String, String)>) {
    match v {
        serde_json::Value::Object(map) => {
            let title = map
                .get("title")
                .or_else(|| map.get("name"))
                .and_then(|t| t.as_str())
                .unwrap_or(title);
            for (key, value) in map {
                match (key.as_str(), value.as_str()) {
                    ("expr" | "definition", Some(q)) => {
                        out.push((title.to_string(), q.to_string()))
                    }
                    _ => collect_queries(value, title, out),
                }
            }
        }
        serde_json::Value::Array(items) => {
            for item in items {
                collect_queries(item, title, out);
            }
        }
        _ => {}
    }
}

/// The mesh's metric names in one query.
fn metric_names(query: &str) -> Vec<String> {
    let mut out = Vec::new();
    let bytes = query.as_bytes();
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b == b':';
    let mut i = 0;
    while i < bytes.len() {
        if word(bytes[i]) && (i == 0 || !word(bytes[i - 1])) {
            let start = i;
            while i < bytes.len() && word(bytes[i]) {
                i += 1;
            }
            let token = &query[start..i];
            // PromQL's functions and the label names do not start with the mesh's prefixes;
            // quoted label values are skipped.
            let inside_quotes = query[..start].matches('"').count() % 2 == 1;
            if !inside_quotes
                && ["istio_", "pilot_", "citadel_", "mesh_"]
                    .iter()
                    .any(|p| token.starts_with(p))
            {
                out.push(token.to_string());
            }
        } else {
            i += 1;
        }
    }
    out
}
