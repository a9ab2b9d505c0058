//! Shared test support: workload certificates from a test CA.

#![allow(dead_code, clippy::expect_used, clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use mesh_ca::Identity;
use mesh_ca::testing::TestCa;
use mesh_proxy::identity::{CertificateSource, IdentityError, SignFuture, Svid, request_svid};
use tokio::sync::watch;

/// Signs with a test CA for one identity; can be told to fail, counts calls.
pub struct TestSource {
    pub ca: Arc<mesh_ca::Authority>,
    pub identity: Identity,
    pub ttl: Duration,
    pub calls: AtomicUsize,
    pub down: AtomicBool,
}

impl CertificateSource for TestSource {
    fn sign(&self, csr: String) -> SignFuture<'_> {
        Box::pin(async move {
            self.calls.fetch_add(1, Ordering::SeqCst);
            if self.down.load(Ordering::SeqCst) {
                return Err(IdentityError::Ca("unavailable".into()));
            }
            let signed = self
                .ca
                .sign(&csr, &self.identity, Some(self.ttl))
                .map_err(|e| IdentityError::Ca(e.to_string()))?;
            Ok((signed.chain, signed.roots))
        })
    }
}

/// A source for service account `sa` in namespace `default`.
pub fn source(ca: &TestCa, sa: &str, ttl: Duration) -> Arc<TestSource> {
    Arc::new(TestSource {
        ca: ca.authority.clone(),
        identity: Identity::new("cluster.local", "default", sa),
        ttl,
        calls: AtomicUsize::new(0),
        down: AtomicBool::new(false),
    })
}

/// A watch holding one fresh SVID for `sa` (the sender is kept alive for the test's life).
pub async fn svids(ca: &TestCa, sa: &str) -> watch::Receiver<Option<Arc<Svid>>> {
    let src = source(ca, sa, Duration::from_secs(3600));
    let svid = request_svid(src.as_ref(), &src.identity.uri())
        .await
        .unwrap();
    let (tx, rx) = watch::channel(Some(Arc::new(svid)));
    std::mem::forget(tx);
    rx
}
