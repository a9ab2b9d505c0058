//! Access logs: one line per request (and per TCP connection), written when the exchange ends,
//! as a JSON object with the keys of Istio's JSON access log (`accessLogEncoding: JSON`) plus
//! what explains a failure (`response_code_details`, the policy that denied it, the peers'
//! identities, the trace id), or as Envoy's default text line (`TEXT`).
//!
//! Lines go to a writer thread per file (`/dev/stdout` by default) through a bounded queue: a
//! request never waits on the disk or on whoever reads the proxy's output. When the queue is
//! full the line is dropped and counted (`mesh_proxy_access_log_dropped_total`).

use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::SystemTime;

use serde::Serialize;

/// Lines a writer holds before new ones are dropped.
const QUEUE: usize = 16 * 1024;

/// Where one file's lines go.
#[derive(Debug)]
pub struct Sink {
    path: String,
    tx: SyncSender<String>,
    dropped: AtomicU64,
}

impl Sink {
    /// Queues one line (with its newline).
    fn write(&self, line: String) {
        match self.tx.try_send(line) {
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
    let (tx, rx) = sync_channel(QUEUE);
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

/// Writes queued lines, flushing whenever the queue is empty.
fn write_lines(rx: Receiver<String>, out: Box<dyn Write + Send>) {
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, out);
    while let Ok(line) = rx.recv() {
        let _ = out.write_all(line.as_bytes());
        while let Ok(more) = rx.try_recv() {
            let _ = out.write_all(more.as_bytes());
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
#[derive(Clone, Debug, Default, Serialize)]
pub struct Entry {
    /// When the request arrived (RFC 3339, UTC, milliseconds).
    pub start_time: String,
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
            start_time: rfc3339(SystemTime::now()),
            direction,
            response_flags: "-",
            ..Entry::default()
        }
    }

    /// The JSON line.
    pub fn json(&self) -> String {
        let mut line = serde_json::to_string(self).unwrap_or_default();
        line.push('\n');
        line
    }

    /// Envoy's default text line (Istio's `accessLogEncoding: TEXT`), with the trace id and the
    /// denying policy after it when there are some.
    pub fn text(&self) -> String {
        fn d<T: std::fmt::Display>(v: &Option<T>) -> String {
            v.as_ref()
                .map_or_else(|| "-".to_string(), ToString::to_string)
        }
        let mut line = format!(
            "[{}] \"{} {} {}\" {} {} {} - \"-\" {} {} {} - \"{}\" \"{}\" \"{}\" \"{}\" \"{}\" {} - {} {} {} -",
            self.start_time,
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
            line.push_str(&format!(" trace_id={t}"));
        }
        if let Some(by) = &self.denied_by {
            line.push_str(&format!(" denied_by=\"{by}\""));
        }
        line.push('\n');
        line
    }

    /// Writes the entry to every log.
    pub fn write(&self, logs: &[Log]) {
        let (mut json, mut text) = (None, None);
        for log in logs {
            let line = if log.text {
                text.get_or_insert_with(|| self.text()).clone()
            } else {
                json.get_or_insert_with(|| self.json()).clone()
            };
            log.sink.write(line);
        }
    }
}

/// `2026-12-07T08:15:02.123Z`.
pub fn rfc3339(t: SystemTime) -> String {
    jiff::Timestamp::try_from(t)
        .map(|ts| ts.strftime("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
        .unwrap_or_default()
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
