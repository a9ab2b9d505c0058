//! Watching the local mesh's proxies: which pods a `tap` or `dashboard` target names, a live
//! `/tap` stream from a sidecar's admin port, and its metrics page. Each connection is opened
//! inside the pod's network namespace, where the sidecar's admin port listens on 127.0.0.1.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use mesh_api::resource::Resource;

use super::state::PodRecord;
use super::{Mesh, RuntimeError, config, net};

/// The sidecar's admin port (inside the pod).
pub const ADMIN_PORT: u16 = 15000;
/// The sidecar's metrics port.
pub const METRICS_PORT: u16 = 15020;

impl Mesh {
    /// The pods with a sidecar that `target` names in `namespace`: `pod/NAME`, `svc/NAME`
    /// (`service/`), `deploy/NAME` (`deployment/`), or a bare name: a pod, else a Service,
    /// else a Deployment. The error says what exists when nothing matches.
    pub fn pods_of(&self, target: &str, namespace: &str) -> Result<Vec<PodRecord>, RuntimeError> {
        let st = self.state()?;
        let (kind, name) = match target.split_once('/') {
            Some((k, n)) => (Some(k.to_ascii_lowercase()), n),
            None => (None, target),
        };
        let with_sidecar = |p: &&PodRecord| p.sidecar && p.namespace == namespace;
        let pod = || -> Vec<PodRecord> {
            st.pods
                .values()
                .filter(with_sidecar)
                .filter(|p| p.name == name)
                .cloned()
                .collect()
        };
        let service = || -> Option<Vec<PodRecord>> {
            let selector = config::read_all(&self.layout)
                .into_iter()
                .find_map(|r| match r {
                    Resource::Service(s)
                        if s.metadata.name.as_deref() == Some(name)
                            && s.metadata.namespace.as_deref().unwrap_or("default")
                                == namespace =>
                    {
                        Some(s.spec.and_then(|s| s.selector).unwrap_or_default())
                    }
                    _ => None,
                })?;
            Some(
                st.pods
                    .values()
                    .filter(with_sidecar)
                    .filter(|p| {
                        !selector.is_empty()
                            && selector.iter().all(|(k, v)| p.labels.get(k) == Some(v))
                    })
                    .cloned()
                    .collect(),
            )
        };
        let deployment = || -> Vec<PodRecord> {
            st.pods
                .values()
                .filter(with_sidecar)
                .filter(|p| p.workload() == name)
                .cloned()
                .collect()
        };
        let found = match kind.as_deref() {
            Some("pod" | "pods" | "po") => pod(),
            Some("svc" | "service" | "services") => service().unwrap_or_default(),
            Some("deploy" | "deployment" | "deployments") => deployment(),
            Some(other) => {
                return Err(RuntimeError::Target(format!(
                    "{other:?} is not a kind to watch: say pod/NAME, svc/NAME or deploy/NAME"
                )));
            }
            None => {
                let p = pod();
                if !p.is_empty() {
                    p
                } else {
                    match service() {
                        Some(s) if !s.is_empty() => s,
                        _ => deployment(),
                    }
                }
            }
        };
        if found.is_empty() {
            let known: Vec<&str> = st
                .pods
                .values()
                .filter(with_sidecar)
                .map(|p| p.name.as_str())
                .collect();
            return Err(RuntimeError::Target(format!(
                "no pod with a sidecar matches {target:?} in namespace {namespace}; pods there: {} \
                 (meshctl ps lists them all)",
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            )));
        }
        Ok(found)
    }
}

/// A live `/tap` stream from one sidecar.
pub struct TapStream {
    /// The pod.
    pub pod: String,
    body: hyper::body::Incoming,
    pending: Vec<u8>,
}

impl TapStream {
    /// Starts watching `pod`'s sidecar with the `/tap` `query` (its filters); returns once the
    /// sidecar has begun, so what is sent afterwards is seen. Needs a tokio runtime.
    pub async fn open(pod: &PodRecord, query: &str) -> Result<TapStream, String> {
        let path = if query.is_empty() {
            "/tap".to_string()
        } else {
            format!("/tap?{query}")
        };
        let resp = get(pod, ADMIN_PORT, &path).await?;
        let status = resp.status();
        if !status.is_success() {
            let body = resp
                .into_body()
                .collect()
                .await
                .map(|b| String::from_utf8_lossy(&b.to_bytes()).trim().to_string())
                .unwrap_or_default();
            return Err(format!(
                "the sidecar of {} answered {status}: {body}",
                pod.name
            ));
        }
        Ok(TapStream {
            pod: pod.name.clone(),
            body: resp.into_body(),
            pending: Vec::new(),
        })
    }

    /// The next JSON line, or `None` once the sidecar ends the stream.
    pub async fn next_line(&mut self) -> Option<String> {
        loop {
            if let Some(at) = self.pending.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.pending.drain(..=at).collect();
                return Some(String::from_utf8_lossy(&line).trim_end().to_string());
            }
            let frame = self.body.frame().await?.ok()?;
            if let Ok(data) = frame.into_data() {
                self.pending.extend_from_slice(&data);
            }
        }
    }
}

/// The page the sidecar of `pod` serves for Prometheus (its metrics, with the app's merged).
pub async fn scrape(pod: &PodRecord) -> Result<String, String> {
    let resp = get(pod, METRICS_PORT, "/stats/prometheus").await?;
    let status = resp.status();
    let body = tokio::time::timeout(Duration::from_secs(5), resp.into_body().collect())
        .await
        .map_err(|_| format!("the metrics of {} took longer than 5 s", pod.name))?
        .map_err(|e| format!("reading the metrics of {}: {e}", pod.name))?
        .to_bytes();
    if !status.is_success() {
        return Err(format!("the sidecar of {} answered {status}", pod.name));
    }
    Ok(String::from_utf8_lossy(&body).into_owned())
}

/// GET `path` on the sidecar's loopback `port`, inside `pod`'s network namespace.
async fn get(
    pod: &PodRecord,
    port: u16,
    path: &str,
) -> Result<hyper::Response<hyper::body::Incoming>, String> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let netns = pod.netns.clone();
    let std_stream = tokio::task::spawn_blocking(move || {
        net::in_netns(&netns, || {
            let s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
            s.set_nonblocking(true)?;
            Ok(s)
        })
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| format!("the sidecar of {} on port {port}: {e}", pod.name))?;
    let stream = tokio::net::TcpStream::from_std(std_stream).map_err(|e| e.to_string())?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let req = hyper::Request::get(path)
        .header(hyper::header::HOST, addr.to_string())
        .body(http_body_util::Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    tokio::time::timeout(Duration::from_secs(5), sender.send_request(req))
        .await
        .map_err(|_| format!("the sidecar of {} did not answer {path}", pod.name))?
        .map_err(|e| format!("the sidecar of {} on {path}: {e}", pod.name))
}
