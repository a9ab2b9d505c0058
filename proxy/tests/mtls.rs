//! Workload identity and mutual TLS between proxies: certificates from a test CA, handshakes on
//! 127.0.0.1 with identity checks both ways, refusal of plaintext, of foreign CAs and of the
//! wrong service account, and renewal at half-life with backoff while the CA is away.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use mesh_ca::CaConfig;
use mesh_ca::testing::TestCa;
use mesh_proxy::identity::{Svid, keep_fresh};
use mesh_proxy::tls::mtls::{self, ALPN_MESH_TCP};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use mesh_proxy::testing::{source, svids};

fn clone_svid(s: &Svid) -> Svid {
    Svid {
        identity: s.identity.clone(),
        chain: s.chain.clone(),
        roots: s.roots.clone(),
        not_before: s.not_before,
        not_after: s.not_after,
        certified: s.certified.clone(),
    }
}

const SHIPPING: &str = "spiffe://cluster.local/ns/default/sa/shipping";

/// A server that echoes after the handshake; reports the peer identity it saw.
async fn mtls_server(
    server: watch::Receiver<Option<Arc<Svid>>>,
) -> (
    std::net::SocketAddr,
    tokio::sync::mpsc::Receiver<Result<String, String>>,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(mtls::server_config(server).unwrap());
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    tokio::spawn(async move {
        loop {
            let (c, _) = l.accept().await.unwrap();
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                match acceptor.accept(c).await {
                    Ok(mut tls) => {
                        let peer = mtls::peer_identity(tls.get_ref().1).unwrap_or_default();
                        let _ = tx.send(Ok(peer)).await;
                        let mut buf = [0u8; 64];
                        if let Ok(n) = tls.read(&mut buf).await {
                            let _ = tls.write_all(&buf[..n]).await;
                            let _ = tls.shutdown().await;
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e.to_string())).await;
                    }
                }
            });
        }
    });
    (addr, rx)
}

