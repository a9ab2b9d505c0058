//! `mesh-echo`'s server: answers every HTTP/1.1 or h2c request with who answered (service,
//! version, pod) and who called (the SPIFFE id the sidecar put in `x-forwarded-client-cert`),
//! chains calls with `/call?url=...` or, for every request, to its `--upstream` URLs (as
//! bookinfo's productpage calls details and reviews), and echoes raw TCP on a second port. Added latency and an
//! error rate are knobs, so tests can make a destination slow or failing on purpose.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Who this server is and how it misbehaves.
#[derive(Clone, Debug, Default)]
pub struct EchoConfig {
    /// Service name reported.
    pub service: String,
    /// Version reported.
    pub version: String,
    /// Pod name reported.
    pub pod: String,
    /// Namespace reported.
    pub namespace: String,
    /// Added to every answer.
    pub latency: Duration,
    /// Share of requests answered 503 (0.0..=1.0).
    pub error_rate: f64,
    /// Fixed answers by request path, served as JSON instead of the echo (a JWKS document
    /// for a RequestAuthentication's `jwksUri`, say).
    pub files: BTreeMap<String, Bytes>,
    /// Answer as Istio's ext-authz sample (`samples/extauthz`, HTTP): a request carrying
    /// `x-ext-authz: allow` is allowed (200, `x-ext-authz-check-result: allowed`), any other
    /// denied (403, `x-ext-authz-check-result: denied`, a body saying why).
    pub ext_authz: bool,
    /// Receive spans as an OpenTelemetry collector's OTLP/gRPC receiver does and list them at
    /// `GET /spans` ([`otlp`]).
    pub otlp: bool,
    /// URLs called for every request, in order, with its routing and tracing headers passed
    /// on; their answers are part of the echo (`calls`), and one that fails makes the answer
    /// 502.
    pub upstreams: Vec<String>,
}

/// The header the ext-authz mode allows on.
pub const EXT_AUTHZ_HEADER: &str = "x-ext-authz";
/// The header the ext-authz mode answers its verdict in.
pub const EXT_AUTHZ_RESULT: &str = "x-ext-authz-check-result";
/// The ext-authz mode's denial.
pub const EXT_AUTHZ_DENIED: &str =
    "denied by ext_authz for not found header `x-ext-authz: allow` in the request";

/// What an echo answer says (the JSON body).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Echo {
    /// Service that answered.
    pub service: String,
    /// Its version.
    pub version: String,
    /// Its pod.
    pub pod: String,
    /// Its namespace.
    pub namespace: String,
    /// `HTTP/1.1` or `HTTP/2`.
    pub protocol: String,
    /// Request method.
    pub method: String,
    /// Request path and query.
    pub path: String,
    /// `Host` / `:authority` as received.
    pub host: String,
    /// The caller's SPIFFE id, when a sidecar vouched for it (mutual TLS).
    pub peer: Option<String>,
    /// Request headers as received (repeated ones joined with commas).
    pub headers: BTreeMap<String, String>,
    /// For `/call`: what the called URL answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub call: Option<CallResult>,
    /// What each `--upstream` answered.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub calls: Vec<CallResult>,
}

impl Echo {
    /// Who answered, down the calls: `productpage/v1(details/v1,reviews/v2(ratings/v1))`; a
    /// failed call shows as `!` and its status.
    pub fn chain(&self) -> String {
        let mut s = format!("{}/{}", self.service, self.version);
        if !self.calls.is_empty() {
            let inner: Vec<String> = self
                .calls
                .iter()
                .map(|c| match &c.echo {
                    Some(e) => e.chain(),
                    None => format!("!{}", c.status.map_or("error".into(), |s| s.to_string())),
                })
                .collect();
            s += &format!("({})", inner.join(","));
        }
        s
    }
}

/// The outcome of a chained call.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct CallResult {
    /// The URL called.
    pub url: String,
    /// HTTP status, when there was an answer.
    pub status: Option<u16>,
    /// The answer's body when it was an echo.
    pub echo: Option<Box<Echo>>,
    /// Why the call failed, or the body when it was not an echo.
    pub error: Option<String>,
}

/// The SPIFFE id in an `x-forwarded-client-cert` value (`By=...;URI=spiffe://...`).
pub fn peer_from_xfcc(value: &str) -> Option<String> {
    value
        .split(';')
        .filter_map(|part| part.trim().strip_prefix("URI="))
        .map(|uri| uri.trim_matches('"').to_string())
        .find(|uri| !uri.is_empty())
}

type Client = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    Full<Bytes>,
>;

