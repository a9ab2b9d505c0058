//! `meshctl validate`: reads configuration and reports every problem with file, line, resource
//! and field. Exit 0 when valid, 1 when anything is invalid, 2 when the input cannot be read.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use mesh_api::Severity;
use mesh_api::load::{self, LoadReport};

/// Arguments of `meshctl validate`.
#[derive(clap::Args)]
pub struct Args {
    /// A file, a folder (read recursively: *.yaml, *.yml, *.json) or `-` for standard input.
    /// Repeat to read several.
    #[arg(
        short = 'f',
        long = "filename",
        required = true,
        value_name = "FILE|DIR|-"
    )]
    files: Vec<PathBuf>,
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value = "text")]
    output: Output,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Output {
    /// One line per problem, then a summary.
    Text,
    /// One JSON object with every resource and problem.
    Json,
}

/// Runs the command.
pub fn run(args: &Args) -> ExitCode {
    let mut report = LoadReport::default();
    for path in &args.files {
        let loaded = if path.as_os_str() == "-" {
            let mut text = String::new();
            match std::io::stdin().read_to_string(&mut text) {
                Ok(_) => Ok(load::load_str(&text, Some("-"))),
                Err(e) => Err(format!("cannot read standard input: {e}")),
            }
        } else {
            load::load_path(path).map_err(|e| e.to_string())
        };
        match loaded {
            Ok(r) => {
                report.documents.extend(r.documents);
                report.diagnostics.extend(r.diagnostics);
            }
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
        }
    }
    let errors = report.errors().count();
    match args.output {
        Output::Text => print_text(&report, errors),
        Output::Json => print_json(&report, errors),
    }
    if errors == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

fn print_text(report: &LoadReport, errors: usize) {
    for d in &report.diagnostics {
        if d.severity == Severity::Error {
            println!("{d}");
        } else {
            eprintln!("{d}");
        }
    }
    let valid = report.documents.len();
    let noun = if valid == 1 { "resource" } else { "resources" };
    if errors == 0 {
        println!("{valid} {noun} valid");
    } else {
        let enoun = if errors == 1 { "error" } else { "errors" };
        println!("{errors} {enoun}; {valid} {noun} valid");
    }
}

fn print_json(report: &LoadReport, errors: usize) {
    let resources: Vec<serde_json::Value> = report
        .documents
        .iter()
        .map(|d| {
            serde_json::json!({
                "kind": d.resource.kind().name(),
                "apiVersion": d.api_version,
                "name": d.resource.display_name(),
                "file": d.origin.file,
                "line": d.origin.line,
            })
        })
        .collect();
    let out = serde_json::json!({
        "valid": errors == 0,
        "resources": resources,
        "errors": report.errors().collect::<Vec<_>>(),
        "warnings": report.warnings().collect::<Vec<_>>(),
    });
    println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
}
