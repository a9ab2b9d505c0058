//! Access logs: one line per request (and per TCP connection), written when the exchange ends,
//! as a JSON object with the keys of Istio's JSON access log (`accessLogEncoding: JSON`) plus
//! what explains a failure (`response_code_details`, the policy that denied it, the peers'
//! identities, the trace id), or as Envoy's default text line (`TEXT`).
//!
//! Entries go to a writer thread per file (`/dev/stdout` by default) through a bounded queue,
//! and are formatted there: a request never waits on the disk, on whoever reads the proxy's
//! output, or on the formatting. When the queue is full the entry is dropped and counted
//! (`mesh_proxy_access_log_dropped_total`).

use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::SystemTime;

use std::fmt::Write as _;

/// Lines a writer holds before new ones are dropped.
const QUEUE: usize = 16 * 1024;

/// One entry on its way to a file, and the form it is written in.
type Queued = (Box<Entry>, bool);

/// Where one file's lines go.
#[derive(Debug)]
pub struct Sink {
    path: String,
    tx: SyncSender<Queued>,
    dropped: AtomicU64,
}

impl Sink {
    /// Queues one entry, to be written as Envoy's text line when `text`, else as JSON.
    fn write(&self, entry: Box<Entry>, text: bool) {
        match self.tx.try_send((entry, text)) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.dropped.fetch_add(1, Relaxed);
            }
        }
    }

    /// The file.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Lines dropped because the writer fell behind.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Relaxed)
    }
}

/// Every file the process writes access logs to, opened once.
static SINKS: LazyLock<Mutex<HashMap<String, Arc<Sink>>>> = LazyLock::new(Mutex::default);

/// The sinks opened so far.
pub fn sinks() -> Vec<Arc<Sink>> {
    SINKS
        .lock()
        .map(|s| s.values().cloned().collect())
        .unwrap_or_default()
}

/// The sink of `path` (`""` and `/dev/stdout`: the proxy's standard output), opened with its
/// writer thread on first use.
pub fn sink(path: &str) -> Result<Arc<Sink>, String> {
    let path = if path.is_empty() { "/dev/stdout" } else { path };
    let mut sinks = SINKS
        .lock()
        .map_err(|_| "access log writers poisoned".to_string())?;
    if let Some(s) = sinks.get(path) {
        return Ok(s.clone());
    }
    let out: Box<dyn Write + Send> = if path == "/dev/stdout" {
        Box::new(std::io::stdout())
    } else if path == "/dev/stderr" {
        Box::new(std::io::stderr())
    } else {
        Box::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| format!("access log {path}: {e}"))?,
        )
    };
    let (tx, rx) = sync_channel::<Queued>(QUEUE);
    std::thread::Builder::new()
        .name("access-log".into())
        .spawn(move || write_lines(rx, out))
        .map_err(|e| format!("access log {path}: cannot start its writer: {e}"))?;
    let s = Arc::new(Sink {
        path: path.to_string(),
        tx,
        dropped: AtomicU64::new(0),
    });
    sinks.insert(path.to_string(), s.clone());
    Ok(s)
}

/// Formats and writes queued entries, flushing whenever the queue is empty.
fn write_lines(rx: Receiver<Queued>, out: Box<dyn Write + Send>) {
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, out);
    let mut line = String::with_capacity(1024);
    let mut write = |(entry, text): Queued, out: &mut std::io::BufWriter<Box<dyn Write + Send>>| {
        line.clear();
        if text {
            entry.text_into(&mut line);
        } else {
            entry.json_into(&mut line);
        }
        let _ = out.write_all(line.as_bytes());
    };
    while let Ok(first) = rx.recv() {
        write(first, &mut out);
        while let Ok(more) = rx.try_recv() {
            write(more, &mut out);
        }
        let _ = out.flush();
    }
}

/// One access log a proxy writes.
#[derive(Clone, Debug)]
pub struct Log {
    /// Where.
    pub sink: Arc<Sink>,
    /// Envoy's text line rather than JSON.
    pub text: bool,
}

