//! HTTP/2 written by hand, for clients that break its rules (a library client keeps to them):
//! frames, an HPACK header block of literals, and a connection that has settled SETTINGS.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub const HEADERS: u8 = 0x1;
pub const RST_STREAM: u8 = 0x3;
pub const SETTINGS: u8 = 0x4;
pub const PING: u8 = 0x6;
pub const GOAWAY: u8 = 0x7;
pub const CONTINUATION: u8 = 0x9;
pub const END_STREAM: u8 = 0x1;
pub const END_HEADERS: u8 = 0x4;
pub const REFUSED_STREAM: u32 = 0x7;
pub const ENHANCE_YOUR_CALM: u32 = 0xb;

pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap().to_be_bytes();
    let mut f = vec![len[1], len[2], len[3], kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// An HPACK integer with an `n`-bit prefix (RFC 7541 5.1), after `first`'s high bits.
fn integer(first: u8, n: u32, mut v: usize, out: &mut Vec<u8>) {
    let max = (1usize << n) - 1;
    if v < max {
        out.push(first | u8::try_from(v).unwrap());
        return;
    }
    out.push(first | u8::try_from(max).unwrap());
    v -= max;
    while v >= 128 {
        out.push(u8::try_from(v % 128).unwrap() | 0x80);
        v /= 128;
    }
    out.push(u8::try_from(v).unwrap());
}

/// The header block of `GET /` to `shipping` over http, with `extra` (name, value) headers
/// as literals never indexed.
pub fn get_block(extra: &[(&str, &str)]) -> Vec<u8> {
    // :method GET, :scheme http, :path / (static table), :authority literal.
    let mut b = vec![0x82, 0x86, 0x84, 0x01, 8];
    b.extend_from_slice(b"shipping");
    for (name, value) in extra {
        b.push(0x10);
        integer(0, 7, name.len(), &mut b);
        b.extend_from_slice(name.as_bytes());
        integer(0, 7, value.len(), &mut b);
        b.extend_from_slice(value.as_bytes());
    }
    b
}

/// HEADERS (and CONTINUATION frames past 16 KiB) carrying `block` on `stream`.
pub fn headers(stream: u32, block: &[u8], end_stream: bool) -> Vec<u8> {
    let chunks: Vec<&[u8]> = block.chunks(16 * 1024).collect();
    let mut out = Vec::new();
    for (i, chunk) in chunks.iter().enumerate() {
        let last = i + 1 == chunks.len();
        let (kind, mut flags) = if i == 0 {
            (HEADERS, if end_stream { END_STREAM } else { 0 })
        } else {
            (CONTINUATION, 0)
        };
        if last {
            flags |= END_HEADERS;
        }
        out.extend(frame(kind, flags, stream, chunk));
    }
    out
}

/// A connection that has sent the client preface and settled SETTINGS with the server.
pub async fn connect(addr: SocketAddr) -> TcpStream {
    let mut c = TcpStream::connect(addr).await.unwrap();
    c.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    c.write_all(&frame(SETTINGS, 0, 0, &[])).await.unwrap();
    let (kind, flags, _, _) = read(&mut c).await.expect("the server's SETTINGS");
    assert_eq!((kind, flags), (SETTINGS, 0));
    c.write_all(&frame(SETTINGS, 0x1, 0, &[])).await.unwrap();
    c
}

/// The next frame: (type, flags, stream, payload); `None` once the connection closed.
pub async fn read(c: &mut TcpStream) -> Option<(u8, u8, u32, Vec<u8>)> {
    let mut head = [0u8; 9];
    c.read_exact(&mut head).await.ok()?;
    let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
    let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
    let mut payload = vec![0u8; len];
    c.read_exact(&mut payload).await.ok()?;
    Some((head[3], head[4], stream, payload))
}

/// The 32-bit error code at `at` in a frame's payload.
pub fn code(payload: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([
        payload[at],
        payload[at + 1],
        payload[at + 2],
        payload[at + 3],
    ])
}
