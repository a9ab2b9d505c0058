//! Keeping the certificate fresh: fetch before reporting ready, renew at half-life (with
//! jitter, so a fleet does not renew in step), retry with backoff while the CA is away, and keep
//! serving with the current certificate until it expires.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;

use super::{CertificateSource, Svid, renew_svid, request_svid};

/// First and longest pause between attempts while the CA fails.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(500), Duration::from_secs(60));

/// How long to wait before renewing `svid`, which arrived at `now`: half of the life it has
/// left, moved by up to ±10% of that at random (as Istio's agent rotates at a ratio of the
/// lifetime from when it got the certificate). Counted from its arrival, not from its
/// `notBefore`, which the CA backdates by a minute for clocks that run behind: counted from
/// there, a certificate asked for a few minutes (`SECRET_TTL`) would be renewed at once, again
/// and again.
pub fn renew_delay(svid: &Svid, now: SystemTime) -> Duration {
    let left = svid.not_after.duration_since(now).unwrap_or_default();
    let tenth = left.as_secs_f64() / 10.0;
    let jitter = (fastrand::f64() * 2.0 - 1.0) * tenth;
    Duration::from_secs_f64((left.as_secs_f64() / 2.0 + jitter).max(0.0))
}

/// Fetches the workload's certificate and keeps `tx` current until every receiver is gone.
pub async fn keep_fresh(
    source: Arc<dyn CertificateSource>,
    identity: String,
    tx: watch::Sender<Option<Arc<Svid>>>,
) {
    let mut backoff = BACKOFF.0;
    loop {
        // Renew with the current certificate while it is valid; the bootstrap credential is
        // only needed for the first one (or after an expiry).
        let current = tx.borrow().clone();
        let result = match current {
            Some(cur) => match renew_svid(source.as_ref(), &identity, &cur).await {
                Ok(s) => Ok(s),
                Err(e) => {
                    tracing::debug!(%identity, "renewal with the current certificate failed ({e}); trying the bootstrap credential");
                    request_svid(source.as_ref(), &identity).await
                }
            },
            None => request_svid(source.as_ref(), &identity).await,
        };
        match result {
            Ok(svid) => {
                let delay = renew_delay(&svid, SystemTime::now());
                tracing::info!(%identity, renew_in = ?delay, "workload certificate issued");
                tx.send_replace(Some(Arc::new(svid)));
                backoff = BACKOFF.0;
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = tx.closed() => return,
                }
            }
            Err(e) => {
                let expired = tx
                    .borrow()
                    .as_ref()
                    .is_some_and(|s| s.not_after <= SystemTime::now());
                if expired {
                    tracing::error!(%identity, "certificate expired and the CA still fails: {e}");
                    tx.send_replace(None);
                } else {
                    tracing::warn!(%identity, retry_in = ?backoff, "cannot get a certificate: {e}");
                }
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    () = tx.closed() => return,
                }
                backoff = (backoff * 2).min(BACKOFF.1);
            }
        }
    }
}
