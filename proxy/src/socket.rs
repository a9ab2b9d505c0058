//! Socket details: the original destination of a redirected connection (`SO_ORIGINAL_DST`),
//! and the source address of connections handed to the application.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

use nix::sys::socket::{getsockopt, sockopt};
use tokio::net::TcpStream;

/// The source address of connections handed to the application (which the capture rules
/// leave alone, so a hand-over is never captured again).
pub const PASSTHROUGH_SOURCE: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 6);

/// Where a redirected connection was headed before the capture rules sent it to the proxy.
pub trait OriginalDst: Send + Sync + 'static {
    /// The destination the client connected to.
    fn original_dst(&self, stream: &TcpStream) -> io::Result<SocketAddr>;
}

/// The kernel's answer (`SO_ORIGINAL_DST`), for connections redirected by iptables.
#[derive(Clone, Copy, Debug, Default)]
pub struct KernelOriginalDst;

impl OriginalDst for KernelOriginalDst {
    fn original_dst(&self, stream: &TcpStream) -> io::Result<SocketAddr> {
        let addr = getsockopt(stream, sockopt::OriginalDst).map_err(io::Error::from)?;
        let ip = Ipv4Addr::from(u32::from_be(addr.sin_addr.s_addr));
        Ok(SocketAddr::V4(SocketAddrV4::new(
            ip,
            u16::from_be(addr.sin_port),
        )))
    }
}

/// The original destination of an accepted connection (with Nagle off), or `None` after
/// logging why there is none.
pub fn destination(
    resolver: &dyn OriginalDst,
    conn: &TcpStream,
    peer: SocketAddr,
    side: &str,
) -> Option<SocketAddr> {
    let _ = conn.set_nodelay(true);
    match resolver.original_dst(conn) {
        Ok(d) => Some(d),
        Err(e) => {
            tracing::warn!(%peer, "{side}: no original destination ({e}); closing");
            None
        }
    }
}

/// A fixed destination: for tests and for listeners that are not behind capture rules.
#[derive(Clone, Copy, Debug)]
pub struct FixedDst(pub SocketAddr);

impl OriginalDst for FixedDst {
    fn original_dst(&self, _: &TcpStream) -> io::Result<SocketAddr> {
        Ok(self.0)
    }
}
