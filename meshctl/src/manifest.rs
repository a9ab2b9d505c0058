//! `meshctl manifest`: manifests generated from the mesh's types.

use std::path::PathBuf;
use std::process::ExitCode;

use mesh_api::crd;

/// Manifest subcommands.
#[derive(clap::Subcommand)]
pub enum Command {
    /// Print the manifests of an install profile (default, demo, minimal), for
    /// `kubectl apply --server-side -f -`.
    Generate {
        /// The profile.
        #[arg(long, default_value = "default")]
        profile: String,
        /// Change one value of the profile by its dotted path (`--set pilot.replicas=2`,
        /// `--set injector.nativeSidecar=false`); repeatable.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
    },
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
        Command::Generate { profile, set } => {
            let values = match meshctl::profile::values(profile, set) {
                Ok(v) => v,
                Err(e) => {
                    eprintln!("meshctl manifest generate: {e}");
                    return ExitCode::from(2);
                }
            };
            let docs = meshctl::profile::render(&values);
            match mesh_injector::template::to_yaml(&docs) {
                Ok(yaml) => {
                    print!("{yaml}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("meshctl manifest generate: cannot write YAML: {e}");
                    ExitCode::from(2)
                }
            }
        }
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
