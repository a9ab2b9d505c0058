//! Gateway mode (`mesh-proxy run --mode gateway`): no capture; the proxy listens on the ports
//! of the Istio Gateways that select it, as pilot sends them (`gateway_listeners` of the
//! state), and routes each request by its Host through the VirtualServices bound to them. The
//! listeners follow the state: a port that appears is bound, one that goes is closed (its
//! connections in flight finish); a port that cannot be bound is logged with why and tried
//! again on the next state.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::drain;
use crate::inputs::Inputs;
use crate::metrics::{Listener, Refusal};

/// How long a client may take to complete its TLS handshake.
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Keeps one listener per gateway port of the latest state, on `ip`, until a drain begins.
pub async fn serve(ip: IpAddr, inputs: Arc<Inputs>, mut drain: drain::Watch) {
    let mut state = inputs.state.clone();
    let mut open: HashMap<u16, JoinHandle<()>> = HashMap::new();
    loop {
        let wanted: Vec<u16> = state.borrow_and_update().gateway.keys().copied().collect();
        open.retain(|port, task| {
            let keep = wanted.contains(port);
            if !keep {
                tracing::info!(port, "gateway: port no longer served; closing its listener");
                task.abort();
            }
            keep
        });
        for port in wanted {
            if open.contains_key(&port) {
                continue;
            }
            let addr = SocketAddr::new(ip, port);
            match TcpListener::bind(addr).await {
                Ok(listener) => {
                    tracing::info!(%addr, "gateway: listening");
                    open.insert(
                        port,
                        tokio::spawn(accept(listener, inputs.clone(), drain.clone())),
                    );
                }
                Err(e) => tracing::error!(%addr, "gateway: cannot listen: {e}"),
            }
        }
        tokio::select! {
            changed = state.changed() => if changed.is_err() { break },
            () = drain.signaled() => break,
        }
    }
    // The accept loops stop on the drain themselves; a closed state feed ends them here.
    for task in open.into_values() {
        task.abort();
    }
}

async fn accept(listener: TcpListener, inputs: Arc<Inputs>, drain: drain::Watch) {
    let limits_from = inputs.clone();
    drain::accept_loop(
        listener,
        drain,
        "gateway",
        limits_from.connection_limit(Listener::Gateway),
        move |conn, peer, watch| {
            let inputs = inputs.clone();
            async move {
                let Ok(local) = conn.local_addr() else { return };
                let _ = conn.set_nodelay(true);
                let (protocol, tls) = {
                    let state = inputs.state.borrow();
                    state
                        .gateway
                        .get(&local.port())
                        .map_or((crate::state::Protocol::Http, false), |p| {
                            (p.protocol, !p.tls.is_empty())
                        })
                };
                if matches!(
                    protocol,
                    crate::state::Protocol::Tls | crate::state::Protocol::Tcp
                ) {
                    // Passed through by SNI, or TCP: the listener's routes pick the destination.
                    let sni = if protocol == crate::state::Protocol::Tls {
                        crate::tls::peek_sni(&conn, HANDSHAKE_TIMEOUT).await
                    } else {
                        None
                    };
                    let state = inputs.state.borrow().clone();
                    // Never without routes: the passthrough it would fall back to is this listener.
                    let Some(routes) = state
                        .gateway
                        .get(&local.port())
                        .and_then(|p| p.hosts.first())
                        .map(|h| h.routes.clone())
                    else {
                        return;
                    };
                    crate::tcp::outbound::forward_to(
                        conn,
                        peer,
                        local,
                        &inputs,
                        &state,
                        Some(&routes),
                        sni.as_deref(),
                    )
                    .await;
                    return;
                }
                if !tls {
                    crate::http::serve_gateway(conn, peer, local, false, inputs, watch).await;
                    return;
                }
                let acceptor = tokio_rustls::LazyConfigAcceptor::new(
                    rustls::server::Acceptor::default(),
                    conn,
                );
                let Ok(Ok(start)) = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor).await else {
                    refused(&inputs, Refusal::TlsHandshake);
                    tracing::debug!(%peer, "gateway: no TLS ClientHello");
                    return;
                };
                let config = {
                    let state = inputs.state.borrow();
                    let sni = start.client_hello().server_name().map(str::to_string);
                    state
                        .gateway
                        .get(&local.port())
                        .and_then(|p| crate::tls::terminate::pick(&p.tls, sni.as_deref()))
                        .map(|t| t.config.clone())
                };
                let Some(config) = config else { return };
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, start.into_stream(config)).await {
                    Ok(Ok(stream)) => {
                        crate::http::serve_gateway(stream, peer, local, true, inputs, watch).await;
                    }
                    Ok(Err(e)) => {
                        refused(&inputs, Refusal::TlsHandshake);
                        tracing::debug!(%peer, "gateway: TLS handshake: {e}");
                    }
                    Err(_) => {
                        refused(&inputs, Refusal::TlsHandshake);
                        tracing::debug!(%peer, "gateway: TLS handshake timed out");
                    }
                }
            }
        },
    )
    .await;
}

fn refused(inputs: &Inputs, why: Refusal) {
    inputs.metrics.refused().count(Listener::Gateway, why);
}
