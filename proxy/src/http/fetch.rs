//! Requests the proxy makes itself, through its own outbound path (routes, balancing, mesh
//! mTLS to the destination's sidecar): how RequestAuthentication's `jwksUri` key sets are
//! fetched "through the mesh", with the same routing a request of the workload would get.
//!
//! An `https` key set is fetched over TLS that the proxy originates itself, as istiod and
//! Envoy's remote JWKS do: from an endpoint the mesh knows for the host (a ServiceEntry's, a
//! service's), else from the addresses DNS gives, verifying the server's certificate for the
//! host against the system's roots and any extra CA certificates the proxy was given
//! (`--jwks-ca-file`).

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use http_body_util::BodyExt;
use hyper::header::HeaderValue;
use hyper::{Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};

use super::{Conn, full};
use crate::authn::jwks::{Fetch, MAX_JWKS_BYTES};
use crate::inputs::Inputs;
use crate::state::State;

/// Fetches key sets through the proxy's outbound path (http) or over TLS it originates
/// (https).
pub struct MeshFetch {
    /// The proxy's inputs (weak: they own the cache that owns this).
    inputs: Weak<Inputs>,
    /// Extra CA certificates (PEM) trusted for https key sets, besides the system's.
    extra_roots_pem: Option<String>,
    /// The TLS client for https key sets, built on the first one (reading the system's roots
    /// costs time and memory a proxy without https key sets should not pay).
    tls: OnceLock<Result<Arc<ClientConfig>, String>>,
}

impl MeshFetch {
    /// A fetcher for the proxy whose inputs are `inputs`, trusting `extra_roots_pem` besides
    /// the system's roots for https.
    pub fn new(inputs: Weak<Inputs>, extra_roots_pem: Option<String>) -> Self {
        MeshFetch {
            inputs,
            extra_roots_pem,
            tls: OnceLock::new(),
        }
    }

    fn tls(&self) -> Result<Arc<ClientConfig>, String> {
        self.tls
            .get_or_init(|| https_client(self.extra_roots_pem.as_deref()))
            .clone()
    }
}

impl Fetch for MeshFetch {
    fn fetch(
        &self,
        uri: &str,
        timeout: Duration,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<String, String>> + Send + '_>>
    {
        let uri = uri.to_string();
        Box::pin(async move {
            let inputs = self
                .inputs
                .upgrade()
                .ok_or_else(|| "the proxy is stopping".to_string())?;
            let got = async {
                let parsed: Uri = uri
                    .parse()
                    .map_err(|e| format!("{uri:?} is not a URL: {e}"))?;
                if parsed.scheme_str() == Some("https") {
                    get_https(&inputs, &parsed, &uri, self.tls()?).await
                } else {
                    get(&inputs, &parsed, &uri).await
                }
            };
            match tokio::time::timeout(timeout, got).await {
                Ok(r) => r,
                Err(_) => Err(format!("no answer within {timeout:?}")),
            }
        })
    }
}

/// The TLS client for https key sets: the system's roots and `extra_pem`.
fn https_client(extra_pem: Option<&str>) -> Result<Arc<ClientConfig>, String> {
    let mut roots = RootCertStore::empty();
    let system = rustls_native_certs::load_native_certs();
    let (added, _) = roots.add_parsable_certificates(system.certs);
    if let Some(pem) = extra_pem {
        for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
            let cert = cert.map_err(|e| format!("--jwks-ca-file: {e}"))?;
            roots
                .add(cert)
                .map_err(|e| format!("--jwks-ca-file: {e}"))?;
        }
    }
    if roots.is_empty() {
        return Err(format!(
            "no CA certificate to verify https key sets with: the system has none ({} errors reading it; install ca-certificates) and --jwks-ca-file gives none",
            system.errors.len()
        ));
    }
    tracing::debug!(
        "https key sets verified with {added} system roots and {} more",
        roots.len() - added
    );
    let mut config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Where in the mesh `host:port` is: a service's VIP (or first endpoint), or the address
/// itself when it is an IP.
fn destination(state: &State, host: &str, port: u16) -> Option<SocketAddr> {
    if let Ok(ip) = host.trim_matches(['[', ']']).parse::<IpAddr>() {
        return Some(SocketAddr::new(ip, port));
    }
    let svc = service_of(state, host)?;
    if let Some(vip) = svc
        .spec
        .addresses
        .iter()
        .find_map(|a| a.parse::<IpAddr>().ok())
    {
        return Some(SocketAddr::new(vip, port));
    }
    let p = svc.port(port)?;
    svc.endpoint_addr(0, p)
}

/// The mesh's service for `host`, also when it is a short name (`jwks`, `jwks.default`).
fn service_of<'a>(state: &'a State, host: &str) -> Option<&'a crate::state::Service> {
    let ns = &state.source.namespace;
    let domain = if state.source.domain.is_empty() {
        "cluster.local"
    } else {
        &state.source.domain
    };
    let candidates = [
        host.to_string(),
        format!("{host}.{ns}.svc.{domain}"),
        format!("{host}.svc.{domain}"),
        format!("{host}.{domain}"),
    ];
    candidates
        .iter()
        .find_map(|h| state.services.get(h))
        .map(|s| &**s)
}