async fn connect(
    addr: std::net::SocketAddr,
    client: watch::Receiver<Option<Arc<Svid>>>,
    expect: &[&str],
) -> Result<String, String> {
    let cfg = mtls::client_config(
        client,
        expect.iter().map(|s| s.to_string()).collect(),
        ALPN_MESH_TCP,
    )
    .unwrap();
    let connector = tokio_rustls::TlsConnector::from(cfg);
    let tcp = TcpStream::connect(addr).await.unwrap();
    let mut tls = connector
        .connect(ServerName::IpAddress(addr.ip().into()), tcp)
        .await
        .map_err(|e| e.to_string())?;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(ALPN_MESH_TCP));
    assert_eq!(
        tls.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
    tls.write_all(b"hello").await.unwrap();
    let mut buf = Vec::new();
    tls.read_to_end(&mut buf).await.map_err(|e| e.to_string())?;
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

#[tokio::test]
async fn two_workloads_talk_over_mutual_tls_and_know_each_other() {
    let ca = TestCa::self_signed("mtls-ok", CaConfig::default());
    let (addr, mut seen) = mtls_server(svids(&ca, "shipping").await).await;
    let answer = connect(addr, svids(&ca, "order").await, &[SHIPPING])
        .await
        .unwrap();
    assert_eq!(answer, "hello");
    assert_eq!(
        seen.recv().await.unwrap().unwrap(),
        "spiffe://cluster.local/ns/default/sa/order",
        "the server recorded the client's identity"
    );
}

#[tokio::test]
async fn a_server_with_another_identity_is_refused() {
    let ca = TestCa::self_signed("mtls-wrong-sa", CaConfig::default());
    let (addr, _seen) = mtls_server(svids(&ca, "payments").await).await;
    let err = connect(addr, svids(&ca, "order").await, &[SHIPPING])
        .await
        .unwrap_err();
    assert!(err.contains("peer is spiffe://cluster.local/ns/default/sa/payments, but the destination must be spiffe://cluster.local/ns/default/sa/shipping"), "{err}");
}

#[tokio::test]
async fn a_client_from_another_ca_is_refused() {
    let ca = TestCa::self_signed("mtls-ours", CaConfig::default());
    let foreign = TestCa::self_signed("mtls-foreign", CaConfig::default());
    let (addr, mut seen) = mtls_server(svids(&ca, "shipping").await).await;
    // The foreign client does not trust our server either; make it trust ours to isolate the
    // server's check: its roots come from its own SVID, so give it ours.
    let mut stranger = svids(&foreign, "order").await;
    let ours = svids(&ca, "order").await;
    let mixed = {
        let s = stranger.borrow_and_update().clone().unwrap();
        let roots = ours.borrow().as_ref().unwrap().roots.clone();
        Arc::new(Svid {
            roots,
            ..clone_svid(&s)
        })
    };
    let (tx, rx) = watch::channel(Some(mixed));
    let result = connect(addr, rx, &[SHIPPING]).await;
    drop(tx);
    assert!(
        result.is_err() || result.as_deref() == Ok(""),
        "the server must not serve a foreign client: {result:?}"
    );
    let server_side = seen.recv().await.unwrap().unwrap_err();
    assert!(
        server_side.contains("does not chain to the mesh roots"),
        "{server_side}"
    );
}

#[tokio::test]
async fn plaintext_is_refused_by_the_mtls_server() {
    let ca = TestCa::self_signed("mtls-plain", CaConfig::default());
    let (addr, mut seen) = mtls_server(svids(&ca, "shipping").await).await;
    let mut plain = TcpStream::connect(addr).await.unwrap();
    plain
        .write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let _ = plain.read_to_end(&mut buf).await;
    assert!(!String::from_utf8_lossy(&buf).contains("HTTP/1.1 200"));
    assert!(
        seen.recv().await.unwrap().is_err(),
        "the handshake failed on the server"
    );
}

#[tokio::test(start_paused = true)]
async fn certificates_are_renewed_at_half_life_and_retried_while_the_ca_is_away() {
    let ca = TestCa::self_signed("renew", CaConfig::default());
    // 100 s certificates (the CA's minute of clock grace before now does not count): renewal
    // is due 40-60 s from now, whatever the jitter.
    let src = source(&ca, "order", Duration::from_secs(100));
    let (tx, mut rx) = watch::channel(None);
    let task = tokio::spawn(keep_fresh(src.clone(), src.identity.uri(), tx));
    rx.wait_for(Option::is_some).await.unwrap();
    assert_eq!(src.calls.load(Ordering::SeqCst), 1);
    let first = rx.borrow_and_update().clone().unwrap();

    // Half of the life left with ±10% jitter.
    let now = std::time::SystemTime::now();
    let life = Duration::from_secs(100);
    let synthetic = Svid {
        not_before: now,
        not_after: now + life,
        ..clone_svid(&first)
    };
    for _ in 0..100 {
        let d = mesh_proxy::identity::renew_delay(&synthetic, now).as_secs_f64();
        let (low, high) = (
            life.as_secs_f64() * 0.4 - 0.01,
            life.as_secs_f64() * 0.6 + 0.01,
        );
        assert!(
            d >= low && d <= high,
            "renewal after {d}s of a {life:?} certificate"
        );
    }

    tokio::time::sleep(Duration::from_secs(39)).await;
    assert_eq!(
        src.calls.load(Ordering::SeqCst),
        1,
        "not renewed before 40 s (the backdated notBefore is not life)"
    );
    tokio::time::sleep(Duration::from_secs(22)).await;
    assert!(
        src.calls.load(Ordering::SeqCst) >= 2,
        "renewed before 61 s had passed"
    );
    let second = rx.borrow_and_update().clone().unwrap();
    assert_ne!(
        first.chain[0], second.chain[0],
        "a new certificate replaced the old one"
    );

    src.down.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(120)).await;
    let attempts = src.calls.load(Ordering::SeqCst);
    assert!(
        attempts >= 5,
        "retried with backoff while the CA was away ({attempts} calls)"
    );
    assert!(
        rx.borrow().is_some(),
        "the current certificate stays in use until it expires"
    );

    src.down.store(false, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(61)).await;
    assert!(
        rx.has_changed().unwrap(),
        "a fresh certificate once the CA is back"
    );
    task.abort();
}
