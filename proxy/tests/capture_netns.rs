//! The whole capture path in real network namespaces: a client namespace with the capture rules
//! and the proxy (as uid 1337), joined by a veth pair to a server namespace. An unmodified
//! client's plain `connect(VIP:port)` is captured, routed by the proxy to the service's endpoint
//! in the other namespace, and answered. Needs root (CI runs as root), iproute2, iptables and
//! util-linux's setpriv.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::time::Instant;

use nix::sched::{CloneFlags, setns};

fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("ip runs (apt-get install -y iproute2)");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Two namespaces joined by a veth pair, removed on drop.
struct Pair {
    client: String,
    server: String,
}

impl Pair {
    fn new() -> Self {
        let is_root = Command::new("id")
            .arg("-u")
            .output()
            .map(|o| o.stdout.starts_with(b"0\n"))
            .unwrap_or(false);
        assert!(
            is_root,
            "this test needs root to create network namespaces (CI runs as root)"
        );
        let id = std::process::id();
        let pair = Pair {
            client: format!("mesh-t-cl-{id}"),
            server: format!("mesh-t-sv-{id}"),
        };
        pair.remove();
        let (vc, vs) = (format!("mc{id}"), format!("ms{id}"));
        ip(&["netns", "add", &pair.client]);
        ip(&["netns", "add", &pair.server]);
        ip(&["link", "add", &vc, "type", "veth", "peer", "name", &vs]);
        ip(&["link", "set", &vc, "netns", &pair.client]);
        ip(&["link", "set", &vs, "netns", &pair.server]);
        for (ns, dev, addr) in [
            (&pair.client, &vc, "10.199.0.1/24"),
            (&pair.server, &vs, "10.199.0.2/24"),
        ] {
            ip(&["-n", ns, "addr", "add", addr, "dev", dev]);
            ip(&["-n", ns, "link", "set", dev, "up"]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        // Service VIPs need a route for connect() to start; it points at the veth, where no one
        // answers for them (the server namespace has no such address and does not forward),
        // so only capture can answer. Nothing leaves the two namespaces.
        ip(&[
            "-n",
            &pair.client,
            "route",
            "add",
            "10.96.0.0/16",
            "dev",
            &vc,
        ]);
        pair
    }

    fn remove(&self) {
        for ns in [&self.client, &self.server] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        self.remove();
    }
}

/// Runs `f` on a thread that entered network namespace `ns`; sockets it makes live there.
fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).expect("namespace file");
        setns(&file, CloneFlags::CLONE_NEWNET).expect("setns");
        f()
    })
    .join()
    .expect("namespace thread")
}

/// A server answering `server:<peer ip>:<data>` on each connection, until the process ends.
fn serve_echo(listener: TcpListener) {
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            std::thread::spawn(move || {
                let peer = conn
                    .peer_addr()
                    .map(|a| a.ip().to_string())
                    .unwrap_or_default();
                let mut buf = [0u8; 256];
                while let Ok(n) = conn.read(&mut buf) {
                    if n == 0
                        || conn
                            .write_all(
                                format!("server:{peer}:{}", String::from_utf8_lossy(&buf[..n]))
                                    .as_bytes(),
                            )
                            .is_err()
                    {
                        break;
                    }
                }
            });
        }
    });
}

/// The proxy, killed on drop if still running.
struct ProxyProcess(Child);

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

const STATE: &str = r#"
version: capture-test
services:
- hostname: echo.default.svc.cluster.local
  namespace: default
  addresses: ["10.96.0.10"]
  ports: [{port: 80, name: tcp-echo, protocol: TCP, targetPort: 8080}]
  endpoints: [{address: 10.199.0.2}]
"#;

#[test]
#[ignore = "needs root: creates network namespaces"]
fn a_plain_connect_to_a_vip_is_captured_and_answered() {
    let pair = Pair::new();
    let server = in_netns(&pair.server, || {
        TcpListener::bind("10.199.0.2:8080").expect("bind in server namespace")
    });
    serve_echo(server);

    let dir = std::env::temp_dir().join(format!("mesh-capture-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let state_file = dir.join("state.yaml");
    std::fs::write(&state_file, STATE).unwrap();

    let bin = env!("CARGO_BIN_EXE_mesh-proxy");
    let init = Command::new("ip")
        .args(["netns", "exec", &pair.client, bin, "init"])
        .output()
        .unwrap();
    assert!(
        init.status.success(),
        "init: {}",
        String::from_utf8_lossy(&init.stderr)
    );

    let mut child = Command::new("ip")
        .args([
            "netns",
            "exec",
            &pair.client,
            "setpriv",
            "--reuid=1337",
            "--regid=1337",
            "--clear-groups",
            bin,
            "run",
        ])
        .arg("--state-file")
        .arg(&state_file)
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the proxy");
    let stderr = child.stderr.take().unwrap();
    let proxy = ProxyProcess(child);
    // Wait (with a deadline) for the proxy to say it is listening.
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("proxy: {line}");
            if line.contains("mesh-proxy ready") {
                let _ = ready_tx.send(());
            }
        }
    });
    ready_rx
        .recv_timeout(Duration::from_secs(20))
        .expect("the proxy became ready");

    // An unmodified client in the client namespace connects to the service VIP.
    let answer = in_netns(&pair.client, || {
        let vip: SocketAddr = "10.96.0.10:80".parse().unwrap();
        let mut c =
            TcpStream::connect_timeout(&vip, Duration::from_secs(5)).expect("connect to the VIP");
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        c.write_all(b"ping").unwrap();
        let mut buf = [0u8; 256];
        let n = c.read(&mut buf).unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    });
    assert_eq!(
        answer, "server:10.199.0.1:ping",
        "answered by the server, reached from the client namespace"
    );

    // SIGTERM drains and exits 0.
    let mut proxy = proxy;
    Command::new("kill")
        .args(["-TERM", &proxy.0.id().to_string()])
        .status()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(s) = proxy.0.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "the proxy did not exit after SIGTERM"
        );
        std::thread::yield_now();
    };
    assert!(status.success(), "exit status after drain: {status}");
    let _ = std::fs::remove_dir_all(&dir);
}
