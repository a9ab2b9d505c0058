//! The inbound listener (15006): connections to the workload from peers, captured by `init`,
//! handed to the application on `127.0.0.1:<original port>`. The proxy connects from
//! 127.0.0.6, which the capture rules leave alone, so the handed-over connection is not
//! captured again.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use tokio::net::{TcpListener, TcpSocket, TcpStream};

use crate::Inputs;
use crate::drain;
use crate::socket::OriginalDst;
use crate::state::{PeerMode, Protocol};

/// The source address of connections handed to the application.
pub const PASSTHROUGH_SOURCE: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 6);

/// Accepts until a drain begins; each connection runs in its own task.
pub async fn serve(
    listener: TcpListener,
    inputs: Arc<Inputs>,
    dst: Arc<dyn OriginalDst>,
    drain: drain::Watch,
) {
    drain::accept_loop(listener, drain, "inbound", move |conn, peer, watch| {
        let (inputs, dst) = (inputs.clone(), dst.clone());
        async move { handle(conn, peer, &inputs, dst.as_ref(), watch).await }
    })
    .await;
}

/// Connects to the application's port on loopback from the pass-through source address.
pub async fn connect_app(port: u16) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.set_nodelay(true)?;
    // Falls back to the default source when 127.0.0.6 is not usable (it always is on Linux,
    // where all of 127/8 is local).
    if socket
        .bind(SocketAddr::from((PASSTHROUGH_SOURCE, 0)))
        .is_err()
    {
        tracing::debug!("cannot bind {PASSTHROUGH_SOURCE}; using the default source");
    }
    socket
        .connect(SocketAddr::from((Ipv4Addr::LOCALHOST, port)))
        .await
}

async fn handle(
    mut conn: TcpStream,
    peer: SocketAddr,
    inputs: &Arc<Inputs>,
    resolver: &dyn OriginalDst,
    drain: drain::Watch,
) {
    let Some(dst) = crate::socket::destination(resolver, &conn, peer, "inbound") else {
        return;
    };
    if inputs.own_addrs.iter().any(|a| a.port() == dst.port()) {
        tracing::warn!(%peer, %dst, "inbound: connection to a proxy port; closing");
        return;
    }
    let (declared, mode) = {
        let state = inputs.state.borrow();
        (
            state
                .inbound_ports
                .get(&dst.port())
                .copied()
                .unwrap_or(Protocol::Detect),
            state.peer_mode_for(dst.port()),
        )
    };
    // With an identity, peers' mTLS is told from plaintext by the first bytes.
    if let (Some(tls), true) = (&inputs.tls_server, mode != PeerMode::Disable) {
        let detected = crate::sniff::detect(&conn, crate::outbound::SNIFF_TIMEOUT)
            .await
            .unwrap_or(crate::sniff::Detected::Tcp);
        if detected == crate::sniff::Detected::Tls {
            mtls_inbound(conn, peer, dst, inputs, tls.clone(), declared, drain).await;
            return;
        }
        if mode == PeerMode::Strict {
            tracing::info!(target: "access", "inbound {peer} -> {dst} flags=UAEX plaintext refused: mutual TLS is STRICT on this port");
            return;
        }
    }
    let http = match declared {
        Protocol::Http | Protocol::Http2 | Protocol::Grpc => true,
        Protocol::Tcp | Protocol::Tls => false,
        Protocol::Detect => matches!(
            crate::sniff::detect(&conn, crate::outbound::SNIFF_TIMEOUT).await,
            Ok(crate::sniff::Detected::Http1 | crate::sniff::Detected::Http2)
        ),
    };
    if http {
        crate::http::serve_inbound(conn, peer, dst, inputs.clone(), declared, drain, None).await;
        return;
    }
    tcp_series(inputs, dst, None, "-").opened();
    let mut app = match connect_app(dst.port()).await {
        Ok(s) => s,
        Err(e) => {
            tcp_series(inputs, dst, None, "UF").closed(0, 0);
            tracing::info!(target: "access", "inbound tcp {peer} -> {dst} flags=UF error={e}");
            return;
        }
    };
    match crate::tcp::splice(&mut conn, &mut app).await {
        Ok((sent, received)) => {
            tcp_series(inputs, dst, None, "-").closed(sent, received);
            tracing::info!(target: "access", "inbound tcp {peer} -> {dst} flags=- sent={received} received={sent}")
        }
        Err(_) => {
            tcp_series(inputs, dst, None, "DC").closed(0, 0);
            tracing::info!(target: "access", "inbound tcp {peer} -> {dst} flags=DC")
        }
    }
}