/// Sends `req` to `host:port` through the proxy's outbound path, as the workload's own request
/// would go: the response and its flags, or why there is no destination.
pub(super) async fn send(
    inputs: &Arc<Inputs>,
    host: &str,
    port: u16,
    mut req: Request<super::Body>,
) -> Result<(hyper::Response<super::Body>, &'static str), String> {
    let state = inputs.state.borrow().clone();
    let dst = destination(&state, host, port)
        .ok_or_else(|| format!("{host}:{port} is not a service of the mesh this proxy knows"))?;
    let ctx = Conn {
        inputs: inputs.clone(),
        peer: SocketAddr::from(([127, 0, 0, 1], 0)),
        dst,
        gateway: false,
        https: false,
    };
    let (resp, _, flags) = super::outbound::decide_and_send(&mut req, &ctx, &state, None).await;
    Ok((resp, flags))
}

/// Makes the unary gRPC call `path` to `host:port` through the proxy's outbound path, with
/// `message` (encoded) as its request: the answer's message, or why there is none.
pub(crate) async fn grpc_call(
    inputs: &Arc<Inputs>,
    host: &str,
    port: u16,
    path: &'static str,
    message: Vec<u8>,
) -> Result<bytes::Bytes, String> {
    use hyper::header::{self, HeaderMap};
    let mut frame = Vec::with_capacity(5 + message.len());
    frame.push(0);
    frame.extend_from_slice(
        &u32::try_from(message.len())
            .unwrap_or(u32::MAX)
            .to_be_bytes(),
    );
    frame.extend_from_slice(&message);
    let mut req = Request::new(full(frame));
    *req.method_mut() = http::Method::POST;
    *req.uri_mut() = Uri::from_static(path);
    let h = req.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&format!("{host}:{port}")) {
        h.insert(header::HOST, v);
    }
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    h.insert(header::TE, HeaderValue::from_static("trailers"));
    let (resp, flags) = send(inputs, host, port, req).await?;
    if resp.status() != StatusCode::OK {
        return Err(format!("answered HTTP {} (flags {flags})", resp.status()));
    }
    let (parts, body) = resp.into_parts();
    let (bytes, trailers) = read_answer(body).await?;
    let grpc_status = |m: &HeaderMap| {
        m.get("grpc-status")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let code = grpc_status(&parts.headers).or_else(|| trailers.as_ref().and_then(grpc_status));
    if code.as_deref() != Some("0") {
        let message = trailers
            .as_ref()
            .and_then(|t| t.get("grpc-message"))
            .or_else(|| parts.headers.get("grpc-message"))
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        return Err(format!(
            "gRPC status {} {message}",
            code.as_deref().unwrap_or("missing")
        ));
    }
    if bytes.len() < 5 {
        return Err("the answer holds no message".into());
    }
    let len = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]) as usize;
    let payload = bytes
        .get(5..5 + len)
        .ok_or("the answer's message is cut short")?;
    Ok(bytes::Bytes::copy_from_slice(payload))
}

/// The most bytes read of an answer to the proxy's own calls.
pub const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// The body and trailers of an answer to one of the proxy's own calls, up to
/// [`MAX_ANSWER_BYTES`].
pub(crate) async fn read_answer(
    mut body: super::Body,
) -> Result<(bytes::Bytes, Option<hyper::HeaderMap>), String> {
    let mut data = Vec::new();
    let mut trailers = None;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| format!("reading the answer: {e}"))?;
        match frame.into_data() {
            Ok(chunk) => {
                if data.len() + chunk.len() > MAX_ANSWER_BYTES {
                    return Err(format!(
                        "the answer is larger than {MAX_ANSWER_BYTES} bytes"
                    ));
                }
                data.extend_from_slice(&chunk);
            }
            Err(frame) => {
                if let Ok(t) = frame.into_trailers() {
                    trailers = Some(t);
                }
            }
        }
    }
    Ok((data.into(), trailers))
}

