//! Tracing: a span per request on each side a workload's Telemetry asks for (CLIENT for what it
//! sends, SERVER for what it receives), exported over OTLP/gRPC to the `opentelemetry` provider
//! pilot resolved, and the trace context passed on so the next hop's span is this one's child.
//!
//! The context is read from W3C `traceparent` / `tracestate`, else B3's single `b3` header,
//! else B3's `x-b3-*` headers. The request leaves with `traceparent` naming this proxy's span
//! as the parent (its `tracestate` kept), and with whichever B3 form it came with rewritten the
//! same way; a request that starts a trace gets `traceparent` and the `x-b3-*` headers, so an
//! application that passes on either keeps the trace whole.
//!
//! Sampling, as in Istio: a decision the context carries is kept; otherwise the first proxy
//! samples at random with the configured percentage. Headers are passed on for unsampled
//! requests too, with the decision in them, so later hops agree. Spans are recorded with
//! opentelemetry's SDK, batched by its batch processor (a second at most) and sent through the
//! proxy's own outbound path (routes, balancing, mesh mTLS to the collector's sidecar), as
//! Envoy sends them through the provider's cluster.

use std::fmt::Write as _;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::Request;
use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use opentelemetry::trace::{
    Span as _, SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId,
    TraceState, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::transform::common::tonic::ResourceAttributesWithSchema;
use opentelemetry_proto::transform::trace::tonic::group_spans_by_resource_and_scope;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, IdGenerator, RandomIdGenerator, Sampler, SdkTracer,
    SdkTracerProvider, SpanData, SpanExporter,
};
use prost::Message;

use mesh_api::proto::state::v1 as proto;

/// The gRPC method spans are exported with.
pub const EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";
/// Istio's default `maxTagLength`.
const DEFAULT_MAX_TAG_LENGTH: usize = 256;
/// How long the batch processor holds spans before sending them.
const EXPORT_DELAY: Duration = Duration::from_secs(1);
/// How long one export may take.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
static TRACESTATE: HeaderName = HeaderName::from_static("tracestate");
static B3: HeaderName = HeaderName::from_static("b3");
static B3_TRACE_ID: HeaderName = HeaderName::from_static("x-b3-traceid");
static B3_SPAN_ID: HeaderName = HeaderName::from_static("x-b3-spanid");
static B3_PARENT_SPAN_ID: HeaderName = HeaderName::from_static("x-b3-parentspanid");
static B3_SAMPLED: HeaderName = HeaderName::from_static("x-b3-sampled");
static B3_FLAGS: HeaderName = HeaderName::from_static("x-b3-flags");

/// A workload's tracing, as its state asks for it.
#[derive(Debug)]
pub struct Config {
    /// The provider's name, for messages.
    pub provider: String,
    /// The collector's host and port (empty host: spans cannot be sent anywhere).
    pub host: String,
    /// The collector's port.
    pub port: u16,
    /// Percentage of new traces sampled, 0–100.
    pub sampling: f64,
    /// Requests the workload sends (and every request of a gateway) are traced.
    pub client: bool,
    /// Requests the workload receives are traced.
    pub server: bool,
    /// Spans are sent (`disableSpanReporting` turns this off; headers still go on).
    pub reporting: bool,
    /// Tags added to every span.
    tags: Vec<(String, Tag)>,
    /// The longest `http.url` tag.
    max_tag_length: usize,
}

/// Where a custom tag's value comes from.
#[derive(Debug)]
enum Tag {
    /// A fixed value (literals; environment variables, read once).
    Fixed(String),
    /// A request header, or the default when the request has none.
    Header(HeaderName, String),
}

