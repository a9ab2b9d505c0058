//! Live requests, for `meshctl tap` (Linkerd's tap, Hubble's observe): while someone watches,
//! every request and TCP connection the proxy finishes is offered to the watchers as the entry
//! its access log would write, whether or not an access log is on. With no watcher the request
//! path pays one relaxed atomic load.
//!
//! The admin port (127.0.0.1:15000, inside the pod) streams them as JSON lines on `GET /tap`,
//! each watcher with its own filter. A watcher that reads too slowly misses entries and is told
//! how many, rather than holding back the proxy.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock};

use tokio::sync::broadcast;

use super::Entry;

/// Entries a slow watcher may fall behind by before it misses some.
const BACKLOG: usize = 4096;

/// How many watch: a plain static, so the request path's question is one load.
static WATCHERS: AtomicUsize = AtomicUsize::new(0);

static HUB: LazyLock<broadcast::Sender<Arc<Entry>>> =
    LazyLock::new(|| broadcast::channel(BACKLOG).0);

/// Whether someone is watching: the request path builds an entry only then (or for a log).
#[inline]
pub fn watched() -> bool {
    WATCHERS.load(Ordering::Relaxed) > 0
}

/// Offers a finished entry to the watchers.
pub fn publish(entry: &Entry) {
    if watched() {
        let _ = HUB.send(Arc::new(entry.clone()));
    }
}

/// One watcher: entries from the moment it started, until it is dropped.
pub struct Watch {
    rx: broadcast::Receiver<Arc<Entry>>,
}

impl Watch {
    /// Starts watching.
    pub fn start() -> Watch {
        let rx = HUB.subscribe();
        WATCHERS.fetch_add(1, Ordering::Relaxed);
        Watch { rx }
    }

    /// The next entry, or how many were missed because this watcher fell behind.
    pub async fn next(&mut self) -> Next {
        match self.rx.recv().await {
            Ok(e) => Next::Entry(e),
            Err(broadcast::error::RecvError::Lagged(n)) => Next::Missed(n),
            Err(broadcast::error::RecvError::Closed) => Next::Missed(0),
        }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        WATCHERS.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What a watcher gets next.
pub enum Next {
    /// A finished request or connection.
    Entry(Arc<Entry>),
    /// Entries missed by a watcher that fell behind.
    Missed(u64),
}

/// Which entries a watcher wants (`GET /tap?method=GET&path=/api&...`); every field given must
/// match.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    /// The method, exactly (`GET`).
    pub method: Option<String>,
    /// A prefix of the path (`/api`).
    pub path: Option<String>,
    /// The authority's host, or a prefix of it up to a dot or colon (`shipping-service`
    /// matches `shipping-service:8080` and `shipping-service.default.svc.cluster.local`).
    pub authority: Option<String>,
    /// `inbound`, `outbound` or `gateway`.
    pub direction: Option<String>,
    /// A status (`503`) or a class (`5xx`).
    pub status: Option<String>,
    /// Part of either peer's identity (`sa/order`).
    pub identity: Option<String>,
    /// TCP connections too (left out unless asked).
    pub tcp: bool,
}

impl Filter {
    /// Reads a `/tap` query; the error names the parameter.
    pub fn parse(query: &str) -> Result<Filter, String> {
        let mut f = Filter::default();
        for (k, v) in form_urlencoded::parse(query.as_bytes()) {
            let v = v.into_owned();
            match &*k {
                "method" => f.method = Some(v.to_ascii_uppercase()),
                "path" => f.path = Some(v),
                "authority" => f.authority = Some(v.to_ascii_lowercase()),
                "direction" => {
                    if !matches!(v.as_str(), "inbound" | "outbound" | "gateway") {
                        return Err(format!("direction={v:?}: say inbound, outbound or gateway"));
                    }
                    f.direction = Some(v)
                }
                "status" => {
                    let ok = v.len() == 3
                        && (v.bytes().all(|b| b.is_ascii_digit())
                            || (v.as_bytes()[0].is_ascii_digit()
                                && v[1..].eq_ignore_ascii_case("xx")));
                    if !ok {
                        return Err(format!("status={v:?}: say a code (503) or a class (5xx)"));
                    }
                    f.status = Some(v.to_ascii_lowercase())
                }
                "identity" => f.identity = Some(v),
                "tcp" => f.tcp = matches!(v.as_str(), "" | "true" | "1"),
                other => {
                    return Err(format!(
                        "{other:?} is not a tap filter: method, path, authority, direction, \
                         status, identity, tcp"
                    ));
                }
            }
        }
        Ok(f)
    }

