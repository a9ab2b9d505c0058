//! TLS passthrough: the server name (SNI) of a ClientHello read without terminating TLS, so
//! TLS traffic can be routed by name and carried as opaque bytes.

pub mod connect;
pub mod mtls;
pub mod originate;
pub mod terminate;

use std::time::Duration;

use tokio::net::TcpStream;

/// The largest TLS record (16 KiB of payload plus its 5-byte header).
const MAX_RECORD: usize = 16 * 1024 + 5;

/// Reads the SNI of the ClientHello at the start of `bytes`: `Ok(Some(name))`, `Ok(None)` when
/// the hello has no SNI or is not a hello, `Err(n)` when at least `n` bytes are needed.
pub fn sni(bytes: &[u8]) -> Result<Option<String>, usize> {
    if bytes.len() < 5 {
        return Err(5);
    }
    if bytes[0] != 0x16 {
        return Ok(None);
    }
    let record_len = usize::from(u16::from_be_bytes([bytes[3], bytes[4]]));
    let total = 5 + record_len;
    if bytes.len() < total {
        return Err(total.min(MAX_RECORD));
    }
    Ok(parse_hello(&bytes[5..total]))
}

/// A cursor over a byte slice that fails (returns `None`) instead of panicking.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Some(head)
    }

    fn u8(&mut self) -> Option<usize> {
        self.take(1).map(|b| usize::from(b[0]))
    }

    fn u16(&mut self) -> Option<usize> {
        self.take(2)
            .map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])))
    }

    fn vec8(&mut self) -> Option<&'a [u8]> {
        let n = self.u8()?;
        self.take(n)
    }

    fn vec16(&mut self) -> Option<&'a [u8]> {
        let n = self.u16()?;
        self.take(n)
    }
}

fn parse_hello(record: &[u8]) -> Option<String> {
    let mut r = Reader(record);
    if r.u8()? != 0x01 {
        return None; // not a ClientHello
    }
    let len = r.take(3)?;
    let body_len = (usize::from(len[0]) << 16) | (usize::from(len[1]) << 8) | usize::from(len[2]);
    let mut body = Reader(r.take(body_len)?);
    body.take(2 + 32)?; // client_version, random
    body.vec8()?; // session id
    body.vec16()?; // cipher suites
    body.vec8()?; // compression methods
    let mut exts = Reader(body.vec16()?);
    while !exts.0.is_empty() {
        let kind = exts.u16()?;
        let data = exts.vec16()?;
        if kind != 0 {
            continue;
        }
        let mut list = Reader(data);
        let mut names = Reader(list.vec16()?);
        while !names.0.is_empty() {
            let name_type = names.u8()?;
            let name = names.vec16()?;
            if name_type == 0 {
                return std::str::from_utf8(name).ok().map(str::to_ascii_lowercase);
            }
        }
    }
    None
}

/// Peeks at `stream` until its ClientHello's SNI can be read or `timeout` passes.
pub async fn peek_sni(stream: &TcpStream, timeout: Duration) -> Option<String> {
    let mut buf = vec![0u8; MAX_RECORD];
    let deadline = tokio::time::Instant::now() + timeout;
    let mut pause = Duration::from_millis(1);
    loop {
        let n = tokio::time::timeout_at(deadline, stream.peek(&mut buf))
            .await
            .ok()?
            .ok()?;
        if n == 0 {
            return None;
        }
        match sni(&buf[..n]) {
            Ok(name) => return name,
            Err(_) if tokio::time::Instant::now() + pause > deadline => return None,
            Err(_) => {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(20));
            }
        }
    }
}

/// True when `pattern` (a name or `*.suffix`) covers `name`.
pub fn sni_matches(pattern: &str, name: &str) -> bool {
    match pattern.strip_prefix('*') {
        Some(suffix) => name.len() > suffix.len() && name.ends_with(suffix),
        None => pattern.eq_ignore_ascii_case(name),
    }
}

/// A minimal ClientHello carrying `name` as SNI (for tests and tools).
pub fn client_hello(name: &str) -> Vec<u8> {
    let name = name.as_bytes();
    let mut sni_ext = Vec::new();
    let entry_len = 1 + 2 + name.len();
    sni_ext.extend_from_slice(&(entry_len as u16).to_be_bytes());
    sni_ext.push(0);
    sni_ext.extend_from_slice(&(name.len() as u16).to_be_bytes());
    sni_ext.extend_from_slice(name);
    let mut exts = vec![0, 0];
    exts.extend_from_slice(&(sni_ext.len() as u16).to_be_bytes());
    exts.extend_from_slice(&sni_ext);
    let mut body = vec![0x03, 0x03];
    body.extend_from_slice(&[7u8; 32]);
    body.push(0); // session id
    body.extend_from_slice(&[0, 2, 0x13, 0x01]); // one cipher suite
    body.extend_from_slice(&[1, 0]); // null compression
    body.extend_from_slice(&(exts.len() as u16).to_be_bytes());
    body.extend_from_slice(&exts);
    let mut hs = vec![0x01];
    hs.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    hs.extend_from_slice(&body);
    let mut record = vec![0x16, 0x03, 0x01];
    record.extend_from_slice(&(hs.len() as u16).to_be_bytes());
    record.extend_from_slice(&hs);
    record
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sni_is_read_from_a_client_hello() {
        let hello = client_hello("API.Example.com");
        assert_eq!(sni(&hello), Ok(Some("api.example.com".into())));
        assert_eq!(sni(&hello[..3]), Err(5));
        assert_eq!(sni(&hello[..10]), Err(hello.len()));
        assert_eq!(sni(b"GET / HTTP/1.1\r\n"), Ok(None));
    }

    #[test]
    fn truncated_or_garbled_hellos_do_not_panic() {
        let hello = client_hello("a.example.com");
        for cut in 0..hello.len() {
            let mut garbled = hello.clone();
            garbled[cut] ^= 0xff;
            let _ = sni(&garbled);
            let _ = sni(&hello[..cut]);
        }
    }

    #[test]
    fn wildcards_cover_subdomains_only() {
        assert!(sni_matches("*.example.com", "a.example.com"));
        assert!(!sni_matches("*.example.com", "example.com"));
        assert!(sni_matches("a.example.com", "A.example.com"));
    }
}
