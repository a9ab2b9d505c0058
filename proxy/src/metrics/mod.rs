//! Istio's standard metrics, recorded by the proxy and served in the Prometheus (OpenMetrics)
//! text format on 15020 `/stats/prometheus` (and on the admin port): `istio_requests_total`,
//! `istio_request_duration_milliseconds` and `istio_tcp_*`, with Istio's labels, so existing
//! Grafana dashboards and Kiali read them unchanged.
//!
//! A series is one label set. Its labels are worked out once, when the first request with a
//! new combination of peer, response code and flags ends; after that a request costs one map
//! lookup on a small key borrowed from the request (no allocation) and a few relaxed atomic
//! adds. The label text is only put together when Prometheus scrapes.

mod labels;
mod refused;

pub use refused::{Listener, Refusal, Refusals};

pub use labels::{UNKNOWN, Workload};

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use tokio::time::Instant;

use bytes::Buf;
use hashbrown::{Equivalent, HashMap};
use hyper::body::{Body, Frame, SizeHint};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::route::Target;
use crate::state::State;

/// Upper bounds of `istio_request_duration_milliseconds`' buckets: Istio's defaults.
pub const DURATION_BUCKETS_MS: [f64; 19] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0,
    60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
];

/// The same bounds in microseconds, compared with each request's duration.
const DURATION_BUCKETS_US: [u64; 19] = {
    let mut us = [0u64; 19];
    let mut i = 0;
    while i < us.len() {
        us[i] = (DURATION_BUCKETS_MS[i] * 1000.0) as u64;
        i += 1;
    }
    us
};

/// Upper bounds of `istio_request_bytes`' and `istio_response_bytes`' buckets: the same
/// defaults, in bytes, as Istio's sidecars use for every histogram.
pub const SIZE_BUCKETS_BYTES: [f64; 19] = DURATION_BUCKETS_MS;

/// A histogram of sizes: per-bucket counts (not cumulative; the last one is +Inf) and a sum.
#[derive(Debug, Default)]
struct Sizes {
    sum: AtomicU64,
    buckets: [AtomicU64; SIZE_BUCKETS_BYTES.len() + 1],
}

impl Sizes {
    fn record(&self, bytes: u64) {
        self.sum.fetch_add(bytes, Relaxed);
        // Twice the bytes against twice the bounds: the first bound is half a byte.
        let doubled = bytes.saturating_mul(2);
        let bucket = SIZE_BUCKETS_BYTES
            .iter()
            .position(|bound| doubled <= (*bound * 2.0) as u64)
            .unwrap_or(SIZE_BUCKETS_BYTES.len());
        self.buckets[bucket].fetch_add(1, Relaxed);
    }

    /// `(bound, count)` per bucket, and the total count.
    fn buckets(&self) -> (Vec<(f64, u64)>, u64) {
        let mut count = 0;
        let mut out = Vec::with_capacity(self.buckets.len());
        for (i, n) in self.buckets.iter().enumerate() {
            let n = n.load(Relaxed);
            count += n;
            out.push((
                SIZE_BUCKETS_BYTES.get(i).copied().unwrap_or(f64::INFINITY),
                n,
            ));
        }
        (out, count)
    }
}

/// The `grpc-status` of headers or trailers.
pub fn grpc_status(headers: &hyper::HeaderMap) -> Option<u8> {
    headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// Which side reports: the caller's proxy (`source`) or the callee's (`destination`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reporter {
    /// Outbound: this proxy's workload made the call.
    Source,
    /// Inbound: this proxy's workload answered it.
    Destination,
}

impl Reporter {
    fn as_str(self) -> &'static str {
        match self {
            Reporter::Source => "source",
            Reporter::Destination => "destination",
        }
    }
}

/// The protocol label (`request_protocol`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RequestProtocol {
    /// HTTP/1.x or HTTP/2.
    Http,
    /// gRPC.
    Grpc,
    /// Opaque TCP.
    Tcp,
}

