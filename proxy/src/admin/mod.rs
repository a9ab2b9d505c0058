//! Admin (127.0.0.1:15000: `/ready`, `/config_dump`, `/stats`, `/clusters`, `/stats/prometheus`,
//! `/tap`, `/certs`, `/authn`, `/drain`),
//! readiness (`/healthz/ready` on 15021) and metrics (`/stats/prometheus` and
//! `/healthz/ready` on 15020, where Prometheus scrapes), served with hyper.

mod app_metrics;
mod probe;

pub use app_metrics::{AppMetrics, to_prometheus_text};
pub use probe::AppProbers;

use std::convert::Infallible;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use http_body_util::{Either, Full, StreamBody};
use hyper::body::Frame;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use crate::drain;
use crate::inputs::Inputs;

/// Which paths a listener answers.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Scope {
    /// Everything (localhost only).
    Admin,
    /// Only `/healthz/ready` (reachable from outside the pod).
    Readiness,
    /// `/stats/prometheus` and `/healthz/ready` (reachable from outside the pod).
    Metrics,
}

/// What the proxy knows of the application beside it, set once it has read it: the probes
/// kubelet sends through the proxy and where the application serves its own metrics.
#[derive(Default)]
pub struct App {
    /// The application's HTTP probes (`ISTIO_KUBE_APP_PROBERS`).
    pub probers: OnceLock<AppProbers>,
    /// The application's metrics, merged into 15020's page (`ISTIO_PROMETHEUS_ANNOTATIONS`).
    pub metrics: OnceLock<AppMetrics>,
}

/// Serves admin requests until a drain begins. A POST to `/drain` sends on `drain_request`.
pub async fn serve(
    listener: TcpListener,
    inputs: Arc<Inputs>,
    drain_request: mpsc::Sender<()>,
    drain: drain::Watch,
) {
    let none = Arc::new(App::default());
    serve_scoped(listener, inputs, drain_request, drain, Scope::Admin, none).await;
}

async fn serve_scoped(
    listener: TcpListener,
    inputs: Arc<Inputs>,
    drain_request: mpsc::Sender<()>,
    mut drain: drain::Watch,
    scope: Scope,
    app: Arc<App>,
) {
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((conn, _)) = accepted else { continue };
                let inputs = inputs.clone();
                let drain_request = drain_request.clone();
                let draining = drain.clone();
                let app = app.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        let inputs = inputs.clone();
                        let drain_request = drain_request.clone();
                        let connections = draining.open_connections();
                        let draining_watch = draining.clone();
                        let draining = draining.is_draining();
                        let app = app.clone();
                        async move {
                            let path = req.uri().path();
                            if scope == Scope::Admin && path == "/tap" {
                                return Ok(tap(&req, draining_watch));
                            }
                            let answer = async {
                            let path = req.uri().path();
                            if scope == Scope::Readiness && path.starts_with("/app-health/") {
                                let answer = match app.probers.get() {
                                    Some(p) => p.probe(path).await,
                                    None => None,
                                };
                                return Ok(answer.unwrap_or_else(|| text(StatusCode::NOT_FOUND, "no such application probe (ISTIO_KUBE_APP_PROBERS)\n")));
                            }
                            if scope == Scope::Readiness && path != "/healthz/ready" {
                                return Ok::<_, Infallible>(text(StatusCode::NOT_FOUND, "only /healthz/ready here\n"));
                            }
                            if scope == Scope::Metrics && !matches!(path, "/healthz/ready" | "/stats/prometheus") {
                                return Ok::<_, Infallible>(text(StatusCode::NOT_FOUND, "paths here: /stats/prometheus, /healthz/ready\n"));
                            }
                            if scope == Scope::Metrics && path == "/stats/prometheus" && req.method() == Method::GET {
                                return Ok(merged_metrics(&req, &inputs, &app, connections).await);
                            }
                            Ok::<_, Infallible>(route(req, &inputs, &drain_request, draining, connections).await)
                            };
                            answer.await.map(|r| r.map(Either::Left))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(conn), svc).await;
                });
            }
            _ = drain.signaled() => return,
        }
    }
}

/// The body of a `/tap` stream: JSON lines as entries come.
type TapBody = StreamBody<tokio_stream::wrappers::ReceiverStream<Result<Frame<Bytes>, Infallible>>>;

