//! The outbound listener (15001): connections the workload makes, captured by `init`. Each is
//! matched to a service by its original destination, then carried to an endpoint chosen by the
//! service's routes and load balancer. Destinations outside the registry pass through
//! (ALLOW_ANY) or are refused (REGISTRY_ONLY).

pub mod balance;
mod pick;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};

pub use pick::{
    HashKey, PASSTHROUGH, Target, choose_weighted, endpoint_in, hash_str, no_identity,
    pick_endpoint, pick_tls_endpoint, rendezvous, to_destination,
};

use crate::Inputs;
use crate::drain;
use crate::sniff::Detected;
use crate::socket::OriginalDst;
use crate::state::{OutboundPolicy, Protocol};

/// Default time to wait for an upstream connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long protocol detection waits for the client's first bytes (Istio's default is 100ms;
/// a server-first protocol is treated as TCP after it).
pub const SNIFF_TIMEOUT: Duration = Duration::from_millis(100);

/// How long a connection to an unknown destination waits for pilot's answer.
pub const ON_DEMAND_TIMEOUT: Duration = Duration::from_secs(1);

/// Accepts until a drain begins; each connection runs in its own task.
pub async fn serve(
    listener: TcpListener,
    inputs: Arc<Inputs>,
    dst: Arc<dyn OriginalDst>,
    drain: drain::Watch,
) {
    drain::accept_loop(listener, drain, "outbound", move |conn, peer, watch| {
        let (inputs, dst) = (inputs.clone(), dst.clone());
        async move { handle(conn, peer, &inputs, dst.as_ref(), watch).await }
    })
    .await;
}

async fn handle(
    mut conn: TcpStream,
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
    let declared = svc.and_then(|svc| crate::http::port_protocol(svc, dst));
    let detected = match declared {
        Some(Protocol::Http | Protocol::Http2 | Protocol::Grpc) => Detected::Http1,
        Some(Protocol::Tcp) => Detected::Tcp,
        Some(Protocol::Tls) => Detected::Tls,
        Some(Protocol::Detect) | None => crate::sniff::detect(&conn, SNIFF_TIMEOUT)
            .await
            .unwrap_or(Detected::Tcp),
    };
    if matches!(detected, Detected::Http1 | Detected::Http2) {
        crate::http::serve_outbound(conn, peer, dst, inputs.clone(), drain).await;
        return;
    }
    let sni = match detected {
        Detected::Tls => crate::tls::peek_sni(&conn, SNIFF_TIMEOUT).await,
        _ => None,
    };
    let target = match svc {
        Some(svc) => {
            let picked = match &sni {
                Some(name) => pick_tls_endpoint(&state, svc, dst, name, &inputs.loads),
                None => pick_endpoint(&state, svc, dst, &inputs.loads, Some(&source_ip_key(peer))),
            };
            match picked {
                Some(t) => t,
                None => {
                    finish(inputs, &state, peer, dst, None, "UH", 0, 0);
                    return;
                }
            }
        }
        None if state.outbound_policy == OutboundPolicy::AllowAny => Target::passthrough(dst),
        None => {
            finish(inputs, &state, peer, dst, None, "NR", 0, 0);
            return;
        }
    };
    let mut target = target;
    // Auto mTLS needs an identity of our own; without one, plaintext.
    if target.mtls && !target.mtls_required && inputs.upstreams.mtls().is_none() {
        target.mtls = false;
    }
    tcp_series(inputs, &state, Some(&target), "-").opened();
    let _active = inputs.loads.start(target.addr);
    let upstream = match crate::tls::connect::tcp(target.addr, None).await {
        Ok(s) => s,
        Err(e) => {
            tracing::debug!("connect {}: {e}", target.addr);
            finish(inputs, &state, peer, dst, Some(&target), "UF", 0, 0);
            return;
        }
    };
    let result = if let Some(o) = &target.originate {
        match crate::tls::connect::originate(o, upstream, &[]).await {
            Ok(mut tls) => crate::tcp::splice(&mut conn, &mut tls).await,
            Err(e) => {
                tracing::warn!("TLS to {}: {e}", target.addr);
                finish(inputs, &state, peer, dst, Some(&target), "UF", 0, 0);
                return;
            }
        }
    } else if target.mtls {
        let Some(mtls) = inputs.upstreams.mtls() else {
            tracing::warn!(
                "mTLS to {} needs a workload certificate, and the proxy has none",
                target.addr
            );
            finish(inputs, &state, peer, dst, Some(&target), "UF", 0, 0);
            return;
        };
        match mtls
            .handshake(
                upstream,
                target.addr,
                &target.identity,
                crate::tls::mtls::ALPN_MESH_TCP,
            )
            .await
        {
            Ok(mut tls) => crate::tcp::splice(&mut conn, &mut tls).await,
            Err(e) => {
                tracing::warn!("mTLS to {}: {e}", target.addr);
                finish(inputs, &state, peer, dst, Some(&target), "UF", 0, 0);
                return;
            }
        }
    } else {
        let mut upstream = upstream;
        crate::tcp::splice(&mut conn, &mut upstream).await
    };
    match result {
        Ok((sent, received)) => finish(
            inputs,
            &state,
            peer,
            dst,
            Some(&target),
            "-",
            sent,
            received,
        ),
        Err(_) => finish(inputs, &state, peer, dst, Some(&target), "DC", 0, 0),
    }
}

/// For TCP, only the source IP can key a consistent hash.
fn source_ip_key(peer: SocketAddr) -> impl Fn(&crate::state::proto::ConsistentHash) -> Option<u64> {
    move |policy| match policy.key {
        Some(crate::state::proto::consistent_hash::Key::UseSourceIp(true)) => {
            Some(hash_str(&peer.ip().to_string()))
        }
        _ => None,
    }
}

/// The TCP metrics series of connections to `target` ending with `flags` (reporter `source`).
fn tcp_series(
    inputs: &Inputs,
    state: &crate::state::State,
    target: Option<&Target>,
    flags: &'static str,
) -> Arc<crate::metrics::TcpSeries> {
    use crate::metrics::{Key, Reporter, RequestProtocol, Sides, UNKNOWN, outbound_sides};
    let metrics = &inputs.metrics;
    let key = Key {
        reporter: Reporter::Source,
        peer: target.map_or(UNKNOWN, |t| &*t.service),
        addr: target
            .filter(|t| &*t.service != PASSTHROUGH)
            .map(|t| t.addr),
        meta: "",
        mtls: target.is_some_and(|t| t.mtls),
        protocol: RequestProtocol::Tcp,
        code: 0,
        flags,
    };
    metrics.tcp_series(&key, || match target {
        Some(t) => outbound_sides(inputs.workload(), state, t, ""),
        None => Sides::unknown_destination(inputs.workload()),
    })
}

/// Ends a connection: its metrics (one refused before a destination was chosen counts as opened
/// and closed at once) and one access-log line with an Envoy-style response flag.
#[allow(clippy::too_many_arguments)]
fn finish(
    inputs: &Inputs,
    state: &crate::state::State,
    peer: SocketAddr,
    dst: SocketAddr,
    target: Option<&Target>,
    flags: &'static str,
    sent: u64,
    received: u64,
) {
    let series = tcp_series(inputs, state, target, flags);
    if target.is_none() {
        series.opened();
    }
    series.closed(sent, received);
    let service = target.map_or("-", |t| &*t.service);
    let upstream = target.map_or_else(|| "-".to_string(), |t| t.addr.to_string());
    tracing::info!(target: "access", "outbound tcp {peer} -> {dst} service={service} upstream={upstream} flags={flags} sent={sent} received={received}");
}
