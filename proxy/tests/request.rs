//! `mesh-proxy request`: the real binary asks a running proxy's loopback ports, as tools that
//! reach a pod only by exec (the Kubernetes end-to-end backend, an operator with `kubectl
//! exec`) read its admin and metrics.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::process::{Child, Command, Output};

struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn proxy(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mesh-proxy"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn request_prints_what_the_admin_and_metrics_ports_answer() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.yaml");
    std::fs::write(&state, "version: v7\nservices: []\n").unwrap();
    let [outbound, inbound, admin, ready, metrics] = [(); 5].map(|()| free_port());
    let port = |p: u16| p.to_string();
    let _proxy = Running(
        Command::new(env!("CARGO_BIN_EXE_mesh-proxy"))
            .args(["run", "--state-file", state.to_str().unwrap()])
            .args(["--bind-address", "127.0.0.1"])
            .args(["--outbound-port", &port(outbound)])
            .args(["--inbound-port", &port(inbound)])
            .args(["--admin-port", &port(admin)])
            .args(["--readiness-port", &port(ready)])
            .args(["--metrics-port", &port(metrics)])
            .spawn()
            .unwrap(),
    );
    let waited = proxy(&["wait", "--address", &format!("127.0.0.1:{ready}")]);
    assert!(
        waited.status.success(),
        "{}",
        String::from_utf8_lossy(&waited.stderr)
    );

    let dump = proxy(&["request", "GET", "/config_dump", "--port", &port(admin)]);
    assert!(
        dump.status.success(),
        "{}",
        String::from_utf8_lossy(&dump.stderr)
    );
    let dump: serde_json::Value = serde_json::from_slice(&dump.stdout).unwrap();
    assert_eq!(dump["version"], "v7", "{dump}");

    let scrape = proxy(&[
        "request",
        "get",
        "stats/prometheus",
        "--port",
        &port(metrics),
    ]);
    assert!(scrape.status.success());
    assert!(String::from_utf8_lossy(&scrape.stdout).contains("# TYPE"));

    // A path the admin does not serve: its answer is printed, and the exit says the status.
    let missing = proxy(&["request", "GET", "/no-such-page", "--port", &port(admin)]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("answered 404"),
        "{}",
        String::from_utf8_lossy(&missing.stderr)
    );

    let closed = proxy(&["request", "GET", "/stats", "--port", &port(free_port())]);
    assert_eq!(closed.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&closed.stderr).contains("nothing listens on 127.0.0.1:"),
        "{}",
        String::from_utf8_lossy(&closed.stderr)
    );
    let bad = proxy(&["request", "G ET", "/stats", "--port", &port(admin)]);
    assert!(String::from_utf8_lossy(&bad.stderr).contains("is not an HTTP method"));
}
