//! `mesh-proxy run --outbound-original-dst`: the real binary, without capture rules, on
//! 127.0.0.1, forwarding every connection as if it had been addressed to one destination. This
//! is how `mesh-bench` measures one hop.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::Duration;

use tokio::time::Instant;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A one-shot HTTP backend answering every request with `hello`.
fn backend() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in l.incoming().flatten() {
            std::thread::spawn(move || {
                let mut conn = conn;
                let mut buf = [0u8; 4096];
                while let Ok(n) = conn.read(&mut buf) {
                    if n == 0 {
                        return;
                    }
                    let _ = conn.write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-type: text/plain\r\n\r\nhello",
                    );
                }
            });
        }
    });
    addr
}

#[test]
fn forwards_to_the_fixed_destination_without_capture() {
    let backend = backend();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.yaml");
    std::fs::write(
        &state,
        format!(
            "version: t\nservices:\n- hostname: b.t.svc.cluster.local\n  namespace: t\n  addresses: [127.0.0.1]\n  ports: [{{port: {}, name: http}}]\n  endpoints: [{{address: 127.0.0.1}}]\n",
            backend.port()
        ),
    )
    .unwrap();
    let out_port = free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_mesh-proxy"))
        .args(["run", "--state-file"])
        .arg(&state)
        .args(["--bind-address", "127.0.0.1"])
        .args(["--outbound-port", &out_port.to_string()])
        .args(["--inbound-port", &free_port().to_string()])
        .args(["--admin-port", &free_port().to_string()])
        .args(["--readiness-port", &free_port().to_string()])
        .args(["--metrics-port", &free_port().to_string()])
        .args(["--outbound-original-dst", &backend.to_string()])
        .args(["--worker-threads", "1"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let answer = loop {
        let attempt = (|| -> std::io::Result<String> {
            let mut c = TcpStream::connect(("127.0.0.1", out_port))?;
            c.set_read_timeout(Some(Duration::from_secs(5)))?;
            c.write_all(b"GET / HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n")?;
            let mut s = String::new();
            c.read_to_string(&mut s)?;
            Ok(s)
        })();
        match attempt {
            Ok(s) if !s.is_empty() => break s,
            _ if Instant::now() > deadline => panic!("the proxy never answered"),
            _ => std::thread::sleep(Duration::from_millis(20)),
        }
    };
    let _ = child.kill();
    let _ = child.wait();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("hello"), "{answer}");
}

#[test]
fn zero_worker_threads_is_refused() {
    let out = Command::new(env!("CARGO_BIN_EXE_mesh-proxy"))
        .args([
            "run",
            "--state-file",
            "/nonexistent",
            "--worker-threads",
            "0",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--worker-threads must be at least 1"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_certificate_lifetime_that_does_not_read_is_refused_naming_where_it_came_from() {
    let out = Command::new(env!("CARGO_BIN_EXE_mesh-proxy"))
        .args(["run", "--state-file", "/nonexistent"])
        .env("SECRET_TTL", "a day")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("\"a day\" is not a duration") && err.contains("SECRET_TTL"),
        "{err}"
    );
}
