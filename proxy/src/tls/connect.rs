//! Connecting to endpoints: plain TCP, or mesh mutual TLS with the identity the destination
//! must prove. Used directly by the TCP path and, as a hyper connector, by the HTTP clients
//! (an `https://` URI means mesh mTLS to that address).

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context, Poll};

use hyper::Uri;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::client::TlsStream;

use super::mtls::{self, ALPN_MESH_H2, Svids};
use super::originate::Originate;

/// Default time to wait for an upstream connection.
pub const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Client configurations are cached by expected identity and ALPN.
type ConfigKey = (String, Vec<u8>);

/// Mesh mTLS towards peers: the workload's SVID, and client settings per identity a peer must
/// prove. The identity to expect comes with each handshake (from the endpoint pilot named),
/// never from a table by address, so a connection can only be verified against what the
/// request it carries was routed to.
pub struct MtlsClient {
    svids: Svids,
    configs: Mutex<HashMap<ConfigKey, Arc<ClientConfig>>>,
}

impl MtlsClient {
    /// A client presenting the SVIDs from `svids`.
    pub fn new(svids: Svids) -> Self {
        Self {
            svids,
            configs: Mutex::default(),
        }
    }

    /// The workload's SVIDs.
    pub fn svids(&self) -> &Svids {
        &self.svids
    }

    fn config(&self, identity: &str, alpn: &[u8]) -> io::Result<Arc<ClientConfig>> {
        let key = (identity.to_string(), alpn.to_vec());
        let mut configs = self.configs.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = configs.get(&key) {
            return Ok(c.clone());
        }
        let expected = if identity.is_empty() {
            Vec::new()
        } else {
            vec![identity.to_string()]
        };
        let cfg =
            mtls::client_config(self.svids.clone(), expected, alpn).map_err(io::Error::other)?;
        configs.insert(key, cfg.clone());
        Ok(cfg)
    }

    /// Runs the mTLS handshake on `tcp` towards `addr`, which must prove `identity` (any mesh
    /// identity when empty).
    pub async fn handshake(
        &self,
        tcp: TcpStream,
        addr: SocketAddr,
        identity: &str,
        alpn: &[u8],
    ) -> io::Result<TlsStream<TcpStream>> {
        if self.svids.borrow().is_none() {
            return Err(io::Error::new(
                io::ErrorKind::NotConnected,
                "no workload certificate yet",
            ));
        }
        let connector = tokio_rustls::TlsConnector::from(self.config(identity, alpn)?);
        connector
            .connect(ServerName::IpAddress(addr.ip().into()), tcp)
            .await
    }
}

/// Opens a TCP connection, optionally from `local`.
pub async fn tcp(addr: SocketAddr, local: Option<IpAddr>) -> io::Result<TcpStream> {
    tcp_within(addr, local, CONNECT_TIMEOUT).await
}

/// As [`tcp`], giving up after `timeout` (a DestinationRule's `connectTimeout`).
pub async fn tcp_within(
    addr: SocketAddr,
    local: Option<IpAddr>,
    timeout: std::time::Duration,
) -> io::Result<TcpStream> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_nodelay(true)?;
    if let Some(ip) = local {
        let _ = socket.bind(SocketAddr::new(ip, 0));
    }
    tokio::time::timeout(timeout, socket.connect(addr))
        .await
        .map_err(|_| {
            io::Error::new(
                io::ErrorKind::TimedOut,
                format!("connect to {addr} timed out"),
            )
        })?
}

/// A connection made by [`MeshConnector`].
pub enum MeshStream {
    /// Plain TCP.
    Plain(TokioIo<TcpStream>),
    /// Mesh mTLS.
    Tls(Box<TokioIo<TlsStream<TcpStream>>>),
}

impl hyper::rt::Read for MeshStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MeshStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            MeshStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl hyper::rt::Write for MeshStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            MeshStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            MeshStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MeshStream::Plain(s) => Pin::new(s).poll_flush(cx),
            MeshStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MeshStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            MeshStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

impl Connection for MeshStream {
    fn connected(&self) -> Connected {
        match self {
            MeshStream::Plain(_) => Connected::new(),
            MeshStream::Tls(s) if s.inner().get_ref().1.alpn_protocol() == Some(ALPN_MESH_H2) => {
                Connected::new().negotiated_h2()
            }
            MeshStream::Tls(_) => Connected::new(),
        }
    }
}

/// Addresses the proxy originates TLS to (DestinationRule SIMPLE / MUTUAL), with how.
pub type Originations = Arc<RwLock<HashMap<SocketAddr, Arc<Originate>>>>;

/// hyper's connector for upstream HTTP: `http://ADDR` is plain TCP; `https://ADDR` is TLS the
/// proxy originates when the address is in `originations`, else mesh mTLS; both offer `alpn`.
#[derive(Clone)]
pub struct MeshConnector {
    local: Option<IpAddr>,
    mtls: Option<Arc<MtlsClient>>,
    originations: Originations,
    alpn: &'static [u8],
    identity: Option<Arc<str>>,
}

impl MeshConnector {
    /// The same connector, whose mTLS peers must prove `identity` (any mesh identity when
    /// empty, as for a connector made without one).
    pub fn with_identity(mut self, identity: Arc<str>) -> Self {
        self.identity = Some(identity);
        self
    }

    /// A connector binding `local` (when set), with mesh mTLS when `mtls` is set.
    pub fn new(
        local: Option<IpAddr>,
        mtls: Option<Arc<MtlsClient>>,
        originations: Originations,
        alpn: &'static [u8],
    ) -> Self {
        Self {
            local,
            mtls,
            originations,
            alpn,
            identity: None,
        }
    }
}

/// Originates TLS on `tcp` as `o` says, offering `alpn` (none when empty).
pub async fn originate(
    o: &Originate,
    tcp: TcpStream,
    alpn: &[u8],
) -> io::Result<TlsStream<TcpStream>> {
    let config = if alpn.is_empty() {
        o.config.clone()
    } else {
        let mut c = (*o.config).clone();
        c.alpn_protocols = vec![alpn.to_vec()];
        Arc::new(c)
    };
    tokio_rustls::TlsConnector::from(config)
        .connect(o.sni.clone(), tcp)
        .await
}

impl tower_service::Service<Uri> for MeshConnector {
    type Response = MeshStream;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<MeshStream>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let authority = uri.authority().ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidInput, "URI without an address")
            })?;
            let addr: SocketAddr = authority.as_str().parse().map_err(|_| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("{authority} is not IP:port"),
                )
            })?;
            let stream = tcp(addr, this.local).await?;
            if uri.scheme_str() != Some("https") {
                return Ok(MeshStream::Plain(TokioIo::new(stream)));
            }
            let origination = this
                .originations
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .get(&addr)
                .cloned();
            if let Some(o) = origination {
                let tls = originate(&o, stream, this.alpn).await?;
                return Ok(MeshStream::Tls(Box::new(TokioIo::new(tls))));
            }
            let mtls = this.mtls.as_ref().ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::NotConnected,
                    "mTLS requested but the proxy has no identity",
                )
            })?;
            let tls = mtls
                .handshake(
                    stream,
                    addr,
                    this.identity.as_deref().unwrap_or(""),
                    this.alpn,
                )
                .await?;
            Ok(MeshStream::Tls(Box::new(TokioIo::new(tls))))
        })
    }
}
