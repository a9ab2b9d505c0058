//! What the fuzz targets (`fuzz/`, cargo-fuzz) run, one function per target, so that the same
//! code replays the committed corpus and every crash found as an ordinary test
//! (`proxy/tests/fuzz_corpus.rs`) on the stable toolchain. Each takes arbitrary bytes and must
//! neither panic nor hang; what it returns is whether the input was accepted, for the tests.

use std::sync::OnceLock;
use std::time::Duration;

use mesh_ca::Identity;
use prost::Message;

/// Protocol sniffing: a connection's first bytes.
pub fn sniff(data: &[u8]) -> bool {
    crate::sniff::classify(data).is_some()
}

/// Config loading: a YAML (or JSON) file through the strict parse and validation `meshctl
/// validate` and pilot use; whether every document was accepted.
pub fn config(data: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(data) else {
        return false;
    };
    let report = mesh_api::load::load_str(text, Some("fuzz"));
    report.errors().next().is_none()
}

/// The proxy's state from a discovery response: protobuf bytes, decoded and compiled.
pub fn state(data: &[u8]) -> bool {
    match mesh_api::proto::state::v1::ProxyState::decode(data) {
        Ok(source) => crate::state::State::compile(source).is_ok(),
        Err(_) => false,
    }
}

/// The JWT issuer the `jwt` target's rules trust: its key set is the fixed test RSA key.
const JWT_ISSUER: &str = "https://fuzz.test";

fn jwt_checker() -> &'static (tokio::runtime::Runtime, crate::authn::Authenticator) {
    static CHECKER: OnceLock<(tokio::runtime::Runtime, crate::authn::Authenticator)> =
        OnceLock::new();
    CHECKER.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime for the jwt target");
        let jwks = format!("{{\"keys\": [{}]}}", super::jwt::RSA_JWK);
        let spec = serde_json::json!({"jwtRules": [{"issuer": JWT_ISSUER, "jwks": jwks,
                                                    "audiences": ["fuzz"]}]});
        let policy = mesh_api::proto::state::v1::Policy {
            name: "fuzz".into(),
            namespace: "default".into(),
            spec_json: spec.to_string(),
            dry_run: false,
        };
        let authenticator =
            crate::authn::Authenticator::compile(&[policy]).expect("the jwt target's rule");
        (runtime, authenticator)
    })
}

/// JWT parsing: the bytes as a bearer token (and as the `access_token` parameter), checked by a
/// RequestAuthentication with an inline key set; whether it verified.
pub fn jwt(data: &[u8]) -> bool {
    let (runtime, authenticator) = jwt_checker();
    let Ok(token) = std::str::from_utf8(data) else {
        return false;
    };
    let mut headers = http::HeaderMap::new();
    if let Ok(v) = http::HeaderValue::from_str(&format!("Bearer {token}")) {
        headers.insert(http::header::AUTHORIZATION, v);
    }
    let query: String = form_urlencoded::Serializer::new(String::new())
        .append_pair("access_token", token)
        .finish();
    let by_header = runtime.block_on(authenticator.authenticate(&mut headers, "", None));
    let by_query =
        runtime.block_on(authenticator.authenticate(&mut http::HeaderMap::new(), &query, None));
    matches!(by_header, Ok(Some(_))) || matches!(by_query, Ok(Some(_)))
}

fn authority() -> &'static mesh_ca::testing::TestCa {
    static CA: OnceLock<mesh_ca::testing::TestCa> = OnceLock::new();
    CA.get_or_init(|| mesh_ca::testing::TestCa::self_signed("fuzz", mesh_ca::CaConfig::default()))
}

/// CSR handling in the CA: the bytes as a CSR (PEM) for one workload identity; whether it was
/// signed.
pub fn csr(data: &[u8]) -> bool {
    let Ok(pem) = std::str::from_utf8(data) else {
        return false;
    };
    let identity = Identity::new("cluster.local", "default", "fuzz");
    authority()
        .authority
        .sign(pem, &identity, Some(Duration::from_secs(3600)))
        .is_ok()
}

