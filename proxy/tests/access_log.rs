//! Access logs as the state asks for them (Telemetry `accessLogging`, resolved by pilot): one
//! JSON line per request on each side, with Istio's keys and what explains the outcome (the
//! peers' identities, the trace and request ids, the policy that denied it).

#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use mesh_proxy::state::{State, proto};
use mesh_proxy::testing;
use serde_json::Value;
use tokio::net::TcpStream;

use common::*;

/// `state` with an access log to `path`, for the client side, the server side, or both.
fn with_log(state: &State, path: &Path, client: bool, server: bool, text: bool) -> Arc<State> {
    let mut source = state.source.clone();
    source.telemetry = Some(proto::Telemetry {
        access_logs: vec![proto::AccessLog {
            provider: "envoy".into(),
            path: path.display().to_string(),
            text,
            client,
            server,
        }],
        tracing: None,
    });
    Arc::new(State::compile(source).unwrap())
}

/// The lines of `path` once it has `n`, within a deadline.
async fn lines(path: &Path, n: usize) -> Vec<String> {
    let read = || {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        std::future::ready(text.lines().map(str::to_string).collect::<Vec<_>>())
    };
    let got = testing::poll_until(Duration::from_secs(10), read, |l: &Vec<String>| {
        l.len() >= n
    })
    .await;
    assert!(
        got.len() >= n,
        "{} has {} lines, want {n}: {got:?}",
        path.display(),
        got.len()
    );
    got
}

async fn send(addr: std::net::SocketAddr, traceparent: &str) -> (StatusCode, String) {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::builder()
        .uri("/orders/7?verbose=1")
        .header("host", "shipping")
        .header("user-agent", "curl/8.5")
        .header("traceparent", traceparent)
        .body(Full::new(Bytes::from_static(b"hello")))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    let status = resp.status();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

#[tokio::test]
async fn each_side_writes_one_json_line_per_request_with_istios_fields() {
    let dir = tempfile::tempdir().unwrap();
    let (a_log, b_log) = (dir.path().join("a.log"), dir.path().join("b.log"));
    let p = pair(
        http_app().await,
        proto::Protocol::Http,
        proto::PeerMode::Strict,
        SHIPPING,
        true,
    )
    .await;
    // (Each new state is built before it is sent: a watch's borrow held across its own
    // send_replace would deadlock.)
    let a_new = with_log(&p.a_state.borrow(), &a_log, true, false, false);
    p.a_state.send_replace(a_new);
    let b_new = with_log(&p.b_state.borrow(), &b_log, false, true, false);
    p.b_state.send_replace(b_new);
    let traceparent = format!("00-{TRACE}-00f067aa0ba902b7-01");
    let (status, body) = send(p.a.bound.outbound, &traceparent).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    let a: Value = serde_json::from_str(&lines(&a_log, 1).await[0]).unwrap();
    let b: Value = serde_json::from_str(&lines(&b_log, 1).await[0]).unwrap();
    assert_eq!(a["direction"], "outbound");
    assert_eq!(a["method"], "GET");
    assert_eq!(a["path"], "/orders/7?verbose=1");
    assert_eq!(a["protocol"], "HTTP/1.1");
    assert_eq!(a["authority"], "shipping");
    assert_eq!(a["user_agent"], "curl/8.5");
    assert_eq!(a["response_code"], 200);
    assert_eq!(a["response_flags"], "-");
    assert_eq!(a["response_code_details"], "via_upstream");
    assert_eq!(a["bytes_received"], 5);
    assert_eq!(a["bytes_sent"], body.len());
    assert_eq!(
        a["upstream_cluster"],
        "outbound|80||shipping.default.svc.cluster.local"
    );
    assert_eq!(a["upstream_host"], p.b_inbound.to_string());
    assert_eq!(a["upstream_peer_principal"], SHIPPING);
    assert_eq!(a["trace_id"], TRACE);
    assert!(a["start_time"].as_str().unwrap().ends_with('Z'), "{a}");

    assert_eq!(b["direction"], "inbound");
    assert_eq!(b["response_code"], 200);
    assert_eq!(b["downstream_peer_principal"], ORDER);
    assert_eq!(b["upstream_cluster"], format!("inbound|{}||", p.app_port));
    assert_eq!(b["trace_id"], TRACE);
    // The id the caller's sidecar gave the request is the one the callee logs.
    assert!(
        a["request_id"].as_str().is_some_and(|id| id.len() == 36),
        "{a}"
    );
    assert_eq!(a["request_id"], b["request_id"]);
    assert_eq!(b["bytes_sent"], body.len());
    // The metrics page counts lines dropped per file (none here).
    let metrics = testing::admin_get(p.a.bound.admin, "/stats/prometheus").await;
    assert!(
        metrics.contains(&format!(
            "mesh_proxy_access_log_dropped_total{{path=\"{}\"}} 0",
            a_log.display()
        )),
        "{metrics}"
    );

    // Off again: the next request writes nothing more.
    p.b_state.send_replace(b_state(
        p.app_port,
        proto::Protocol::Http,
        proto::PeerMode::Strict,
    ));
    let (status, _) = send(p.a.bound.outbound, &traceparent).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(lines(&a_log, 2).await.len(), 2);
    assert_eq!(lines(&b_log, 1).await.len(), 1);
}

#[tokio::test]
async fn a_denied_request_names_the_policy_that_denied_it() {
    let dir = tempfile::tempdir().unwrap();
    let (a_log, b_log) = (dir.path().join("a.log"), dir.path().join("b.log"));
    let p = pair(
        http_app().await,
        proto::Protocol::Http,
        proto::PeerMode::Strict,
        SHIPPING,
        true,
    )
    .await;
    let b_logged = with_log(&p.b_state.borrow(), &b_log, false, true, false);
    let mut b = b_logged.source.clone();
    b.authorization_policies = vec![proto::Policy {
        name: "deny-orders".into(),
        namespace: "default".into(),
        spec_json: r#"{"action":"DENY","rules":[{"to":[{"operation":{"paths":["/orders/*"]}}]}]}"#
            .into(),
        dry_run: false,
    }];
    p.b_state.send_replace(Arc::new(State::compile(b).unwrap()));
    let a_new = with_log(&p.a_state.borrow(), &a_log, true, false, true);
    p.a_state.send_replace(a_new);
    let (status, _) = send(
        p.a.bound.outbound,
        &format!("00-{TRACE}-00f067aa0ba902b7-01"),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    let b: Value = serde_json::from_str(&lines(&b_log, 1).await[0]).unwrap();
    assert_eq!(b["response_code"], 403);
    assert_eq!(
        b["response_code_details"],
        "rbac_access_denied_matched_policy"
    );
    assert_eq!(
        b["denied_by"],
        "denied by default/deny-orders rules[0] (DENY)"
    );
    assert_eq!(b["downstream_peer_principal"], ORDER);
    assert_eq!(b["upstream_host"], Value::Null, "nothing reached the app");

    // The caller's side writes Envoy's text line (accessLogEncoding TEXT).
    let a = &lines(&a_log, 1).await[0];
    assert!(a.starts_with('['), "{a}");
    assert!(
        a.contains("\"GET /orders/7?verbose=1 HTTP/1.1\" 403 - via_upstream - \"-\" 5 "),
        "{a}"
    );
    assert!(a.contains(&format!("trace_id={TRACE}")), "{a}");
}