/// One request (or TCP connection), as its log line says it. Keys are Istio's JSON access
/// log's; what is unknown is `null` (`-` in the text line).
#[derive(Clone, Debug)]
pub struct Entry {
    /// When the request arrived (written as RFC 3339, UTC, milliseconds).
    pub start_time: SystemTime,
    /// `outbound`, `inbound` or `gateway`.
    pub direction: &'static str,
    /// The method (none for TCP).
    pub method: Option<String>,
    /// The path and query.
    pub path: Option<String>,
    /// `HTTP/1.1`, `HTTP/2`, or none for TCP.
    pub protocol: Option<&'static str>,
    /// The response's status (0 when there was none, as for TCP).
    pub response_code: u16,
    /// Envoy's response flags (`-` when none).
    pub response_flags: &'static str,
    /// Why the response is what it is, in Envoy's words where it has some
    /// (`via_upstream`, `rbac_access_denied_matched_policy[...]`, `no_healthy_upstream`, ...).
    pub response_code_details: String,
    /// The gRPC status of a gRPC call.
    pub grpc_status: Option<u8>,
    /// Body bytes received from the downstream.
    pub bytes_received: u64,
    /// Body bytes sent to the downstream.
    pub bytes_sent: u64,
    /// From arrival to the last byte sent, milliseconds.
    pub duration: u64,
    /// `x-forwarded-for`.
    pub x_forwarded_for: Option<String>,
    /// `user-agent`.
    pub user_agent: Option<String>,
    /// `x-request-id`.
    pub request_id: Option<String>,
    /// The trace the request belongs to (W3C `traceparent`, or B3).
    pub trace_id: Option<String>,
    /// The `:authority` / `Host`.
    pub authority: Option<String>,
    /// The endpoint the request went to.
    pub upstream_host: Option<String>,
    /// Istio's cluster name (`outbound|9080|v1|reviews.default.svc.cluster.local`,
    /// `inbound|9080||`).
    pub upstream_cluster: Option<String>,
    /// The address the downstream connected to.
    pub downstream_local_address: Option<SocketAddr>,
    /// The downstream's address.
    pub downstream_remote_address: Option<SocketAddr>,
    /// The TLS server name the downstream asked for.
    pub requested_server_name: Option<String>,
    /// The downstream's identity (its certificate's SPIFFE id, over mesh mTLS).
    pub downstream_peer_principal: Option<String>,
    /// The upstream's identity as it proved it over mesh mTLS.
    pub upstream_peer_principal: Option<String>,
    /// The policy that denied the request (AuthorizationPolicy, RequestAuthentication, an
    /// external authorizer) and why.
    pub denied_by: Option<String>,
    /// What the policies decided when they let it through (audits, dry runs, ext_authz).
    pub policy: Option<String>,
}

impl Entry {
    /// An entry started now.
    pub fn started(direction: &'static str) -> Self {
        Entry {
            start_time: SystemTime::now(),
            direction,
            method: None,
            path: None,
            protocol: None,
            response_code: 0,
            response_flags: "-",
            response_code_details: String::new(),
            grpc_status: None,
            bytes_received: 0,
            bytes_sent: 0,
            duration: 0,
            x_forwarded_for: None,
            user_agent: None,
            request_id: None,
            trace_id: None,
            authority: None,
            upstream_host: None,
            upstream_cluster: None,
            downstream_local_address: None,
            downstream_remote_address: None,
            requested_server_name: None,
            downstream_peer_principal: None,
            upstream_peer_principal: None,
            denied_by: None,
            policy: None,
        }
    }

    /// The JSON line.
    pub fn json(&self) -> String {
        let mut line = String::with_capacity(1024);
        self.json_into(&mut line);
        line
    }

