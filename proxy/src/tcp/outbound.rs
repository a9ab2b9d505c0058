//! TLS passed through by SNI and opaque TCP from the workload: the endpoint the routing layer
//! picks, the connection to it (plain, mesh mTLS, or TLS the proxy originates), the bytes
//! spliced both ways, and the connection's metrics and access log.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpStream;

use crate::inputs::Inputs;
use crate::route::outlier::Outcome;
use crate::route::{PASSTHROUGH, Target, hash_str, pick_endpoint, pick_tls_endpoint};
use crate::state::{OutboundPolicy, State};

/// Carries a captured connection to `dst` (its TLS server name `sni`, when it is TLS) to the
/// endpoint its service's routes choose, or through when it is outside the registry and the
/// policy allows it.
pub async fn forward(
    conn: TcpStream,
    peer: SocketAddr,
    dst: SocketAddr,
    inputs: &Arc<Inputs>,
    state: &State,
    sni: Option<&str>,
) {
    forward_to(conn, peer, dst, inputs, state, state.service_for(dst), sni).await;
}

/// [`forward`] through the routes of `svc` (a gateway's, for its TLS passthrough and TCP
/// listeners), or the passthrough policy when there is none.
pub async fn forward_to(
    mut conn: TcpStream,
    peer: SocketAddr,
    dst: SocketAddr,
    inputs: &Arc<Inputs>,
    state: &State,
    svc: Option<&Arc<crate::state::Service>>,
    sni: Option<&str>,
) {
    let ends = Ends {
        peer,
        dst,
        sni,
        entry: state
            .telemetry
            .client_entries()
            .then(|| crate::telemetry::Entry::started("outbound")),
        started: tokio::time::Instant::now(),
    };
    let target = match svc {
        Some(svc) => {
            let picked = match sni {
                Some(name) => pick_tls_endpoint(state, svc, dst, name, &inputs.loads),
                None => pick_endpoint(state, svc, dst, &inputs.loads, Some(&source_ip_key(peer))),
            };
            match picked {
                Some(t) => t,
                None => {
                    finish(inputs, state, &ends, None, "UH", 0, 0);
                    return;
                }
            }
        }
        None if state.outbound_policy == OutboundPolicy::AllowAny => Target::passthrough(dst),
        None => {
            finish(inputs, state, &ends, None, "NR", 0, 0);
            return;
        }
    };
    let mut target = target;
    // Auto mTLS needs an identity of our own; without one, plaintext.
    if target.mtls && !target.mtls_required && inputs.upstreams.mtls().is_none() {
        target.mtls = false;
    }
    tcp_series(inputs, state, Some(&target), "-").opened();
    let _active = inputs.loads.start(target.addr);
    // The cluster's circuit breaker: over maxConnections the connection is closed at once
    // (flag UO), as Envoy's TCP proxy does; the count lasts as long as the connection.
    let mut connect_timeout = crate::tls::connect::CONNECT_TIMEOUT;
    let _counted = match &target.limits {
        Some(limits) => {
            connect_timeout = limits.connect_timeout;
            match inputs
                .upstreams
                .cluster(limits)
                .breaker
                .open_tcp(target.addr)
            {
                Ok(permit) => Some(permit),
                Err(e) => {
                    tracing::debug!("circuit breaker of {}: {e}", limits.cluster);
                    finish(inputs, state, &ends, Some(&target), "UO", 0, 0);
                    return;
                }
            }
        }
        None => None,
    };
    let connected = crate::tls::connect::tcp_within(target.addr, None, connect_timeout).await;
    if let Some(o) = &target.outlier {
        // A connection made counts as a success, a failed one as a local failure (Envoy's TCP
        // proxy reports both to outlier detection).
        let outcome = match &connected {
            Ok(_) => Outcome::Status(200),
            Err(_) => Outcome::LocalFailure,
        };
        o.record(target.addr, outcome);
    }
    let upstream = match connected {
        Ok(s) => s,
        Err(e) => {
            tracing::debug!("connect {}: {e}", target.addr);
            finish(inputs, state, &ends, Some(&target), "UF", 0, 0);
            return;
        }
    };
    let result = if let Some(o) = &target.originate {
        match crate::tls::connect::originate(o, upstream, &[]).await {
            Ok(mut tls) => crate::tcp::splice(&mut conn, &mut tls).await,
            Err(e) => {
                tracing::warn!("TLS to {}: {e}", target.addr);
                finish(inputs, state, &ends, Some(&target), "UF", 0, 0);
                return;
            }
        }
    } else if target.mtls {
        let Some(mtls) = inputs.upstreams.mtls() else {
            tracing::warn!(
                "mTLS to {} needs a workload certificate, and the proxy has none",
                target.addr
            );
            finish(inputs, state, &ends, Some(&target), "UF", 0, 0);
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
                finish(inputs, state, &ends, Some(&target), "UF", 0, 0);
                return;
            }
        }
    } else {
        let mut upstream = upstream;
        crate::tcp::splice(&mut conn, &mut upstream).await
    };
    match result {
        Ok((sent, received)) => finish(inputs, state, &ends, Some(&target), "-", sent, received),
        Err(_) => finish(inputs, state, &ends, Some(&target), "DC", 0, 0),
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
        grpc_status: None,
    };
    metrics.tcp_series(&key, || match target {
        Some(t) => outbound_sides(inputs.workload(), state, t, ""),
        None => Sides::unknown_destination(inputs.workload()),
    })
}

/// Ends a connection: its metrics (one refused before a destination was chosen counts as opened
/// and closed at once) and one access-log line with an Envoy-style response flag.
/// The two ends of a connection, and its access log entry when one is written.
struct Ends<'a> {
    peer: SocketAddr,
    dst: SocketAddr,
    sni: Option<&'a str>,
    entry: Option<crate::telemetry::Entry>,
    started: tokio::time::Instant,
}

#[allow(clippy::too_many_arguments)]
fn finish(
    inputs: &Inputs,
    state: &crate::state::State,
    ends: &Ends<'_>,
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
    let Some(mut e) = ends.entry.clone() else {
        return;
    };
    e.response_flags = flags;
    e.response_code_details = crate::telemetry::access_log::details_of(flags, false).into();
    e.bytes_received = sent;
    e.bytes_sent = received;
    e.duration = u64::try_from(ends.started.elapsed().as_millis()).unwrap_or(u64::MAX);
    e.downstream_remote_address = Some(ends.peer);
    e.downstream_local_address = Some(ends.dst);
    e.requested_server_name = ends.sni.map(str::to_string);
    if let Some(t) = target {
        e.upstream_host = Some(t.addr.to_string());
        e.upstream_cluster = Some(if &*t.service == PASSTHROUGH {
            "PassthroughCluster".to_string()
        } else {
            format!("outbound|{}|{}|{}", ends.dst.port(), t.subset, t.service)
        });
        if t.mtls && !t.identity.is_empty() {
            e.upstream_peer_principal = Some(t.identity.to_string());
        }
    }
    e.write(&state.telemetry.client_logs);
}