impl Config {
    /// The tracing `t` asks for.
    pub fn compile(t: &proto::Tracing) -> Self {
        let tags = t
            .custom_tags
            .iter()
            .map(|c| {
                let tag = if !c.header.is_empty() {
                    match HeaderName::from_bytes(c.header.as_bytes()) {
                        Ok(h) => Tag::Header(h, c.default_value.clone()),
                        Err(_) => Tag::Fixed(c.default_value.clone()),
                    }
                } else if !c.environment.is_empty() {
                    Tag::Fixed(std::env::var(&c.environment).unwrap_or(c.default_value.clone()))
                } else {
                    Tag::Fixed(c.value.clone())
                };
                (c.name.clone(), tag)
            })
            .collect();
        Config {
            provider: t.provider.clone(),
            host: t.host.clone(),
            port: u16::try_from(t.port).unwrap_or(0),
            sampling: t.sampling.clamp(0.0, 100.0),
            client: t.client,
            server: t.server,
            reporting: !t.reporting_disabled,
            tags,
            max_tag_length: match t.max_tag_length {
                0 => DEFAULT_MAX_TAG_LENGTH,
                n => usize::try_from(n).unwrap_or(DEFAULT_MAX_TAG_LENGTH),
            },
        }
    }
}

/// The trace context a request arrived with.
#[derive(Clone, Debug, PartialEq)]
pub struct Parent {
    /// The trace.
    pub trace_id: TraceId,
    /// The caller's span.
    pub span_id: SpanId,
    /// The caller's decision, when it made one.
    pub sampled: Option<bool>,
    /// W3C `tracestate`, passed on.
    pub state: TraceState,
}

/// Which context headers a request came with.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Forms {
    /// W3C `traceparent`.
    pub w3c: bool,
    /// B3 single header.
    pub b3_single: bool,
    /// B3 multi headers.
    pub b3_multi: bool,
}

/// The context in `h` and the forms it used. A B3 header that carries only a sampling decision
/// gives no parent but its decision.
pub fn extract(h: &HeaderMap) -> (Option<Parent>, Option<bool>, Forms) {
    let text = |n: &HeaderName| h.get(n).and_then(|v| v.to_str().ok()).map(str::trim);
    let forms = Forms {
        w3c: h.contains_key(&TRACEPARENT),
        b3_single: h.contains_key(&B3),
        b3_multi: h.contains_key(&B3_TRACE_ID) || h.contains_key(&B3_SAMPLED),
    };
    if let Some(p) = text(&TRACEPARENT).and_then(traceparent) {
        let state = text(&TRACESTATE)
            .and_then(|s| s.parse::<TraceState>().ok())
            .unwrap_or_default();
        let sampled = p.sampled;
        return (Some(Parent { state, ..p }), sampled, forms);
    }
    if let Some(b3) = text(&B3) {
        let (parent, decision) = b3_single(b3);
        if parent.is_some() || decision.is_some() {
            return (parent, decision, forms);
        }
    }
    let decision = match (text(&B3_FLAGS), text(&B3_SAMPLED)) {
        (Some("1"), _) => Some(true),
        (_, Some("1" | "true")) => Some(true),
        (_, Some("0" | "false")) => Some(false),
        _ => None,
    };
    let parent = match (text(&B3_TRACE_ID), text(&B3_SPAN_ID)) {
        (Some(t), Some(s)) => b3_ids(t, s).map(|(trace_id, span_id)| Parent {
            trace_id,
            span_id,
            sampled: decision,
            state: TraceState::default(),
        }),
        _ => None,
    };
    (parent, decision, forms)
}

