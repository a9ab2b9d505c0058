//! What the proxy refused or closed to protect itself and the workload, by listener and
//! reason: `mesh_proxy_refused_total{listener, reason}`, one series for each pair (zeros
//! included, so a rate over it exists before the first refusal).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// A traffic listener.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Listener {
    /// Connections the workload makes (15001).
    Outbound,
    /// Connections to the workload (15006).
    Inbound,
    /// A gateway's listeners.
    Gateway,
}

impl Listener {
    const ALL: [Listener; 3] = [Listener::Outbound, Listener::Inbound, Listener::Gateway];

    /// The listener's name, as logs and metrics say it.
    pub fn as_str(self) -> &'static str {
        match self {
            Listener::Outbound => "outbound",
            Listener::Inbound => "inbound",
            Listener::Gateway => "gateway",
        }
    }
}

impl std::fmt::Display for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a connection (or an HTTP/2 connection's streams) was refused or closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The listener held its most connections; the new one was closed as accepted.
    ConnectionLimit,
    /// A request's headers took longer than the header read timeout.
    HeaderTimeout,
    /// Nothing moved on the connection for the idle timeout.
    IdleTimeout,
    /// Plaintext to a port whose PeerAuthentication is STRICT.
    PlaintextToStrict,
    /// A TLS handshake that failed: no client certificate, one the mesh's roots do not vouch
    /// for, or a handshake that did not finish in time.
    TlsHandshake,
    /// An HTTP/2 stream past the connection's concurrency limit, refused (REFUSED_STREAM).
    StreamLimit,
    /// An HTTP/2 client broke the connection's limits (too many streams reset before they were
    /// served, a header list too large, a protocol error): closed with GOAWAY.
    Http2Abuse,
}

impl Refusal {
    const ALL: [Refusal; 7] = [
        Refusal::ConnectionLimit,
        Refusal::HeaderTimeout,
        Refusal::IdleTimeout,
        Refusal::PlaintextToStrict,
        Refusal::TlsHandshake,
        Refusal::StreamLimit,
        Refusal::Http2Abuse,
    ];

    /// The reason as the metric's label says it.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::ConnectionLimit => "connection_limit",
            Refusal::HeaderTimeout => "header_timeout",
            Refusal::IdleTimeout => "idle_timeout",
            Refusal::PlaintextToStrict => "plaintext_to_strict",
            Refusal::TlsHandshake => "tls_handshake",
            Refusal::StreamLimit => "stream_limit",
            Refusal::Http2Abuse => "http2_abuse",
        }
    }
}

/// The counts of [`Refusal`]s per [`Listener`].
#[derive(Debug, Default)]
pub struct Refusals([[AtomicU64; Refusal::ALL.len()]; Listener::ALL.len()]);

impl Refusals {
    /// Counts one refusal.
    pub fn count(&self, listener: Listener, why: Refusal) {
        self.0[listener as usize][why as usize].fetch_add(1, Relaxed);
    }

    /// The counter of `why` on `listener`, for a lower layer to count into.
    pub fn counter(&self, listener: Listener, why: Refusal) -> &AtomicU64 {
        &self.0[listener as usize][why as usize]
    }

    /// Refusals so far of `why` on `listener`.
    pub fn get(&self, listener: Listener, why: Refusal) -> u64 {
        self.0[listener as usize][why as usize].load(Relaxed)
    }

    /// Every (listener, reason, count), in a fixed order.
    pub fn all(&self) -> impl Iterator<Item = (Listener, Refusal, u64)> + '_ {
        Listener::ALL.into_iter().flat_map(move |l| {
            Refusal::ALL
                .into_iter()
                .map(move |r| (l, r, self.get(l, r)))
        })
    }
}