impl RequestProtocol {
    /// The protocol of an HTTP request: gRPC or plain HTTP.
    pub fn of_http(grpc: bool) -> Self {
        if grpc {
            RequestProtocol::Grpc
        } else {
            RequestProtocol::Http
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            RequestProtocol::Http => "http",
            RequestProtocol::Grpc => "grpc",
            RequestProtocol::Tcp => "tcp",
        }
    }
}

/// What tells one series from another, borrowed from the request on the hot path (`S = &str`)
/// and owned in the map (`S = Box<str>`); both hash alike.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Key<S> {
    /// Who reports.
    pub reporter: Reporter,
    /// The service host name (source reporter), or the caller's identity (destination).
    pub peer: S,
    /// The endpoint called (source), or the workload address and port called (destination);
    /// none for destinations outside the registry, so they cannot grow series without bound.
    pub addr: Option<SocketAddr>,
    /// What the peer's sidecar said of its workload (`x-mesh-peer`; empty when it said
    /// nothing).
    pub meta: S,
    /// Mesh mutual TLS carried it.
    pub mtls: bool,
    /// The protocol.
    pub protocol: RequestProtocol,
    /// The response's status code (0 for TCP).
    pub code: u16,
    /// Envoy's response flags (`-` when none).
    pub flags: &'static str,
    /// A gRPC response's `grpc-status` (none for other protocols, or when the call ended
    /// without one).
    pub grpc_status: Option<u8>,
}

/// A borrowed key.
pub type KeyRef<'a> = Key<&'a str>;

/// Hashed once per request: the small fields packed into one word, then the strings, rather
/// than field by field as a derived `Hash` would (a third of the instructions).
impl<S: std::ops::Deref<Target = str>> std::hash::Hash for Key<S> {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        let small = u64::from(self.code)
            | u64::from(self.mtls) << 16
            | (self.protocol as u64) << 17
            | (self.reporter as u64) << 19
            | u64::from(self.grpc_status.map_or(0xff, u16::from)) << 21;
        let addr = match self.addr {
            Some(std::net::SocketAddr::V4(a)) => {
                u64::from(a.ip().to_bits()) << 16 | u64::from(a.port())
            }
            Some(std::net::SocketAddr::V6(a)) => {
                let bits = a.ip().to_bits();
                (bits as u64 ^ (bits >> 64) as u64).rotate_left(16) ^ u64::from(a.port())
            }
            None => 0,
        };
        h.write_u64(small ^ addr.rotate_left(29));
        for text in [&*self.peer, &*self.meta, self.flags] {
            h.write(text.as_bytes());
            // Keeps ("ab", "c") apart from ("a", "bc").
            h.write_u8(0xff);
        }
    }
}

impl Key<&str> {
    fn to_owned(&self) -> Key<Box<str>> {
        Key {
            reporter: self.reporter,
            peer: self.peer.into(),
            addr: self.addr,
            meta: self.meta.into(),
            mtls: self.mtls,
            protocol: self.protocol,
            code: self.code,
            flags: self.flags,
            grpc_status: self.grpc_status,
        }
    }
}

impl Equivalent<Key<Box<str>>> for Key<&str> {
    fn equivalent(&self, key: &Key<Box<str>>) -> bool {
        self.reporter == key.reporter
            && self.code == key.code
            && self.addr == key.addr
            && self.mtls == key.mtls
            && self.protocol == key.protocol
            && self.flags == key.flags
            && self.grpc_status == key.grpc_status
            && *self.peer == *key.peer
            && *self.meta == *key.meta
    }
}

/// The two sides of a series, worked out when it is first seen.
#[derive(Clone, Debug)]
pub struct Sides {
    /// The calling workload.
    pub source: Workload,
    /// The called workload.
    pub destination: Workload,
    /// The called service: host name, name and namespace (`unknown` when not known).
    pub service: (String, String, String),
}

