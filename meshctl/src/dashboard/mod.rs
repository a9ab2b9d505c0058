//! `meshctl dashboard`: a small web page on localhost with the live service graph (workloads
//! as nodes; edges with requests per second, success rate, p99 latency and mTLS state) and
//! each service's golden signals, worked out from the sidecars' own metrics pages every few
//! seconds: no Prometheus needed. The local mesh only for now.
//!
//! `GET /` is the page (one file, no scripts from elsewhere); `GET /api/graph` is what it
//! draws, as JSON.

pub mod graph;

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::time::Instant;

use crate::local::Mesh;
use crate::local::observe;
use graph::{Totals, View, Workload};

/// The page.
const INDEX: &str = include_str!("index.html");

/// What the dashboard has seen: the mesh's totals at recent moments.
pub struct Dashboard {
    mesh: Mesh,
    /// Rates are over about this long.
    window: Duration,
    history: Mutex<VecDeque<(Instant, Arc<Totals>)>>,
    problems: Mutex<Vec<String>>,
}

impl Dashboard {
    /// A dashboard of the local mesh in `mesh`, with rates over `window`.
    pub fn new(mesh: Mesh, window: Duration) -> Arc<Dashboard> {
        Arc::new(Dashboard {
            mesh,
            window,
            history: Mutex::new(VecDeque::new()),
            problems: Mutex::new(Vec::new()),
        })
    }

    /// Asks every sidecar for its metrics once, and keeps the totals.
    pub async fn scrape(&self) {
        let (pods, mut problems) = match self.mesh.state() {
            Ok(st) => (
                st.pods
                    .into_values()
                    .filter(|p| p.sidecar)
                    .collect::<Vec<_>>(),
                Vec::new(),
            ),
            Err(e) => (Vec::new(), vec![format!("the local mesh: {e}")]),
        };
        let workloads: Vec<Workload> = pods
            .iter()
            .map(|p| Workload {
                namespace: p.namespace.clone(),
                workload: p.workload().to_string(),
                app: p.labels.get("app").cloned().unwrap_or_default(),
                version: p.labels.get("version").cloned().unwrap_or_default(),
            })
            .collect();
        let mut asks = tokio::task::JoinSet::new();
        for pod in pods {
            asks.spawn(async move { observe::scrape(&pod).await });
        }
        let mut pages = Vec::new();
        while let Some(done) = asks.join_next().await {
            match done {
                Ok(Ok(page)) => pages.push(page),
                Ok(Err(e)) => problems.push(e),
                Err(e) => problems.push(e.to_string()),
            }
        }
        problems.sort();
        let totals = Arc::new(Totals::of(&workloads, &pages));
        let now = Instant::now();
        if let Ok(mut h) = self.history.lock() {
            h.push_back((now, totals));
            // Keep the newest moment at least a window old, as the baseline.
            while h.len() > 2 && h.get(1).is_some_and(|(t, _)| now - *t >= self.window) {
                h.pop_front();
            }
        }
        if let Ok(mut p) = self.problems.lock() {
            *p = problems;
        }
    }

    /// What the page draws now.
    pub fn view(&self) -> View {
        let (earlier, now) = match self.history.lock() {
            Ok(h) => (h.front().cloned(), h.back().cloned()),
            Err(_) => (None, None),
        };
        let mut view = match (earlier, now) {
            (Some((t0, a)), Some((t1, b))) if t1 > t0 => {
                View::between(Some(&a), &b, (t1 - t0).as_secs_f64())
            }
            (_, Some((_, b))) => View::between(None, &b, 0.0),
            _ => View::between(None, &Totals::default(), 0.0),
        };
        if let Ok(p) = self.problems.lock() {
            view.problems = p.clone();
        }
        view
    }

    /// Scrapes every `interval` until the process ends.
    pub async fn keep_scraping(self: Arc<Self>, interval: Duration) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.scrape().await;
        }
    }

    /// Serves the page and its data on `listener` until the process ends.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) {
        loop {
            let Ok((conn, _)) = listener.accept().await else {
                continue;
            };
            let me = self.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    let me = me.clone();
                    async move { Ok::<_, Infallible>(me.answer(&req)) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(conn), svc)
                    .await;
            });
        }
    }

    fn answer<B>(&self, req: &Request<B>) -> Response<Full<Bytes>> {
        let reply = |status: StatusCode, content_type: &'static str, body: Bytes| {
            let mut r = Response::new(Full::new(body));
            *r.status_mut() = status;
            r.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static(content_type),
            );
            r.headers_mut().insert(
                hyper::header::CACHE_CONTROL,
                hyper::header::HeaderValue::from_static("no-store"),
            );
            r
        };
        if req.method() != Method::GET {
            return reply(
                StatusCode::METHOD_NOT_ALLOWED,
                "text/plain; charset=utf-8",
                Bytes::from_static(b"use GET\n"),
            );
        }
        match req.uri().path() {
            "/" | "/index.html" => reply(
                StatusCode::OK,
                "text/html; charset=utf-8",
                Bytes::from_static(INDEX.as_bytes()),
            ),
            "/api/graph" => match serde_json::to_vec(&self.view()) {
                Ok(body) => reply(StatusCode::OK, "application/json", Bytes::from(body)),
                Err(e) => reply(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "text/plain; charset=utf-8",
                    Bytes::from(format!("{e}\n")),
                ),
            },
            _ => reply(
                StatusCode::NOT_FOUND,
                "text/plain; charset=utf-8",
                Bytes::from_static(b"paths here: / and /api/graph\n"),
            ),
        }
    }
}
