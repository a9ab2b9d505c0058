//! Running iptables: finding the right variant (nft or legacy), applying the rules with
//! `iptables-restore`, and removing them.

use std::io::Write;
use std::process::{Command, Stdio};

use super::rules::{CHAINS, JUMPS};

/// Which iptables back end to drive.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Variant {
    /// Whichever back end already holds rules in this namespace, else the system default.
    Auto,
    /// `iptables-nft`.
    Nft,
    /// `iptables-legacy`.
    Legacy,
}

/// Failure to run iptables.
#[derive(Debug, thiserror::Error)]
pub enum IptablesError {
    /// The binary is missing.
    #[error("{0} is not installed: install it with `apt-get install -y iptables`")]
    Missing(String),
    /// It ran and failed.
    #[error("`{command}` failed: {stderr}")]
    Failed {
        /// The command line.
        command: String,
        /// What it printed.
        stderr: String,
    },
    /// It could not be started.
    #[error("cannot run {command}: {source}")]
    Spawn {
        /// The command.
        command: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// The iptables commands of one variant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Iptables {
    /// `iptables`, `iptables-nft` or `iptables-legacy`.
    pub iptables: String,
    /// The matching `-restore` command.
    pub restore: String,
    /// The matching `-save` command.
    pub save: String,
}

impl Iptables {
    /// The commands of one variant, by full path; an error names the missing one.
    fn named(base: &str) -> Result<Self, IptablesError> {
        let resolve = |cmd: String| {
            which(&cmd)
                .map(|p| p.display().to_string())
                .ok_or(IptablesError::Missing(cmd))
        };
        Ok(Self {
            iptables: resolve(base.to_string())?,
            restore: resolve(format!("{base}-restore"))?,
            save: resolve(format!("{base}-save"))?,
        })
    }

    /// Chooses the commands for `variant`. `Auto` keeps to the back end that already has rules
    /// in this namespace (mixing both makes rules invisible to one another), else the default.
    pub fn select(variant: Variant) -> Result<Self, IptablesError> {
        match variant {
            Variant::Nft => Self::named("iptables-nft"),
            Variant::Legacy => Self::named("iptables-legacy"),
            Variant::Auto => {
                let rules = |cmd: &str| -> usize {
                    let Some(path) = which(cmd) else { return 0 };
                    Command::new(path)
                        .output()
                        .map(|o| {
                            String::from_utf8_lossy(&o.stdout)
                                .lines()
                                .filter(|l| l.starts_with("-A"))
                                .count()
                        })
                        .unwrap_or(0)
                };
                if rules("iptables-legacy-save") > 0 && rules("iptables-nft-save") == 0 {
                    Self::named("iptables-legacy")
                } else {
                    Self::named("iptables")
                }
            }
        }
    }

    /// Removes the mesh's rules and chains; succeeds when there is nothing to remove.
    pub fn cleanup(&self) -> Result<(), IptablesError> {
        for jump in JUMPS {
            // A jump may have been added more than once by an older run: remove all copies.
            while self
                .run(&[&["-t", "nat", "-C"][..], &jump[..]].concat())
                .is_ok()
            {
                self.run(&[&["-t", "nat", "-D"][..], &jump[..]].concat())?;
            }
        }
        for chain in CHAINS {
            if self.run(&["-t", "nat", "-L", chain, "-n"]).is_ok() {
                self.run(&["-t", "nat", "-F", chain])?;
            }
        }
        for chain in CHAINS {
            if self.run(&["-t", "nat", "-L", chain, "-n"]).is_ok() {
                self.run(&["-t", "nat", "-X", chain])?;
            }
        }
        Ok(())
    }

    /// Replaces the mesh's rules with `rules` (from [`super::render`]).
    pub fn apply(&self, rules: &str) -> Result<(), IptablesError> {
        self.cleanup()?;
        let command = format!("{} --noflush", self.restore);
        let mut child = Command::new(&self.restore)
            .arg("--noflush")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| IptablesError::Spawn {
                command: command.clone(),
                source,
            })?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(rules.as_bytes())
                .map_err(|source| IptablesError::Spawn {
                    command: command.clone(),
                    source,
                })?;
        }
        let out = child
            .wait_with_output()
            .map_err(|source| IptablesError::Spawn {
                command: command.clone(),
                source,
            })?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
            return Err(IptablesError::Failed { command, stderr });
        }
        Ok(())
    }

    /// The nat table as `iptables-save` prints it, without its comment lines.
    pub fn save_nat(&self) -> Result<String, IptablesError> {
        let command = format!("{} -t nat", self.save);
        let out = Command::new(&self.save)
            .args(["-t", "nat"])
            .output()
            .map_err(|source| IptablesError::Spawn {
                command: command.clone(),
                source,
            })?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
            return Err(IptablesError::Failed { command, stderr });
        }
        let text = String::from_utf8_lossy(&out.stdout);
        Ok(text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| format!("{l}\n"))
            .collect())
    }

    fn run(&self, args: &[&str]) -> Result<(), IptablesError> {
        let command = format!("{} {}", self.iptables, args.join(" "));
        let out = Command::new(&self.iptables)
            .args(args)
            .output()
            .map_err(|source| IptablesError::Spawn {
                command: command.clone(),
                source,
            })?;
        if out.status.success() {
            Ok(())
        } else {
            let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
            Err(IptablesError::Failed { command, stderr })
        }
    }
}

/// The full path of `cmd` on `PATH` (plus the sbin folders, which a non-login root shell may
/// lack).
fn which(cmd: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(Into::into))
        .map(|dir| dir.join(cmd))
        .find(|p| p.is_file())
}
