//! An OTLP/gRPC trace receiver, as an OpenTelemetry collector's `otlp` receiver: it answers
//! `TraceService/Export` calls over HTTP/2 and keeps the spans it was sent, with the service
//! name of the resource they came from.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use prost::Message;
use tokio::net::TcpListener;

/// One span as the receiver got it.
#[derive(Clone, Debug, Default)]
pub struct ReceivedSpan {
    /// The `service.name` of its resource.
    pub service: String,
    /// Its name (the operation).
    pub name: String,
    /// OTLP's span kind (2 SERVER, 3 CLIENT).
    pub kind: i32,
    /// Its trace, as lower-case hex.
    pub trace_id: String,
    /// Its id, as lower-case hex.
    pub span_id: String,
    /// Its parent's id, as lower-case hex (empty for a root).
    pub parent_span_id: String,
    /// Its attributes, as text.
    pub attributes: BTreeMap<String, String>,
    /// OTLP's status code (2 ERROR).
    pub status: i32,
}

/// OTLP's SERVER span kind.
pub const SERVER: i32 = 2;
/// OTLP's CLIENT span kind.
pub const CLIENT: i32 = 3;

/// A running receiver.
pub struct OtlpReceiver {
    /// Where it listens (HTTP/2, plaintext).
    pub addr: SocketAddr,
    spans: Arc<Mutex<Vec<ReceivedSpan>>>,
    /// Export calls answered.
    calls: Arc<Mutex<usize>>,
}

impl OtlpReceiver {
    /// The spans received so far.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.spans.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Export calls answered so far.
    pub fn calls(&self) -> usize {
        self.calls.lock().map(|c| *c).unwrap_or(0)
    }

    /// The spans once there are at least `n`, or what there is at `deadline`.
    pub async fn wait_for(&self, n: usize, deadline: Duration) -> Vec<ReceivedSpan> {
        super::poll_until(
            deadline,
            || std::future::ready(self.spans()),
            |s: &Vec<ReceivedSpan>| s.len() >= n,
        )
        .await
    }
}

/// Starts a receiver on 127.0.0.1.
pub async fn start() -> OtlpReceiver {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let receiver = OtlpReceiver {
        addr: listener.local_addr().unwrap(),
        spans: Arc::default(),
        calls: Arc::default(),
    };
    let (spans, calls) = (receiver.spans.clone(), receiver.calls.clone());
    tokio::spawn(async move {
        loop {
            let Ok((conn, _)) = listener.accept().await else {
                continue;
            };
            let (spans, calls) = (spans.clone(), calls.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    let (spans, calls) = (spans.clone(), calls.clone());
                    async move { Ok::<_, Infallible>(export(req, &spans, &calls).await) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .http2_only()
                    .serve_connection(TokioIo::new(conn), svc)
                    .await;
            });
        }
    });
    receiver
}

fn grpc_answer(status: u8, message: &[u8]) -> Response<Full<Bytes>> {
    let mut frame = vec![0];
    frame.extend_from_slice(&u32::try_from(message.len()).unwrap_or(0).to_be_bytes());
    frame.extend_from_slice(message);
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/grpc")
        .header("grpc-status", status.to_string())
        .body(Full::new(Bytes::from(frame)))
        .unwrap()
}

async fn export(
    req: Request<hyper::body::Incoming>,
    spans: &Mutex<Vec<ReceivedSpan>>,
    calls: &Mutex<usize>,
) -> Response<Full<Bytes>> {
    const UNIMPLEMENTED: u8 = 12;
    const INVALID_ARGUMENT: u8 = 3;
    if req.uri().path() != crate::telemetry::trace::EXPORT_PATH {
        return grpc_answer(UNIMPLEMENTED, &[]);
    }
    let Ok(body) = req.into_body().collect().await else {
        return grpc_answer(INVALID_ARGUMENT, &[]);
    };
    let body = body.to_bytes();
    let Some(message) = body.get(5..) else {
        return grpc_answer(INVALID_ARGUMENT, &[]);
    };
    let Ok(request) = ExportTraceServiceRequest::decode(message) else {
        return grpc_answer(INVALID_ARGUMENT, &[]);
    };
    let mut got = Vec::new();
    for rs in request.resource_spans {
        let service = rs
            .resource
            .as_ref()
            .and_then(|r| r.attributes.iter().find(|a| a.key == "service.name"))
            .map(text)
            .unwrap_or_default();
        for span in rs.scope_spans.into_iter().flat_map(|s| s.spans) {
            got.push(ReceivedSpan {
                service: service.clone(),
                name: span.name,
                kind: span.kind,
                trace_id: hex(&span.trace_id),
                span_id: hex(&span.span_id),
                parent_span_id: hex(&span.parent_span_id),
                attributes: span
                    .attributes
                    .iter()
                    .map(|a| (a.key.clone(), text(a)))
                    .collect(),
                status: span.status.map_or(0, |s| s.code),
            });
        }
    }
    if let Ok(mut s) = spans.lock() {
        s.extend(got);
    }
    if let Ok(mut c) = calls.lock() {
        *c += 1;
    }
    grpc_answer(0, &ExportTraceServiceResponse::default().encode_to_vec())
}

fn text(kv: &KeyValue) -> String {
    match kv.value.as_ref().and_then(|v: &AnyValue| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
