//! Opaque TCP: copying bytes both ways until either side closes; the outbound side
//! (`outbound.rs`: to the endpoint the routing layer picks) and the inbound side (`inbound.rs`:
//! to the application).

pub mod inbound;
pub mod outbound;

use tokio::io::{AsyncRead, AsyncWrite};

/// Copies in both directions until both are done; returns (client→server, server→client) bytes.
pub async fn splice<A, B>(a: &mut A, b: &mut B) -> std::io::Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    tokio::io::copy_bidirectional(a, b).await
}