/// A caller's sidecar (order) and a destination's (shipping, STRICT mutual TLS, HTTP), started
/// once on loopback, in front of an app that answers every request: the address of the
/// caller's outbound listener.
fn http_pair() -> std::net::SocketAddr {
    static PAIR: OnceLock<(tokio::runtime::Runtime, std::net::SocketAddr)> = OnceLock::new();
    PAIR.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a runtime for the http1 target");
        let outbound = runtime.block_on(async {
            // A fuzzer's process is not started by Rust's `main`, which ignores SIGPIPE: a
            // write to a connection the peer closed would kill it. Handled here, it is not.
            if let Ok(pipe) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::pipe()) {
                std::mem::forget(pipe);
            }
            let app = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("the app binds loopback");
            let app_addr = app.local_addr().expect("the app's address");
            tokio::spawn(async move {
                while let Ok((c, _)) = app.accept().await {
                    tokio::spawn(async move {
                        let svc = hyper::service::service_fn(|_req| async {
                            Ok::<_, std::convert::Infallible>(hyper::Response::new(
                                http_body_util::Full::new(bytes::Bytes::from_static(b"ok")),
                            ))
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(hyper_util::rt::TokioIo::new(c), svc)
                            .await;
                    });
                }
            });
            let ca = Box::leak(Box::new(mesh_ca::testing::TestCa::self_signed(
                "fuzz-http",
                mesh_ca::CaConfig::default(),
            )));
            let shipping = super::compile(crate::state::proto::ProxyState {
                inbound_ports: vec![crate::state::proto::WorkloadPort {
                    port: u32::from(app_addr.port()),
                    protocol: crate::state::proto::Protocol::Http.into(),
                }],
                peer_authentication: Some(crate::state::proto::PeerAuthentication {
                    mode: crate::state::proto::PeerMode::Strict.into(),
                    ..Default::default()
                }),
                ..Default::default()
            });
            let (_tx, rx) = tokio::sync::watch::channel(shipping);
            std::mem::forget(_tx);
            let b = super::start(
                rx,
                "10.0.0.1:1",
                &format!("10.0.0.9:{}", app_addr.port()),
                Some(super::svids(ca, "shipping").await),
            )
            .await;
            let mut svc = super::service(
                "shipping.default.svc.cluster.local",
                "10.96.0.60",
                80,
                "http",
            )
            .endpoint(b.bound.inbound, &[("app", "shipping")])
            .build();
            svc.endpoints[0].identity = "spiffe://cluster.local/ns/default/sa/shipping".into();
            svc.endpoints[0].mesh = true;
            let order = super::compile(crate::state::proto::ProxyState {
                services: vec![svc],
                ..Default::default()
            });
            let (_tx, rx) = tokio::sync::watch::channel(order);
            std::mem::forget(_tx);
            let a = super::start(
                rx,
                "10.96.0.60:80",
                "10.0.0.1:1",
                Some(super::svids(ca, "order").await),
            )
            .await;
            let outbound = a.bound.outbound;
            std::mem::forget((a, b));
            outbound
        });
        (runtime, outbound)
    })
    .1
}

/// Whether `buf` holds a whole HTTP/1 response (by its `content-length`, or the last chunk).
fn response_complete(buf: &[u8]) -> bool {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
    let body = &buf[end + 4..];
    if let Some(n) = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok())
    {
        return body.len() >= n;
    }
    head.contains("transfer-encoding: chunked") && body.ends_with(b"0\r\n\r\n")
}

/// The HTTP/1 request path: the bytes as what an app sends on a connection to a service,
/// through its sidecar's outbound handler, over mutual TLS to the destination's inbound
/// handler and its app; whether a 2xx came back. The connection is read until a whole response
/// came; when nothing more comes for a moment (the request is not complete), the app's side
/// is closed for writing and the rest read until the proxy closes.
pub fn http1(data: &[u8]) -> bool {
    use std::io::{Read, Write};
    let addr = http_pair();
    let Ok(mut c) = std::net::TcpStream::connect(addr) else {
        return false;
    };
    let _ = c.set_read_timeout(Some(Duration::from_millis(50)));
    let _ = c.write_all(data);
    let mut answer = Vec::new();
    let mut chunk = [0u8; 4096];
    let mut half_closed = false;
    loop {
        match c.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => {
                answer.extend_from_slice(&chunk[..n]);
                if response_complete(&answer) {
                    break;
                }
            }
            Err(e)
                if !half_closed
                    && matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
            {
                half_closed = true;
                let _ = c.shutdown(std::net::Shutdown::Write);
                let _ = c.set_read_timeout(Some(Duration::from_secs(5)));
            }
            Err(_) => break,
        }
    }
    answer.starts_with(b"HTTP/1.1 2") || answer.starts_with(b"HTTP/1.0 2")
}
