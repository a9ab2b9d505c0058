//! `GET /tap` on the admin port: the requests a proxy finishes, streamed live as JSON lines to
//! whoever watches (what `meshctl tap` shows), filtered per watcher, with no access log on.

#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use mesh_proxy::state::{State, proto};
use serde_json::Value;
use tokio::net::TcpStream;

use common::*;

async fn get(addr: SocketAddr, path: &str, host: &str) -> Response<Incoming> {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::get(path)
        .header("host", host)
        .body(Empty::<Bytes>::new())
        .unwrap();
    sender.send_request(req).await.unwrap()
}

/// A tap stream: its JSON lines as they come.
struct Tap {
    body: Incoming,
    pending: String,
}

impl Tap {
    /// Starts watching; returns once the proxy has begun (its answer's headers came).
    async fn start(admin: SocketAddr, filter: &str) -> Tap {
        let resp = get(admin, &format!("/tap?{filter}"), "localhost").await;
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.headers()["content-type"], "application/x-ndjson");
        Tap {
            body: resp.into_body(),
            pending: String::new(),
        }
    }

    /// The next entry, within a deadline.
    async fn next(&mut self) -> Value {
        tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                if let Some(at) = self.pending.find('\n') {
                    let line: String = self.pending.drain(..=at).collect();
                    return serde_json::from_str(&line).unwrap();
                }
                let frame = self.body.frame().await.unwrap().unwrap();
                if let Ok(data) = frame.into_data() {
                    self.pending.push_str(std::str::from_utf8(&data).unwrap());
                }
            }
        })
        .await
        .expect("a tapped entry within 10 s")
    }
}

#[tokio::test]
async fn watchers_see_each_request_live_with_their_own_filter() {
    let p = pair(
        http_app().await,
        proto::Protocol::Http,
        proto::PeerMode::Strict,
        SHIPPING,
        true,
    )
    .await;
    let mut b = p.b_state.borrow().source.clone();
    b.authorization_policies = vec![proto::Policy {
        name: "deny-orders".into(),
        namespace: "default".into(),
        spec_json: r#"{"action":"DENY","rules":[{"to":[{"operation":{"paths":["/orders/*"]}}]}]}"#
            .into(),
        dry_run: false,
    }];
    p.b_state.send_replace(Arc::new(State::compile(b).unwrap()));
    // No access log anywhere: the tap needs none. (One process holds both proxies here, so
    // each watcher says the side it wants.)
    assert!(p.a_state.borrow().source.telemetry.is_none());
    let mut sent = Tap::start(p.a.bound.admin, "direction=outbound").await;
    let mut refused = Tap::start(p.b.bound.admin, "direction=inbound&status=4xx").await;

    for path in ["/orders/7", "/healthz"] {
        let resp = get(p.a.bound.outbound, path, "shipping").await;
        let _ = resp.into_body().collect().await;
    }

    let first = sent.next().await;
    assert_eq!(first["method"], "GET");
    assert_eq!(first["path"], "/orders/7");
    assert_eq!(first["response_code"], 403);
    assert_eq!(first["authority"], "shipping");
    assert_eq!(first["upstream_peer_principal"], SHIPPING);
    assert!(first["duration"].as_u64().is_some(), "{first}");
    let second = sent.next().await;
    assert_eq!(second["path"], "/healthz");
    assert_eq!(second["response_code"], 200);

    let denied = refused.next().await;
    assert_eq!(denied["path"], "/orders/7");
    assert_eq!(denied["downstream_peer_principal"], ORDER);
    assert_eq!(
        denied["denied_by"],
        "denied by default/deny-orders rules[0] (DENY)"
    );
    // The 200 did not pass the filter: the next line, if any, is a later request.
    let third = get(p.a.bound.outbound, "/orders/8", "shipping").await;
    let _ = third.into_body().collect().await;
    assert_eq!(refused.next().await["path"], "/orders/8");
}

#[tokio::test]
async fn a_filter_the_proxy_cannot_read_is_refused_by_name() {
    let p = pair(
        http_app().await,
        proto::Protocol::Http,
        proto::PeerMode::Permissive,
        SHIPPING,
        true,
    )
    .await;
    let resp = get(p.a.bound.admin, "/tap?status=5x", "localhost").await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let body = String::from_utf8_lossy(&body);
    assert!(body.contains("status") && body.contains("5xx"), "{body}");
}