impl Sides {
    /// A call from `local` whose destination is not known (refused or answered by the proxy).
    pub fn unknown_destination(local: Workload) -> Self {
        Self {
            source: local,
            destination: Workload::unknown(),
            service: labels::service_names(UNKNOWN, ""),
        }
    }
}

/// Counts and durations of the requests of one label set.
#[derive(Debug)]
pub struct RequestSeries {
    key: Key<Box<str>>,
    sides: Sides,
    count: AtomicU64,
    sum_us: AtomicU64,
    /// Requests per bucket (not cumulative; the last one is +Inf).
    buckets: [AtomicU64; DURATION_BUCKETS_US.len() + 1],
    /// Sizes of the requests' bodies.
    request_bytes: Sizes,
    /// Sizes of the responses' bodies.
    response_bytes: Sizes,
}

impl RequestSeries {
    /// Records one request that took `micros`, whose body was `request` bytes and its
    /// response's `response` bytes.
    pub fn record(&self, micros: u64, request: u64, response: u64) {
        self.request_bytes.record(request);
        self.response_bytes.record(response);
        self.count.fetch_add(1, Relaxed);
        self.sum_us.fetch_add(micros, Relaxed);
        let bucket = DURATION_BUCKETS_US
            .iter()
            .position(|bound| micros <= *bound)
            .unwrap_or(DURATION_BUCKETS_US.len());
        self.buckets[bucket].fetch_add(1, Relaxed);
    }

    /// Requests recorded so far.
    pub fn count(&self) -> u64 {
        self.count.load(Relaxed)
    }
}

/// A request being timed: recorded once, when dropped (after its response's body was sent, or
/// when the exchange was abandoned).
pub struct Timer {
    series: Option<Arc<RequestSeries>>,
    started: Instant,
    request_bytes: u64,
    response_bytes: u64,
    /// A gRPC call whose status comes in the trailers: its series is chosen when it ends.
    late: Option<Box<LateSeries>>,
    /// The access log line written when the exchange ends, when some log is on.
    log: Option<Box<PendingLog>>,
    /// The request's span, ended with the exchange, when it is traced.
    span: Option<Box<crate::telemetry::trace::ActiveSpan>>,
}

/// An access log entry waiting for the end of its exchange.
struct PendingLog {
    entry: crate::telemetry::Entry,
    logs: Arc<[crate::telemetry::Log]>,
}

/// What choosing a gRPC call's series when it ends takes.
struct LateSeries {
    metrics: Arc<Metrics>,
    key: Key<Box<str>>,
    sides: Sides,
}

impl Timer {
    /// The request's body was `bytes` long.
    pub fn request_bytes(mut self, bytes: u64) -> Self {
        self.request_bytes = bytes;
        self
    }

    /// Writes `entry` to `logs` when the exchange ends, with its duration, byte counts and (for
    /// a gRPC call) final status filled in.
    pub fn log(
        mut self,
        entry: crate::telemetry::Entry,
        logs: &Arc<[crate::telemetry::Log]>,
    ) -> Self {
        if !logs.is_empty() || crate::telemetry::tap::watched() {
            self.log = Some(Box::new(PendingLog {
                entry,
                logs: logs.clone(),
            }));
        }
        self
    }

    /// Ends `span` when the exchange ends, with its byte counts and (for a gRPC call) final
    /// status.
    pub fn trace(mut self, span: Option<crate::telemetry::trace::ActiveSpan>) -> Self {
        self.span = span.map(Box::new);
        self
    }
}

