//! Opaque TCP to the application: the connection from 127.0.0.6 to the workload's port, the
//! bytes spliced both ways, and the connection's metrics (reporter `destination`) and access
//! log.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpSocket, TcpStream};

use crate::inputs::Inputs;
use crate::socket::PASSTHROUGH_SOURCE;

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

/// Carries a connection (plaintext, or the inside of a peer's mesh mTLS that proved
/// `identity`) to the application's port `dst.port()`.
pub async fn to_app<S>(
    stream: &mut S,
    peer: SocketAddr,
    dst: SocketAddr,
    inputs: &Arc<Inputs>,
    identity: Option<&str>,
    sni: Option<&str>,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (side, caller) = match identity {
        Some(id) => ("inbound mtls tcp", format!("{peer} ({id})")),
        None => ("inbound tcp", peer.to_string()),
    };
    let started = tokio::time::Instant::now();
    let logs = inputs.state.borrow().telemetry.server_logs.clone();
    let entry = (!logs.is_empty() || crate::telemetry::tap::watched()).then(|| {
        let mut e = crate::telemetry::Entry::started("inbound");
        e.downstream_remote_address = Some(peer);
        e.downstream_local_address = Some(dst);
        e.requested_server_name = sni.map(str::to_string);
        e.downstream_peer_principal = identity.map(str::to_string);
        e.upstream_cluster = Some(format!("inbound|{}||", dst.port()));
        e
    });
    // The connection's access log line, when one is written.
    let log = |flags: &'static str, received: u64, sent: u64, denied_by: Option<String>| {
        let Some(mut e) = entry.clone() else { return };
        e.response_flags = flags;
        e.response_code_details = if denied_by.is_some() {
            "rbac_access_denied_matched_policy".into()
        } else {
            crate::telemetry::access_log::details_of(flags, false).into()
        };
        e.denied_by = denied_by;
        e.bytes_received = received;
        e.bytes_sent = sent;
        e.duration = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        if flags != "UF" && e.denied_by.is_none() {
            e.upstream_host = Some(format!("127.0.0.1:{}", dst.port()));
        }
        e.write(&logs);
    };
    // AuthorizationPolicy over TCP: decided once per connection; a denial closes it before a
    // byte reaches the app.
    let words = {
        let state = inputs.state.borrow().clone();
        if state.authz.is_empty() {
            String::new()
        } else {
            let decision = state.authz.evaluate(&crate::authz::Attributes {
                source: peer,
                remote_ip: peer.ip(),
                principal: identity,
                destination: dst,
                sni,
                http: None,
            });
            // CUSTOM: a gRPC authorizer checks the connection (an HTTP one cannot, and
            // denies); the first denial closes it.
            for c in &decision.checks {
                let subject = crate::http::ext_authz::Subject {
                    source: peer,
                    principal: identity,
                    destination: dst,
                    sni,
                    request: None,
                };
                if let crate::http::ext_authz::Verdict::Deny(_, why) =
                    crate::http::ext_authz::check(inputs, &c.authorizer, &subject).await
                {
                    tcp_series(inputs, dst, identity, "-").opened();
                    tcp_series(inputs, dst, identity, "-").closed(0, 0);
                    let by = format!(
                        "denied by {} rules[{}] (CUSTOM: {why})",
                        c.by.policy, c.by.rule
                    );
                    tracing::debug!(target: "access", "{side} {caller} -> {dst} connection closed: {by}");
                    log("-", 0, 0, Some(by));
                    return;
                }
            }
            let mut words = format!(" authz=\"{}\"", decision.reason());
            if let Some(shadow) = &decision.dry_run {
                if shadow.denied != decision.denied {
                    tracing::info!(target: "authz", "{side} {caller} -> {dst}: dry-run: would be {}", shadow.reason());
                }
                words.push_str(&format!(" dry_run=\"{}\"", shadow.reason()));
            }
            if decision.denied {
                tcp_series(inputs, dst, identity, "-").opened();
                tcp_series(inputs, dst, identity, "-").closed(0, 0);
                tracing::debug!(target: "access", "{side} {caller} -> {dst} connection closed:{words}");
                log("-", 0, 0, Some(decision.reason()));
                return;
            }
            words
        }
    };
    tcp_series(inputs, dst, identity, "-").opened();
    let mut app = match connect_app(dst.port()).await {
        Ok(s) => s,
        Err(e) => {
            tcp_series(inputs, dst, identity, "UF").closed(0, 0);
            tracing::debug!(target: "access", "{side} {peer} -> {dst} flags=UF error={e}");
            log("UF", 0, 0, None);
            return;
        }
    };
    match crate::tcp::splice(stream, &mut app).await {
        Ok((sent, received)) => {
            tcp_series(inputs, dst, identity, "-").closed(sent, received);
            tracing::debug!(target: "access", "{side} {caller} -> {dst} flags=- sent={received} received={sent}{words}");
            log("-", sent, received, None);
        }
        Err(_) => {
            tcp_series(inputs, dst, identity, "DC").closed(0, 0);
            tracing::debug!(target: "access", "{side} {caller} -> {dst} flags=DC");
            log("DC", 0, 0, None);
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
        grpc_status: None,
    };
    metrics.tcp_series(&key, || {
        inbound_sides(inputs.workload(), &inputs.state.borrow(), dst, peer, "")
    })
}
