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
                    tracing::info!(target: "access", "{side} {caller} -> {dst} flags=- connection closed: authz=\"denied by {} rules[{}] (CUSTOM: {why})\"", c.by.policy, c.by.rule);
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
                tracing::info!(target: "access", "{side} {caller} -> {dst} flags=- connection closed:{words}");
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
            tracing::info!(target: "access", "{side} {peer} -> {dst} flags=UF error={e}");
            return;
        }
    };
    match crate::tcp::splice(stream, &mut app).await {
        Ok((sent, received)) => {
            tcp_series(inputs, dst, identity, "-").closed(sent, received);
            tracing::info!(target: "access", "{side} {caller} -> {dst} flags=- sent={received} received={sent}{words}")
        }
        Err(_) => {
            tcp_series(inputs, dst, identity, "DC").closed(0, 0);
            tracing::info!(target: "access", "{side} {caller} -> {dst} flags=DC")
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