/// W3C `traceparent`: `VERSION-TRACEID-SPANID-FLAGS`.
fn traceparent(v: &str) -> Option<Parent> {
    let mut parts = v.split('-');
    let (version, trace, span, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    // Version 00 has exactly four fields; later versions may add more.
    if version.len() != 2 || version == "ff" || (version == "00" && parts.next().is_some()) {
        return None;
    }
    if trace.len() != 32 || span.len() != 16 || flags.len() != 2 {
        return None;
    }
    let trace_id = TraceId::from_hex(trace)
        .ok()
        .filter(|t| *t != TraceId::INVALID)?;
    let span_id = SpanId::from_hex(span)
        .ok()
        .filter(|s| *s != SpanId::INVALID)?;
    let flags = u8::from_str_radix(flags, 16).ok()?;
    Some(Parent {
        trace_id,
        span_id,
        sampled: Some(flags & 1 == 1),
        state: TraceState::default(),
    })
}

/// A B3 trace id (64 or 128 bits) and span id.
fn b3_ids(trace: &str, span: &str) -> Option<(TraceId, SpanId)> {
    if !(trace.len() == 16 || trace.len() == 32) || span.len() != 16 {
        return None;
    }
    let trace_id = TraceId::from_hex(trace)
        .ok()
        .filter(|t| *t != TraceId::INVALID)?;
    let span_id = SpanId::from_hex(span)
        .ok()
        .filter(|s| *s != SpanId::INVALID)?;
    Some((trace_id, span_id))
}

/// B3's single header: `TRACEID-SPANID[-SAMPLING[-PARENTSPANID]]`, or only `SAMPLING`
/// (`0`, `1`, `d` for debug).
fn b3_single(v: &str) -> (Option<Parent>, Option<bool>) {
    let decision = |s: &str| match s {
        "1" | "d" => Some(true),
        "0" => Some(false),
        _ => None,
    };
    let parts: Vec<&str> = v.split('-').collect();
    match parts.as_slice() {
        [only] => (None, decision(only)),
        [trace, span, rest @ ..] => {
            let sampled = rest.first().and_then(|s| decision(s));
            let parent = b3_ids(trace, span).map(|(trace_id, span_id)| Parent {
                trace_id,
                span_id,
                sampled,
                state: TraceState::default(),
            });
            (parent, sampled)
        }
        [] => (None, None),
    }
}

/// Writes the context of span `span_id` of trace `trace_id` into `h`, in the forms it came
/// with (`traceparent` always; both W3C and B3 multi when it came with none).
pub fn inject(
    h: &mut HeaderMap,
    trace_id: TraceId,
    span_id: SpanId,
    parent: Option<SpanId>,
    sampled: bool,
    forms: Forms,
) {
    // Written byte by byte: `format!` cost most of an unsampled request's tracing.
    let flag = if sampled { b'1' } else { b'0' };
    let trace = hex(&trace_id.to_bytes());
    let span = hex(&span_id.to_bytes());
    let mut set = |name: &HeaderName, parts: &[&[u8]]| {
        let value: Vec<u8> = parts.concat();
        if let Ok(v) = HeaderValue::from_bytes(&value) {
            h.insert(name.clone(), v);
        }
    };
    set(&TRACEPARENT, &[b"00-", &trace, b"-", &span, b"-0", &[flag]]);
    if forms.b3_single {
        set(&B3, &[&trace, b"-", &span, b"-", &[flag]]);
    }
    if forms.b3_multi || !(forms.w3c || forms.b3_single) {
        set(&B3_TRACE_ID, &[&trace]);
        set(&B3_SPAN_ID, &[&span]);
        set(&B3_SAMPLED, &[&[flag]]);
        match parent {
            Some(p) => set(&B3_PARENT_SPAN_ID, &[&hex(&p.to_bytes())]),
            None => {
                h.remove(&B3_PARENT_SPAN_ID);
            }
        }
        h.remove(&B3_FLAGS);
    }
}

/// `bytes` as lower-case hex.
fn hex<const N: usize>(bytes: &[u8; N]) -> Vec<u8> {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = Vec::with_capacity(2 * N);
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)]);
        out.push(DIGITS[usize::from(b & 0x0f)]);
    }
    out
}

/// Which side of the exchange a span is.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Side {
    /// A request the workload (or a gateway) sends.
    Client,
    /// A request the workload receives.
    Server,
}

/// A request's span, recorded while the request is under way; ends when dropped (or at
/// [`ActiveSpan::end`]).
#[derive(Debug)]
pub struct ActiveSpan {
    span: opentelemetry_sdk::trace::Span,
}

