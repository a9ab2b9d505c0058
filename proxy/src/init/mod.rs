//! `mesh-proxy init`: the traffic-capture rules of a pod's network namespace, as Istio's init
//! container writes them. Outbound TCP is redirected to the proxy's outbound port (15001),
//! inbound TCP to its inbound port (15006); the proxy's own traffic (by uid and gid) and
//! configured ports and ranges are left alone. Applying is idempotent and `cleanup` removes
//! everything. Rules are only written in a namespace created with `ip netns add` (the local
//! runtime's pods and the tests) unless the caller forces it, so a mistake can never redirect
//! the host's own traffic.

mod iptables;
mod namespace;
mod rules;

use std::net::IpAddr;

pub use iptables::{Iptables, Variant};
pub use namespace::{NamespaceCheck, check_namespace};
pub use rules::{CHAINS, CidrSet, PortSet, render};

/// What to capture.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CaptureConfig {
    /// The proxy's user id: its traffic is not captured.
    pub proxy_uid: u32,
    /// The proxy's group id: its traffic is not captured.
    pub proxy_gid: u32,
    /// Where outbound connections are redirected.
    pub outbound_port: u16,
    /// Where inbound connections are redirected.
    pub inbound_port: u16,
    /// Inbound ports captured.
    pub include_inbound_ports: PortSet,
    /// Inbound ports never captured (the proxy's health and metrics ports by default).
    pub exclude_inbound_ports: Vec<u16>,
    /// Outbound destination ranges captured.
    pub include_outbound_cidrs: CidrSet,
    /// Outbound destination ranges never captured.
    pub exclude_outbound_cidrs: Vec<String>,
    /// Outbound destination ports captured.
    pub include_outbound_ports: PortSet,
    /// Outbound destination ports never captured.
    pub exclude_outbound_ports: Vec<u16>,
}

impl Default for CaptureConfig {
    fn default() -> Self {
        Self {
            proxy_uid: 1337,
            proxy_gid: 1337,
            outbound_port: 15001,
            inbound_port: 15006,
            include_inbound_ports: PortSet::All,
            exclude_inbound_ports: vec![15020, 15021, 15090],
            include_outbound_cidrs: CidrSet::All,
            exclude_outbound_cidrs: Vec::new(),
            include_outbound_ports: PortSet::All,
            exclude_outbound_ports: Vec::new(),
        }
    }
}

/// A flag value that could not be read.
#[derive(Debug, thiserror::Error)]
#[error("{flag}: {value:?} {reason}")]
pub struct FlagError {
    /// The flag.
    pub flag: &'static str,
    /// The value given.
    pub value: String,
    /// What is wrong and what is expected.
    pub reason: &'static str,
}

/// Parses a comma-separated port list; `*` means all, empty means none.
pub fn parse_ports(flag: &'static str, value: &str) -> Result<PortSet, FlagError> {
    if value.trim() == "*" {
        return Ok(PortSet::All);
    }
    parse_port_list(flag, value).map(PortSet::Only)
}

/// Parses a comma-separated list of ports (no `*`).
pub fn parse_port_list(flag: &'static str, value: &str) -> Result<Vec<u16>, FlagError> {
    let mut ports = Vec::new();
    for part in value.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.parse::<u16>() {
            Ok(p) if p > 0 => ports.push(p),
            _ => {
                let reason = "is not a list of ports 1-65535 (e.g. 80,8080)";
                return Err(FlagError {
                    flag,
                    value: value.into(),
                    reason,
                });
            }
        }
    }
    Ok(ports)
}

/// Parses a comma-separated CIDR list; `*` means all, empty means none. IPv4 only for now.
pub fn parse_cidrs(flag: &'static str, value: &str) -> Result<CidrSet, FlagError> {
    if value.trim() == "*" {
        return Ok(CidrSet::All);
    }
    parse_cidr_list(flag, value).map(CidrSet::Only)
}