impl Drop for Timer {
    fn drop(&mut self) {
        let micros = u64::try_from(self.started.elapsed().as_micros()).unwrap_or(u64::MAX);
        if let Some(span) = self.span.take() {
            let grpc = self.late.as_ref().and_then(|l| l.key.grpc_status);
            span.end(self.request_bytes, self.response_bytes, grpc);
        }
        if let Some(pending) = self.log.take() {
            let PendingLog { mut entry, logs } = *pending;
            entry.duration = micros / 1000;
            entry.bytes_received = self.request_bytes;
            entry.bytes_sent = self.response_bytes;
            if let Some(late) = &self.late {
                entry.grpc_status = late.key.grpc_status;
            }
            entry.write(&logs);
        }
        let series = match (self.series.take(), self.late.take()) {
            (Some(series), _) => series,
            (None, Some(late)) => {
                let LateSeries {
                    metrics,
                    key,
                    sides,
                } = *late;
                let borrowed = Key {
                    reporter: key.reporter,
                    peer: &*key.peer,
                    addr: key.addr,
                    meta: &*key.meta,
                    mtls: key.mtls,
                    protocol: key.protocol,
                    code: key.code,
                    flags: key.flags,
                    grpc_status: key.grpc_status,
                };
                metrics.request_series(&borrowed, || sides)
            }
            (None, None) => return,
        };
        series.record(micros, self.request_bytes, self.response_bytes);
    }
}

/// Connections and bytes of one TCP label set.
#[derive(Debug)]
pub struct TcpSeries {
    key: Key<Box<str>>,
    sides: Sides,
    opened: AtomicU64,
    closed: AtomicU64,
    sent: AtomicU64,
    received: AtomicU64,
}

impl TcpSeries {
    /// A connection was opened.
    pub fn opened(&self) {
        self.opened.fetch_add(1, Relaxed);
    }

    /// A connection closed after `request` bytes went to the destination and `response` bytes
    /// came back. As in Istio, `istio_tcp_received_bytes_total` counts the request's bytes and
    /// `istio_tcp_sent_bytes_total` the response's, whoever reports.
    pub fn closed(&self, request: u64, response: u64) {
        self.closed.fetch_add(1, Relaxed);
        self.received.fetch_add(request, Relaxed);
        self.sent.fetch_add(response, Relaxed);
    }
}

type Series<T> = RwLock<HashMap<Key<Box<str>>, Arc<T>, foldhash::fast::RandomState>>;

/// The header sidecars describe their workload to each other in, over mesh mTLS: added to
/// requests to other sidecars and to responses to them, removed before the app sees it.
pub static PEER_HEADER: hyper::header::HeaderName =
    hyper::header::HeaderName::from_static("x-mesh-peer");

/// Every series of one proxy.
#[derive(Debug)]
pub struct Metrics {
    local: Workload,
    /// `local` as `x-mesh-peer` says it, made once.
    peer_header: hyper::header::HeaderValue,
    requests: Series<RequestSeries>,
    tcp: Series<TcpSeries>,
    refused: Refusals,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new(Workload::unknown())
    }
}

impl Metrics {
    /// Metrics of a proxy beside `local`.
    pub fn new(local: Workload) -> Self {
        let peer_header = hyper::header::HeaderValue::from_str(&local.to_peer_header())
            .unwrap_or_else(|_| hyper::header::HeaderValue::from_static(""));
        Self {
            local,
            peer_header,
            requests: RwLock::default(),
            tcp: RwLock::default(),
            refused: Refusals::default(),
        }
    }

    /// What the proxy refused or closed to protect itself, by listener and reason.
    pub fn refused(&self) -> &Refusals {
        &self.refused
    }

    /// The workload this proxy runs beside.
    pub fn local(&self) -> &Workload {
        &self.local
    }

    /// What this sidecar tells its peers of its workload (the `x-mesh-peer` value).
    pub fn peer_header(&self) -> &hyper::header::HeaderValue {
        &self.peer_header
    }

    /// The series of `key`, made with the sides `describe` works out the first time.
    pub fn request_series(
        &self,
        key: &KeyRef<'_>,
        describe: impl FnOnce() -> Sides,
    ) -> Arc<RequestSeries> {
        lookup(&self.requests, key, |key| RequestSeries {
            key,
            sides: describe(),
            count: AtomicU64::new(0),
            sum_us: AtomicU64::new(0),
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            request_bytes: Sizes::default(),
            response_bytes: Sizes::default(),
        })
    }