/// Starts the trace side of `req` arriving from `peer` at `local`: decides whether it is
/// sampled, writes the context the next hop sees into its headers, and returns the span being
/// recorded when it is sampled and reported.
pub fn start<B>(
    config: &Config,
    tracers: Option<&Tracers>,
    req: &mut Request<B>,
    side: Side,
    peer: SocketAddr,
    local: SocketAddr,
) -> Option<ActiveSpan> {
    let (parent, decision, forms) = extract(req.headers());
    let ids = RandomIdGenerator::default();
    let sampled = decision.unwrap_or_else(|| chance(&ids) < config.sampling / 100.0);
    let recorder = tracers
        .filter(|_| sampled)
        .and_then(|t| Some((t, t.tracer(config)?)));
    let Some((tracers, tracer)) = recorder else {
        // Not recorded: a fresh span id all the same, so later hops still get a parent.
        let trace_id = parent
            .as_ref()
            .map_or_else(|| ids.new_trace_id(), |p| p.trace_id);
        inject(
            req.headers_mut(),
            trace_id,
            ids.new_span_id(),
            parent.map(|p| p.span_id),
            sampled,
            forms,
        );
        return None;
    };
    let cx = match &parent {
        Some(p) => Context::new().with_remote_span_context(SpanContext::new(
            p.trace_id,
            p.span_id,
            TraceFlags::SAMPLED,
            true,
            p.state.clone(),
        )),
        None => Context::new(),
    };
    let attributes = request_attributes(config, &tracers.local, req, peer);
    let name = operation_name(req, local);
    let span = tracer
        .span_builder(name)
        .with_kind(match side {
            Side::Client => SpanKind::Client,
            Side::Server => SpanKind::Server,
        })
        .with_attributes(attributes)
        .start_with_context(&tracer, &cx);
    let sc = span.span_context().clone();
    inject(
        req.headers_mut(),
        sc.trace_id(),
        sc.span_id(),
        parent.map(|p| p.span_id),
        true,
        forms,
    );
    Some(ActiveSpan { span })
}

/// A number in [0, 1) from a fresh random id.
fn chance(ids: &RandomIdGenerator) -> f64 {
    let bits = u64::from_be_bytes(ids.new_span_id().to_bytes()) >> 11;
    bits as f64 / (1u64 << 53) as f64
}

/// Envoy's operation name: the host and port the request was for, and `/*`.
fn operation_name<B>(req: &Request<B>, local: SocketAddr) -> String {
    let authority = req
        .headers()
        .get(hyper::header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| req.uri().authority().map(|a| a.as_str()))
        .unwrap_or("");
    let host = match authority.rsplit_once(':') {
        Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) && !h.ends_with(']') => h,
        _ => authority,
    };
    format!("{host}:{}/*", local.port())
}

/// The tags Envoy and Istio put on a request's span when it starts.
fn request_attributes<B>(
    config: &Config,
    w: &Local,
    req: &Request<B>,
    peer: SocketAddr,
) -> Vec<KeyValue> {
    let h = req.headers();
    let text = |name: &str| h.get(name).and_then(|v| v.to_str().ok()).unwrap_or("-");
    let mut url = String::new();
    let host = text("host");
    let _ = write!(
        url,
        "http://{host}{}",
        req.uri().path_and_query().map_or("/", |p| p.as_str())
    );
    if url.len() > config.max_tag_length {
        let mut end = config.max_tag_length;
        while !url.is_char_boundary(end) {
            end -= 1;
        }
        url.truncate(end);
    }
    let protocol = match req.version() {
        hyper::Version::HTTP_2 => "HTTP/2",
        hyper::Version::HTTP_10 => "HTTP/1.0",
        _ => "HTTP/1.1",
    };
    let mut out = vec![
        KeyValue::new("component", "proxy"),
        KeyValue::new("http.method", req.method().to_string()),
        KeyValue::new("http.url", url),
        KeyValue::new("http.protocol", protocol),
        KeyValue::new("user_agent", text("user-agent").to_string()),
        KeyValue::new("guid:x-request-id", text("x-request-id").to_string()),
        KeyValue::new("peer.address", peer.ip().to_string()),
        KeyValue::new("node_id", format!("{}.{}", w.name, w.namespace)),
        KeyValue::new("istio.namespace", w.namespace.clone()),
        KeyValue::new("istio.canonical_service", w.canonical_service.clone()),
        KeyValue::new("istio.canonical_revision", w.canonical_revision.clone()),
    ];
    for (name, tag) in &config.tags {
        let value = match tag {
            Tag::Fixed(v) => v.clone(),
            Tag::Header(header, default) => h
                .get(header)
                .and_then(|v| v.to_str().ok())
                .map_or_else(|| default.clone(), str::to_string),
        };
        out.push(KeyValue::new(name.clone(), value));
    }
    out
}