/// `GET /tap?filters`: streams the requests the proxy finishes from now on as JSON lines (the
/// access log's keys), until the caller goes or the proxy drains. The response's headers are
/// sent once the watch has begun, so whatever the caller sends after them is seen.
fn tap(req: &Request<Incoming>, mut drain: drain::Watch) -> Response<Either<Full<Bytes>, TapBody>> {
    use crate::telemetry::tap;
    if req.method() != Method::GET {
        return text(StatusCode::METHOD_NOT_ALLOWED, "use GET for /tap\n").map(Either::Left);
    }
    let filter = match tap::Filter::parse(req.uri().query().unwrap_or("")) {
        Ok(f) => f,
        Err(e) => return text(StatusCode::BAD_REQUEST, format!("{e}\n")).map(Either::Left),
    };
    let mut watch = tap::Watch::start();
    let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, Infallible>>(64);
    tokio::spawn(async move {
        loop {
            let line = tokio::select! {
                next = watch.next() => match next {
                    tap::Next::Entry(e) if filter.matches(&e) => e.json(),
                    tap::Next::Entry(_) => continue,
                    tap::Next::Missed(n) => format!("{{\"missed\":{n}}}\n"),
                },
                _ = tx.closed() => return,
                _ = drain.signaled() => return,
            };
            if tx.send(Ok(Frame::data(Bytes::from(line)))).await.is_err() {
                return;
            }
        }
    });
    let mut r = Response::new(Either::Right(StreamBody::new(
        tokio_stream::wrappers::ReceiverStream::new(rx),
    )));
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/x-ndjson"),
    );
    r
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r
}

async fn route(
    req: Request<Incoming>,
    inputs: &Inputs,
    drain_request: &mpsc::Sender<()>,
    draining: bool,
    connections: usize,
) -> Response<Full<Bytes>> {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/ready" | "/healthz/ready") => {
            if draining {
                text(StatusCode::SERVICE_UNAVAILABLE, "DRAINING\n")
            } else if inputs.ready() {
                text(StatusCode::OK, "LIVE\n")
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, "NOT READY: no state yet\n")
            }
        }
        (&Method::GET, "/config_dump") => {
            let state = inputs.state.borrow().clone();
            let dump = serde_json::to_value(&state.source).map(|mut v| {
                if let Some(map) = v.as_object_mut() {
                    map.insert("status".into(), runtime_status(inputs));
                }
                v
            });
            match dump.and_then(|v| serde_json::to_vec_pretty(&v)) {
                Ok(body) => {
                    let mut r = text(StatusCode::OK, body);
                    r.headers_mut().insert(
                        hyper::header::CONTENT_TYPE,
                        hyper::header::HeaderValue::from_static("application/json"),
                    );
                    r
                }
                Err(e) => text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("cannot render the state: {e}\n"),
                ),
            }
        }
        (&Method::GET, "/stats/prometheus") => {
            let Some(body) = render_metrics(inputs, None, connections).await else {
                return text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "rendering the metrics failed\n",
                );
            };
            metrics_page(app_metrics::OPENMETRICS, body)
        }
        (&Method::GET, "/certs") => {
            let mut r = text(StatusCode::OK, certificates(inputs).to_string());
            r.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("application/json"),
            );
            r
        }
        (&Method::GET, "/authn") => {
            let mut r = text(StatusCode::OK, authenticate(&req, inputs).await.to_string());
            r.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("application/json"),
            );
            r
        }
        (&Method::GET, "/stats") => text(StatusCode::OK, cluster_stats(inputs)),
        (&Method::GET, "/clusters") => text(StatusCode::OK, cluster_endpoints(inputs)),
        (&Method::POST, "/drain") => {
            let _ = drain_request.try_send(());
            text(StatusCode::OK, "draining\n")
        }
        (
            _,
            "/ready" | "/healthz/ready" | "/config_dump" | "/stats" | "/clusters"
            | "/stats/prometheus" | "/certs" | "/authn" | "/drain",
        ) => text(
            StatusCode::METHOD_NOT_ALLOWED,
            "use GET (POST for /drain)\n",
        ),
        _ => text(
            StatusCode::NOT_FOUND,
            "admin paths: /ready, /config_dump, /stats, /clusters, /stats/prometheus, /tap, /certs, /authn, POST /drain\n",
        ),
    }
}

/// Serves the readiness path and the application probes (the 15021 port kubelet probes).
pub async fn serve_readiness(
    listener: TcpListener,
    inputs: Arc<Inputs>,
    drain: drain::Watch,
    app: Arc<App>,
) {
    let (tx, _rx) = mpsc::channel(1);
    serve_scoped(listener, inputs, tx, drain, Scope::Readiness, app).await;
}

