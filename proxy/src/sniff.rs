//! Protocol detection from a connection's first bytes: HTTP/1.x request line, HTTP/2 preface,
//! TLS ClientHello, else opaque TCP. The wait is bounded, so a server-first protocol (the
//! client sends nothing until the server speaks) is treated as TCP after the timeout instead
//! of hanging.

use std::time::Duration;

use tokio::net::TcpStream;

/// How long detection waits for the client's first bytes (Istio's default is 100ms; a
/// server-first protocol is treated as TCP after it).
pub const TIMEOUT: Duration = Duration::from_millis(100);

/// What the first bytes say.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Detected {
    /// An HTTP/1.x request.
    Http1,
    /// The HTTP/2 connection preface (h2c with prior knowledge, gRPC).
    Http2,
    /// A TLS ClientHello.
    Tls,
    /// Anything else, or nothing within the timeout.
    Tcp,
}

/// The HTTP/2 connection preface.
pub const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

const METHODS: [&str; 9] = [
    "GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH", "CONNECT", "TRACE",
];

/// Classifies `bytes`; `None` while more bytes are needed to tell.
pub fn classify(bytes: &[u8]) -> Option<Detected> {
    if bytes.is_empty() {
        return None;
    }
    if bytes[0] == 0x16 {
        return if bytes.len() < 2 {
            None
        } else if bytes[1] == 0x03 {
            Some(Detected::Tls)
        } else {
            Some(Detected::Tcp)
        };
    }
    let n = bytes.len().min(H2_PREFACE.len());
    if bytes[..n] == H2_PREFACE[..n] {
        return if n == H2_PREFACE.len() {
            Some(Detected::Http2)
        } else {
            None
        };
    }
    let mut undecided = false;
    for m in METHODS {
        let want = m.len() + 1;
        let have = bytes.len().min(want);
        let candidate = [m.as_bytes(), b" "].concat();
        if bytes[..have] == candidate[..have] {
            if have == want {
                return Some(Detected::Http1);
            }
            undecided = true;
        }
    }
    if undecided { None } else { Some(Detected::Tcp) }
}

/// Peeks at `stream` until its protocol is known or `timeout` passes (then TCP).
pub async fn detect(stream: &TcpStream, timeout: Duration) -> std::io::Result<Detected> {
    let mut buf = [0u8; 32];
    let deadline = tokio::time::Instant::now() + timeout;
    let mut pause = Duration::from_millis(1);
    loop {
        let n = match tokio::time::timeout_at(deadline, stream.peek(&mut buf)).await {
            Ok(r) => r?,
            Err(_) => return Ok(Detected::Tcp),
        };
        if n == 0 {
            return Ok(Detected::Tcp);
        }
        if let Some(d) = classify(&buf[..n]) {
            return Ok(d);
        }
        if n == buf.len() {
            return Ok(Detected::Tcp);
        }
        // Some bytes came but not enough to tell. The socket stays readable while they sit
        // unread, so readiness cannot signal the rest: look again after a short, growing pause.
        if tokio::time::Instant::now() + pause > deadline {
            return Ok(Detected::Tcp);
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_bytes_tell_the_protocol() {
        assert_eq!(classify(b"GET / HTTP/1.1\r\n"), Some(Detected::Http1));
        assert_eq!(classify(b"OPTIONS * HTTP/1.1"), Some(Detected::Http1));
        assert_eq!(classify(b"GE"), None);
        assert_eq!(
            classify(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
            Some(Detected::Http2)
        );
        assert_eq!(classify(b"PRI * HTT"), None);
        assert_eq!(classify(&[0x16, 0x03, 0x01, 0x02]), Some(Detected::Tls));
        assert_eq!(classify(b"\x00\x00\x00\x13ismaster"), Some(Detected::Tcp));
        assert_eq!(classify(b"GETX"), Some(Detected::Tcp));
        assert_eq!(classify(b"hello"), Some(Detected::Tcp));
    }

    #[tokio::test]
    async fn a_silent_client_is_tcp_after_the_timeout() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let _client = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (server, _) = l.accept().await.unwrap();
        let started = tokio::time::Instant::now();
        assert_eq!(
            detect(&server, Duration::from_millis(50)).await.unwrap(),
            Detected::Tcp
        );
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[tokio::test]
    async fn a_request_split_across_writes_is_still_http() {
        use tokio::io::AsyncWriteExt;
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (server, _) = l.accept().await.unwrap();
        client.write_all(b"PO").await.unwrap();
        let sniff =
            tokio::spawn(async move { detect(&server, Duration::from_secs(5)).await.unwrap() });
        tokio::task::yield_now().await;
        client.write_all(b"ST /x HTTP/1.1\r\n").await.unwrap();
        assert_eq!(sniff.await.unwrap(), Detected::Http1);
    }
}
