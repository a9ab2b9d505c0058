//! The mesh network on one machine, built with `ip` and `iptables` only inside namespaces the
//! runtime creates: a hub namespace holding the bridge (and the control plane's address), and
//! one namespace per pod joined to it by a veth pair. Nothing is added to the host's own
//! namespace: no link, no address, no route, no rule; the host's forwarding is never touched.

use std::fs::File;
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Command, Output};

use super::RuntimeError;

/// Pod addresses (the hub's bridge holds the first).
pub const POD_PREFIX: [u8; 2] = [10, 244];
/// Prefix length of the pod range.
pub const POD_PREFIX_LEN: u8 = 16;
/// The control plane's address, on the hub's bridge.
pub const HUB_ADDRESS: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 1);
/// Service VIPs: only sidecars give them meaning; inside pods the range is otherwise rejected.
pub const VIP_CIDR: &str = "10.96.0.0/16";
/// The first VIP handed out.
pub const FIRST_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
/// Where `ip netns add` registers namespaces.
pub const NETNS_DIR: &str = "/run/netns";
/// Where `ip netns exec` finds a namespace's own `/etc` files (hosts, resolv.conf).
pub const NETNS_ETC: &str = "/etc/netns";

/// The address of pod number `index` (2 and up).
pub fn pod_address(index: u32) -> Ipv4Addr {
    let [a, b] = POD_PREFIX;
    Ipv4Addr::new(a, b, (index >> 8) as u8, (index & 0xff) as u8)
}

/// Checks what the runtime needs before it changes anything: root, `ip`, `iptables`.
pub fn check_prerequisites() -> Result<(), RuntimeError> {
    if !nix::unistd::geteuid().is_root() {
        return Err(RuntimeError::NotRoot);
    }
    for (tool, package) in [("ip", "iproute2"), ("iptables", "iptables")] {
        let found = Command::new(tool)
            .arg("-V")
            .output()
            .is_ok_and(|o| o.status.success() || !o.stdout.is_empty());
        if !found {
            return Err(RuntimeError::MissingTool { tool, package });
        }
    }
    Ok(())
}

/// Runs a command to completion; a failure names the command and says what it printed.
pub fn run(program: &str, args: &[&str]) -> Result<Output, RuntimeError> {
    let output = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| RuntimeError::Command {
            command: format!("{program} {}", args.join(" ")),
            message: e.to_string(),
        })?;
    if !output.status.success() {
        return Err(RuntimeError::Command {
            command: format!("{program} {}", args.join(" ")),
            message: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        });
    }
    Ok(output)
}

/// `ip ARGS...`.
pub fn ip(args: &[&str]) -> Result<(), RuntimeError> {
    run("ip", args).map(drop)
}

/// True when a namespace of that name is registered.
pub fn netns_exists(name: &str) -> bool {
    Path::new(NETNS_DIR).join(name).exists()
}

/// Runs `f` on a thread that has entered network namespace `name`: sockets it opens and
/// processes it spawns live there. The calling thread is not moved.
pub fn in_netns<T: Send>(
    name: &str,
    f: impl FnOnce() -> std::io::Result<T> + Send,
) -> std::io::Result<T> {
    let path = Path::new(NETNS_DIR).join(name);
    std::thread::scope(|s| {
        s.spawn(|| {
            let file = File::open(&path).map_err(|e| {
                std::io::Error::new(e.kind(), format!("network namespace {name}: {e}"))
            })?;
            nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(|e| std::io::Error::other(format!("entering {name}: {e}")))?;
            f()
        })
        .join()
        .unwrap_or_else(|_| Err(std::io::Error::other("thread panicked")))
    })
}

/// Creates the hub: a namespace with a bridge holding the control plane's address. Forwarding
/// stays off there (a new namespace's default), so the hub switches pod traffic on the bridge
/// and routes nothing anywhere.
pub fn create_hub(hub: &str) -> Result<(), RuntimeError> {
    ip(&["netns", "add", hub])?;
    ip(&["-n", hub, "link", "set", "lo", "up"])?;
    ip(&["-n", hub, "link", "add", "br0", "type", "bridge"])?;
    let address = format!("{HUB_ADDRESS}/{POD_PREFIX_LEN}");
    ip(&["-n", hub, "addr", "add", &address, "dev", "br0"])?;
    ip(&["-n", hub, "link", "set", "br0", "up"])?;
    Ok(())
}

/// Creates a pod's namespace, joined to the hub's bridge, with `address` and a route for the
/// VIP range (so connections to a VIP reach the capture rules; nothing else routes out).
pub fn create_pod_network(
    hub: &str,
    pod: &str,
    hub_link: &str,
    address: Ipv4Addr,
) -> Result<(), RuntimeError> {
    ip(&["netns", "add", pod])?;
    ip(&["-n", pod, "link", "set", "lo", "up"])?;
    ip(&[
        "-n", hub, "link", "add", hub_link, "type", "veth", "peer", "name", "eth0", "netns", pod,
    ])?;
    ip(&["-n", hub, "link", "set", hub_link, "master", "br0", "up"])?;
    let cidr = format!("{address}/{POD_PREFIX_LEN}");
    ip(&["-n", pod, "addr", "add", &cidr, "dev", "eth0"])?;
    ip(&["-n", pod, "link", "set", "eth0", "up"])?;
    ip(&["-n", pod, "route", "add", VIP_CIDR, "dev", "eth0"])?;
    Ok(())
}

/// Rejects, inside the pod, anything still addressed to a VIP after the capture rules had
/// their turn (the nat table runs first): such a connection fails at once in the pod instead
/// of leaving it.
pub fn blackhole_vips(pod: &str) -> Result<(), RuntimeError> {
    run(
        "ip",
        &[
            "netns", "exec", pod, "iptables", "-w", "-A", "OUTPUT", "-d", VIP_CIDR, "-j", "REJECT",
        ],
    )
    .map(drop)
}

/// Processes running in namespace `name`.
pub fn netns_pids(name: &str) -> Vec<i32> {
    Command::new("ip")
        .args(["netns", "pids", name])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Deletes a namespace (its links and rules go with it) and its `/etc/netns` files.
pub fn delete_netns(name: &str) -> Result<(), RuntimeError> {
    if netns_exists(name) {
        ip(&["netns", "del", name])?;
    }
    let secrets = Path::new(super::pods::SECRETS_DIR).join(name);
    if secrets.exists() {
        std::fs::remove_dir_all(&secrets).map_err(|e| RuntimeError::Io {
            what: format!("removing {}", secrets.display()),
            source: e,
        })?;
    }
    let etc = Path::new(NETNS_ETC).join(name);
    if etc.exists() {
        std::fs::remove_dir_all(&etc).map_err(|e| RuntimeError::Io {
            what: format!("removing {}", etc.display()),
            source: e,
        })?;
    }
    Ok(())
}

/// Namespaces registered whose name starts with `prefix`.
pub fn netns_with_prefix(prefix: &str) -> Vec<String> {
    std::fs::read_dir(NETNS_DIR)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| n.starts_with(prefix))
                .collect()
        })
        .unwrap_or_default()
}
