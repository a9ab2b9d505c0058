//! The outbound listener (15001): connections the workload makes, captured by `init`. It
//! accepts, finds the service by the original destination (asking pilot on demand for one it
//! does not hold), tells the protocol (declared, else detected), and hands the connection to
//! HTTP (`crate::http`) or to TLS/TCP forwarding (`crate::tcp::outbound`). Where each goes is
//! the routing layer's decision (`crate::route`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};

use crate::drain;
use crate::inputs::Inputs;
use crate::sniff::Detected;
use crate::socket::OriginalDst;
use crate::state::Protocol;

/// How long a connection to an unknown destination waits for pilot's answer.
pub const ON_DEMAND_TIMEOUT: Duration = Duration::from_secs(1);

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
        "outbound",
        limits_from.connection_limit(crate::metrics::Listener::Outbound),
        move |conn, peer, watch| {
            let (inputs, dst) = (inputs.clone(), dst.clone());
            async move { handle(conn, peer, &inputs, dst.as_ref(), watch).await }
        },
    )
    .await;
}

async fn handle(
    conn: TcpStream,
    peer: SocketAddr,
    inputs: &Arc<Inputs>,
    resolver: &dyn OriginalDst,
    drain: drain::Watch,
) {
    let Some(dst) = crate::socket::destination(resolver, &conn, peer, "outbound") else {
        return;
    };
    if inputs.own_addrs.contains(&dst) {
        tracing::warn!(%peer, %dst, "outbound: connection addressed to the proxy itself; closing to avoid a loop");
        return;
    }
    let mut state = inputs.state.borrow().clone();
    if let (None, Some(od)) = (state.service_for(dst), &inputs.on_demand) {
        // A destination the proxy holds nothing for: ask pilot before deciding.
        if od.lookup_address(dst, ON_DEMAND_TIMEOUT).await {
            state = inputs.state.borrow().clone();
        }
    }
    // The port's declared protocol decides; undeclared ports are told apart by their first
    // bytes (with a bounded wait, so server-first protocols fall back to TCP).
    let svc = state.service_for(dst);
    let declared = svc.and_then(|svc| crate::route::port_protocol(svc, dst));
    let detected = match declared {
        Some(Protocol::Http | Protocol::Http2 | Protocol::Grpc) => Detected::Http1,
        Some(Protocol::Tcp) => Detected::Tcp,
        Some(Protocol::Tls) => Detected::Tls,
        Some(Protocol::Detect) | None => crate::sniff::detect(&conn, crate::sniff::TIMEOUT)
            .await
            .unwrap_or(Detected::Tcp),
    };
    if matches!(detected, Detected::Http1 | Detected::Http2) {
        crate::http::serve_outbound(conn, peer, dst, inputs.clone(), drain).await;
        return;
    }
    let sni = match detected {
        Detected::Tls => crate::tls::peek_sni(&conn, crate::sniff::TIMEOUT).await,
        _ => None,
    };
    crate::tcp::outbound::forward(conn, peer, dst, inputs, &state, sni.as_deref()).await;
}