struct Server {
    config: EchoConfig,
    client: Client,
    /// The spans received in OTLP mode.
    spans: std::sync::Mutex<Vec<otlp::Span>>,
    /// Requests answered, for the application's own metrics (`GET /metrics`).
    answered: std::sync::atomic::AtomicU64,
}

/// Serves HTTP (HTTP/1.1 and h2c on the same port) on `http` and, when given, the TCP echo on
/// `tcp`, until the process ends.
pub async fn serve(
    config: EchoConfig,
    http: TcpListener,
    tcp: Option<TcpListener>,
    grpc: Option<TcpListener>,
) {
    if let Some(grpc) = grpc {
        tokio::spawn(crate::ws_grpc::serve_grpc(config.clone(), grpc));
    }
    let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .build(hyper_util::client::legacy::connect::HttpConnector::new());
    let server = Arc::new(Server {
        config,
        client,
        spans: std::sync::Mutex::default(),
        answered: std::sync::atomic::AtomicU64::new(0),
    });
    if let Some(tcp) = tcp {
        let greeting = format!(
            "service={} version={} pod={}\n",
            server.config.service, server.config.version, server.config.pod
        );
        tokio::spawn(serve_tcp(tcp, greeting));
    }
    loop {
        let Ok((conn, peer)) = http.accept().await else {
            continue;
        };
        let _ = conn.set_nodelay(true);
        let server = server.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let server = server.clone();
                async move { Ok::<_, Infallible>(server.handle(req, peer).await) }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection_with_upgrades(TokioIo::new(conn), service)
                .await;
        });
    }
}

/// TCP echo: a greeting line saying who answers, then every byte read is written back.
async fn serve_tcp(listener: TcpListener, greeting: String) {
    loop {
        let Ok((mut conn, _)) = listener.accept().await else {
            continue;
        };
        let greeting = greeting.clone();
        tokio::spawn(async move {
            if conn.write_all(greeting.as_bytes()).await.is_err() {
                return;
            }
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                match conn.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        if conn.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                }
            }
        });
    }
}

