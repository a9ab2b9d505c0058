//! The application's own metrics, merged into the page Prometheus scrapes (Istio's metrics
//! merging). The injector points the pod's `prometheus.io/*` annotations at the proxy's
//! `:15020/stats/prometheus` and hands the proxy the application's originals in
//! `ISTIO_PROMETHEUS_ANNOTATIONS` (`{"scrape":"true","port":"8080","path":"/metrics"}`), so
//! one scrape job finds both, and under STRICT mTLS Prometheus needs no mesh certificate.
//!
//! Each scrape of the proxy asks the application on 127.0.0.1 (the proxy's own traffic is
//! never captured). The page takes the application's format: when it answers OpenMetrics,
//! the proxy's families come first and one `# EOF` ends the page; when it answers the older
//! Prometheus text format, the proxy's families are written in that format too (`info`
//! families as gauges, counters named by their `_total` sample, no `# UNIT` or `# EOF`), so a
//! parser of either format reads the whole page. If the application does not answer, the
//! proxy's own metrics are served alone and the failure is counted.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::header::{ACCEPT, CONTENT_TYPE, HeaderValue};
use hyper_util::rt::TokioIo;
use serde::Deserialize;

/// What Prometheus is told a page in the OpenMetrics format is.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// What Prometheus is told a page in its older text format is.
pub const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Asked of the application when Prometheus's own `Accept` is not passed on.
const DEFAULT_ACCEPT: &str =
    "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
/// How long the application may take when Prometheus does not say its scrape timeout.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// Istio's status port, where the merged page is served.
const ISTIO_STATUS_PORT: u16 = 15020;
/// The largest page taken from the application.
const MAX_BODY: usize = 16 << 20;

/// Where the application serves its metrics.
#[derive(Debug)]
pub struct AppMetrics {
    port: u16,
    path: String,
    failures: AtomicU64,
}

#[derive(Deserialize)]
struct AnnotationsJson {
    #[serde(default)]
    scrape: Option<String>,
    #[serde(default)]
    port: Option<String>,
    #[serde(default)]
    path: Option<String>,
}

/// The application's page, as it answered.
pub struct AppPage {
    /// Its `Content-Type`, if it said one.
    pub content_type: Option<String>,
    /// The page.
    pub body: Bytes,
}

impl AppMetrics {
    /// Reads Istio's `ISTIO_PROMETHEUS_ANNOTATIONS` JSON, the pod's original annotations, as
    /// Istio's agent does: `None` when `scrape` is `"false"` or the port is the metrics port
    /// itself; port 80 and path `/metrics` when unsaid. The error names the field.
    pub fn parse(json: &str) -> Result<Option<Self>, String> {
        let raw: AnnotationsJson = serde_json::from_str(json).map_err(|e| {
            format!("ISTIO_PROMETHEUS_ANNOTATIONS is not the annotations' JSON: {e}")
        })?;
        if raw
            .scrape
            .as_deref()
            .is_some_and(|s| s.trim().eq_ignore_ascii_case("false"))
        {
            return Ok(None);
        }
        let port = match raw.port.as_deref().map(str::trim) {
            None | Some("") => "80",
            Some(p) => p,
        };
        let port = port.parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(|| {
            format!(
                "ISTIO_PROMETHEUS_ANNOTATIONS port {port:?} (the pod's prometheus.io/port) \
                     is not a port number"
            )
        })?;
        if port == ISTIO_STATUS_PORT {
            // The page itself (a pod injected twice): nothing of the application's to merge.
            return Ok(None);
        }
        let path = match raw.path.as_deref().map(str::trim) {
            None | Some("") => "/metrics".to_string(),
            Some(p) if p.starts_with('/') => p.to_string(),
            Some(p) => format!("/{p}"),
        };
        if path.parse::<hyper::Uri>().is_err() {
            return Err(format!(
                "ISTIO_PROMETHEUS_ANNOTATIONS path {path:?} (the pod's prometheus.io/path) \
                 is not a URL path"
            ));
        }
        Ok(Some(AppMetrics {
            port,
            path,
            failures: AtomicU64::new(0),
        }))
    }

    /// The application's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Where the application is asked, for logs: `127.0.0.1:8080/metrics`.
    pub fn target(&self) -> String {
        format!("127.0.0.1:{}{}", self.port, self.path)
    }

