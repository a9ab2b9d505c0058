//! `mesh-bench` without the tools it compares against: it names each missing one with the
//! command that installs it, and exits with status 2 before starting anything.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::process::Command;

#[test]
fn missing_tools_are_named_with_how_to_install_them() {
    let empty = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_mesh-bench"))
        .arg("--quick")
        .env("MESH_BENCH_PATH", empty.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    for (tool, install) in [
        ("haproxy", "apt-get install -y haproxy"),
        ("nginx", "apt-get install -y nginx"),
        ("oha", "cargo install oha --locked"),
        ("taskset", "apt-get install -y util-linux"),
    ] {
        let line = stderr
            .lines()
            .find(|l| l.trim_start().starts_with(tool))
            .unwrap_or_else(|| panic!("{tool} is not named:\n{stderr}"));
        assert!(line.contains(install), "{line}");
    }
    assert!(
        out.stdout.is_empty(),
        "nothing measured, nothing printed on stdout"
    );
}