/// Serves Prometheus metrics, merged with the application's own, and readiness (the 15020
/// port Prometheus scrapes).
pub async fn serve_metrics(
    listener: TcpListener,
    inputs: Arc<Inputs>,
    drain: drain::Watch,
    app: Arc<App>,
) {
    let (tx, _rx) = mpsc::channel(1);
    serve_scoped(listener, inputs, tx, drain, Scope::Metrics, app).await;
}

/// The proxy's metrics page (OpenMetrics). A proxy with many series takes milliseconds to
/// render them: off the threads that carry traffic.
async fn render_metrics(
    inputs: &Inputs,
    app_scrape_failures: Option<u64>,
    connections: usize,
) -> Option<String> {
    let metrics = inputs.metrics.clone();
    let mut health = health(inputs, connections);
    health.app_scrape_failures = app_scrape_failures;
    tokio::task::spawn_blocking(move || metrics.render_with(Some(health)))
        .await
        .ok()
}

/// 15020's page: the proxy's metrics and, when the application serves its own, those too,
/// in the application's format.
async fn merged_metrics(
    req: &Request<Incoming>,
    inputs: &Inputs,
    app: &App,
    connections: usize,
) -> Response<Full<Bytes>> {
    let (page, failures) = match app.metrics.get() {
        Some(m) => {
            let page = m
                .scrape(
                    req.headers().get(hyper::header::ACCEPT),
                    req.headers().get("x-prometheus-scrape-timeout-seconds"),
                )
                .await;
            (page, Some(m.failures()))
        }
        None => (None, None),
    };
    let Some(ours) = render_metrics(inputs, failures, connections).await else {
        return text(
            StatusCode::INTERNAL_SERVER_ERROR,
            "rendering the metrics failed\n",
        );
    };
    let (content_type, body) = app_metrics::merge(ours, page);
    metrics_page(content_type, body)
}

fn metrics_page(content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut r = text(StatusCode::OK, body);
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    r
}

/// The proxy's own health for its metrics page: its certificate's remaining life, the state
/// it serves with, its open connections and its clusters' pools.
fn health(inputs: &Inputs, connections: usize) -> crate::metrics::Health {
    let cert_expiry_seconds = inputs
        .svids
        .as_ref()
        .and_then(|s| s.borrow().clone())
        .map(
            |svid| match svid.not_after.duration_since(std::time::SystemTime::now()) {
                Ok(left) => left.as_secs_f64(),
                Err(past) => -past.duration().as_secs_f64(),
            },
        );
    let pools = inputs
        .upstreams
        .breakers()
        .into_iter()
        .map(|(cluster, breaker)| {
            let s = breaker.snapshot();
            crate::metrics::Pool {
                cluster,
                cx_active: s.cx_active.into(),
                rq_active: s.rq_active.into(),
                rq_pending_active: s.rq_pending_active.into(),
                cx_overflow: s.cx_overflow,
                rq_pending_overflow: s.rq_pending_overflow,
                rq_overflow: s.rq_overflow,
            }
        })
        .collect();
    crate::metrics::Health {
        cert_expiry_seconds,
        state_version: inputs.state.borrow().source.version.clone(),
        states_refused: inputs.on_demand.as_ref().map(|od| od.refused()),
        app_scrape_failures: None,
        connections: u64::try_from(connections).unwrap_or(u64::MAX),
        pools,
    }
}

