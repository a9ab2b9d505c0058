//! The capture rules themselves, as `iptables-restore` input for the nat table: a pure function
//! of the configuration, so what `--dry-run` prints is exactly what is applied.

use std::fmt::Write as _;

use super::CaptureConfig;

/// Chains the mesh owns; everything it adds lives in them except the two jumps.
pub const CHAINS: [&str; 4] = [
    "MESH_INBOUND",
    "MESH_IN_REDIRECT",
    "MESH_OUTPUT",
    "MESH_REDIRECT",
];

/// The jumps from the built-in chains into ours, as `iptables` arguments after `-t nat -A/-D`.
pub const JUMPS: [[&str; 5]; 2] = [
    ["PREROUTING", "-p", "tcp", "-j", "MESH_INBOUND"],
    ["OUTPUT", "-p", "tcp", "-j", "MESH_OUTPUT"],
];

/// The source address the proxy uses for inbound connections to the application, so they are
/// not captured again (Istio's convention).
pub const INBOUND_PASSTHROUGH_SOURCE: &str = "127.0.0.6/32";

/// Renders the rules as `iptables-restore --noflush` input. Declaring our chains flushes them,
/// and the jumps are added last, so applying after a cleanup always gives the same table.
pub fn render(cfg: &CaptureConfig) -> String {
    let mut out = String::from("*nat\n");
    for chain in CHAINS {
        let _ = writeln!(out, ":{chain} - [0:0]");
    }
    // Inbound: from other hosts, through PREROUTING.
    for port in &cfg.exclude_inbound_ports {
        let _ = writeln!(
            out,
            "-A MESH_INBOUND -p tcp -m tcp --dport {port} -j RETURN"
        );
    }
    match &cfg.include_inbound_ports {
        PortSet::All => out.push_str("-A MESH_INBOUND -p tcp -j MESH_IN_REDIRECT\n"),
        PortSet::Only(ports) => {
            for port in ports {
                let _ = writeln!(
                    out,
                    "-A MESH_INBOUND -p tcp -m tcp --dport {port} -j MESH_IN_REDIRECT"
                );
            }
        }
    }
    let _ = writeln!(
        out,
        "-A MESH_IN_REDIRECT -p tcp -j REDIRECT --to-ports {}",
        cfg.inbound_port
    );
    // Outbound: locally generated, through OUTPUT.
    let (uid, gid) = (cfg.proxy_uid, cfg.proxy_gid);
    let _ = writeln!(
        out,
        "-A MESH_OUTPUT -s {INBOUND_PASSTHROUGH_SOURCE} -o lo -j RETURN"
    );
    // The proxy calling its own workload through a service address: treat as inbound.
    let _ = writeln!(
        out,
        "-A MESH_OUTPUT ! -d 127.0.0.1/32 -o lo -p tcp -m owner --uid-owner {uid} -j MESH_IN_REDIRECT"
    );
    // The application talking to itself over loopback is left alone.
    let _ = writeln!(
        out,
        "-A MESH_OUTPUT -o lo -m owner ! --uid-owner {uid} -j RETURN"
    );
    // The proxy's own outbound connections are never captured.
    let _ = writeln!(out, "-A MESH_OUTPUT -m owner --uid-owner {uid} -j RETURN");
    let _ = writeln!(
        out,
        "-A MESH_OUTPUT ! -d 127.0.0.1/32 -o lo -p tcp -m owner --gid-owner {gid} -j MESH_IN_REDIRECT"
    );
    let _ = writeln!(
        out,
        "-A MESH_OUTPUT -o lo -m owner ! --gid-owner {gid} -j RETURN"
    );
    let _ = writeln!(out, "-A MESH_OUTPUT -m owner --gid-owner {gid} -j RETURN");
    out.push_str("-A MESH_OUTPUT -d 127.0.0.1/32 -j RETURN\n");
    for port in &cfg.exclude_outbound_ports {
        let _ = writeln!(out, "-A MESH_OUTPUT -p tcp -m tcp --dport {port} -j RETURN");
    }
    for cidr in &cfg.exclude_outbound_cidrs {
        let _ = writeln!(out, "-A MESH_OUTPUT -d {cidr} -j RETURN");
    }
    match (&cfg.include_outbound_cidrs, &cfg.include_outbound_ports) {
        (CidrSet::All, PortSet::All) => out.push_str("-A MESH_OUTPUT -j MESH_REDIRECT\n"),
        (cidrs, ports) => {
            let cidrs: Vec<Option<&str>> = match cidrs {
                CidrSet::All => vec![None],
                CidrSet::Only(list) => list.iter().map(|c| Some(c.as_str())).collect(),
            };
            let ports: Vec<Option<u16>> = match ports {
                PortSet::All => vec![None],
                PortSet::Only(list) => list.iter().copied().map(Some).collect(),
            };
            for cidr in &cidrs {
                for port in &ports {
                    out.push_str("-A MESH_OUTPUT");
                    if let Some(c) = cidr {
                        let _ = write!(out, " -d {c}");
                    }
                    if let Some(p) = port {
                        let _ = write!(out, " -p tcp -m tcp --dport {p}");
                    }
                    out.push_str(" -j MESH_REDIRECT\n");
                }
            }
        }
    }
    let _ = writeln!(
        out,
        "-A MESH_REDIRECT -p tcp -j REDIRECT --to-ports {}",
        cfg.outbound_port
    );
    for jump in JUMPS {
        let _ = writeln!(out, "-A {}", jump.join(" "));
    }
    out.push_str("COMMIT\n");
    out
}

/// A set of ports: all, or a list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PortSet {
    /// Every port (`*`).
    All,
    /// Only these.
    Only(Vec<u16>),
}

/// A set of destination ranges: all, or a list of CIDRs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CidrSet {
    /// Every destination (`*`).
    All,
    /// Only these CIDRs.
    Only(Vec<String>),
}