/// The TCP metrics series of connections to the workload's `dst` from a caller that proved
/// `identity` (none without mTLS), ending with `flags` (reporter `destination`). Bytes are
/// counted from the caller's side: `sent` went to the workload.
fn tcp_series(
    inputs: &Inputs,
    dst: SocketAddr,
    identity: Option<&str>,
    flags: &'static str,
) -> Arc<crate::metrics::TcpSeries> {
    use crate::metrics::{Key, Reporter, RequestProtocol, inbound_sides};
    let metrics = &inputs.metrics;
    let peer = identity.unwrap_or("");
    let key = Key {
        reporter: Reporter::Destination,
        peer,
        addr: Some(dst),
        meta: "",
        mtls: identity.is_some(),
        protocol: RequestProtocol::Tcp,
        code: 0,
        flags,
    };
    metrics.tcp_series(&key, || {
        inbound_sides(inputs.workload(), &inputs.state.borrow(), dst, peer, "")
    })
}

/// Terminates a peer's mutual TLS, records who it is, and hands the traffic to the app: HTTP per
/// request (ALPN h2 or http/1.1), or bytes (ALPN mesh-tcp).
async fn mtls_inbound(
    conn: TcpStream,
    peer: SocketAddr,
    dst: SocketAddr,
    inputs: &Arc<Inputs>,
    tls: Arc<rustls::ServerConfig>,
    declared: Protocol,
    drain: drain::Watch,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let stream = match tokio::time::timeout(
        std::time::Duration::from_secs(10),
        acceptor.accept(conn),
    )
    .await
    {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::info!(target: "access", "inbound {peer} -> {dst} flags=UAEX mTLS handshake refused: {e}");
            return;
        }
        Err(_) => {
            tracing::info!(target: "access", "inbound {peer} -> {dst} flags=UAEX mTLS handshake timed out");
            return;
        }
    };
    let (_, session) = stream.get_ref();
    let identity = crate::tls::mtls::peer_identity(session);
    let alpn = session.alpn_protocol().map(<[u8]>::to_vec);
    if alpn.as_deref() == Some(crate::tls::mtls::ALPN_MESH_TCP) {
        let peer_id = identity.unwrap_or_default();
        let id = Some(peer_id.as_str());
        tcp_series(inputs, dst, id, "-").opened();
        let mut app = match connect_app(dst.port()).await {
            Ok(s) => s,
            Err(e) => {
                tcp_series(inputs, dst, id, "UF").closed(0, 0);
                tracing::info!(target: "access", "inbound mtls tcp {peer} -> {dst} flags=UF error={e}");
                return;
            }
        };
        let mut stream = stream;
        match crate::tcp::splice(&mut stream, &mut app).await {
            Ok((sent, received)) => {
                tcp_series(inputs, dst, id, "-").closed(sent, received);
                tracing::info!(target: "access", "inbound mtls tcp {peer} ({peer_id}) -> {dst} flags=- sent={received} received={sent}")
            }
            Err(_) => {
                tcp_series(inputs, dst, id, "DC").closed(0, 0);
                tracing::info!(target: "access", "inbound mtls tcp {peer} ({peer_id}) -> {dst} flags=DC")
            }
        }
        return;
    }
    crate::http::serve_inbound(stream, peer, dst, inputs.clone(), declared, drain, identity).await;
}