/// The workload certificate and the mesh roots the proxy holds (as Envoy's `/certs`, for
/// `meshctl proxy-config POD secrets`): identity, validity, serial, and each root's subject,
/// validity and SHA-256. `{"certificates": []}` for a proxy without an identity.
fn certificates(inputs: &Inputs) -> serde_json::Value {
    use serde_json::json;
    use x509_parser::prelude::*;
    let Some(svid) = inputs.svids.as_ref().and_then(|s| s.borrow().clone()) else {
        return json!({"certificates": [], "roots": []});
    };
    let rfc3339 = crate::telemetry::access_log::rfc3339;
    let left = match svid.not_after.duration_since(std::time::SystemTime::now()) {
        Ok(d) => d.as_secs_f64(),
        Err(e) => -e.duration().as_secs_f64(),
    };
    let serial = svid
        .chain
        .first()
        .and_then(|c| X509Certificate::from_der(c.as_ref()).ok())
        .map(|(_, c)| c.raw_serial_as_string())
        .unwrap_or_default();
    let roots: Vec<serde_json::Value> = svid
        .roots
        .iter()
        .map(|r| {
            let sha = ring::digest::digest(&ring::digest::SHA256, r.as_ref());
            let hex: String = sha.as_ref().iter().map(|b| format!("{b:02x}")).collect();
            match X509Certificate::from_der(r.as_ref()) {
                Ok((_, c)) => json!({
                    "subject": c.subject().to_string(),
                    "validFrom": rfc3339(c.validity().not_before.to_datetime().into()),
                    "validUntil": rfc3339(c.validity().not_after.to_datetime().into()),
                    "sha256": hex,
                }),
                Err(_) => json!({"sha256": hex}),
            }
        })
        .collect();
    json!({
        "certificates": [{
            "name": "default",
            "identity": svid.identity,
            "serialNumber": serial,
            "validFrom": rfc3339(svid.not_before),
            "validUntil": rfc3339(svid.not_after),
            "secondsLeft": left.round(),
            "chainLength": svid.chain.len(),
        }],
        "roots": roots,
    })
}

/// The circuit breakers of the clusters the proxy has sent to, in Envoy's `/stats` text form
/// (`cluster.<name>.upstream_rq_pending_overflow: 21`), so that Istio's circuit-breaking task
/// reads the same here; then retry budgets, local rate limits and outlier ejections.
fn cluster_stats(inputs: &Inputs) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    for (name, breaker) in inputs.upstreams.breakers() {
        let s = breaker.snapshot();
        let l = &breaker.limits;
        let remaining = |max: u32, used: u32| max.saturating_sub(used);
        let open = |max: u32, used: u32| u8::from(used >= max);
        let lines: [(&str, u64); 16] = [
            (
                "circuit_breakers.default.cx_open",
                open(l.max_connections, s.cx_active).into(),
            ),
            (
                "circuit_breakers.default.rq_pending_open",
                open(l.max_pending, s.rq_pending_active).into(),
            ),
            (
                "circuit_breakers.default.rq_open",
                open(l.max_requests, s.rq_active).into(),
            ),
            (
                "circuit_breakers.default.rq_retry_open",
                open(l.max_retries, s.rq_retry_active).into(),
            ),
            (
                "circuit_breakers.default.remaining_cx",
                remaining(l.max_connections, s.cx_active).into(),
            ),
            (
                "circuit_breakers.default.remaining_pending",
                remaining(l.max_pending, s.rq_pending_active).into(),
            ),
            (
                "circuit_breakers.default.remaining_rq",
                remaining(l.max_requests, s.rq_active).into(),
            ),
            (
                "circuit_breakers.default.remaining_retries",
                remaining(l.max_retries, s.rq_retry_active).into(),
            ),
            ("upstream_cx_active", s.cx_active.into()),
            ("upstream_cx_overflow", s.cx_overflow),
            ("upstream_rq_active", s.rq_active.into()),
            ("upstream_rq_overflow", s.rq_overflow),
            ("upstream_rq_pending_active", s.rq_pending_active.into()),
            ("upstream_rq_pending_overflow", s.rq_pending_overflow),
            ("upstream_rq_retry_active", s.rq_retry_active.into()),
            ("upstream_rq_retry_overflow", s.retry_overflow),
        ];
        for (stat, value) in lines {
            let _ = writeln!(out, "cluster.{name}.{stat}: {value}");
        }
    }
    for (name, b) in inputs.loads.retry_budgets.all() {
        let _ = writeln!(
            out,
            "cluster.{name}.retry_budget.budget_percent: {}",
            b.percent
        );
        let _ = writeln!(
            out,
            "cluster.{name}.retry_budget.min_retry_concurrency: {}",
            b.min_concurrency
        );
        let _ = writeln!(out, "cluster.{name}.retry_budget.active: {}", b.active);
        let _ = writeln!(out, "cluster.{name}.retry_budget.overflow: {}", b.refused);
        let _ = writeln!(out, "cluster.{name}.upstream_rq_retry: {}", b.made);
    }
    // Envoy's local rate limit counters, one prefix per limit.
    for (name, b) in inputs.rate_limits.all() {
        for (stat, value) in [
            ("ok", b.ok),
            ("rate_limited", b.limited),
            ("tokens", b.tokens.into()),
            ("max_tokens", b.max_tokens.into()),
        ] {
            let _ = writeln!(out, "http_local_rate_limit.{name}.{stat}: {value}");
        }
    }
    for health in inputs.loads.outliers.all() {
        let s = health.snapshot();
        let name = &health.policy.cluster;
        for (stat, value) in [
            ("ejections_active", s.ejections_active as u64),
            ("ejections_enforced_total", s.ejections_total),
            ("ejections_overflow", s.ejections_overflow),
        ] {
            let _ = writeln!(out, "cluster.{name}.outlier_detection.{stat}: {value}");
        }
    }
    out
}

