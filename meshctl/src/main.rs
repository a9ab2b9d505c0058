//! `meshctl`, the one command a mesh user types: validate configuration, generate manifests,
//! and (as later work lands) run the mesh locally and inspect it.

mod manifest;
mod proxy_status;
mod validate;

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
    /// Show every proxy pilot knows: connected or not, versions sent and acknowledged, and
    /// why a push was refused.
    ProxyStatus(proxy_status::Args),
    /// Generate manifests from the mesh's types.
    #[command(subcommand)]
    Manifest(manifest::Command),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Validate(args) => validate::run(&args),
        Command::Manifest(cmd) => manifest::run(&cmd),
        Command::ProxyStatus(args) => proxy_status::run(&args),
    }
}
