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
use crate::state::Protocol;

/// The source address of connections handed to the application.
pub const PASSTHROUGH_SOURCE: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 6);

/// Accepts until a drain begins.
pub async fn serve(
    listener: TcpListener,
    inputs: Arc<Inputs>,
    dst: Arc<dyn OriginalDst>,
    mut drain: drain::Watch,
) {
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((conn, peer)) => {
                    let inputs = inputs.clone();
                    let dst = dst.clone();
                    // The connection's own drain watch also holds the drain open until it ends.
                    let watch = drain.clone();
                    tokio::spawn(async move {
                        handle(conn, peer, &inputs, dst.as_ref(), watch).await;
                    });
                }
                Err(e) => tracing::warn!("inbound accept: {e}"),
            },
            _ = drain.signaled() => return,
        }
    }
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
    let _ = conn.set_nodelay(true);
    let dst = match resolver.original_dst(&conn) {
        Ok(d) => d,
        Err(e) => {
            tracing::warn!(%peer, "inbound: no original destination ({e}); closing");
            return;
        }
    };
    if inputs.own_addrs.iter().any(|a| a.port() == dst.port()) {
        tracing::warn!(%peer, %dst, "inbound: connection to a proxy port; closing");
        return;
    }
    let declared = inputs
        .state
        .borrow()
        .inbound_ports
        .get(&dst.port())
        .copied()
        .unwrap_or(Protocol::Detect);
    let http = match declared {
        Protocol::Http | Protocol::Http2 | Protocol::Grpc => true,
        Protocol::Tcp | Protocol::Tls => false,
        Protocol::Detect => matches!(
            crate::sniff::detect(&conn, crate::outbound::SNIFF_TIMEOUT).await,
            Ok(crate::sniff::Detected::Http1 | crate::sniff::Detected::Http2)
        ),
    };
    if http {
        crate::http::serve_inbound(conn, peer, dst, inputs.clone(), declared, drain).await;
        return;
    }
    let mut app = match connect_app(dst.port()).await {
        Ok(s) => s,
        Err(e) => {
            tracing::info!(target: "access", "inbound tcp {peer} -> {dst} flags=UF error={e}");
            return;
        }
    };
    match crate::tcp::splice(&mut conn, &mut app).await {
        Ok((sent, received)) => {
            tracing::info!(target: "access", "inbound tcp {peer} -> {dst} flags=- sent={received} received={sent}")
        }
        Err(_) => tracing::info!(target: "access", "inbound tcp {peer} -> {dst} flags=DC"),
    }
}