/// What the proxy has made of its state so far, beside the state in `/config_dump` (as
/// Envoy's dump carries endpoint health): each cluster's retry budget, outlier detection with
/// its ejected endpoints, and each local rate limit's bucket.
fn runtime_status(inputs: &Inputs) -> serde_json::Value {
    use serde_json::json;
    let budgets: Vec<_> = inputs
        .loads
        .retry_budgets
        .all()
        .into_iter()
        .map(|(cluster, b)| {
            json!({
                "cluster": cluster,
                "budgetPercent": b.percent,
                "minRetryConcurrency": b.min_concurrency,
                "retriesActive": b.active,
                "retriesMade": b.made,
                "retriesRefused": b.refused,
            })
        })
        .collect();
    let outliers: Vec<_> = inputs
        .loads
        .outliers
        .all()
        .into_iter()
        .map(|health| {
            let s = health.snapshot();
            let ejected: Vec<String> = s
                .endpoints
                .iter()
                .filter(|(_, e)| *e)
                .map(|(a, _)| a.to_string())
                .collect();
            json!({
                "cluster": health.policy.cluster,
                "ejectedEndpoints": ejected,
                "ejectionsActive": s.ejections_active,
                "ejectionsTotal": s.ejections_total,
                "ejectionsOverflow": s.ejections_overflow,
            })
        })
        .collect();
    let limits: Vec<_> = inputs
        .rate_limits
        .all()
        .into_iter()
        .map(|(name, b)| {
            json!({
                "name": name,
                "tokens": b.tokens,
                "maxTokens": b.max_tokens,
                "ok": b.ok,
                "rateLimited": b.limited,
            })
        })
        .collect();
    json!({
        "retryBudgets": budgets,
        "outlierDetection": outliers,
        "rateLimits": limits,
    })
}

/// The endpoints of the clusters with outlier detection and whether each is ejected, in
/// Envoy's `/clusters` text form (`<cluster>::<ip:port>::health_flags::/failed_outlier_check`).
fn cluster_endpoints(inputs: &Inputs) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    for health in inputs.loads.outliers.all() {
        let name = &health.policy.cluster;
        for (addr, ejected) in health.snapshot().endpoints {
            let flags = if ejected {
                "/failed_outlier_check"
            } else {
                "healthy"
            };
            let _ = writeln!(out, "{name}::{addr}::health_flags::{flags}");
        }
    }
    out
}

/// `GET /authn`: what the workload's RequestAuthentications make of the token this request
/// carries (in its headers or query, where the rules look), checked as an inbound request's
/// would be, with the key sets the proxy holds: `none` (no rule applies, or no token),
/// `verified` (with the principal and claims), or `refused` (the 401's reason). For `meshctl
/// why`.
async fn authenticate(req: &Request<Incoming>, inputs: &Inputs) -> serde_json::Value {
    let state = inputs.state.borrow().clone();
    let policies: Vec<String> = state
        .source
        .request_authentications
        .iter()
        .map(|p| format!("{}/{}", p.namespace, p.name))
        .collect();
    if state.authn.is_empty() {
        return serde_json::json!({"outcome": "none", "policies": policies});
    }
    let mut headers = req.headers().clone();
    let query = req.uri().query().unwrap_or("");
    let cache = inputs.jwks.get().map(AsRef::as_ref);
    match state.authn.authenticate(&mut headers, query, cache).await {
        Ok(None) => serde_json::json!({"outcome": "none", "policies": policies}),
        Ok(Some(v)) => serde_json::json!({
            "outcome": "verified",
            "policies": policies,
            "principal": v.principal,
            "audiences": v.audiences,
            "claims": v.claims,
        }),
        Err(refused) => serde_json::json!({
            "outcome": "refused",
            "policies": policies,
            "reason": refused.0,
        }),
    }
}
