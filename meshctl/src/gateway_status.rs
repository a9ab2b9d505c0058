//! `meshctl gateway-status`: the Gateway API objects pilot answers for, with the status the
//! specification gives them (what `kubectl get gateways` and `kubectl describe httproute` show
//! on a cluster): each Gateway's addresses and whether it is accepted and programmed, each
//! listener's attached routes, each route's parents, and every condition that does not hold,
//! with its reason and message. Reads pilot's `/debug/model`.

use std::process::ExitCode;

use serde_json::Value;

/// Arguments of `meshctl gateway-status`.
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
    /// Tables, and the conditions that do not hold.
    Text,
    /// The statuses as pilot has them.
    Json,
}

fn condition<'a>(conditions: &'a Value, type_: &str) -> Option<&'a Value> {
    conditions
        .as_array()?
        .iter()
        .find(|c| c["type"].as_str() == Some(type_))
}

/// `True`, `False (Reason)` or `-`.
fn state(conditions: &Value, type_: &str) -> String {
    match condition(conditions, type_) {
        None => "-".into(),
        Some(c) if c["status"] == "True" => "True".into(),
        Some(c) => format!(
            "{} ({})",
            c["status"].as_str().unwrap_or(""),
            c["reason"].as_str().unwrap_or("")
        ),
    }
}

/// A condition that does not hold as it should: False, or `Conflicted` True.
fn wrong(c: &Value) -> bool {
    let t = c["type"].as_str().unwrap_or("");
    (t == "Conflicted") == (c["status"] == "True")
}

fn table(rows: &[Vec<String>]) -> String {
    let n = rows.first().map_or(0, Vec::len);
    let widths: Vec<usize> = (0..n)
        .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
            .collect();
        out += line.join("  ").trim_end();
        out.push('\n');
    }
    out
}