    /// Appends the JSON line (with its newline) to `out`: keys in a fixed order, strings
    /// escaped as JSON asks.
    fn json_into(&self, out: &mut String) {
        let mut json = Json { out, first: true };
        json.out.push('{');
        json.key("start_time");
        json.out.push('"');
        rfc3339_into(self.start_time, json.out);
        json.out.push('"');
        json.str("direction", Some(self.direction));
        json.str("method", self.method.as_deref());
        json.str("path", self.path.as_deref());
        json.str("protocol", self.protocol);
        json.num("response_code", Some(u64::from(self.response_code)));
        json.str("response_flags", Some(self.response_flags));
        json.str("response_code_details", Some(&self.response_code_details));
        json.num("grpc_status", self.grpc_status.map(u64::from));
        json.num("bytes_received", Some(self.bytes_received));
        json.num("bytes_sent", Some(self.bytes_sent));
        json.num("duration", Some(self.duration));
        json.str("x_forwarded_for", self.x_forwarded_for.as_deref());
        json.str("user_agent", self.user_agent.as_deref());
        json.str("request_id", self.request_id.as_deref());
        json.str("trace_id", self.trace_id.as_deref());
        json.str("authority", self.authority.as_deref());
        json.str("upstream_host", self.upstream_host.as_deref());
        json.str("upstream_cluster", self.upstream_cluster.as_deref());
        json.addr("downstream_local_address", self.downstream_local_address);
        json.addr("downstream_remote_address", self.downstream_remote_address);
        json.str(
            "requested_server_name",
            self.requested_server_name.as_deref(),
        );
        json.str(
            "downstream_peer_principal",
            self.downstream_peer_principal.as_deref(),
        );
        json.str(
            "upstream_peer_principal",
            self.upstream_peer_principal.as_deref(),
        );
        json.str("denied_by", self.denied_by.as_deref());
        json.str("policy", self.policy.as_deref());
        json.out.push_str("}\n");
    }

    /// Envoy's default text line (Istio's `accessLogEncoding: TEXT`), with the trace id and the
    /// denying policy after it when there are some.
    pub fn text(&self) -> String {
        let mut line = String::with_capacity(512);
        self.text_into(&mut line);
        line
    }

    /// Appends the text line (with its newline) to `out`.
    fn text_into(&self, out: &mut String) {
        fn d<T: std::fmt::Display>(v: &Option<T>) -> String {
            v.as_ref()
                .map_or_else(|| "-".to_string(), ToString::to_string)
        }
        let mut start = String::with_capacity(24);
        rfc3339_into(self.start_time, &mut start);
        let _ = write!(
            out,
            "[{}] \"{} {} {}\" {} {} {} - \"-\" {} {} {} - \"{}\" \"{}\" \"{}\" \"{}\" \"{}\" {} - {} {} {} -",
            start,
            d(&self.method),
            d(&self.path),
            d(&self.protocol),
            self.response_code,
            self.response_flags,
            if self.response_code_details.is_empty() {
                "-"
            } else {
                &self.response_code_details
            },
            self.bytes_received,
            self.bytes_sent,
            self.duration,
            d(&self.x_forwarded_for),
            d(&self.user_agent),
            d(&self.request_id),
            d(&self.authority),
            d(&self.upstream_host),
            d(&self.upstream_cluster),
            d(&self.downstream_local_address),
            d(&self.downstream_remote_address),
            d(&self.requested_server_name),
        );
        if let Some(t) = &self.trace_id {
            let _ = write!(out, " trace_id={t}");
        }
        if let Some(by) = &self.denied_by {
            let _ = write!(out, " denied_by=\"{by}\"");
        }
        out.push('\n');
    }

    /// Queues the entry for every log (formatted by each file's writer), and offers it to
    /// whoever taps the proxy.
    pub fn write(self, logs: &[Log]) {
        super::tap::publish(&self);
        let Some((last, rest)) = logs.split_last() else {
            return;
        };
        for log in rest {
            log.sink.write(Box::new(self.clone()), log.text);
        }
        last.sink.write(Box::new(self), last.text);
    }
}