    /// How many scrapes of the application failed.
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    /// Asks the application for its page, passing on Prometheus's `Accept` and keeping within
    /// its scrape timeout (`X-Prometheus-Scrape-Timeout-Seconds`). `None` (counted) when the
    /// application does not answer with a page.
    pub async fn scrape(
        &self,
        accept: Option<&HeaderValue>,
        scrape_timeout: Option<&HeaderValue>,
    ) -> Option<AppPage> {
        let timeout = scrape_timeout
            .and_then(|v| v.to_str().ok())
            .and_then(|s| s.trim().parse::<f64>().ok())
            .filter(|s| s.is_finite() && *s > 0.0)
            // Leave the proxy's own rendering some of Prometheus's time.
            .map(|s| Duration::from_secs_f64(s * 0.8))
            .unwrap_or(DEFAULT_TIMEOUT);
        let accept = accept
            .cloned()
            .unwrap_or(HeaderValue::from_static(DEFAULT_ACCEPT));
        match tokio::time::timeout(timeout, self.ask(accept)).await {
            Ok(Ok(page)) => Some(page),
            Ok(Err(e)) => {
                self.failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    "the application's metrics at {} did not come: {e}",
                    self.target()
                );
                None
            }
            Err(_) => {
                self.failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    "the application's metrics at {} took longer than {timeout:?}",
                    self.target()
                );
                None
            }
        }
    }

    async fn ask(
        &self,
        accept: HeaderValue,
    ) -> Result<AppPage, Box<dyn std::error::Error + Send + Sync>> {
        let stream = tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        let req = hyper::Request::get(self.path.as_str())
            .header(hyper::header::HOST, format!("127.0.0.1:{}", self.port))
            .header(hyper::header::USER_AGENT, "mesh-proxy metrics merge")
            .header(ACCEPT, accept)
            .body(http_body_util::Empty::<Bytes>::new())?;
        let resp = sender.send_request(req).await?;
        if !resp.status().is_success() {
            return Err(format!("it answered {}", resp.status()).into());
        }
        let content_type = resp
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = http_body_util::Limited::new(resp.into_body(), MAX_BODY)
            .collect()
            .await?
            .to_bytes();
        Ok(AppPage { content_type, body })
    }
}

/// True when a `Content-Type` says OpenMetrics.
fn is_openmetrics(content_type: Option<&str>) -> bool {
    content_type.is_some_and(|c| {
        c.trim_start()
            .to_ascii_lowercase()
            .starts_with("application/openmetrics-text")
    })
}

/// One page of the proxy's metrics (OpenMetrics, as rendered) and the application's, and the
/// `Content-Type` it goes out with.
pub fn merge(ours: String, app: Option<AppPage>) -> (&'static str, String) {
    let Some(app) = app else {
        return (OPENMETRICS, ours);
    };
    let app_text = String::from_utf8_lossy(&app.body);
    if is_openmetrics(app.content_type.as_deref()) {
        let mut page = strip_eof(&ours).to_string();
        let app_text = strip_eof(&app_text);
        page.push_str(app_text);
        if !app_text.is_empty() && !app_text.ends_with('\n') {
            page.push('\n');
        }
        page.push_str("# EOF\n");
        (OPENMETRICS, page)
    } else {
        let mut page = to_prometheus_text(&ours);
        page.push_str(&app_text);
        if !app_text.is_empty() && !app_text.ends_with('\n') {
            page.push('\n');
        }
        (PROMETHEUS_TEXT, page)
    }
}

/// The page without its closing `# EOF` line.
fn strip_eof(page: &str) -> &str {
    let trimmed = page.trim_end_matches('\n');
    match trimmed.strip_suffix("# EOF") {
        Some(rest) if rest.is_empty() || rest.ends_with('\n') => rest,
        _ => page,
    }
}