impl Server {
    async fn handle(&self, req: Request<Incoming>, _peer: SocketAddr) -> Response<Full<Bytes>> {
        if !self.config.latency.is_zero() {
            tokio::time::sleep(self.config.latency).await;
        }
        // As the Gateway API conformance echo: `?delay=1s` answers late.
        if let Some(delay) = query_param(req.uri().query().unwrap_or(""), "delay")
            .and_then(|d| mesh_api::validate::parse_duration(&d).ok())
        {
            tokio::time::sleep(delay.min(Duration::from_secs(30))).await;
        }
        if self.config.error_rate > 0.0 && fastrand::f64() < self.config.error_rate {
            return text(StatusCode::SERVICE_UNAVAILABLE, "injected error\n");
        }
        if self.config.otlp {
            return self.otlp(req).await;
        }
        if self.config.ext_authz {
            let allowed = req
                .headers()
                .get(EXT_AUTHZ_HEADER)
                .is_some_and(|v| v.as_bytes() == b"allow");
            let (status, verdict, body) = if allowed {
                (StatusCode::OK, "allowed", "")
            } else {
                (StatusCode::FORBIDDEN, "denied", EXT_AUTHZ_DENIED)
            };
            let mut resp = text(status, body);
            resp.headers_mut()
                .insert(EXT_AUTHZ_RESULT, http::HeaderValue::from_static(verdict));
            return resp;
        }
        if req.uri().path() == "/metrics" && req.method() == http::Method::GET {
            return self.metrics();
        }
        self.answered
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if let Some(body) = self.config.files.get(req.uri().path()) {
            return Response::builder()
                .header(http::header::CONTENT_TYPE, "application/json")
                .body(Full::new(body.clone()))
                .unwrap_or_default();
        }
        let mut echo = self.describe(&req);
        if crate::ws_grpc::is_websocket(&req) {
            let greeting = serde_json::to_string(&echo).unwrap_or_default();
            return crate::ws_grpc::accept_websocket(req, greeting);
        }
        if req.uri().path() == "/call" {
            let Some(url) = query_param(req.uri().query().unwrap_or(""), "url") else {
                return text(StatusCode::BAD_REQUEST, "/call needs ?url=http://...\n");
            };
            echo.call = Some(self.call(&url, &req).await);
        } else {
            for url in &self.config.upstreams {
                echo.calls.push(self.call(url, &req).await);
            }
        }
        let failed = echo
            .calls
            .iter()
            .any(|c| c.echo.is_none() || c.status.is_none_or(|s| !(200..300).contains(&s)));
        if failed {
            let _ = req.into_body().collect().await;
            return json(StatusCode::BAD_GATEWAY, &echo);
        }
        // As the Gateway API conformance echo: `X-Echo-Set-Header: Name:value,Other:value`
        // sets those response headers.
        let set: Vec<(String, String)> = req
            .headers()
            .get_all("x-echo-set-header")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|kv| kv.split_once(':'))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect();
        // Drain the request body so keep-alive connections stay usable.
        let _ = req.into_body().collect().await;
        let mut resp = json(StatusCode::OK, &echo);
        for (k, v) in set {
            if let (Ok(k), Ok(v)) = (
                http::HeaderName::from_bytes(k.as_bytes()),
                http::HeaderValue::from_str(&v),
            ) {
                resp.headers_mut().append(k, v);
            }
        }
        resp
    }

    /// OTLP mode: `TraceService/Export` keeps the spans (answered in gRPC's terms, the status
    /// in the headers), `GET /spans` lists them.
    /// The application's own metrics in Prometheus's text format, as an application with a
    /// `prometheus.io/port` annotation serves them (the sidecar merges them into its page).
    fn metrics(&self) -> Response<Full<Bytes>> {
        let body = format!(
            "# HELP mesh_echo_requests_total Requests this echo server answered.\n\
             # TYPE mesh_echo_requests_total counter\n\
             mesh_echo_requests_total{{service=\"{}\",version=\"{}\"}} {}\n",
            self.config.service,
            self.config.version,
            self.answered.load(std::sync::atomic::Ordering::Relaxed)
        );
        let mut resp = Response::new(Full::new(Bytes::from(body)));
        resp.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        );
        resp
    }

    async fn otlp(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        if req.uri().path() == "/spans" {
            let spans = self.spans.lock().map(|s| s.clone()).unwrap_or_default();
            return json(StatusCode::OK, &spans);
        }
        let status = if req.uri().path() != otlp::EXPORT_PATH {
            "12"
        } else {
            match req.into_body().collect().await {
                Ok(body) => match otlp::spans(&body.to_bytes()) {
                    Some(got) => {
                        if let Ok(mut spans) = self.spans.lock() {
                            spans.extend(got);
                        }
                        "0"
                    }
                    None => "3",
                },
                Err(_) => "3",
            }
        };
        // An empty ExportTraceServiceResponse, framed.
        Response::builder()
            .header(http::header::CONTENT_TYPE, "application/grpc")
            .header("grpc-status", status)
            .body(Full::new(Bytes::from_static(&[0, 0, 0, 0, 0])))
            .unwrap_or_default()
    }

    fn describe<B>(&self, req: &Request<B>) -> Echo {
        // A header sent several times reads as its values joined with commas, as HTTP folds
        // them.
        let mut headers: BTreeMap<String, String> = BTreeMap::new();
        for (k, v) in req.headers() {
            let Ok(v) = v.to_str() else { continue };
            headers
                .entry(k.as_str().to_string())
                .and_modify(|e| {
                    e.push(',');
                    e.push_str(v);
                })
                .or_insert_with(|| v.to_string());
        }
        // HTTP/1.1's Host header is the authority asked for (a proxy may send the target in
        // absolute form); HTTP/2 has only `:authority`.
        let host = headers
            .get("host")
            .cloned()
            .or_else(|| req.uri().authority().map(|a| a.to_string()))
            .unwrap_or_default();
        Echo {
            service: self.config.service.clone(),
            version: self.config.version.clone(),
            pod: self.config.pod.clone(),
            namespace: self.config.namespace.clone(),
            protocol: match req.version() {
                http::Version::HTTP_2 => "HTTP/2",
                http::Version::HTTP_10 => "HTTP/1.0",
                _ => "HTTP/1.1",
            }
            .to_string(),
            method: req.method().to_string(),
            path: req
                .uri()
                .path_and_query()
                .map(|p| p.to_string())
                .unwrap_or_default(),
            host,
            peer: headers
                .get("x-forwarded-client-cert")
                .and_then(|v| peer_from_xfcc(v)),
            headers,
            call: None,
            calls: Vec::new(),
        }
    }

    /// Calls `url`, passing on the request's routing and tracing headers.
    async fn call<B>(&self, url: &str, incoming: &Request<B>) -> CallResult {
        let mut result = CallResult {
            url: url.to_string(),
            ..CallResult::default()
        };
        let mut builder = Request::get(url);
        for (name, value) in incoming.headers() {
            let n = name.as_str();
            if n.starts_with("x-") && n != "x-forwarded-client-cert" && n != "x-forwarded-for"
                || n == "traceparent"
                || n == "end-user"
            {
                builder = builder.header(name, value);
            }
        }
        let req = match builder.body(Full::new(Bytes::new())) {
            Ok(r) => r,
            Err(e) => {
                result.error = Some(format!("bad url: {e}"));
                return result;
            }
        };
        match tokio::time::timeout(Duration::from_secs(10), self.client.request(req)).await {
            Err(_) => result.error = Some("timed out after 10 s".into()),
            Ok(Err(e)) => result.error = Some(error_chain(&e)),
            Ok(Ok(resp)) => {
                result.status = Some(resp.status().as_u16());
                match resp.into_body().collect().await {
                    Err(e) => result.error = Some(format!("reading the answer: {e}")),
                    Ok(body) => {
                        let bytes = body.to_bytes();
                        match serde_json::from_slice::<Echo>(&bytes) {
                            Ok(e) => result.echo = Some(Box::new(e)),
                            Err(_) => {
                                result.error = Some(String::from_utf8_lossy(&bytes).into_owned())
                            }
                        }
                    }
                }
            }
        }
        result
    }
}

