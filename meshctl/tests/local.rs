//! The local runtime's commands as a user meets them when something is wrong: not root, a
//! tool missing, invalid configuration (refused with the validate format, nothing written);
//! and `apply`/`delete` on the configuration folder (no root needed for those).

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn meshctl() -> Command {
    Command::new(env!("CARGO_BIN_EXE_meshctl"))
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn sample() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/samples/order-app")
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

#[test]
fn up_without_root_says_why_root_is_needed() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = meshctl();
    cmd.args(["up", "--dir"]).arg(dir.path());
    if is_root() {
        // Drop to `nobody` for this one command.
        cmd.uid(65534).gid(65534);
    }
    let out = cmd.output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let t = text(&out);
    assert!(t.contains("needs root"), "{t}");
    assert!(
        t.contains("network namespaces"),
        "says what root is for: {t}"
    );
}

#[test]
#[ignore = "needs root: the root check comes before the tool check"]
fn up_names_the_package_of_a_missing_tool() {
    assert!(is_root(), "run as root: the root check comes first");
    let dir = tempfile::tempdir().unwrap();
    // No `ip` at all.
    let empty = tempfile::tempdir().unwrap();
    let out = meshctl()
        .args(["up", "--dir"])
        .arg(dir.path())
        .env("PATH", empty.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).contains("`ip` is not installed: install it with `apt-get install -y iproute2`"),
        "{}",
        text(&out)
    );
    // `ip` but no `iptables`.
    let ip = ["/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("ip is installed (scripts/test.sh installs iproute2)");
    std::os::unix::fs::symlink(ip, empty.path().join("ip")).unwrap();
    let out = meshctl()
        .args(["up", "--dir"])
        .arg(dir.path())
        .env("PATH", empty.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out)
            .contains("`iptables` is not installed: install it with `apt-get install -y iptables`"),
        "{}",
        text(&out)
    );
    // Nothing was created.
    assert!(!dir.path().join("runtime.json").exists());
}

#[test]
fn commands_on_a_mesh_that_is_not_up_say_how_to_start_it() {
    let dir = tempfile::tempdir().unwrap();
    for args in [
        vec!["ps"],
        vec!["logs", "order-v1-0"],
        vec!["exec", "x", "--", "true"],
    ] {
        let out = meshctl()
            .arg(args[0])
            .arg("--dir")
            .arg(dir.path())
            .args(&args[1..])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", text(&out));
        assert!(
            text(&out).contains("no mesh is running in"),
            "{}",
            text(&out)
        );
        assert!(text(&out).contains("meshctl up --dir"), "{}", text(&out));
    }
}

#[test]
fn apply_refuses_invalid_input_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("bad.yaml");
    std::fs::write(
        &input,
        "apiVersion: v1\nkind: Service\nmetadata: {name: ok, namespace: default}\nspec:\n  ports: [{name: http, port: 80}]\n---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: r, namespace: default}\nspec:\n  hosts: [r]\n  http:\n  - route:\n    - destination: {host: a}\n      weight: 60\n    - destination: {host: b}\n      weight: 60\n",
    )
    .unwrap();
    let mesh = dir.path().join("mesh");
    let out = meshctl()
        .args(["apply", "--dir"])
        .arg(&mesh)
        .arg("-f")
        .arg(&input)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    // The validate format: file:line: Kind ns/name: field: message.
    assert!(
        stdout.contains("bad.yaml:17: VirtualService default/r: spec.http[0].route[1].weight: weights sum to 120, must be 100"),
        "{stdout}"
    );
    assert!(text(&out).contains("nothing was applied"), "{}", text(&out));
    // The valid Service in the same input was not written either.
    assert!(!mesh.join("config").exists(), "nothing written");
}

#[test]
fn apply_assigns_vips_keeps_them_and_delete_removes() {
    let dir = tempfile::tempdir().unwrap();
    let mesh = dir.path().join("mesh");
    let apply = |verb: &str| {
        meshctl()
            .args([verb, "--dir"])
            .arg(&mesh)
            .arg("-f")
            .arg(sample())
            .output()
            .unwrap()
    };
    let out = apply("apply");
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("Service default/shipping-service created"));
    let read_vip = |name: &str| -> String {
        let file = mesh.join(format!("config/service/default.{name}.json"));
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(file).unwrap()).unwrap();
        v["spec"]["clusterIP"].as_str().unwrap().to_string()
    };
    let vips: Vec<String> = ["order", "inventory-service", "shipping-service"]
        .iter()
        .map(|n| read_vip(n))
        .collect();
    assert!(vips.iter().all(|v| v.starts_with("10.96.")), "{vips:?}");
    let mut unique = vips.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 3, "each service its own VIP: {vips:?}");
    // Applying again changes nothing, and keeps the addresses.
    let out = apply("apply");
    assert!(
        text(&out).contains("Service default/shipping-service unchanged"),
        "{}",
        text(&out)
    );
    assert_eq!(read_vip("shipping-service"), vips[2]);
    let out = apply("delete");
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("VirtualService default/shipping-service deleted"));
    assert!(!mesh.join("config/service/default.order.json").exists());
}
