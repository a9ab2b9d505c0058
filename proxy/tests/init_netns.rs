//! `mesh-proxy init` inside a real network namespace: rules written, idempotent, removable,
//! with both iptables back ends, and refused outside a registered namespace. Needs root (CI
//! runs as root) and iproute2 + iptables (the test script installs them).

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::process::{Command, Output};

/// A network namespace that exists for the life of the value.
struct NetNs(String);

impl NetNs {
    fn new(tag: &str) -> Self {
        assert!(
            is_root(),
            "this test needs root to create network namespaces (CI runs as root)"
        );
        let name = format!("mesh-t-{tag}-{}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        let out = Command::new("ip")
            .args(["netns", "add", &name])
            .output()
            .expect("ip runs (apt-get install -y iproute2)");
        assert!(
            out.status.success(),
            "ip netns add: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self(name)
    }

    fn exec(&self, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.0])
            .args(args)
            .output()
            .expect("ip netns exec")
    }

    fn proxy(&self, args: &[&str]) -> Output {
        let mut full = vec![env!("CARGO_BIN_EXE_mesh-proxy"), "init"];
        full.extend_from_slice(args);
        self.exec(&full)
    }

    fn nat(&self, save: &str) -> String {
        let out = self.exec(&[save, "-t", "nat"]);
        assert!(
            out.status.success(),
            "{save}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.starts_with('#'))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0\n"))
        .unwrap_or(false)
}

fn ok(out: &Output) {
    assert!(
        out.status.success(),
        "failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn check_variant(variant: &str, save: &str) {
    let ns = NetNs::new(variant);
    let empty = ns.nat(save);
    ok(&ns.proxy(&["--iptables-variant", variant]));
    let first = ns.nat(save);
    for line in [
        "-A PREROUTING -p tcp -j MESH_INBOUND",
        "-A OUTPUT -p tcp -j MESH_OUTPUT",
        "-A MESH_REDIRECT -p tcp -j REDIRECT --to-ports 15001",
        "-A MESH_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006",
        "-A MESH_OUTPUT -m owner --uid-owner 1337 -j RETURN",
        "-A MESH_INBOUND -p tcp -m tcp --dport 15021 -j RETURN",
    ] {
        assert!(
            first.lines().any(|l| l == line),
            "{variant}: missing {line:?} in\n{first}"
        );
    }
    ok(&ns.proxy(&["--iptables-variant", variant]));
    assert_eq!(
        ns.nat(save),
        first,
        "{variant}: a second run changed the rules"
    );
    ok(&ns.proxy(&["--iptables-variant", variant, "--cleanup"]));
    let cleaned = ns.nat(save);
    assert!(
        !cleaned.contains("MESH_"),
        "{variant}: rules left after cleanup:\n{cleaned}"
    );
    assert_eq!(
        cleaned, empty,
        "{variant}: cleanup did not restore the empty table"
    );
    ok(&ns.proxy(&["--iptables-variant", variant, "--cleanup"]));
}

#[test]
#[ignore = "needs root: creates network namespaces"]
fn rules_are_written_idempotent_and_removed_nft() {
    check_variant("nft", "iptables-nft-save");
}

#[test]
#[ignore = "needs root: creates network namespaces"]
fn rules_are_written_idempotent_and_removed_legacy() {
    check_variant("legacy", "iptables-legacy-save");
}

#[test]
fn dry_run_prints_what_would_be_applied() {
    let out = Command::new(env!("CARGO_BIN_EXE_mesh-proxy"))
        .args([
            "init",
            "--dry-run",
            "--include-inbound-ports",
            "8080",
            "--exclude-outbound-cidrs",
            "10.0.0.1",
        ])
        .output()
        .unwrap();
    ok(&out);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("*nat\n") && text.ends_with("COMMIT\n"));
    assert!(text.contains("-A MESH_INBOUND -p tcp -m tcp --dport 8080 -j MESH_IN_REDIRECT"));
    assert!(text.contains("-A MESH_OUTPUT -d 10.0.0.1/32 -j RETURN"));
}

#[test]
fn an_unregistered_namespace_is_refused() {
    // This test process runs in the namespace it was started in (the host's, or CI's), which is
    // not registered under /run/netns: init must refuse and change nothing.
    let out = Command::new(env!("CARGO_BIN_EXE_mesh-proxy"))
        .args(["init"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("refusing to write capture rules"), "{err}");
}

#[test]
fn bad_flags_are_named() {
    let out = Command::new(env!("CARGO_BIN_EXE_mesh-proxy"))
        .args(["init", "--dry-run", "--exclude-inbound-ports", "ssh"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--exclude-inbound-ports: \"ssh\" is not a list of ports"),
        "{err}"
    );
}
