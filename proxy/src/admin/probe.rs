//! Application probes through the proxy. Under STRICT mTLS kubelet's plaintext HTTP probes
//! could not reach the application, so the injector points them at the proxy's health port
//! (`/app-health/<container>/<livez|readyz|startupz>` on 15021) and hands the proxy the
//! original probes in `ISTIO_KUBE_APP_PROBERS` (Istio's variable and JSON). The proxy asks the
//! application on 127.0.0.1 (its own traffic is never captured) and answers with the
//! application's status.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderName, HeaderValue};
use hyper::{Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Deserialize;

/// The probes the proxy forwards, by the path kubelet asks.
#[derive(Debug, Default)]
pub struct AppProbers {
    by_path: HashMap<String, Prober>,
}

#[derive(Debug)]
struct Prober {
    port: u16,
    path: String,
    headers: Vec<(HeaderName, HeaderValue)>,
    timeout: Duration,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ProbeJson {
    http_get: HttpGetJson,
    #[serde(default)]
    timeout_seconds: Option<u64>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct HttpGetJson {
    #[serde(default)]
    path: Option<String>,
    port: serde_json::Value,
    #[serde(default)]
    scheme: Option<String>,
    #[serde(default)]
    http_headers: Vec<HeaderJson>,
}

#[derive(Deserialize)]
struct HeaderJson {
    name: String,
    value: String,
}

impl AppProbers {
    /// Reads Istio's `ISTIO_KUBE_APP_PROBERS` JSON; the error names the probe and what is
    /// wrong with it.
    pub fn parse(json: &str) -> Result<Self, String> {
        let raw: HashMap<String, ProbeJson> = serde_json::from_str(json)
            .map_err(|e| format!("ISTIO_KUBE_APP_PROBERS is not the probers' JSON: {e}"))?;
        let mut by_path = HashMap::new();
        for (path, p) in raw {
            let bad = |what: String| format!("ISTIO_KUBE_APP_PROBERS {path:?}: {what}");
            let g = &p.http_get;
            if g.scheme
                .as_deref()
                .is_some_and(|s| !s.eq_ignore_ascii_case("http"))
            {
                return Err(bad("only HTTP probes go through the proxy".into()));
            }
            let port = g
                .port
                .as_u64()
                .or_else(|| g.port.as_str().and_then(|s| s.parse().ok()))
                .and_then(|p| u16::try_from(p).ok())
                .filter(|p| *p > 0)
                .ok_or_else(|| bad(format!("port {} is not a port number", g.port)))?;
            let mut headers = Vec::new();
            for h in &g.http_headers {
                let name = HeaderName::try_from(h.name.as_str())
                    .map_err(|_| bad(format!("{:?} is not a header name", h.name)))?;
                let value = HeaderValue::try_from(h.value.as_str())
                    .map_err(|_| bad(format!("the value of {:?} is not a header value", h.name)))?;
                headers.push((name, value));
            }
            let probe_path = g.path.clone().unwrap_or_else(|| "/".into());
            let probe_path = if probe_path.starts_with('/') {
                probe_path
            } else {
                format!("/{probe_path}")
            };
            by_path.insert(
                path,
                Prober {
                    port,
                    path: probe_path,
                    headers,
                    timeout: Duration::from_secs(p.timeout_seconds.unwrap_or(1).max(1)),
                },
            );
        }
        Ok(AppProbers { by_path })
    }

    /// How many probes there are.
    pub fn len(&self) -> usize {
        self.by_path.len()
    }

    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.by_path.is_empty()
    }

    /// Asks the application the probe kubelet sent to `path`; `None` for a path no probe has.
    pub async fn probe(&self, path: &str) -> Option<Response<Full<Bytes>>> {
        let p = self.by_path.get(path)?;
        Some(match tokio::time::timeout(p.timeout, ask(p)).await {
            Ok(Ok(status)) => answer(status, ""),
            Ok(Err(e)) => answer(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!("the application did not answer on port {}: {e}", p.port),
            ),
            Err(_) => answer(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!("the application took longer than {:?}", p.timeout),
            ),
        })
    }
}

fn answer(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r
}

async fn ask(p: &Prober) -> Result<StatusCode, Box<dyn std::error::Error + Send + Sync>> {
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", p.port)).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let mut req = hyper::Request::get(p.path.as_str())
        .header(hyper::header::HOST, format!("127.0.0.1:{}", p.port))
        .header(hyper::header::USER_AGENT, "kube-probe (through mesh-proxy)")
        .body(http_body_util::Empty::<Bytes>::new())?;
    for (k, v) in &p.headers {
        req.headers_mut().insert(k.clone(), v.clone());
    }
    Ok(sender.send_request(req).await?.status())
}
