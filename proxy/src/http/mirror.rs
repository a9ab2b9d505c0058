//! Mirroring (VirtualService `mirror` with `mirrorPercentage`, and `mirrors`): a copy of a
//! share of a route's requests goes to another destination, as Envoy's shadow policy does. The
//! copy's Host gets `-shadow` appended (before any port), its answer is read and discarded,
//! and it runs on a task of its own: a slow or failing mirror never holds up or changes the
//! primary request.
//!
//! A request body is copied when it is small enough to keep whole (its size known and within
//! the retry buffer limit, 64 KiB); a larger or unsized one goes to the primary only, and the
//! copy is not sent (logged at debug level).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::Request;
use hyper::header::{HOST, HeaderValue};

use super::forward::{forward, keep_body};
use super::retry::Policy;
use super::{Body, Conn};
use crate::body::full;
use crate::route::to_destination;
use crate::state::{Port, Service, State, proto};

/// How long a copy may take when its route sets no timeout.
const COPY_TIMEOUT: Duration = Duration::from_secs(15);

/// Sends the copies `route` asks for of `req` (as it would go upstream now), each on a task of
/// its own; the request is left as it was (a body kept whole is put back).
pub(super) async fn send_copies(
    req: &mut Request<Body>,
    route: &proto::HttpRoute,
    svc: &Arc<Service>,
    port: &Port,
    ctx: &Conn,
    state: &State,
) {
    let chosen: Vec<&proto::Mirror> = route
        .mirrors
        .iter()
        .filter(|m| m.percent >= 100.0 || fastrand::f64() * 100.0 < m.percent)
        .collect();
    if chosen.is_empty() {
        return;
    }
    let body = if hyper::body::Body::is_end_stream(req.body()) {
        Bytes::new()
    } else {
        match keep_body(req).await {
            Ok(Some(kept)) => kept,
            Ok(None) | Err(_) => {
                tracing::debug!(
                    "mirror: a request body of unknown size or over 64 KiB is not copied"
                );
                return;
            }
        }
    };
    let timeout = match route.timeout_ms {
        0 => COPY_TIMEOUT,
        ms => Duration::from_millis(ms),
    };
    for m in chosen {
        let dest = proto::WeightedDestination {
            host: m.host.clone(),
            subset: m.subset.clone(),
            port: m.port,
            weight: 100,
            ..Default::default()
        };
        let Some(mut target) = to_destination(state, svc, port, &dest, &ctx.inputs.loads, None)
        else {
            tracing::debug!("mirror: no endpoint of {} for a copy", m.host);
            continue;
        };
        let mut copy = shadow(req, body.clone());
        let conn = Conn {
            inputs: ctx.inputs.clone(),
            peer: ctx.peer,
            dst: ctx.dst,
            gateway: ctx.gateway,
            https: ctx.https,
        };
        let h2 = target.mesh || super::headers::is_grpc(&copy);
        tokio::spawn(async move {
            let state = conn.inputs.state.borrow().clone();
            let sent = forward(
                &mut copy,
                &mut target,
                h2,
                u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
                &Policy::NONE,
                &conn,
                &state,
                None,
                None,
            );
            let (resp, flags) = sent.await;
            // Read to the end, so that the connection can serve again; then discarded.
            let status = resp.status();
            let _ = tokio::time::timeout(timeout, resp.into_body().collect()).await;
            tracing::debug!("mirror copy to {}: {status} {flags}", target.addr);
        });
    }
}

/// A copy of `req` with `body`, its Host (and URI authority) `-shadow`ed.
fn shadow(req: &Request<Body>, body: Bytes) -> Request<Body> {
    let mut copy = Request::new(full(body));
    *copy.method_mut() = req.method().clone();
    *copy.version_mut() = req.version();
    *copy.headers_mut() = req.headers().clone();
    let host = req
        .uri()
        .authority()
        .map(|a| a.as_str().to_string())
        .or_else(|| req.headers().get(HOST)?.to_str().ok().map(String::from));
    let mut uri = req.uri().clone().into_parts();
    if let Some(host) = host {
        let shadowed = shadow_host(&host);
        if uri.authority.is_some() {
            uri.authority = shadowed.parse().ok();
        }
        if let Ok(v) = HeaderValue::from_str(&shadowed) {
            copy.headers_mut().insert(HOST, v);
        }
    }
    if let Ok(u) = hyper::Uri::from_parts(uri) {
        *copy.uri_mut() = u;
    }
    copy
}

/// `host` with `-shadow` appended to its name, before any port (Envoy's rule).
fn shadow_host(host: &str) -> String {
    // A port follows the last ':' of a name, or the ']' of an IPv6 literal.
    let split = if host.starts_with('[') {
        host.rfind("]:").map(|i| i + 1)
    } else if host.matches(':').count() == 1 {
        host.find(':')
    } else {
        None
    };
    match split {
        Some(i) => format!("{}-shadow{}", &host[..i], &host[i..]),
        None => format!("{host}-shadow"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shadow_goes_before_the_port() {
        assert_eq!(shadow_host("reviews"), "reviews-shadow");
        assert_eq!(shadow_host("reviews:9080"), "reviews-shadow:9080");
        assert_eq!(shadow_host("10.0.0.1:80"), "10.0.0.1-shadow:80");
        assert_eq!(shadow_host("[fd00::1]:80"), "[fd00::1]-shadow:80");
    }
}
