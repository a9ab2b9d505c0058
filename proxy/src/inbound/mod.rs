//! The inbound listener (15006): connections to the workload from peers, captured by `init`.
//! It accepts, applies the port's PeerAuthentication mode (terminating mesh mTLS, refusing
//! plaintext where it is STRICT), tells the protocol, and hands the connection to HTTP
//! (`crate::http::serve_inbound`) or to TCP (`crate::tcp::inbound`), which reach the
//! application on `127.0.0.1:<original port>` from 127.0.0.6, an address the capture rules
//! leave alone, so the handed-over connection is not captured again.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};

use crate::drain;
use crate::inputs::Inputs;
use crate::metrics::{Listener, Refusal};
use crate::socket::OriginalDst;
use crate::state::{PeerMode, Protocol};

/// Accepts until a drain begins; each connection runs in its own task.
pub async fn serve(
    listener: TcpListener,
    inputs: Arc<Inputs>,
    dst: Arc<dyn OriginalDst>,
    drain: drain::Watch,
) {
    let limits_from = inputs.clone();
    drain::accept_loop(
        listener,
        drain,
        "inbound",
        limits_from.connection_limit(Listener::Inbound),
        move |conn, peer, watch| {
            let (inputs, dst) = (inputs.clone(), dst.clone());
            async move { handle(conn, peer, &inputs, dst.as_ref(), watch).await }
        },
    )
    .await;
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
        let detected = crate::sniff::detect(&conn, crate::sniff::TIMEOUT)
            .await
            .unwrap_or(crate::sniff::Detected::Tcp);
        if detected == crate::sniff::Detected::Tls {
            mtls_inbound(conn, peer, dst, inputs, tls.clone(), declared, drain).await;
            return;
        }
        if mode == PeerMode::Strict {
            refused(inputs, Refusal::PlaintextToStrict);
            tracing::info!(target: "access", "inbound {peer} -> {dst} flags=UAEX plaintext refused: mutual TLS is STRICT on this port");
            return;
        }
    }
    let http = match declared {
        Protocol::Http | Protocol::Http2 | Protocol::Grpc => true,
        Protocol::Tcp | Protocol::Tls => false,
        Protocol::Detect => matches!(
            crate::sniff::detect(&conn, crate::sniff::TIMEOUT).await,
            Ok(crate::sniff::Detected::Http1 | crate::sniff::Detected::Http2)
        ),
    };
    if http {
        crate::http::serve_inbound(
            conn,
            peer,
            dst,
            inputs.clone(),
            declared,
            drain,
            crate::http::PeerTls::default(),
        )
        .await;
        return;
    }
    crate::tcp::inbound::to_app(&mut conn, peer, dst, inputs, None, None).await;
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
            refused(inputs, Refusal::TlsHandshake);
            tracing::info!(target: "access", "inbound {peer} -> {dst} flags=UAEX mTLS handshake refused: {e}");
            return;
        }
        Err(_) => {
            refused(inputs, Refusal::TlsHandshake);
            tracing::info!(target: "access", "inbound {peer} -> {dst} flags=UAEX mTLS handshake timed out");
            return;
        }
    };
    let (_, session) = stream.get_ref();
    let identity = crate::tls::mtls::peer_identity(session);
    let sni = session.server_name().map(str::to_string);
    let alpn = session.alpn_protocol().map(<[u8]>::to_vec);
    if alpn.as_deref() == Some(crate::tls::mtls::ALPN_MESH_TCP) {
        let mut stream = stream;
        let peer_id = identity.unwrap_or_default();
        crate::tcp::inbound::to_app(
            &mut stream,
            peer,
            dst,
            inputs,
            Some(&peer_id),
            sni.as_deref(),
        )
        .await;
        return;
    }
    let tls = crate::http::PeerTls { identity, sni };
    crate::http::serve_inbound(stream, peer, dst, inputs.clone(), declared, drain, tls).await;
}

fn refused(inputs: &Inputs, why: Refusal) {
    inputs.metrics.refused().count(Listener::Inbound, why);
}