/// The GET request for `parsed`: its path, Host and `Accept: application/json`; with the
/// host and port it goes to.
fn key_set_request(
    parsed: &Uri,
    uri: &str,
    default_port: u16,
) -> Result<(Request<super::Body>, String, u16), String> {
    let host = parsed
        .host()
        .ok_or_else(|| format!("{uri:?} has no host"))?
        .to_string();
    let port = parsed.port_u16().unwrap_or(default_port);
    let path = parsed.path_and_query().map_or("/", |p| p.as_str());
    let authority = parsed
        .authority()
        .map_or_else(|| host.clone(), |a| a.as_str().to_string());
    let mut req = Request::new(full(""));
    *req.uri_mut() = path.parse().map_err(|e| format!("{uri:?}: {e}"))?;
    let headers = req.headers_mut();
    headers.insert(
        hyper::header::HOST,
        HeaderValue::from_str(&authority).map_err(|e| e.to_string())?,
    );
    headers.insert(
        hyper::header::ACCEPT,
        HeaderValue::from_static("application/json"),
    );
    Ok((req, host, port))
}

async fn get(inputs: &Arc<Inputs>, parsed: &Uri, uri: &str) -> Result<String, String> {
    let (req, host, port) = key_set_request(parsed, uri, 80)?;
    let (resp, flags) = send(inputs, &host, port, req).await?;
    if resp.status() != StatusCode::OK {
        return Err(format!("GET {uri}: {} (flags {flags})", resp.status()));
    }
    read_key_set(uri, resp.into_body()).await
}

/// Where an https key set's host is served: an endpoint the mesh knows for it (the proxy's
/// own connections are not captured, so a service VIP would lead nowhere), else DNS.
async fn https_addresses(state: &State, host: &str, port: u16) -> Result<Vec<SocketAddr>, String> {
    if let Ok(ip) = host.trim_matches(['[', ']']).parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    let known = service_of(state, host).and_then(|svc| {
        let p = svc.port(port)?;
        svc.endpoint_addr(0, p)
    });
    if let Some(addr) = known {
        return Ok(vec![addr]);
    }
    let found: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| format!("{host} is not a host of the mesh and DNS does not know it: {e}"))?
        .collect();
    if found.is_empty() {
        return Err(format!("{host}: DNS gave no address"));
    }
    Ok(found)
}

async fn get_https(
    inputs: &Arc<Inputs>,
    parsed: &Uri,
    uri: &str,
    tls: Arc<ClientConfig>,
) -> Result<String, String> {
    let (req, host, port) = key_set_request(parsed, uri, 443)?;
    let server_name = ServerName::try_from(host.clone())
        .map_err(|e| format!("{uri:?}: {host} is not a TLS server name: {e}"))?;
    let state = inputs.state.borrow().clone();
    let mut last = String::new();
    for addr in https_addresses(&state, &host, port).await? {
        let tcp = match tokio::net::TcpStream::connect(addr).await {
            Ok(t) => t,
            Err(e) => {
                last = format!("GET {uri}: cannot connect to {addr}: {e}");
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let stream = tokio_rustls::TlsConnector::from(tls.clone())
            .connect(server_name.clone(), tcp)
            .await
            .map_err(|e| format!("GET {uri}: TLS with {host} ({addr}): {e}"))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("GET {uri}: {e}"))?;
        tokio::spawn(conn);
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| format!("GET {uri}: {e}"))?;
        if resp.status() != StatusCode::OK {
            return Err(format!("GET {uri}: {}", resp.status()));
        }
        return read_key_set(uri, resp.into_body()).await;
    }
    Err(last)
}

/// Reads a key set's body frame by frame, so one larger than the limit is refused before it
/// is whole.
async fn read_key_set<B>(uri: &str, mut body: B) -> Result<String, String>
where
    B: hyper::body::Body<Data = bytes::Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    let mut bytes = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| format!("GET {uri}: {e}"))?;
        if let Some(data) = frame.data_ref() {
            if bytes.len() + data.len() > MAX_JWKS_BYTES {
                return Err(format!("GET {uri}: larger than {MAX_JWKS_BYTES} bytes"));
            }
            bytes.extend_from_slice(data);
        }
    }
    String::from_utf8(bytes).map_err(|_| format!("GET {uri}: the body is not UTF-8"))
}
