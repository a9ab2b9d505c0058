//! `mesh-echo load`: sends requests to a URL from inside a pod, through its sidecar, and says
//! who answered (service, version), whether the caller's identity reached the destination
//! (mutual TLS), which requests failed and why, and the latency distribution. The demo and the
//! suite read its JSON report.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use crate::echo::{Echo, error_chain};

/// What to send.
#[derive(Clone, Debug)]
pub struct LoadConfig {
    /// The URL (`http://shipping-service:8080/`).
    pub url: String,
    /// How many requests; `None` = until stopped.
    pub requests: Option<usize>,
    /// Requests in flight at once.
    pub concurrency: usize,
    /// Requests per second across all workers; `None` = as fast as answers come.
    pub rate: Option<f64>,
    /// Extra request headers.
    pub headers: Vec<(String, String)>,
    /// Give up on one request after this long.
    pub timeout: Duration,
    /// Speak HTTP/2 without TLS (h2c) instead of HTTP/1.1.
    pub http2: bool,
}

impl Default for LoadConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            requests: Some(100),
            concurrency: 4,
            rate: None,
            headers: Vec::new(),
            timeout: Duration::from_secs(10),
            http2: false,
        }
    }
}

/// What happened.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Report {
    /// Requests sent.
    pub requests: usize,
    /// Answered 2xx.
    pub ok: usize,
    /// Everything else, by reason (`503`, `connect: ...`, `timeout`).
    pub failures: BTreeMap<String, usize>,
    /// 2xx answers by the answering service's version.
    pub by_version: BTreeMap<String, usize>,
    /// 2xx answers by answering service.
    pub by_service: BTreeMap<String, usize>,
    /// 2xx answers by the caller identity the destination saw (`none` = plaintext).
    pub by_peer: BTreeMap<String, usize>,
    /// 2xx answers that called upstreams, by who answered down the calls
    /// (`productpage/v1(details/v1,reviews/v2(ratings/v1))`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub by_chain: BTreeMap<String, usize>,
    /// Latency percentiles in milliseconds (all requests).
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Slowest.
    pub max_ms: f64,
    /// Wall time of the run in seconds.
    pub elapsed_s: f64,
}

impl Report {
    /// Share of requests answered 2xx.
    pub fn success_rate(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.ok as f64 / self.requests as f64
        }
    }

    /// True when every 2xx answer saw a caller identity, i.e. every request rode mutual TLS.
    pub fn all_mtls(&self) -> bool {
        self.ok > 0 && !self.by_peer.contains_key("none")
    }
}

#[derive(Default)]
struct Tally {
    report: Report,
    latencies: Vec<Duration>,
}

/// Progress while running: requests finished so far.
#[derive(Clone, Default)]
pub struct Progress {
    done: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl Progress {
    /// Requests finished so far.
    pub fn done(&self) -> usize {
        self.done.load(Ordering::Relaxed)
    }

    /// Asks an open-ended run to stop after the requests in flight.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Runs the load; `progress` can be watched (and stopped) from another task.
pub async fn run(config: LoadConfig, progress: Progress) -> anyhow::Result<Report> {
    let uri: http::Uri = config
        .url
        .parse()
        .map_err(|e| anyhow::anyhow!("--url {:?}: {e}", config.url))?;
    if uri.scheme_str() != Some("http") || uri.host().is_none() {
        anyhow::bail!("--url {:?}: expected http://HOST[:PORT]/PATH", config.url);
    }
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: Client<HttpConnector, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .http2_only(config.http2)
        .pool_max_idle_per_host(config.concurrency.max(1))
        .build(connector);
    let tally = Arc::new(Mutex::new(Tally::default()));
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let interval = config.rate.filter(|r| *r > 0.0).map(|r| 1.0 / r);
    let mut workers = Vec::new();
    for _ in 0..config.concurrency.max(1) {
        let (client, tally, next, progress, config, uri) = (
            client.clone(),
            tally.clone(),
            next.clone(),
            progress.clone(),
            config.clone(),
            uri.clone(),
        );
        workers.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if config.requests.is_some_and(|n| i >= n) || progress.stop.load(Ordering::Relaxed)
                {
                    return;
                }
                if let Some(every) = interval {
                    let due = started + Duration::from_secs_f64(every * i as f64);
                    tokio::time::sleep_until(due.into()).await;
                }
                let begun = Instant::now();
                let outcome = one(&client, &uri, &config).await;
                let took = begun.elapsed();
                let mut t = tally.lock().await;
                t.latencies.push(took);
                t.report.requests += 1;
                match outcome {
                    Ok(echo) => {
                        t.report.ok += 1;
                        if !echo.calls.is_empty() {
                            *t.report.by_chain.entry(echo.chain()).or_default() += 1;
                        }
                        *t.report.by_version.entry(echo.version).or_default() += 1;
                        *t.report.by_service.entry(echo.service).or_default() += 1;
                        let peer = echo.peer.unwrap_or_else(|| "none".into());
                        *t.report.by_peer.entry(peer).or_default() += 1;
                    }
                    Err(reason) => *t.report.failures.entry(reason).or_default() += 1,
                }
                drop(t);
                progress.done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for w in workers {
        w.await?;
    }
    let mut t = Arc::try_unwrap(tally)
        .map_err(|_| anyhow::anyhow!("a load worker outlived the run"))?
        .into_inner();
    t.latencies.sort_unstable();
    let pct = |p: f64| -> f64 {
        if t.latencies.is_empty() {
            return 0.0;
        }
        let idx = ((t.latencies.len() as f64 * p).ceil() as usize).clamp(1, t.latencies.len()) - 1;
        t.latencies[idx].as_secs_f64() * 1000.0
    };
    t.report.p50_ms = pct(0.50);
    t.report.p90_ms = pct(0.90);
    t.report.p99_ms = pct(0.99);
    t.report.max_ms = pct(1.0);
    t.report.elapsed_s = started.elapsed().as_secs_f64();
    Ok(t.report)
}

/// One request: the echo that answered, or why it failed.
async fn one(
    client: &Client<HttpConnector, Full<Bytes>>,
    uri: &http::Uri,
    config: &LoadConfig,
) -> Result<Echo, String> {
    let mut builder = Request::get(uri.clone());
    for (k, v) in &config.headers {
        builder = builder.header(k, v);
    }
    let req = builder
        .body(Full::new(Bytes::new()))
        .map_err(|e| format!("request: {e}"))?;
    let resp = match tokio::time::timeout(config.timeout, client.request(req)).await {
        Err(_) => return Err("timeout".into()),
        Ok(Err(e)) => return Err(error_chain(&e)),
        Ok(Ok(resp)) => resp,
    };
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("reading the answer: {e}"))?
        .to_bytes();
    if !status.is_success() {
        let flags = String::from_utf8_lossy(&body);
        let first = flags.lines().next().unwrap_or("").trim();
        return Err(format!("{} {first}", status.as_u16()).trim().to_string());
    }
    serde_json::from_slice(&body).map_err(|_| "2xx but not an echo answer".to_string())
}