impl ActiveSpan {
    /// Records the response: its status, Envoy's flags and where the request went.
    pub fn respond(
        &mut self,
        status: u16,
        flags: &str,
        cluster: Option<&str>,
        grpc_status: Option<u8>,
    ) {
        if let Some(g) = grpc_status {
            self.span
                .set_attribute(KeyValue::new("grpc.status_code", i64::from(g)));
        }
        self.span
            .set_attribute(KeyValue::new("http.status_code", i64::from(status)));
        self.span
            .set_attribute(KeyValue::new("response_flags", flags.to_string()));
        if let Some(c) = cluster {
            self.span
                .set_attribute(KeyValue::new("upstream_cluster", c.to_string()));
            self.span
                .set_attribute(KeyValue::new("upstream_cluster.name", c.to_string()));
        }
        // Envoy marks a span failed on a 5xx or a flagged exchange.
        if status >= 500 || flags != "-" {
            self.span.set_attribute(KeyValue::new("error", "true"));
            self.span
                .set_status(Status::error(format!("{status} {flags}")));
        }
    }

    /// Ends the span once the response's body is sent.
    pub fn end(mut self, request_bytes: u64, response_bytes: u64, grpc_status: Option<u8>) {
        let size = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        self.span
            .set_attribute(KeyValue::new("request_size", size(request_bytes)));
        self.span
            .set_attribute(KeyValue::new("response_size", size(response_bytes)));
        if let Some(g) = grpc_status {
            self.span
                .set_attribute(KeyValue::new("grpc.status_code", i64::from(g)));
        }
        self.span.end();
    }

    /// The span's trace and span ids.
    pub fn ids(&self) -> (TraceId, SpanId) {
        let sc = self.span.span_context();
        (sc.trace_id(), sc.span_id())
    }
}

/// Sends one encoded `ExportTraceServiceRequest` to a collector's host and port; the proxy
/// gives one that goes through its own outbound path.
pub type Export = Arc<
    dyn Fn(String, u16, Vec<u8>) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>>
        + Send
        + Sync,
>;

/// The workload a proxy's spans are from.
#[derive(Clone, Debug, Default)]
pub struct Local {
    /// Its name (a Deployment's).
    pub name: String,
    /// Its namespace.
    pub namespace: String,
    /// Istio's canonical service.
    pub canonical_service: String,
    /// Istio's canonical revision.
    pub canonical_revision: String,
}

/// One proxy's span pipeline: opentelemetry's tracer for the collector its state names, kept
/// across states while the collector stays the same.
pub struct Tracers {
    local: Local,
    export: Export,
    current: Mutex<Option<Current>>,
}

struct Current {
    key: (String, String, u16),
    provider: SdkTracerProvider,
    tracer: SdkTracer,
}

impl Tracers {
    /// The pipeline of the proxy serving `local`, sending spans with `export`.
    pub fn new(local: Local, export: Export) -> Self {
        Tracers {
            local,
            export,
            current: Mutex::new(None),
        }
    }

    /// The tracer sending to `config`'s collector: none when spans are not reported, the
    /// collector is unknown or the proxy is not running on a Tokio runtime.
    fn tracer(&self, config: &Config) -> Option<SdkTracer> {
        if !config.reporting || config.host.is_empty() || config.port == 0 {
            return None;
        }
        let key = (config.provider.clone(), config.host.clone(), config.port);
        let mut current = self.current.lock().ok()?;
        if let Some(c) = current.as_ref().filter(|c| c.key == key) {
            return Some(c.tracer.clone());
        }
        let runtime = tokio::runtime::Handle::try_current().ok()?;
        let exporter = MeshExporter {
            export: self.export.clone(),
            runtime,
            host: config.host.clone(),
            port: config.port,
            resource: ResourceAttributesWithSchema::default(),
            last_error: Mutex::new(None),
        };
        let batches = BatchSpanProcessor::builder(exporter)
            .with_batch_config(
                BatchConfigBuilder::default()
                    .with_scheduled_delay(EXPORT_DELAY)
                    .build(),
            )
            .build();
        let w = &self.local;
        // Istio's service name for a workload's spans: `<canonical service>.<namespace>`.
        let resource = Resource::builder_empty()
            .with_service_name(format!("{}.{}", w.canonical_service, w.namespace))
            .with_attributes([
                KeyValue::new("k8s.namespace.name", w.namespace.clone()),
                KeyValue::new("service.version", w.canonical_revision.clone()),
            ])
            .build();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(batches)
            .with_sampler(Sampler::AlwaysOn)
            .with_resource(resource)
            .build();
        let tracer = provider.tracer("mesh-proxy");
        tracing::info!(
            "tracing: spans go to provider {:?} at {}:{}",
            config.provider,
            config.host,
            config.port
        );
        if let Some(old) = current.replace(Current {
            key,
            provider,
            tracer: tracer.clone(),
        }) {
            shut_down(old.provider);
        }
        Some(tracer)
    }
}

