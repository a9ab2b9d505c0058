//! The proxy's modules form layers, [`LAYERS`] from the bottom up, and each module may use
//! only the modules before it. This test reads the sources and fails naming the file and the
//! upward use, so an import cycle cannot creep back in; a new module must be given its place.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// The modules from the bottom up (as lib.rs's comment and docs/architecture.md say).
const LAYERS: &[&str] = &[
    "body",
    "drain",
    "identity",
    "init",
    "sniff",
    "socket",
    "tls",
    "authn",
    "authz",
    "telemetry",
    "state",
    "discovery",
    "route",
    "metrics",
    "upstream",
    "ratelimit",
    "inputs",
    "http",
    "tcp",
    "inbound",
    "outbound",
    "gateway",
    "admin",
    "run",
    "testing",
];

/// `pub mod x;` lines of lib.rs.
fn declared() -> BTreeSet<String> {
    let lib = std::fs::read_to_string(src().join("lib.rs")).unwrap();
    lib.lines()
        .filter_map(|l| l.strip_prefix("pub mod "))
        .map(|m| m.trim_end_matches(';').to_string())
        .collect()
}

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The crate modules a source file names (`crate::x`, `crate::{x, y}`), tests left out.
fn uses(text: &str, known: &BTreeSet<&str>) -> BTreeSet<String> {
    let code = text.split("#[cfg(test)]").next().unwrap_or(text);
    let mut out = BTreeSet::new();
    for (i, _) in code.match_indices("crate::") {
        let rest = &code[i + "crate::".len()..];
        let names: Vec<&str> = if let Some(group) = rest.strip_prefix('{') {
            group
                .split('}')
                .next()
                .unwrap_or("")
                .split(',')
                .map(|n| n.trim().split("::").next().unwrap_or(""))
                .collect()
        } else {
            vec![
                rest.split(|c: char| !c.is_alphanumeric() && c != '_')
                    .next()
                    .unwrap_or(""),
            ]
        };
        out.extend(
            names
                .into_iter()
                .filter(|n| known.contains(n))
                .map(str::to_string),
        );
    }
    out
}

#[test]
fn every_module_uses_only_the_layers_below_it() {
    let order: Vec<String> = LAYERS.iter().map(|m| (*m).to_string()).collect();
    let declared = declared();
    let placed: BTreeSet<String> = order.iter().cloned().collect();
    assert_eq!(
        declared, placed,
        "every module of lib.rs has its place in LAYERS, and only those"
    );
    let known: BTreeSet<&str> = LAYERS.iter().copied().collect();
    let mut all = Vec::new();
    files(&src(), &mut all);
    let mut wrong = Vec::new();
    for file in all {
        let rel = file.strip_prefix(src()).unwrap();
        let top = rel
            .iter()
            .next()
            .unwrap()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_string();
        let Some(level) = order.iter().position(|m| *m == top) else {
            continue; // lib.rs and main.rs sit above every layer
        };
        let text = std::fs::read_to_string(&file).unwrap();
        for used in uses(&text, &known) {
            let at = order.iter().position(|m| *m == used).unwrap();
            if at > level {
                wrong.push(format!(
                    "{}: uses crate::{used}, a layer above {top}",
                    rel.display()
                ));
            }
        }
    }
    assert!(wrong.is_empty(), "upward uses:\n{}", wrong.join("\n"));
}
