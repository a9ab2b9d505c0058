//! `meshctl kube-inject -f FILE`: the injector's mutation applied to manifests offline, as
//! `istioctl kube-inject` does, for clusters without the webhook or to see what it would do.
//! The injected YAML goes to standard output (or `--output`); what was decided for each
//! document goes to standard error.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use mesh_injector::InjectConfig;
use mesh_injector::template::{inject_manifests, to_yaml};

/// Arguments of `meshctl kube-inject`.
#[derive(clap::Args)]
pub struct Args {
    /// The manifests (YAML, several documents allowed); `-` reads standard input.
    #[arg(short = 'f', long = "filename", value_name = "FILE")]
    file: PathBuf,
    /// Write the injected manifests here instead of standard output.
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    output: Option<PathBuf>,
    /// The injector's settings (YAML: image, discoveryAddress, caAddress, trustDomain,
    /// pilotIdentity, proxyUid, requests, limits, nativeSidecar, excludedNamespaces);
    /// unset fields keep their defaults.
    #[arg(long, value_name = "FILE")]
    injector_config: Option<PathBuf>,
    /// The proxy image (overrides the injector settings').
    #[arg(long)]
    image: Option<String>,
    /// Run the proxy as a native sidecar (Kubernetes 1.29 and later); `false` makes it the
    /// first container, holding the application until it is ready.
    #[arg(long, value_name = "BOOL")]
    native_sidecar: Option<bool>,
}

fn read(path: &PathBuf) -> Result<String, String> {
    if path.as_os_str() == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .map_err(|e| format!("reading standard input: {e}"))?;
        return Ok(s);
    }
    std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))
}

fn config(args: &Args) -> Result<InjectConfig, String> {
    let mut cfg = match &args.injector_config {
        None => InjectConfig::default(),
        Some(path) => InjectConfig::from_yaml(&read(path)?)
            .map_err(|e| format!("--injector-config {}: {e}", path.display()))?,
    };
    if let Some(image) = &args.image {
        cfg.image = image.clone();
    }
    if let Some(native) = args.native_sidecar {
        cfg.native_sidecar = native;
    }
    Ok(cfg)
}

/// Runs the command: 0 when every document was read, 1 otherwise (nothing is written then).
pub fn run(args: &Args) -> ExitCode {
    let result = (|| -> Result<(), String> {
        let cfg = config(args)?;
        let text = read(&args.file)?;
        let (docs, outcomes) =
            inject_manifests(&text, &cfg).map_err(|e| format!("{}: {e}", args.file.display()))?;
        let yaml = to_yaml(&docs).map_err(|e| format!("cannot write YAML: {e}"))?;
        for o in &outcomes {
            match &o.decision {
                Some(mesh_injector::Decision::Inject(_)) => eprintln!("{}: injected", o.resource),
                Some(mesh_injector::Decision::Skip(why)) => {
                    eprintln!("{}: left as it is ({why})", o.resource);
                }
                None => {}
            }
        }
        match &args.output {
            Some(path) => {
                std::fs::write(path, yaml).map_err(|e| format!("{}: {e}", path.display()))
            }
            None => {
                print!("{yaml}");
                Ok(())
            }
        }
    })();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("meshctl kube-inject: {e}");
            ExitCode::FAILURE
        }
    }
}