/// Renders pilot's `gatewayApiStatus` (a list of `{object, status}`).
pub fn render(statuses: &[Value]) -> String {
    if statuses.is_empty() {
        return "(no Gateway API object of the mesh's classes is applied)\n".into();
    }
    let of = |kind: &'static str| {
        statuses.iter().filter(move |s| {
            s["object"]
                .as_str()
                .unwrap_or("")
                .starts_with(&format!("{kind} "))
        })
    };
    let name = |s: &Value| {
        s["object"]
            .as_str()
            .unwrap_or("")
            .split_once(' ')
            .map_or(String::new(), |(_, n)| n.to_string())
    };
    let mut out = String::new();
    let mut problems = Vec::new();
    let mut gateways = vec![vec![
        "GATEWAY".to_string(),
        "ADDRESS".into(),
        "ACCEPTED".into(),
        "PROGRAMMED".into(),
        "LISTENERS (attached routes)".into(),
    ]];
    for g in of("Gateway") {
        let st = &g["status"];
        let address = st["addresses"]
            .as_array()
            .and_then(|a| a.first())
            .and_then(|a| a["value"].as_str())
            .unwrap_or("-")
            .to_string();
        let listeners: Vec<String> = st["listeners"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|l| {
                format!(
                    "{} ({})",
                    l["name"].as_str().unwrap_or(""),
                    l["attachedRoutes"]
                )
            })
            .collect();
        gateways.push(vec![
            name(g),
            address,
            state(&st["conditions"], "Accepted"),
            state(&st["conditions"], "Programmed"),
            listeners.join(", "),
        ]);
        for c in st["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|c| wrong(c))
        {
            problems.push(format!("Gateway {}: {}", name(g), describe(c)));
        }
        for l in st["listeners"].as_array().into_iter().flatten() {
            for c in l["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|c| wrong(c))
            {
                problems.push(format!(
                    "Gateway {} listener {}: {}",
                    name(g),
                    l["name"].as_str().unwrap_or(""),
                    describe(c)
                ));
            }
        }
    }
    if gateways.len() > 1 {
        out += &table(&gateways);
    }
    let mut routes = vec![vec![
        "ROUTE".to_string(),
        "PARENT".into(),
        "ACCEPTED".into(),
        "RESOLVED REFS".into(),
    ]];
    for kind in ["HTTPRoute", "GRPCRoute"] {
        for r in of(kind) {
            for p in r["status"]["parents"].as_array().into_iter().flatten() {
                let pr = &p["parentRef"];
                let mut parent = format!(
                    "{} {}/{}",
                    pr["kind"].as_str().unwrap_or("Gateway"),
                    pr["namespace"].as_str().unwrap_or(""),
                    pr["name"].as_str().unwrap_or("")
                );
                if let Some(s) = pr["sectionName"].as_str() {
                    parent += &format!("/{s}");
                }
                routes.push(vec![
                    format!("{kind} {}", name(r)),
                    parent.clone(),
                    state(&p["conditions"], "Accepted"),
                    state(&p["conditions"], "ResolvedRefs"),
                ]);
                for c in p["conditions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|c| wrong(c))
                {
                    problems.push(format!("{kind} {} on {parent}: {}", name(r), describe(c)));
                }
            }
        }
    }
    if routes.len() > 1 {
        if !out.is_empty() {
            out.push('\n');
        }
        out += &table(&routes);
    }
    if !problems.is_empty() {
        out += "\nConditions that do not hold:\n";
        for p in problems {
            out += &format!("  {p}\n");
        }
    }
    out
}

fn describe(c: &Value) -> String {
    format!(
        "{}={} ({}): {}",
        c["type"].as_str().unwrap_or(""),
        c["status"].as_str().unwrap_or(""),
        c["reason"].as_str().unwrap_or(""),
        c["message"].as_str().unwrap_or("")
    )
}

/// Runs the command.
pub fn run(args: &Args) -> ExitCode {
    let local = meshctl::local::Mesh::new(&args.dir);
    let fetched = match &args.pilot {
        None if local.state().is_ok() => local
            .pilot_debug("/debug/model")
            .map_err(|e| anyhow::anyhow!("the local mesh's pilot: {e}")),
        pilot => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(anyhow::Error::from)
            .and_then(|rt| {
                rt.block_on(crate::proxy_status::fetch_path(
                    pilot.as_deref().unwrap_or("http://127.0.0.1:15014"),
                    "/debug/model",
                ))
            })
            .and_then(|t| serde_json::from_str(&t).map_err(anyhow::Error::from)),
    };
    let model: Value = match fetched {
        Ok(v) => v,
        Err(e) => {
            eprintln!("meshctl gateway-status: {e:#}");
            return ExitCode::from(2);
        }
    };
    let statuses = model["gatewayApiStatus"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    match args.output {
        Output::Json => println!(
            "{}",
            serde_json::to_string_pretty(&statuses).unwrap_or_default()
        ),
        Output::Text => print!("{}", render(&statuses)),
    }
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_show_gateways_routes_and_what_does_not_hold() {
        let statuses: Vec<Value> = serde_json::from_str(
            r#"[
          {"object": "Gateway shop/edge", "status": {
            "addresses": [{"type": "IPAddress", "value": "10.244.0.9"}],
            "conditions": [{"type": "Accepted", "status": "True", "reason": "Accepted", "message": ""},
                           {"type": "Programmed", "status": "True", "reason": "Programmed", "message": ""}],
            "listeners": [{"name": "http", "attachedRoutes": 1, "conditions": [
              {"type": "Conflicted", "status": "False", "reason": "NoConflicts", "message": ""}]}]}},
          {"object": "HTTPRoute shop/r", "status": {"parents": [{
            "parentRef": {"kind": "Gateway", "namespace": "shop", "name": "edge"},
            "conditions": [{"type": "Accepted", "status": "True", "reason": "Accepted", "message": ""},
                           {"type": "ResolvedRefs", "status": "False", "reason": "BackendNotFound", "message": "backendRef Service shop/x does not exist"}]}]}}
        ]"#,
        )
        .unwrap();
        let t = render(&statuses);
        assert!(
            t.contains("shop/edge  10.244.0.9  True      True        http (1)"),
            "{t}"
        );
        assert!(
            t.contains("HTTPRoute shop/r  Gateway shop/edge  True      False (BackendNotFound)"),
            "{t}"
        );
        assert!(
            t.contains("HTTPRoute shop/r on Gateway shop/edge: ResolvedRefs=False (BackendNotFound): backendRef Service shop/x does not exist"),
            "{t}"
        );
        assert!(
            !t.contains("Conflicted"),
            "a listener without conflicts is fine: {t}"
        );
    }
}