    /// Starts timing a request of `key`'s series; it is recorded when the timer is dropped.
    pub fn time_request(
        &self,
        key: &KeyRef<'_>,
        started: Instant,
        describe: impl FnOnce() -> Sides,
    ) -> Timer {
        Timer {
            series: Some(self.request_series(key, describe)),
            started,
            request_bytes: 0,
            response_bytes: 0,
            late: None,
            log: None,
            span: None,
        }
    }

    /// Starts timing a gRPC call whose status is not known yet (it comes in the trailers):
    /// its series is chosen when the timer is dropped, with the `grpc-status` its body saw.
    pub fn time_grpc_call(
        self: &Arc<Self>,
        key: &KeyRef<'_>,
        started: Instant,
        describe: impl FnOnce() -> Sides,
    ) -> Timer {
        Timer {
            series: None,
            started,
            request_bytes: 0,
            response_bytes: 0,
            late: Some(Box::new(LateSeries {
                metrics: self.clone(),
                key: key.to_owned(),
                sides: describe(),
            })),
            log: None,
            span: None,
        }
    }

    /// The TCP series of `key`.
    pub fn tcp_series(&self, key: &KeyRef<'_>, describe: impl FnOnce() -> Sides) -> Arc<TcpSeries> {
        lookup(&self.tcp, key, |key| TcpSeries {
            key,
            sides: describe(),
            opened: AtomicU64::new(0),
            closed: AtomicU64::new(0),
            sent: AtomicU64::new(0),
            received: AtomicU64::new(0),
        })
    }

    /// The Prometheus (OpenMetrics) text of every series.
    pub fn render(self: &Arc<Self>) -> String {
        self.render_with(None)
    }

    /// The Prometheus (OpenMetrics) text of every series, and of the proxy's own `health`.
    pub fn render_with(self: &Arc<Self>, health: Option<Health>) -> String {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(self.clone()));
        if let Some(h) = health {
            registry.register_collector(Box::new(h));
        }
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &registry);
        text
    }

    fn request_snapshot(&self) -> Vec<Arc<RequestSeries>> {
        snapshot(&self.requests)
    }

    fn tcp_snapshot(&self) -> Vec<Arc<TcpSeries>> {
        snapshot(&self.tcp)
    }
}

/// The sides of a call this proxy's workload makes to `target` (reporter `source`), whose
/// sidecar described itself with `meta` (empty when it did not).
pub fn outbound_sides(local: Workload, state: &State, target: &Target, meta: &str) -> Sides {
    let Some(svc) = state.services.get(&*target.service) else {
        return Sides {
            source: local.clone(),
            destination: Workload::unknown(),
            service: labels::service_names(&target.service, ""),
        };
    };
    let endpoint = svc
        .endpoint_ips
        .iter()
        .position(|ip| *ip == target.addr.ip())
        .and_then(|i| svc.spec.endpoints.get(i));
    let principal = match endpoint {
        Some(ep) if target.mtls && target.identity.is_empty() => ep.identity.as_str(),
        _ if target.mtls => &*target.identity,
        _ => "",
    };
    let destination = match endpoint {
        _ if !meta.is_empty() => Workload::from_peer_header(meta, principal),
        Some(ep) => {
            let namespace = Workload::namespace_of(&ep.identity).unwrap_or(&svc.spec.namespace);
            Workload::from_labels("", namespace, principal, |k| {
                ep.labels.get(k).map(String::as_str)
            })
        }
        None => Workload::from_principal(principal),
    };
    let mut source = local;
    if !target.mtls {
        source.principal = labels::UNKNOWN.into();
    }
    Sides {
        source,
        destination,
        service: labels::service_names(&svc.spec.hostname, &svc.spec.namespace),
    }
}