impl Drop for Tracers {
    fn drop(&mut self) {
        if let Some(c) = self.current.get_mut().ok().and_then(Option::take) {
            shut_down(c.provider);
        }
    }
}

/// Sends what `provider` holds and stops it, on a thread of its own: shutting down waits for
/// the last export, which runs on the proxy's runtime and must not be blocked by the wait.
fn shut_down(provider: SdkTracerProvider) {
    let _ = std::thread::Builder::new()
        .name("trace-shutdown".into())
        .spawn(move || {
            let _ = provider.shutdown();
        });
}

/// Sends batches of spans as OTLP/gRPC `Export` calls through the proxy's outbound path.
struct MeshExporter {
    export: Export,
    runtime: tokio::runtime::Handle,
    host: String,
    port: u16,
    resource: ResourceAttributesWithSchema,
    /// The last failure logged, so a collector that is down is reported once, not per batch.
    last_error: Mutex<Option<String>>,
}

impl std::fmt::Debug for MeshExporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MeshExporter({}:{})", self.host, self.port)
    }
}

impl MeshExporter {
    fn note(&self, outcome: Result<(), String>) -> OTelSdkResult {
        let mut last = self.last_error.lock().unwrap_or_else(|e| e.into_inner());
        match outcome {
            Ok(()) => {
                if last.take().is_some() {
                    tracing::info!("tracing: spans reach {}:{} again", self.host, self.port);
                }
                Ok(())
            }
            Err(e) => {
                if last.as_deref() != Some(e.as_str()) {
                    tracing::warn!(
                        "tracing: spans not sent to {}:{}: {e}",
                        self.host,
                        self.port
                    );
                    *last = Some(e.clone());
                }
                Err(OTelSdkError::InternalFailure(e))
            }
        }
    }
}

impl SpanExporter for MeshExporter {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let message = ExportTraceServiceRequest {
            resource_spans: group_spans_by_resource_and_scope(batch, &self.resource),
        }
        .encode_to_vec();
        let call = (self.export)(self.host.clone(), self.port, message);
        // The batch processor runs on its own thread; the request goes on the proxy's runtime.
        let sent = self.runtime.spawn(async move {
            match tokio::time::timeout(EXPORT_TIMEOUT, call).await {
                Ok(r) => r,
                Err(_) => Err(format!("no answer within {EXPORT_TIMEOUT:?}")),
            }
        });
        let outcome = match sent.await {
            Ok(r) => r,
            Err(e) => Err(format!("the export was cut short: {e}")),
        };
        self.note(outcome)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.resource = resource.into();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const SPAN: &str = "00f067aa0ba902b7";

    #[test]
    fn w3c_context_is_read_with_its_state_and_decision() {
        let h = headers(&[
            ("traceparent", &format!("00-{TRACE}-{SPAN}-01")),
            ("tracestate", "congo=t61rcWkgMzE"),
        ]);
        let (p, decision, forms) = extract(&h);
        let p = p.unwrap();
        assert_eq!(format!("{:032x}", p.trace_id), TRACE);
        assert_eq!(format!("{:016x}", p.span_id), SPAN);
        assert_eq!(decision, Some(true));
        assert_eq!(p.state.get("congo"), Some("t61rcWkgMzE"));
        assert!(forms.w3c && !forms.b3_single && !forms.b3_multi);
        // Malformed or all-zero ids are no context.
        for bad in [
            format!("00-{TRACE}-{SPAN}"),
            format!("ff-{TRACE}-{SPAN}-01"),
            format!("00-{}-{SPAN}-01", "0".repeat(32)),
            format!("00-{TRACE}-{}-01", "0".repeat(16)),
            format!("00-{TRACE}-{SPAN}-01-extra"),
        ] {
            assert_eq!(extract(&headers(&[("traceparent", &bad)])).0, None, "{bad}");
        }
    }

