//! `meshctl manifest`: manifests generated from the mesh's types.

use std::path::PathBuf;
use std::process::ExitCode;

use mesh_api::crd;

/// Manifest subcommands.
#[derive(clap::Subcommand)]
pub enum Command {
    /// Write the CustomResourceDefinitions of Istio's kinds, one file per kind.
    Crds {
        /// Folder to write into; prints all to standard output when absent.
        #[arg(long, value_name = "DIR")]
        out_dir: Option<PathBuf>,
    },
}

/// Runs a manifest subcommand.
pub fn run(cmd: &Command) -> ExitCode {
    match cmd {
        Command::Crds { out_dir } => match write_crds(out_dir.as_ref()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::from(2)
            }
        },
    }
}

fn write_crds(out_dir: Option<&PathBuf>) -> anyhow::Result<()> {
    use anyhow::Context;
    if let Some(dir) = out_dir {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    for (kind, def) in crd::all() {
        let yaml = crd::to_yaml(&def).with_context(|| format!("cannot render the {kind} CRD"))?;
        match out_dir {
            Some(dir) => {
                let path = dir.join(crd::file_name(kind));
                std::fs::write(&path, yaml)
                    .with_context(|| format!("cannot write {}", path.display()))?;
                println!("wrote {}", path.display());
            }
            None => print!("---\n{yaml}"),
        }
    }
    Ok(())
}
