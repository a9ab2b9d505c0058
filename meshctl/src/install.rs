//! `meshctl install` and `meshctl uninstall`: a profile's manifests applied to the cluster of
//! the current kubeconfig context (or the in-cluster one), and the control plane waited for.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use meshctl::kube_install;
use meshctl::profile;

/// Arguments of `meshctl install`.
#[derive(clap::Args)]
pub struct InstallArgs {
    /// The profile (default, demo, minimal).
    #[arg(long, default_value = "default")]
    profile: String,
    /// Change one value of the profile (`--set pilot.replicas=2`); repeatable.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// How long to wait for the control plane, in seconds.
    #[arg(long, default_value_t = 300)]
    timeout_secs: u64,
}

/// Arguments of `meshctl uninstall`.
#[derive(clap::Args)]
pub struct UninstallArgs {
    /// The profile that was installed.
    #[arg(long, default_value = "default")]
    profile: String,
    /// The values that were set.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Also remove the CustomResourceDefinitions, and with them every mesh resource of the
    /// cluster (VirtualServices, DestinationRules, policies, ...).
    #[arg(long)]
    purge: bool,
}

/// A client of the cluster of the current kubeconfig context (or the one the pod runs in).
pub(crate) async fn client() -> anyhow::Result<kube::Client> {
    rustls::crypto::ring::default_provider()
        .install_default()
        .ok();
    kube::Client::try_default().await.context(
        "cannot reach Kubernetes: no in-cluster configuration and no usable kubeconfig (set KUBECONFIG or a current context)",
    )
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

fn finish(command: &str, result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("meshctl {command}: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs `meshctl install`.
pub fn install(args: &InstallArgs) -> ExitCode {
    let result = (|| {
        let values = profile::values(&args.profile, &args.set)?;
        let docs = profile::render(&values);
        runtime()?.block_on(async {
            let client = client().await?;
            eprintln!("installing the {} profile into {}", values.profile, values.namespace);
            let n = kube_install::apply_all(&client, &docs, &mut |what| {
                eprintln!("  applied {what}");
            })
            .await?;
            eprintln!("{n} objects applied; waiting for the control plane");
            kube_install::wait_available(
                &client,
                &values.namespace,
                "mesh-pilot",
                Duration::from_secs(args.timeout_secs),
                &mut |now| eprintln!("  {now}"),
            )
            .await?;
            eprintln!(
                "the mesh is installed. Next: kubectl label namespace default istio-injection=enabled"
            );
            anyhow::Ok(())
        })
    })();
    finish("install", result)
}

/// Runs `meshctl uninstall`.
pub fn uninstall(args: &UninstallArgs) -> ExitCode {
    let result = (|| {
        let values = profile::values(&args.profile, &args.set)?;
        let docs = profile::render(&values);
        runtime()?.block_on(async {
            let client = client().await?;
            let n = kube_install::delete_all(&client, &docs, args.purge, &mut |what| {
                eprintln!("  deleted {what}");
            })
            .await?;
            eprintln!(
                "{n} objects deleted{}",
                if args.purge {
                    ""
                } else {
                    " (the CRDs, the mesh resources and the root namespace istio-system stay; --purge removes them too)"
                }
            );
            anyhow::Ok(())
        })
    })();
    finish("uninstall", result)
}

/// Arguments of `meshctl verify`.
#[derive(clap::Args)]
pub struct VerifyArgs {
    /// Check the cluster before an install instead of the installed mesh.
    #[arg(long)]
    pre: bool,
    /// The control plane's namespace.
    #[arg(long, default_value = "mesh-system")]
    namespace: String,
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value = "text")]
    output: VerifyOutput,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum VerifyOutput {
    Text,
    Json,
}

/// Runs `meshctl verify`: 0 when every check holds, 1 when one does not.
pub fn verify(args: &VerifyArgs) -> ExitCode {
    let result = (|| {
        runtime()?.block_on(async {
            let checks = match client().await {
                Err(e) => vec![meshctl::verify::Check {
                    name: "Kubernetes API reachable".into(),
                    ok: false,
                    detail: format!("{e:#}"),
                    hint: Some(
                        "check KUBECONFIG and the current context (kubectl cluster-info)".into(),
                    ),
                }],
                Ok(client) if args.pre => meshctl::verify::pre_install(&client).await,
                Ok(client) => meshctl::verify::installed(&client, &args.namespace).await,
            };
            anyhow::Ok(checks)
        })
    })();
    let checks = match result {
        Ok(c) => c,
        Err(e) => {
            eprintln!("meshctl verify: {e:#}");
            return ExitCode::from(2);
        }
    };
    match args.output {
        VerifyOutput::Text => print!("{}", meshctl::verify::render(&checks)),
        VerifyOutput::Json => println!(
            "{}",
            serde_json::to_string_pretty(&checks).unwrap_or_default()
        ),
    }
    if checks.iter().all(|c| c.ok) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