/// The sides of a call to this proxy's workload at `dst` from a caller that proved
/// `peer_identity` (empty without mTLS) and whose sidecar described itself with `meta`
/// (reporter `destination`).
pub fn inbound_sides(
    local: Workload,
    state: &State,
    dst: SocketAddr,
    peer_identity: &str,
    meta: &str,
) -> Sides {
    let mut destination = local;
    if peer_identity.is_empty() {
        destination.principal = labels::UNKNOWN.into();
    }
    let service = match state.service_for(dst) {
        Some(svc) => labels::service_names(&svc.spec.hostname, &svc.spec.namespace),
        None => labels::service_names(labels::UNKNOWN, &destination.namespace),
    };
    Sides {
        source: Workload::from_peer_header(meta, peer_identity),
        destination,
        service,
    }
}

fn lookup<T>(map: &Series<T>, key: &KeyRef<'_>, make: impl FnOnce(Key<Box<str>>) -> T) -> Arc<T> {
    if let Some(series) = map.read().unwrap_or_else(|e| e.into_inner()).get(key) {
        return series.clone();
    }
    let mut map = map.write().unwrap_or_else(|e| e.into_inner());
    if let Some(series) = map.get(key) {
        return series.clone();
    }
    let owned = key.to_owned();
    let series = Arc::new(make(owned.clone()));
    map.insert(owned, series.clone());
    series
}

fn snapshot<T>(map: &Series<T>) -> Vec<Arc<T>> {
    map.read()
        .unwrap_or_else(|e| e.into_inner())
        .values()
        .cloned()
        .collect()
}

/// A response body that keeps its request's timer until the body is sent (or abandoned).
pub struct Timed<B> {
    inner: B,
    timer: Timer,
}

impl<B> Timed<B> {
    /// `inner`, timed by `timer`, its data counted as the response's size.
    pub fn new(inner: B, timer: Timer) -> Self {
        Self { inner, timer }
    }
}

