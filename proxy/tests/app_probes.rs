//! Application probes through the proxy (what the injector sets up so kubelet's plaintext
//! probes work under STRICT mTLS): `/app-health/...` on the readiness port answers with what
//! the application answers to its original probe, and `mesh-proxy wait` returns once the
//! proxy is ready.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use mesh_proxy::admin::AppProbers;
use mesh_proxy::state::{State, proto};
use mesh_proxy::testing;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// An app: `/healthz` 200, `/ready` 200 only with `x-probe: kubelet`, else 503.
async fn app() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (c, _) = l.accept().await.unwrap();
            tokio::spawn(async move {
                let svc =
                    hyper::service::service_fn(|req: Request<hyper::body::Incoming>| async move {
                        let ok = match req.uri().path() {
                            "/healthz" => true,
                            "/ready" => {
                                req.headers().get("x-probe").is_some_and(|v| v == "kubelet")
                            }
                            _ => false,
                        };
                        let mut r = Response::new(Full::new(Bytes::new()));
                        if !ok {
                            *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                        }
                        Ok::<_, Infallible>(r)
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(c), svc)
                    .await;
            });
        }
    });
    addr
}

async fn status(addr: SocketAddr, path: &str) -> StatusCode {
    testing::http1(addr, hyper::Method::GET, path, "kubelet", b"")
        .await
        .0
}

#[tokio::test]
async fn kubelets_probes_reach_the_app_through_the_readiness_port() {
    let app = app().await;
    let closed = {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap().port()
    };
    let json = serde_json::json!({
        "/app-health/shop/livez": {"httpGet": {"path": "/healthz", "port": app.port()}, "timeoutSeconds": 1},
        "/app-health/shop/readyz": {"httpGet": {"path": "/ready", "port": app.port(), "httpHeaders": [{"name": "x-probe", "value": "kubelet"}]}},
        "/app-health/shop/startupz": {"httpGet": {"path": "/missing", "port": app.port()}},
        "/app-health/gone/livez": {"httpGet": {"path": "/", "port": closed}},
    });
    let probers = AppProbers::parse(&json.to_string()).unwrap();
    let state = Arc::new(State::compile(proto::ProxyState::default()).unwrap());
    let (_tx, rx) = watch::channel(state);
    let proxy = testing::start(rx, "10.0.0.1:1", "10.0.0.1:1", None).await;
    assert!(proxy.set_app_probers(probers));
    let r = proxy.bound.readiness;
    assert_eq!(status(r, "/app-health/shop/livez").await, StatusCode::OK);
    assert_eq!(
        status(r, "/app-health/shop/readyz").await,
        StatusCode::OK,
        "the probe's headers are sent"
    );
    assert_eq!(
        status(r, "/app-health/shop/startupz").await,
        StatusCode::SERVICE_UNAVAILABLE,
        "the app's own answer"
    );
    assert_eq!(
        status(r, "/app-health/gone/livez").await,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(
        status(r, "/app-health/nope/livez").await,
        StatusCode::NOT_FOUND
    );
    assert_eq!(status(r, "/healthz/ready").await, StatusCode::OK);

    // `mesh-proxy wait`: at once against a ready proxy; refused in time against nothing.
    let ready = tokio::task::spawn_blocking(move || {
        mesh_proxy::run::wait_ready(r, Duration::from_secs(10))
    })
    .await
    .unwrap();
    assert!(ready.is_ok(), "{ready:?}");
    let nothing = SocketAddr::from(([127, 0, 0, 1], closed));
    let refused = tokio::task::spawn_blocking(move || {
        mesh_proxy::run::wait_ready(nothing, Duration::from_millis(600))
    })
    .await
    .unwrap();
    assert!(refused.is_err());
}

#[test]
fn probers_that_cannot_be_asked_are_refused_by_name() {
    let https =
        r#"{"/app-health/a/livez": {"httpGet": {"path": "/", "port": 8443, "scheme": "HTTPS"}}}"#;
    let e = AppProbers::parse(https).unwrap_err();
    assert!(
        e.contains("/app-health/a/livez") && e.contains("only HTTP"),
        "{e}"
    );
    let named = r#"{"/app-health/a/livez": {"httpGet": {"path": "/", "port": "http"}}}"#;
    assert!(
        AppProbers::parse(named)
            .unwrap_err()
            .contains("not a port number")
    );
    assert!(AppProbers::parse("[]").is_err());
}