    #[test]
    fn b3_single_and_multi_headers_are_read() {
        let (p, d, forms) = extract(&headers(&[("b3", &format!("{TRACE}-{SPAN}-1"))]));
        assert_eq!(format!("{:032x}", p.unwrap().trace_id), TRACE);
        assert_eq!(d, Some(true));
        assert!(forms.b3_single);
        // 64-bit trace ids, and a decision alone.
        let (p, d, _) = extract(&headers(&[("b3", &format!("{}-{SPAN}-0", &TRACE[16..]))]));
        assert_eq!(
            format!("{:032x}", p.unwrap().trace_id),
            format!("{:0>32}", &TRACE[16..])
        );
        assert_eq!(d, Some(false));
        assert_eq!(extract(&headers(&[("b3", "d")])).1, Some(true));
        let (p, d, forms) = extract(&headers(&[
            ("x-b3-traceid", TRACE),
            ("x-b3-spanid", SPAN),
            ("x-b3-sampled", "1"),
        ]));
        assert_eq!(format!("{:016x}", p.unwrap().span_id), SPAN);
        assert_eq!(d, Some(true));
        assert!(forms.b3_multi);
        // No sampling header: the decision is deferred to this proxy.
        let (p, d, _) = extract(&headers(&[("x-b3-traceid", TRACE), ("x-b3-spanid", SPAN)]));
        assert!(p.is_some());
        assert_eq!(d, None);
    }

    #[test]
    fn the_context_goes_on_in_the_forms_it_came_in() {
        let trace = TraceId::from_hex(TRACE).unwrap();
        let parent = SpanId::from_hex(SPAN).unwrap();
        let mine = SpanId::from_hex("b7ad6b7169203331").unwrap();
        let mut h = headers(&[("b3", &format!("{TRACE}-{SPAN}-1"))]);
        let (_, _, forms) = extract(&h);
        inject(&mut h, trace, mine, Some(parent), true, forms);
        assert_eq!(h["b3"], format!("{TRACE}-b7ad6b7169203331-1").as_str());
        assert_eq!(
            h["traceparent"],
            format!("00-{TRACE}-b7ad6b7169203331-01").as_str()
        );
        assert!(!h.contains_key("x-b3-traceid"));

        let mut h = headers(&[
            ("x-b3-traceid", TRACE),
            ("x-b3-spanid", SPAN),
            ("x-b3-sampled", "0"),
        ]);
        let (_, _, forms) = extract(&h);
        inject(&mut h, trace, mine, Some(parent), false, forms);
        assert_eq!(h["x-b3-spanid"], "b7ad6b7169203331");
        assert_eq!(h["x-b3-parentspanid"], SPAN);
        assert_eq!(h["x-b3-sampled"], "0");
        assert_eq!(
            h["traceparent"],
            format!("00-{TRACE}-b7ad6b7169203331-00").as_str()
        );

        // A new trace: both W3C and B3 multi, no parent.
        let mut h = HeaderMap::new();
        inject(&mut h, trace, mine, None, true, Forms::default());
        assert!(h.contains_key("traceparent") && h.contains_key("x-b3-traceid"));
        assert!(!h.contains_key("x-b3-parentspanid"));
    }

    #[test]
    fn chance_is_a_fraction() {
        let ids = RandomIdGenerator::default();
        let draws: Vec<f64> = (0..1000).map(|_| chance(&ids)).collect();
        assert!(draws.iter().all(|d| (0.0..1.0).contains(d)));
        let low = draws.iter().filter(|d| **d < 0.5).count();
        assert!((350..650).contains(&low), "{low} of 1000 below one half");
    }
}