impl<B: Body + Unpin> Body for Timed<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                self.timer.response_bytes += data.remaining() as u64;
            } else if let (Some(trailers), Some(late)) =
                (frame.trailers_ref(), self.timer.late.as_mut())
            {
                late.key.grpc_status = grpc_status(trailers);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

// === exposition ===

impl Collector for Metrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let local = &self.local;
        let requests = self.request_snapshot();
        let label_sets: Vec<_> = requests
            .iter()
            .map(|s| labels::request_labels(&s.key, &s.sides))
            .collect();
        if !requests.is_empty() {
            let mut family = encoder.encode_descriptor(
                "istio_requests",
                "Requests, counted when they end",
                None,
                MetricType::Counter,
            )?;
            for (s, set) in requests.iter().zip(&label_sets) {
                family
                    .encode_family(set)?
                    .encode_counter::<NoLabelSet, _, u64>(&s.count.load(Relaxed), None)?;
            }
            let mut family = encoder.encode_descriptor(
                "istio_request_duration_milliseconds",
                "From the request's arrival until its response was sent",
                None,
                MetricType::Histogram,
            )?;
            for (s, set) in requests.iter().zip(&label_sets) {
                // Per-bucket counts: the encoder makes them cumulative.
                let mut count = 0;
                let mut buckets = Vec::with_capacity(s.buckets.len());
                for (i, n) in s.buckets.iter().enumerate() {
                    let n = n.load(Relaxed);
                    count += n;
                    let bound = DURATION_BUCKETS_MS.get(i).copied().unwrap_or(f64::INFINITY);
                    buckets.push((bound, n));
                }
                let sum_ms = s.sum_us.load(Relaxed) as f64 / 1000.0;
                family
                    .encode_family(set)?
                    .encode_histogram::<NoLabelSet>(sum_ms, count, &buckets, None)?;
            }
        }
        if !requests.is_empty() {
            type Read = fn(&RequestSeries) -> &Sizes;
            let sizes: [(&str, &str, Read); 2] = [
                ("istio_request_bytes", "Sizes of request bodies", |s| {
                    &s.request_bytes
                }),
                ("istio_response_bytes", "Sizes of response bodies", |s| {
                    &s.response_bytes
                }),
            ];
            for (name, help, read) in sizes {
                let mut family =
                    encoder.encode_descriptor(name, help, None, MetricType::Histogram)?;
                for (s, set) in requests.iter().zip(&label_sets) {
                    let sizes = read(s);
                    let (buckets, count) = sizes.buckets();
                    let sum = sizes.sum.load(Relaxed) as f64;
                    family
                        .encode_family(set)?
                        .encode_histogram::<NoLabelSet>(sum, count, &buckets, None)?;
                }
            }
        }
        let tcp = self.tcp_snapshot();
        if !tcp.is_empty() {
            let sets: Vec<_> = tcp
                .iter()
                .map(|s| labels::tcp_labels(&s.key, &s.sides))
                .collect();
            type Read = fn(&TcpSeries) -> u64;
            let counters: [(&str, &str, Read); 4] = [
                (
                    "istio_tcp_connections_opened",
                    "TCP connections opened",
                    |s| s.opened.load(Relaxed),
                ),
                (
                    "istio_tcp_connections_closed",
                    "TCP connections closed",
                    |s| s.closed.load(Relaxed),
                ),
                (
                    "istio_tcp_sent_bytes",
                    "Bytes of responses (destination to source), counted when the connection closes",
                    |s| s.sent.load(Relaxed),
                ),
                (
                    "istio_tcp_received_bytes",
                    "Bytes of requests (source to destination), counted when the connection closes",
                    |s| s.received.load(Relaxed),
                ),
            ];
            for (name, help, read) in counters {
                let mut family =
                    encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
                for (s, set) in tcp.iter().zip(&sets) {
                    family
                        .encode_family(set)?
                        .encode_counter::<NoLabelSet, _, u64>(&read(s), None)?;
                }
            }
        }
        let info = [
            ("version", env!("CARGO_PKG_VERSION")),
            ("workload", local.name.as_str()),
            ("workload_namespace", local.namespace.as_str()),
        ];
        encoder
            .encode_descriptor(
                "mesh_proxy_build",
                "The proxy's version and the workload it serves",
                None,
                MetricType::Info,
            )?
            .encode_info(&info)?;
        let mut family = encoder.encode_descriptor(
            "mesh_proxy_refused",
            "Connections the proxy refused or closed to protect itself, by listener and reason",
            None,
            MetricType::Counter,
        )?;
        for (listener, why, n) in self.refused.all() {
            family
                .encode_family(&[("listener", listener.as_str()), ("reason", why.as_str())])?
                .encode_counter::<NoLabelSet, _, u64>(&n, None)?;
        }
        let sinks = crate::telemetry::access_log::sinks();
        if !sinks.is_empty() {
            let mut family = encoder.encode_descriptor(
                "mesh_proxy_access_log_dropped",
                "Access log lines dropped because their file's writer fell behind",
                None,
                MetricType::Counter,
            )?;
            for sink in sinks {
                family
                    .encode_family(&[("path", sink.path())])?
                    .encode_counter::<NoLabelSet, _, u64>(&sink.dropped(), None)?;
            }
        }
        Ok(())
    }
}

/// The proxy's own health, gathered when Prometheus scrapes, named as Istio's agent and
/// Envoy name theirs.
#[derive(Debug, Default)]
pub struct Health {
    /// Seconds until the workload certificate expires (negative once it has), when the proxy
    /// has one: `istio_agent_cert_expiry_seconds`.
    pub cert_expiry_seconds: Option<f64>,
    /// The version of the state the proxy serves with (pilot's), empty before the first.
    pub state_version: String,
    /// States from pilot the proxy refused (NACKed), when pilot feeds it.
    pub states_refused: Option<u64>,
    /// Scrapes of the application's own metrics that failed, when it has them merged.
    pub app_scrape_failures: Option<u64>,
    /// Connections open on the traffic listeners: `envoy_server_total_connections`.
    pub connections: u64,
    /// The connection pool of each cluster the proxy has sent to.
    pub pools: Vec<Pool>,
}