/// Parses a comma-separated list of IPv4 CIDRs (an address alone means /32).
pub fn parse_cidr_list(flag: &'static str, value: &str) -> Result<Vec<String>, FlagError> {
    let mut out = Vec::new();
    for part in value.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (ip, bits) = part.split_once('/').unwrap_or((part, "32"));
        match (ip.parse::<IpAddr>(), bits.parse::<u8>()) {
            (Ok(IpAddr::V4(ip)), Ok(bits)) if bits <= 32 => out.push(format!("{ip}/{bits}")),
            _ => {
                let reason = "is not a list of IPv4 CIDRs (e.g. 10.0.0.0/8,192.168.1.1)";
                return Err(FlagError {
                    flag,
                    value: value.into(),
                    reason,
                });
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_rules_match_istio_layout() {
        let text = render(&CaptureConfig::default());
        let expected = "\
*nat
:MESH_INBOUND - [0:0]
:MESH_IN_REDIRECT - [0:0]
:MESH_OUTPUT - [0:0]
:MESH_REDIRECT - [0:0]
-A MESH_INBOUND -p tcp -m tcp --dport 15020 -j RETURN
-A MESH_INBOUND -p tcp -m tcp --dport 15021 -j RETURN
-A MESH_INBOUND -p tcp -m tcp --dport 15090 -j RETURN
-A MESH_INBOUND -p tcp -j MESH_IN_REDIRECT
-A MESH_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006
-A MESH_OUTPUT -s 127.0.0.6/32 -o lo -j RETURN
-A MESH_OUTPUT ! -d 127.0.0.1/32 -o lo -p tcp -m owner --uid-owner 1337 -j MESH_IN_REDIRECT
-A MESH_OUTPUT -o lo -m owner ! --uid-owner 1337 -j RETURN
-A MESH_OUTPUT -m owner --uid-owner 1337 -j RETURN
-A MESH_OUTPUT ! -d 127.0.0.1/32 -o lo -p tcp -m owner --gid-owner 1337 -j MESH_IN_REDIRECT
-A MESH_OUTPUT -o lo -m owner ! --gid-owner 1337 -j RETURN
-A MESH_OUTPUT -m owner --gid-owner 1337 -j RETURN
-A MESH_OUTPUT -d 127.0.0.1/32 -j RETURN
-A MESH_OUTPUT -j MESH_REDIRECT
-A MESH_REDIRECT -p tcp -j REDIRECT --to-ports 15001
-A PREROUTING -p tcp -j MESH_INBOUND
-A OUTPUT -p tcp -j MESH_OUTPUT
COMMIT
";
        assert_eq!(text, expected);
    }

    #[test]
    fn includes_and_excludes_shape_the_rules() {
        let cfg = CaptureConfig {
            include_inbound_ports: parse_ports("--include-inbound-ports", "8080, 9090").unwrap(),
            include_outbound_cidrs: parse_cidrs("--include-outbound-cidrs", "10.96.0.0/16")
                .unwrap(),
            exclude_outbound_cidrs: parse_cidr_list("--exclude-outbound-cidrs", "10.96.0.1")
                .unwrap(),
            exclude_outbound_ports: parse_port_list("--exclude-outbound-ports", "5432").unwrap(),
            ..CaptureConfig::default()
        };
        let text = render(&cfg);
        assert!(text.contains("-A MESH_INBOUND -p tcp -m tcp --dport 8080 -j MESH_IN_REDIRECT\n"));
        assert!(text.contains("-A MESH_INBOUND -p tcp -m tcp --dport 9090 -j MESH_IN_REDIRECT\n"));
        assert!(!text.contains("-A MESH_INBOUND -p tcp -j MESH_IN_REDIRECT"));
        assert!(text.contains("-A MESH_OUTPUT -d 10.96.0.1/32 -j RETURN\n"));
        assert!(text.contains("-A MESH_OUTPUT -p tcp -m tcp --dport 5432 -j RETURN\n"));
        assert!(text.contains("-A MESH_OUTPUT -d 10.96.0.0/16 -j MESH_REDIRECT\n"));
        assert!(!text.contains("-A MESH_OUTPUT -j MESH_REDIRECT"));
    }

    #[test]
    fn empty_includes_capture_nothing() {
        let cfg = CaptureConfig {
            include_inbound_ports: parse_ports("--include-inbound-ports", "").unwrap(),
            include_outbound_cidrs: parse_cidrs("--include-outbound-cidrs", "").unwrap(),
            ..CaptureConfig::default()
        };
        let text = render(&cfg);

        assert!(
            !text
                .lines()
                .any(|l| l.starts_with("-A MESH_INBOUND") && l.ends_with("MESH_IN_REDIRECT"))
        );
        assert!(
            !text
                .lines()
                .any(|l| l.starts_with("-A MESH_OUTPUT") && l.ends_with("-j MESH_REDIRECT"))
        );
    }

    #[test]
    fn bad_flags_say_what_is_expected() {
        let err = parse_ports("--include-inbound-ports", "80,http").unwrap_err();
        assert_eq!(
            err.to_string(),
            "--include-inbound-ports: \"80,http\" is not a list of ports 1-65535 (e.g. 80,8080)"
        );
        assert!(parse_cidr_list("--exclude-outbound-cidrs", "10.0.0.0/40").is_err());
        assert!(parse_cidr_list("--exclude-outbound-cidrs", "::1").is_err());
    }
}