    /// Whether `e` is one the watcher wants.
    pub fn matches(&self, e: &Entry) -> bool {
        let http = e.method.is_some();
        if !http && !self.tcp {
            return false;
        }
        if let Some(m) = &self.method
            && e.method.as_deref() != Some(m.as_str())
        {
            return false;
        }
        if let Some(p) = &self.path
            && !e.path.as_deref().is_some_and(|path| path.starts_with(p))
        {
            return false;
        }
        if let Some(want) = &self.authority {
            let host = e
                .authority
                .as_deref()
                .unwrap_or_default()
                .to_ascii_lowercase();
            let ok = host.strip_prefix(want.as_str()).is_some_and(|rest| {
                rest.is_empty() || rest.starts_with('.') || rest.starts_with(':')
            });
            if !ok {
                return false;
            }
        }
        if let Some(d) = &self.direction
            && e.direction != d
        {
            return false;
        }
        if let Some(s) = &self.status {
            let code = e.response_code.to_string();
            let ok = if s.ends_with("xx") {
                code.as_bytes().first() == s.as_bytes().first()
            } else {
                code == *s
            };
            if !ok {
                return false;
            }
        }
        if let Some(id) = &self.identity {
            let either = [&e.downstream_peer_principal, &e.upstream_peer_principal]
                .into_iter()
                .flatten()
                .any(|p| p.contains(id.as_str()));
            if !either {
                return false;
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> Entry {
        let mut e = Entry::started("outbound");
        e.method = Some("POST".into());
        e.path = Some("/api/orders?x=1".into());
        e.authority = Some("shipping-service:8080".into());
        e.response_code = 503;
        e.upstream_peer_principal = Some("spiffe://cluster.local/ns/default/sa/shipping".into());
        e
    }

    #[test]
    fn every_given_field_must_match() {
        let e = entry();
        for yes in [
            "",
            "method=post",
            "path=/api",
            "authority=shipping-service",
            "authority=shipping-service:8080",
            "direction=outbound",
            "status=503",
            "status=5xx",
            "identity=sa/shipping",
            "method=POST&status=5xx&authority=shipping-service",
        ] {
            assert!(Filter::parse(yes).unwrap().matches(&e), "{yes}");
        }
        for no in [
            "method=GET",
            "path=/other",
            "authority=shipping",
            "direction=inbound",
            "status=200",
            "status=2xx",
            "identity=sa/order",
        ] {
            assert!(!Filter::parse(no).unwrap().matches(&e), "{no}");
        }
    }

    #[test]
    fn tcp_connections_only_when_asked() {
        let tcp = Entry::started("inbound");
        assert!(!Filter::default().matches(&tcp));
        assert!(Filter::parse("tcp=true").unwrap().matches(&tcp));
    }

    #[test]
    fn a_bad_filter_is_named() {
        for (bad, word) in [
            ("colour=red", "\"colour\""),
            ("status=5x", "status"),
            ("direction=up", "direction"),
        ] {
            let e = Filter::parse(bad).unwrap_err();
            assert!(e.contains(word), "{bad}: {e}");
        }
    }

    #[tokio::test]
    async fn a_watcher_gets_what_is_published_while_it_watches() {
        assert!(!watched());
        publish(&entry());
        let mut w = Watch::start();
        assert!(watched());
        let mut mine = entry();
        mine.request_id = Some("tap-unit-test".into());
        publish(&mine);
        // Other tests of this process may carry requests meanwhile: this one's is found.
        loop {
            match w.next().await {
                Next::Entry(e) if e.request_id.as_deref() == Some("tap-unit-test") => break,
                Next::Entry(_) => continue,
                Next::Missed(n) => panic!("missed {n}"),
            }
        }
        drop(w);
        assert!(!watched());
    }
}
