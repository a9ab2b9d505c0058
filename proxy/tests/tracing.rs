//! Tracing as the state asks for it (Telemetry `tracing` and the mesh's opentelemetry provider,
//! resolved by pilot): a span per hop on each side, exported over OTLP/gRPC through the mesh to
//! an in-process receiver, linked parent to child across two proxies, with the context passed on
//! to the app in the forms it came in (W3C, B3 single, B3 multi) and the caller's sampling
//! decision kept.

#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use mesh_proxy::state::{State, proto};
use mesh_proxy::testing::{self, otlp};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use common::*;

const COLLECTOR: &str = "otel-collector.observability.svc.cluster.local";
const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";
/// How long spans may take to arrive (the batch processor sends every second).
const SPANS_DEADLINE: Duration = Duration::from_secs(15);

/// An app answering with the trace headers it was given, as JSON.
async fn trace_app() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (c, _) = l.accept().await.unwrap();
            tokio::spawn(async move {
                let svc =
                    hyper::service::service_fn(|req: Request<hyper::body::Incoming>| async move {
                        let seen: BTreeMap<String, String> = req
                            .headers()
                            .iter()
                            .filter(|(k, _)| {
                                let k = k.as_str();
                                k.starts_with("x-b3-")
                                    || ["traceparent", "tracestate", "b3", "x-request-id"]
                                        .contains(&k)
                            })
                            .map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_string()))
                            .collect();
                        let body = serde_json::to_string(&seen).unwrap();
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body))))
                    });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(c), svc)
                    .await;
            });
        }
    });
    addr
}

/// `state` with the collector's service and tracing of the given side(s).
fn traced(
    state: &watch::Sender<Arc<State>>,
    receiver: SocketAddr,
    sampling: f64,
    client: bool,
    server: bool,
    tags: Vec<proto::CustomTag>,
) {
    let mut source = state.borrow().source.clone();
    source.services.push(
        testing::service(COLLECTOR, "10.96.0.90", 4317, "grpc-otlp")
            .protocol(proto::Protocol::Grpc)
            .endpoint(receiver, &[])
            .build(),
    );
    source.telemetry = Some(proto::Telemetry {
        access_logs: Vec::new(),
        tracing: Some(proto::Tracing {
            provider: "otel".into(),
            sampling,
            host: COLLECTOR.into(),
            port: 4317,
            client,
            server,
            reporting_disabled: false,
            custom_tags: tags,
            max_tag_length: 0,
        }),
    });
    state.send_replace(Arc::new(State::compile(source).unwrap()));
}

