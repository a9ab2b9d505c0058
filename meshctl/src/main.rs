//! `meshctl`, the one command a mesh user types: validate configuration, generate manifests,
//! and (as later work lands) run the mesh locally and inspect it.

mod analyze;
mod dashboard_cli;
mod describe;
mod gateway_status;
mod install;
mod kube_inject;
mod local_cli;
mod manifest;
mod proxy_config;
mod proxy_status;
mod tap;
mod validate;
mod why;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// The mesh's command-line tool.
#[derive(Parser)]
#[command(name = "meshctl", version, about = "Command-line tool of the mesh")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check mesh configuration (Istio YAML or JSON) without applying it.
    Validate(validate::Args),
    /// Run Istio's analyzers over configuration files or the local mesh: each finding with its
    /// IST code, level, resource and what to do; exits 1 on an Error.
    Analyze(analyze::Args),
    /// Show every proxy pilot knows: connected or not, versions sent and acknowledged, and
    /// why a push was refused.
    ProxyStatus(proxy_status::Args),
    /// Show the state a sidecar holds: clusters, endpoints, listeners, routes or policies.
    ProxyConfig(proxy_config::Args),
    /// Show the configuration that applies to a pod: its services, their VirtualServices and
    /// DestinationRules, its mTLS mode and the policies that apply to it.
    #[command(subcommand)]
    Describe(describe::Command),
    /// Explain the fate of a request from a pod to a URL: the service, the route, the
    /// endpoints, mTLS and the policies that decide it, and a verdict.
    Why(why::Args),
    /// Show the Gateway API objects of the mesh's classes and their status: Gateways'
    /// addresses and listeners, routes' parents, and every condition that does not hold.
    GatewayStatus(gateway_status::Args),
    /// Generate manifests from the mesh's types.
    #[command(subcommand)]
    Manifest(manifest::Command),
    /// Add the sidecar to the pod templates of Kubernetes manifests, as the injector would.
    KubeInject(kube_inject::Args),
    /// Install the mesh into the cluster of the current kubeconfig context (a profile's
    /// manifests by server-side apply), and wait for its control plane.
    Install(install::InstallArgs),
    /// Remove what `install` created (the CRDs and mesh resources only with --purge).
    Uninstall(install::UninstallArgs),
    /// Check a cluster before an install (--pre) or the installed mesh; each check passed or
    /// failed with what to do; exits 1 when one fails.
    Verify(install::VerifyArgs),
    /// Start a mesh on this machine: pilot and the CA, and the network pods join (root).
    Up(local_cli::DirArg),
    /// Remove everything `up` and `run` created (idempotent; works after a crash).
    Down(local_cli::DirArg),
    /// Start a pod: its own network namespace and address, capture rules, a sidecar, and CMD.
    Run(local_cli::RunArgs),
    /// List the pods.
    Ps(local_cli::DirArg),
    /// Stop a pod and remove its namespace and registration.
    Rm(local_cli::LogsArgs),
    /// Print a pod's log (the app's, or with --proxy its sidecar's).
    Logs(local_cli::LogsArgs),
    /// Run a command inside a pod's network namespace.
    Exec(local_cli::ExecArgs),
    /// Add or replace configuration in the local mesh (validated first; nothing is written
    /// when anything is invalid). Deployments of mesh-echo start as pods.
    Apply(local_cli::FilesArgs),
    /// Remove configuration from the local mesh.
    Delete(local_cli::FilesArgs),
    /// Start a mesh, run the order application, send it traffic and show what happened.
    Demo(local_cli::DemoArgs),
    /// Watch the requests a pod, Service or Deployment's sidecars carry, live, with filters.
    Tap(tap::Args),
    /// Serve a page on localhost with the live service graph and each service's golden
    /// signals, from the sidecars' metrics.
    Dashboard(dashboard_cli::Args),
    /// The local mesh's control plane (started by `meshctl up`).
    #[command(hide = true)]
    ControlPlane(local_cli::DirArg),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Validate(args) => validate::run(&args),
        Command::Analyze(args) => analyze::run(&args),
        Command::Manifest(cmd) => manifest::run(&cmd),
        Command::ProxyStatus(args) => proxy_status::run(&args),
        Command::ProxyConfig(args) => proxy_config::run(&args),
        Command::Describe(cmd) => describe::run(&cmd),
        Command::Why(args) => why::run(&args),
        Command::GatewayStatus(args) => gateway_status::run(&args),
        Command::KubeInject(args) => kube_inject::run(&args),
        Command::Install(args) => install::install(&args),
        Command::Uninstall(args) => install::uninstall(&args),
        Command::Verify(args) => install::verify(&args),
        Command::Up(args) => local_cli::up(&args),
        Command::Down(args) => local_cli::down(&args),
        Command::Run(args) => local_cli::run(&args),
        Command::Ps(args) => local_cli::ps(&args),
        Command::Rm(args) => local_cli::rm(&args),
        Command::Logs(args) => local_cli::logs(&args),
        Command::Exec(args) => local_cli::exec(&args),
        Command::Apply(args) => local_cli::apply(&args),
        Command::Delete(args) => local_cli::delete(&args),
        Command::Demo(args) => local_cli::demo(&args),
        Command::Tap(args) => tap::run(&args),
        Command::Dashboard(args) => dashboard_cli::run(&args),
        Command::ControlPlane(args) => local_cli::control_plane(&args),
    }
}