/// One cluster's connection pool and circuit breaker, as Envoy's `cluster.<name>.` stats.
#[derive(Debug, Default)]
pub struct Pool {
    /// Istio's cluster name (`outbound|9080|v1|reviews.default.svc.cluster.local`).
    pub cluster: String,
    /// Connections open.
    pub cx_active: u64,
    /// Requests under way.
    pub rq_active: u64,
    /// Requests waiting for a connection.
    pub rq_pending_active: u64,
    /// Connections refused by `maxConnections`.
    pub cx_overflow: u64,
    /// Requests refused by `http1MaxPendingRequests`.
    pub rq_pending_overflow: u64,
    /// Requests refused by `http2MaxRequests`.
    pub rq_overflow: u64,
}

impl Collector for Health {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        if let Some(secs) = self.cert_expiry_seconds {
            encoder
                .encode_descriptor(
                    "istio_agent_cert_expiry_seconds",
                    "Seconds until the workload certificate expires",
                    None,
                    MetricType::Gauge,
                )?
                .encode_family(&[("resource_name", "default")])?
                .encode_gauge(&secs)?;
        }
        encoder
            .encode_descriptor(
                "envoy_server_total_connections",
                "Connections open on the traffic listeners",
                None,
                MetricType::Gauge,
            )?
            .encode_gauge(&self.connections)?;
        let version: &str = if self.state_version.is_empty() {
            "none"
        } else {
            &self.state_version
        };
        encoder
            .encode_descriptor(
                "mesh_proxy_state",
                "The version of the configuration the proxy serves with",
                None,
                MetricType::Info,
            )?
            .encode_info(&[("version", version)])?;
        if let Some(n) = self.states_refused {
            encoder
                .encode_descriptor(
                    "mesh_proxy_state_refused",
                    "States from pilot the proxy refused (NACKed); meshctl proxy-status says why",
                    None,
                    MetricType::Counter,
                )?
                .encode_counter::<NoLabelSet, _, u64>(&n, None)?;
        }
        if let Some(n) = self.app_scrape_failures {
            encoder
                .encode_descriptor(
                    "mesh_proxy_app_metrics_scrape_failures",
                    "Scrapes of the application's own metrics (merged into this page) that failed",
                    None,
                    MetricType::Counter,
                )?
                .encode_counter::<NoLabelSet, _, u64>(&n, None)?;
        }
        if self.pools.is_empty() {
            return Ok(());
        }
        type Read = fn(&Pool) -> u64;
        let gauges: [(&str, &str, Read); 3] = [
            (
                "envoy_cluster_upstream_cx_active",
                "Connections open",
                |p| p.cx_active,
            ),
            (
                "envoy_cluster_upstream_rq_active",
                "Requests under way",
                |p| p.rq_active,
            ),
            (
                "envoy_cluster_upstream_rq_pending_active",
                "Requests waiting for a connection",
                |p| p.rq_pending_active,
            ),
        ];
        for (name, help, read) in gauges {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for p in &self.pools {
                family
                    .encode_family(&[("cluster_name", p.cluster.as_str())])?
                    .encode_gauge(&read(p))?;
            }
        }
        let counters: [(&str, &str, Read); 3] = [
            (
                "envoy_cluster_upstream_cx_overflow",
                "Connections refused by the circuit breaker",
                |p| p.cx_overflow,
            ),
            (
                "envoy_cluster_upstream_rq_pending_overflow",
                "Requests refused by the pending-request limit",
                |p| p.rq_pending_overflow,
            ),
            (
                "envoy_cluster_upstream_rq_overflow",
                "Requests refused by the request limit",
                |p| p.rq_overflow,
            ),
        ];
        for (name, help, read) in counters {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for p in &self.pools {
                family
                    .encode_family(&[("cluster_name", p.cluster.as_str())])?
                    .encode_counter::<NoLabelSet, _, u64>(&read(p), None)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