/// Sends a request with `headers` through A's outbound listener; the trace headers the app saw.
async fn send(addr: SocketAddr, headers: &[(&str, &str)]) -> BTreeMap<String, String> {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut req = Request::builder()
        .uri("/orders/7")
        .header("host", "shipping");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = sender
        .send_request(req.body(Full::new(Bytes::new())).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice(&body).unwrap()
}

/// The trace and parent ids of a `traceparent` header, and its sampled flag.
fn traceparent(v: &str) -> (String, String, bool) {
    let parts: Vec<&str> = v.split('-').collect();
    assert_eq!(parts.len(), 4, "{v}");
    (parts[1].into(), parts[2].into(), parts[3] == "01")
}

async fn traced_pair(receiver: &otlp::OtlpReceiver, sampling: f64) -> Pair {
    let p = pair(
        trace_app().await,
        proto::Protocol::Http,
        proto::PeerMode::Strict,
        SHIPPING,
        true,
    )
    .await;
    let team = proto::CustomTag {
        name: "team".into(),
        value: "orders".into(),
        ..Default::default()
    };
    let user = proto::CustomTag {
        name: "user".into(),
        header: "x-user".into(),
        default_value: "anonymous".into(),
        ..Default::default()
    };
    traced(
        &p.a_state,
        receiver.addr,
        sampling,
        true,
        false,
        vec![team, user],
    );
    traced(&p.b_state, receiver.addr, sampling, false, true, Vec::new());
    p
}

#[tokio::test]
async fn each_hop_exports_a_span_per_side_linked_parent_to_child() {
    let receiver = otlp::start().await;
    let p = traced_pair(&receiver, 100.0).await;
    let tp = format!("00-{TRACE}-{CALLER_SPAN}-01");
    let seen = send(
        p.a.bound.outbound,
        &[
            ("traceparent", &tp),
            ("tracestate", "congo=t61rcWkgMzE"),
            ("x-user", "ann"),
        ],
    )
    .await;

    let spans = receiver.wait_for(2, SPANS_DEADLINE).await;
    assert_eq!(spans.len(), 2, "{spans:#?}");
    let client = spans
        .iter()
        .find(|s| s.kind == otlp::CLIENT)
        .expect("a CLIENT span");
    let server = spans
        .iter()
        .find(|s| s.kind == otlp::SERVER)
        .expect("a SERVER span");
    // One trace: the app's caller → A's CLIENT span → B's SERVER span → the app.
    assert_eq!(client.trace_id, TRACE);
    assert_eq!(server.trace_id, TRACE);
    assert_eq!(client.parent_span_id, CALLER_SPAN);
    assert_eq!(server.parent_span_id, client.span_id);
    let (trace, parent, sampled) = traceparent(&seen["traceparent"]);
    assert_eq!(
        (trace.as_str(), parent.as_str(), sampled),
        (TRACE, server.span_id.as_str(), true)
    );
    assert_eq!(
        seen["tracestate"], "congo=t61rcWkgMzE",
        "tracestate is passed on"
    );
    // Istio's service names and Envoy's tags.
    assert_eq!(client.service, "order.default");
    assert_eq!(server.service, "shipping.default");
    assert_eq!(client.name, "shipping:80/*");
    let a = &client.attributes;
    assert_eq!(a["http.method"], "GET");
    assert_eq!(a["http.url"], "http://shipping/orders/7");
    assert_eq!(a["http.status_code"], "200");
    assert_eq!(a["response_flags"], "-");
    assert_eq!(
        a["upstream_cluster"],
        "outbound|80||shipping.default.svc.cluster.local"
    );
    assert_eq!(a["istio.canonical_service"], "order");
    assert_eq!(a["team"], "orders", "literal custom tag");
    assert_eq!(a["user"], "ann", "header custom tag");
    let b = &server.attributes;
    assert_eq!(b["upstream_cluster"], format!("inbound|{}||", p.app_port));
    assert_eq!(b["http.status_code"], "200");
    assert_eq!(
        a["guid:x-request-id"], b["guid:x-request-id"],
        "both sides tag the request id the caller's sidecar gave"
    );
    assert_eq!(seen["x-request-id"], a["guid:x-request-id"]);
    assert!(!b.contains_key("team"), "B's Telemetry has no custom tags");

    // A request without context starts a trace at A, with both W3C and B3 headers.
    let seen = send(p.a.bound.outbound, &[]).await;
    let spans = receiver.wait_for(4, SPANS_DEADLINE).await;
    let (trace, parent, sampled) = traceparent(&seen["traceparent"]);
    assert!(sampled);
    let root = spans
        .iter()
        .find(|s| s.trace_id == trace && s.kind == otlp::CLIENT)
        .expect("the new trace's CLIENT span");
    assert_eq!(root.parent_span_id, "", "A's span is the root");
    assert_eq!(
        root.attributes["user"], "anonymous",
        "a header tag's default"
    );
    let callee = spans
        .iter()
        .find(|s| s.trace_id == trace && s.kind == otlp::SERVER)
        .expect("the new trace's SERVER span");
    assert_eq!(callee.parent_span_id, root.span_id);
    assert_eq!(parent, callee.span_id);
    assert_eq!(seen["x-b3-traceid"], trace);
    assert_eq!(seen["x-b3-spanid"], callee.span_id);
    assert_eq!(seen["x-b3-parentspanid"], root.span_id);
}

#[tokio::test]
async fn b3_context_is_passed_on_and_the_callers_decision_kept() {
    let receiver = otlp::start().await;
    let p = traced_pair(&receiver, 100.0).await;

    // Not sampled by the caller (B3 single header): passed on unsampled, nothing recorded.
    let unsampled = "a1b2c3d4e5f60718293a4b5c6d7e8f90";
    let seen = send(
        p.a.bound.outbound,
        &[("b3", &format!("{unsampled}-{CALLER_SPAN}-0"))],
    )
    .await;
    let b3: Vec<&str> = seen["b3"].split('-').collect();
    assert_eq!((b3[0], b3[2]), (unsampled, "0"), "{seen:?}");
    assert_ne!(b3[1], CALLER_SPAN, "each hop names its own span");
    assert!(seen["traceparent"].ends_with("-00"), "{seen:?}");

    // Sampled, B3 multi headers.
    let seen = send(
        p.a.bound.outbound,
        &[
            ("x-b3-traceid", TRACE),
            ("x-b3-spanid", CALLER_SPAN),
            ("x-b3-sampled", "1"),
        ],
    )
    .await;
    let spans = receiver.wait_for(2, SPANS_DEADLINE).await;
    assert_eq!(spans.len(), 2, "{spans:#?}");
    assert!(
        spans.iter().all(|s| s.trace_id == TRACE),
        "the unsampled trace left no span: {spans:#?}"
    );
    let client = spans.iter().find(|s| s.kind == otlp::CLIENT).unwrap();
    let server = spans.iter().find(|s| s.kind == otlp::SERVER).unwrap();
    assert_eq!(client.parent_span_id, CALLER_SPAN);
    assert_eq!(server.parent_span_id, client.span_id);
    assert_eq!(seen["x-b3-traceid"], TRACE);
    assert_eq!(seen["x-b3-spanid"], server.span_id);
    assert_eq!(seen["x-b3-parentspanid"], client.span_id);
    assert_eq!(seen["x-b3-sampled"], "1");
}

#[tokio::test]
async fn sampling_zero_records_nothing_but_still_passes_a_context_on() {
    let receiver = otlp::start().await;
    let p = traced_pair(&receiver, 0.0).await;
    for _ in 0..20 {
        let seen = send(p.a.bound.outbound, &[]).await;
        let (_, _, sampled) = traceparent(&seen["traceparent"]);
        assert!(!sampled, "{seen:?}");
        assert_eq!(seen["x-b3-sampled"], "0");
    }
    // A caller's own decision to sample is kept whatever the percentage.
    let tp = format!("00-{TRACE}-{CALLER_SPAN}-01");
    send(p.a.bound.outbound, &[("traceparent", &tp)]).await;
    let spans = receiver.wait_for(2, SPANS_DEADLINE).await;
    assert_eq!(spans.len(), 2, "{spans:#?}");
    assert!(spans.iter().all(|s| s.trace_id == TRACE), "{spans:#?}");
}
