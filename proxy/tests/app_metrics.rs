//! The application's own metrics merged into the page Prometheus scrapes (15020), as Istio's
//! agent merges them: the injector hands the proxy the pod's original `prometheus.io/*`
//! annotations, and each scrape of the proxy asks the application on 127.0.0.1 and serves both
//! in the application's format.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{ACCEPT, CONTENT_TYPE};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use mesh_proxy::admin::AppMetrics;
use mesh_proxy::state::{State, proto};
use mesh_proxy::testing;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// An application serving `/metrics`: OpenMetrics when asked for it, else Prometheus text.
async fn app() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (c, _) = l.accept().await.unwrap();
            tokio::spawn(async move {
                let svc =
                    hyper::service::service_fn(|req: Request<hyper::body::Incoming>| async move {
                        let openmetrics = req
                            .headers()
                            .get(ACCEPT)
                            .and_then(|v| v.to_str().ok())
                            .is_some_and(|a| a.starts_with("application/openmetrics-text"));
                        let (ct, body): (&str, &[u8]) = match (req.uri().path(), openmetrics) {
                            ("/metrics", true) => (
                                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                                b"# TYPE orders counter\norders_total{shop=\"eu\"} 7\n# EOF\n",
                            ),
                            ("/metrics", false) => (
                                "text/plain; version=0.0.4",
                                b"# TYPE orders_total counter\norders_total{shop=\"eu\"} 7\n",
                            ),
                            _ => ("text/plain", b""),
                        };
                        let mut r = Response::new(Full::new(Bytes::from_static(body)));
                        r.headers_mut().insert(CONTENT_TYPE, ct.parse().unwrap());
                        if req.uri().path() != "/metrics" {
                            *r.status_mut() = hyper::StatusCode::NOT_FOUND;
                        }
                        Ok::<_, Infallible>(r)
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(c), svc)
                    .await;
            });
        }
    });
    addr
}

/// GETs `path` with an `Accept`, as Prometheus does: the content type and the page.
async fn scrape(addr: SocketAddr, path: &str, accept: &str) -> (String, String) {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::get(path)
        .header(hyper::header::HOST, "prometheus")
        .header(ACCEPT, accept)
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert!(resp.status().is_success(), "{}", resp.status());
    let ct = resp.headers()[CONTENT_TYPE].to_str().unwrap().to_string();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (ct, String::from_utf8(body.to_vec()).unwrap())
}

const PROMETHEUS_ACCEPT: &str = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

async fn proxy_with(annotations: serde_json::Value) -> mesh_proxy::Proxy {
    let state = Arc::new(State::compile(proto::ProxyState::default()).unwrap());
    let (tx, rx) = watch::channel(state);
    std::mem::forget(tx);
    let proxy = testing::start(rx, "10.0.0.1:1", "10.0.0.1:1", None).await;
    let metrics = AppMetrics::parse(&annotations.to_string())
        .unwrap()
        .unwrap();
    assert!(proxy.set_app_metrics(metrics));
    proxy
}

#[tokio::test]
async fn an_openmetrics_application_is_served_on_one_page_with_the_proxy() {
    let app = app().await;
    let proxy =
        proxy_with(serde_json::json!({"scrape": "true", "port": app.port().to_string()})).await;
    let (ct, page) = scrape(proxy.bound.metrics, "/stats/prometheus", PROMETHEUS_ACCEPT).await;
    assert!(ct.starts_with("application/openmetrics-text"), "{ct}");
    assert!(
        page.contains("mesh_proxy_build_info{"),
        "the proxy's own: {page}"
    );
    assert!(
        page.contains("orders_total{shop=\"eu\"} 7\n"),
        "the app's: {page}"
    );
    assert_eq!(page.matches("# EOF").count(), 1, "{page}");
    assert!(page.ends_with("# EOF\n"), "{page}");

    // The admin port's page is the proxy's alone, as Envoy's own stats are.
    let (_, own) = scrape(proxy.bound.admin, "/stats/prometheus", PROMETHEUS_ACCEPT).await;
    assert!(!own.contains("orders_total"), "{own}");
}

#[tokio::test]
async fn a_prometheus_text_application_gets_the_whole_page_in_its_format() {
    let app = app().await;
    let proxy = proxy_with(
        serde_json::json!({"scrape": "true", "port": app.port().to_string(), "path": "/metrics"}),
    )
    .await;
    // An older Prometheus asks for the text format only.
    let (ct, page) = scrape(
        proxy.bound.metrics,
        "/stats/prometheus",
        "text/plain;version=0.0.4",
    )
    .await;
    assert!(ct.starts_with("text/plain; version=0.0.4"), "{ct}");
    assert!(page.contains("orders_total{shop=\"eu\"} 7\n"), "{page}");
    assert!(
        page.contains("# TYPE mesh_proxy_build_info gauge\nmesh_proxy_build_info{"),
        "an info family as the text format has it: {page}"
    );
    for openmetrics_only in ["# EOF", "# UNIT", " info\n"] {
        assert!(
            !page.contains(openmetrics_only),
            "{openmetrics_only:?} in {page}"
        );
    }
    // Every sample line's family was typed with the sample's own name or a histogram's base.
    let typed: Vec<&str> = page
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .collect();
    for sample in page
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let name = sample.split(['{', ' ']).next().unwrap();
        assert!(
            typed.iter().any(|t| name == *t
                || [*t, "_bucket"].concat() == name
                || [*t, "_sum"].concat() == name
                || [*t, "_count"].concat() == name),
            "{name} has no # TYPE of its own in {page}"
        );
    }
}

#[tokio::test]
async fn an_application_that_does_not_answer_leaves_the_proxys_page_and_is_counted() {
    let closed = {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap().port()
    };
    let proxy = proxy_with(serde_json::json!({"port": closed.to_string()})).await;
    let (ct, page) = scrape(proxy.bound.metrics, "/stats/prometheus", PROMETHEUS_ACCEPT).await;
    assert!(ct.starts_with("application/openmetrics-text"), "{ct}");
    assert!(page.contains("mesh_proxy_build_info{"), "{page}");
    assert!(
        page.contains("mesh_proxy_app_metrics_scrape_failures_total 1\n"),
        "{page}"
    );

    let app = app().await;
    let wrong_path =
        proxy_with(serde_json::json!({"port": app.port().to_string(), "path": "/nothing-here"}))
            .await;
    let (_, page) = scrape(
        wrong_path.bound.metrics,
        "/stats/prometheus",
        PROMETHEUS_ACCEPT,
    )
    .await;
    assert!(
        page.contains("mesh_proxy_app_metrics_scrape_failures_total 1\n"),
        "a 404 is a failed scrape: {page}"
    );
}