/// An error and its causes on one line.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        source = cause.source();
    }
    s
}

fn query_param(query: &str, name: &str) -> Option<String> {
    form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *resp.status_mut() = status;
    resp
}

fn json<T: Serialize>(status: StatusCode, value: &T) -> Response<Full<Bytes>> {
    let body = serde_json::to_vec(value).unwrap_or_default();
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    resp
}

/// Connects a TCP client (used by tests and `mesh-echo tcp`): returns the greeting line.
pub async fn tcp_greeting(stream: &mut TcpStream) -> std::io::Result<String> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while stream.read(&mut byte).await? == 1 {
        if byte[0] == b'\n' {
            break;
        }
        line.push(byte[0]);
    }
    Ok(String::from_utf8_lossy(&line).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_is_read_from_xfcc() {
        assert_eq!(
            peer_from_xfcc("By=spiffe://cluster.local/ns/default/sa/shipping;URI=spiffe://cluster.local/ns/default/sa/order").as_deref(),
            Some("spiffe://cluster.local/ns/default/sa/order")
        );
        assert_eq!(peer_from_xfcc("By=x"), None);
    }

    #[test]
    fn query_param_is_decoded() {
        assert_eq!(
            query_param("a=1&url=http%3A%2F%2Fx%3A8080%2F", "url").as_deref(),
            Some("http://x:8080/")
        );
    }
}

/// The spans an OTLP/gRPC `Export` call carries, as mesh-echo's OTLP mode lists them.
pub mod otlp {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    use prost::Message;
    use serde::{Deserialize, Serialize};
    use std::collections::BTreeMap;

    /// The gRPC method spans are exported with.
    pub const EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

    /// One span: where it came from, its ids as hex, and its attributes as text.
    #[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
    pub struct Span {
        /// Its resource's `service.name`.
        pub service: String,
        /// Its name.
        pub name: String,
        /// OTLP's kind: 2 SERVER, 3 CLIENT.
        pub kind: i32,
        /// Its trace.
        pub trace_id: String,
        /// Its id.
        pub span_id: String,
        /// Its parent's id, empty for a root.
        pub parent_span_id: String,
        /// Its attributes.
        pub attributes: BTreeMap<String, String>,
    }

    /// The spans of one gRPC-framed `ExportTraceServiceRequest`, or `None` when it is not one.
    pub fn spans(framed: &[u8]) -> Option<Vec<Span>> {
        let request = ExportTraceServiceRequest::decode(framed.get(5..)?).ok()?;
        let hex = |b: &[u8]| b.iter().map(|b| format!("{b:02x}")).collect::<String>();
        let text = |v: Option<&Value>| match v {
            Some(Value::StringValue(s)) => s.clone(),
            Some(Value::IntValue(i)) => i.to_string(),
            Some(Value::BoolValue(b)) => b.to_string(),
            Some(other) => format!("{other:?}"),
            None => String::new(),
        };
        let mut out = Vec::new();
        for rs in request.resource_spans {
            let attrs = rs.resource.map(|r| r.attributes).unwrap_or_default();
            let service = attrs
                .iter()
                .find(|a| a.key == "service.name")
                .map(|a| text(a.value.as_ref().and_then(|v| v.value.as_ref())))
                .unwrap_or_default();
            for span in rs.scope_spans.into_iter().flat_map(|s| s.spans) {
                out.push(Span {
                    service: service.clone(),
                    name: span.name,
                    kind: span.kind,
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent_span_id: hex(&span.parent_span_id),
                    attributes: span
                        .attributes
                        .iter()
                        .map(|a| {
                            (
                                a.key.clone(),
                                text(a.value.as_ref().and_then(|v| v.value.as_ref())),
                            )
                        })
                        .collect(),
                });
            }
        }
        Some(out)
    }
}