/// Writes JSON members into a line.
struct Json<'a> {
    out: &'a mut String,
    first: bool,
}

impl Json<'_> {
    fn key(&mut self, key: &str) {
        if !std::mem::take(&mut self.first) {
            self.out.push(',');
        }
        self.out.push('"');
        self.out.push_str(key);
        self.out.push_str("\":");
    }

    fn str(&mut self, key: &str, value: Option<&str>) {
        self.key(key);
        match value {
            None => self.out.push_str("null"),
            // Most values need no escaping: copied as they are.
            Some(v) if v.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') => {
                self.out.push('"');
                self.out.push_str(v);
                self.out.push('"');
            }
            Some(v) => self
                .out
                .push_str(&serde_json::to_string(v).unwrap_or_else(|_| "null".into())),
        }
    }

    fn num(&mut self, key: &str, value: Option<u64>) {
        self.key(key);
        match value {
            None => self.out.push_str("null"),
            Some(n) => push_digits(self.out, n, 1),
        }
    }

    fn addr(&mut self, key: &str, value: Option<SocketAddr>) {
        self.key(key);
        match value {
            None => self.out.push_str("null"),
            Some(SocketAddr::V4(a)) => {
                self.out.push('"');
                for (i, octet) in a.ip().octets().into_iter().enumerate() {
                    if i > 0 {
                        self.out.push('.');
                    }
                    push_digits(self.out, u64::from(octet), 1);
                }
                self.out.push(':');
                push_digits(self.out, u64::from(a.port()), 1);
                self.out.push('"');
            }
            Some(a) => {
                let _ = write!(self.out, "\"{a}\"");
            }
        }
    }
}