/// The proxy's OpenMetrics page in Prometheus's older text format: a counter family `x`
/// (samples `x_total`) becomes `x_total`, an `info` family `x` becomes the gauge `x_info`,
/// `unknown` becomes `untyped`; `# UNIT` and `# EOF` go.
pub fn to_prometheus_text(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len());
    // `# HELP` comes before `# TYPE`: held until the type says the family's name.
    let mut help: Option<(&str, &str)> = None;
    for line in openmetrics.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            if let Some((name, text)) = help.take() {
                push_help(&mut out, name, text);
            }
            let (name, text) = rest.split_once(' ').unwrap_or((rest, ""));
            help = Some((name, text));
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "untyped"));
            let (name, kind) = match kind {
                "counter" if !name.ends_with("_total") => (format!("{name}_total"), "counter"),
                "info" => (format!("{name}_info"), "gauge"),
                "unknown" | "stateset" | "gaugehistogram" => (name.to_string(), "untyped"),
                other => (name.to_string(), other),
            };
            if let Some((_, text)) = help.take() {
                push_help(&mut out, &name, text);
            }
            out.push_str("# TYPE ");
            out.push_str(&name);
            out.push(' ');
            out.push_str(kind);
            out.push('\n');
        } else if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        } else {
            if let Some((name, text)) = help.take() {
                push_help(&mut out, name, text);
            }
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

fn push_help(out: &mut String, name: &str, text: &str) {
    out.push_str("# HELP ");
    out.push_str(name);
    out.push(' ');
    out.push_str(text);
    out.push('\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    const OURS: &str = "# HELP istio_requests Requests.\n# TYPE istio_requests counter\n\
        istio_requests_total{reporter=\"destination\"} 3\n\
        # HELP mesh_proxy_build The proxy's version.\n# TYPE mesh_proxy_build info\n\
        mesh_proxy_build_info{version=\"0.1.0\"} 1\n\
        # HELP istio_request_duration_milliseconds Durations.\n\
        # TYPE istio_request_duration_milliseconds histogram\n# UNIT istio_request_duration_milliseconds milliseconds\n\
        istio_request_duration_milliseconds_bucket{le=\"+Inf\"} 3\n\
        istio_request_duration_milliseconds_sum 4.5\n\
        istio_request_duration_milliseconds_count 3\n# EOF\n";

    #[test]
    fn the_annotations_say_where_the_application_serves() {
        let m = AppMetrics::parse(r#"{"scrape":"true","port":"9090","path":"/stats"}"#)
            .unwrap()
            .unwrap();
        assert_eq!(m.target(), "127.0.0.1:9090/stats");
        let m = AppMetrics::parse(r#"{"scrape":"true","port":"8080"}"#)
            .unwrap()
            .unwrap();
        assert_eq!(
            m.target(),
            "127.0.0.1:8080/metrics",
            "Prometheus's default path"
        );
        let m = AppMetrics::parse(r#"{"path":"stats"}"#).unwrap().unwrap();
        assert_eq!(
            m.target(),
            "127.0.0.1:80/stats",
            "Istio's agent's default port"
        );
        for off in [
            r#"{"scrape":"false","port":"8080"}"#,
            r#"{"scrape":"False"}"#,
            r#"{"scrape":"true","port":"15020","path":"/stats/prometheus"}"#,
        ] {
            assert!(AppMetrics::parse(off).unwrap().is_none(), "{off}");
        }
        let e = AppMetrics::parse(r#"{"scrape":"true","port":"http"}"#).unwrap_err();
        assert!(
            e.contains("prometheus.io/port") && e.contains("\"http\""),
            "{e}"
        );
        let e = AppMetrics::parse("[1]").unwrap_err();
        assert!(e.contains("ISTIO_PROMETHEUS_ANNOTATIONS"), "{e}");
    }

    #[test]
    fn an_openmetrics_application_shares_one_eof() {
        let app = AppPage {
            content_type: Some(OPENMETRICS.into()),
            body: Bytes::from_static(b"# TYPE orders counter\norders_total 7\n# EOF\n"),
        };
        let (ct, page) = merge(OURS.to_string(), Some(app));
        assert_eq!(ct, OPENMETRICS);
        assert_eq!(page.matches("# EOF").count(), 1, "{page}");
        assert!(page.ends_with("orders_total 7\n# EOF\n"), "{page}");
        assert!(page.contains("mesh_proxy_build_info{"), "{page}");
    }

    #[test]
    fn a_prometheus_text_application_gets_the_proxys_families_in_its_format() {
        let app = AppPage {
            content_type: Some("text/plain; version=0.0.4".into()),
            body: Bytes::from_static(b"# TYPE orders_total counter\norders_total 7"),
        };
        let (ct, page) = merge(OURS.to_string(), Some(app));
        assert_eq!(ct, PROMETHEUS_TEXT);
        assert!(
            !page.contains("# EOF") && !page.contains("# UNIT"),
            "{page}"
        );
        assert!(page.contains("# HELP istio_requests_total Requests.\n# TYPE istio_requests_total counter\nistio_requests_total{"), "{page}");
        assert!(
            page.contains("# TYPE mesh_proxy_build_info gauge\nmesh_proxy_build_info{"),
            "{page}"
        );
        assert!(
            page.contains("# TYPE istio_request_duration_milliseconds histogram\n"),
            "{page}"
        );
        assert!(page.ends_with("orders_total 7\n"), "{page}");
    }

    #[test]
    fn without_the_application_the_page_is_the_proxys_own() {
        let (ct, page) = merge(OURS.to_string(), None);
        assert_eq!(ct, OPENMETRICS);
        assert_eq!(page, OURS);
    }
}