/// Appends `n` in decimal, zero-padded to `width` digits (formatting machinery costs more than
/// the line's other work put together).
fn push_digits(out: &mut String, mut n: u64, width: usize) {
    let mut buf = [b'0'; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    let start = i.min(buf.len().saturating_sub(width));
    // The buffer holds only ASCII digits.
    out.push_str(std::str::from_utf8(&buf[start..]).unwrap_or("0"));
}

/// `2026-12-07T08:15:02.123Z`.
pub fn rfc3339(t: SystemTime) -> String {
    let mut out = String::with_capacity(24);
    rfc3339_into(t, &mut out);
    out
}

/// Appends `t` as RFC 3339 in UTC with milliseconds.
fn rfc3339_into(t: SystemTime, out: &mut String) {
    let Ok(ts) = jiff::Timestamp::try_from(t) else {
        return;
    };
    let dt = jiff::tz::Offset::UTC.to_datetime(ts);
    let field = |v: i16| u64::try_from(v).unwrap_or(0);
    push_digits(out, field(dt.year()), 4);
    out.push('-');
    push_digits(out, field(dt.month().into()), 2);
    out.push('-');
    push_digits(out, field(dt.day().into()), 2);
    out.push('T');
    push_digits(out, field(dt.hour().into()), 2);
    out.push(':');
    push_digits(out, field(dt.minute().into()), 2);
    out.push(':');
    push_digits(out, field(dt.second().into()), 2);
    out.push('.');
    push_digits(out, field(dt.millisecond()), 3);
    out.push('Z');
}

/// The trace id of a request's `traceparent` (W3C) or B3 headers.
pub fn trace_id(headers: &hyper::HeaderMap) -> Option<String> {
    if let Some(tp) = headers.get("traceparent").and_then(|v| v.to_str().ok()) {
        let mut parts = tp.split('-');
        if let (Some(_), Some(id)) = (parts.next(), parts.next())
            && id.len() == 32
        {
            return Some(id.to_string());
        }
    }
    if let Some(id) = headers.get("x-b3-traceid").and_then(|v| v.to_str().ok()) {
        return Some(id.to_string());
    }
    headers
        .get("b3")
        .and_then(|v| v.to_str().ok())
        .and_then(|b3| b3.split('-').next())
        .filter(|id| id.len() == 16 || id.len() == 32)
        .map(str::to_string)
}

/// Envoy's words for a response the proxy decided, by its flag.
pub fn details_of(flags: &str, local: bool) -> &'static str {
    match flags {
        "-" if local => "local_reply",
        "-" => "via_upstream",
        "NR" => "route_not_found",
        "UH" => "no_healthy_upstream",
        "UF" => "upstream_reset_before_response_started{connection_failure}",
        "UC" => "upstream_reset_before_response_started{connection_termination}",
        "URX" => "upstream_reset_after_retries_exhausted",
        "UT" => "upstream_response_timeout",
        "UO" => "upstream_overflow{circuit_breaker}",
        "DC" => "downstream_remote_disconnect",
        "DPE" => "downstream_protocol_error",
        "DR" => "direct_response",
        "DI" => "via_upstream{delay_injected}",
        "FI" => "fault_filter_abort",
        "RL" => "local_rate_limited",
        "UAEX" => "ext_authz_denied",
        _ => "local_reply",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_lines_carry_istios_keys_and_nulls_for_what_is_unknown() {
        let mut e = Entry::started("outbound");
        e.method = Some("GET".into());
        e.path = Some("/items?x=1".into());
        e.protocol = Some("HTTP/1.1");
        e.response_code = 503;
        e.response_flags = "UF";
        e.response_code_details = details_of("UF", true).into();
        e.upstream_cluster = Some("outbound|8080|v1|inventory.shop.svc.cluster.local".into());
        let line = e.json();
        assert!(line.ends_with('\n'));
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["method"], "GET");
        assert_eq!(v["response_code"], 503);
        assert_eq!(v["response_flags"], "UF");
        assert_eq!(
            v["response_code_details"],
            "upstream_reset_before_response_started{connection_failure}"
        );
        assert_eq!(v["user_agent"], serde_json::Value::Null);
        assert!(v["start_time"].as_str().unwrap().ends_with('Z'));
        let text = e.text();
        assert!(
            text.contains("\"GET /items?x=1 HTTP/1.1\" 503 UF upstream_reset"),
            "{text}"
        );
        // What needs escaping is escaped; the rest is copied as it is.
        e.user_agent = Some("say \"hi\"\\ \u{1} héllo".into());
        e.start_time = SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(1_796_631_302_123);
        let v: serde_json::Value = serde_json::from_str(&e.json()).unwrap();
        assert_eq!(v["user_agent"], "say \"hi\"\\ \u{1} héllo");
        assert_eq!(v["start_time"], "2026-12-07T08:15:02.123Z");
        e.start_time = SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(1_796_631_302_007);
        e.downstream_local_address = Some("10.0.0.7:8080".parse().unwrap());
        e.downstream_remote_address = Some("[::1]:40000".parse().unwrap());
        e.bytes_sent = 0;
        e.duration = 1234567;
        let v: serde_json::Value = serde_json::from_str(&e.json()).unwrap();
        assert_eq!(v["start_time"], "2026-12-07T08:15:02.007Z");
        assert_eq!(v["downstream_local_address"], "10.0.0.7:8080");
        assert_eq!(v["downstream_remote_address"], "[::1]:40000");
        assert_eq!(
            (v["bytes_sent"].as_u64(), v["duration"].as_u64()),
            (Some(0), Some(1234567))
        );
    }

    #[test]
    fn trace_ids_come_from_w3c_then_b3() {
        let mut h = hyper::HeaderMap::new();
        h.insert(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
                .parse()
                .unwrap(),
        );
        assert_eq!(
            trace_id(&h).as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        let mut b = hyper::HeaderMap::new();
        b.insert(
            "b3",
            "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1"
                .parse()
                .unwrap(),
        );
        assert_eq!(
            trace_id(&b).as_deref(),
            Some("80f198ee56343ba864fe8b2a57d3eff7")
        );
    }
}
