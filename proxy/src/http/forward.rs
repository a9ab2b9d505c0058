//! Sending a request to its target: the pool that fits (plaintext HTTP/1.1, HTTP/2 between
//! sidecars, hyper-util's client for TLS origination and upgrades), the cluster's circuit
//! breaker (503 with flag UO on overflow), the route's timeout, and retries of bodiless
//! requests on connect failures and 503s with a new endpoint each time.

use std::sync::Arc;
use std::time::Duration;

use hyper::body::Body as _;
use hyper::{Request, Response, StatusCode};

use super::{Body, Conn, boxed, headers, reply};
use crate::body::holding;
use crate::route::outlier::Outcome;
use crate::route::{Target, to_destination};
use crate::state::{Port, Service, State, proto};
use crate::upstream::Failure;
use crate::upstream::breaker::{Overflow, Room};

/// Sends the request to `target`, retrying bodiless requests on connect failures and 503s with
/// a new endpoint each time.
#[allow(clippy::too_many_arguments)]
pub(super) async fn forward(
    req: &mut Request<Body>,
    target: &mut Target,
    h2: bool,
    timeout_ms: u64,
    retries: u32,
    ctx: &Conn,
    state: &State,
    svc: Option<&Arc<Service>>,
    dest: Option<(&proto::WeightedDestination, &Port)>,
) -> (Response<Body>, &'static str) {
    headers::prepare_upstream(req, ctx.peer);
    let bodiless = req.body().is_end_stream();
    let upgrade = headers::is_upgrade(req);
    // A cluster with a circuit breaker: its own pools, and its count of active requests.
    let cluster = target
        .limits
        .as_ref()
        .map(|l| ctx.inputs.upstreams.cluster(l));
    let active = match cluster.as_ref().map(|c| c.breaker.start_request()) {
        Some(Err(e)) => return overflow(target, e),
        Some(Ok(permit)) => Some(permit),
        None => None,
    };
    let mut retry_permit = None;
    let mut attempt = 0;
    loop {
        // Auto mTLS needs an identity of our own; without one, plaintext.
        if target.mtls && !target.mtls_required && ctx.inputs.upstreams.mtls().is_none() {
            target.mtls = false;
        }
        if let Some(o) = &target.originate {
            ctx.inputs.upstreams.originate_to(target.addr, o);
        }
        if target.mtls && ctx.inputs.upstreams.mtls().is_none() {
            return (
                reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "mTLS to this destination needs a workload certificate, and the proxy has none",
                ),
                "UF",
            );
        }
        // The last attempt hands the request's headers over instead of copying them.
        let last = attempt >= retries || !bodiless;
        let use_h2 = h2 && !upgrade;
        // Plaintext HTTP/1.1 (most traffic to apps without a sidecar) and HTTP/2 (between
        // sidecars, and to ports that speak it) take light pools of our own; TLS origination,
        // HTTP/1.1 over mTLS and upgrades take hyper-util's client.
        let plain_h1 = !use_h2 && !upgrade && !target.mtls && target.originate.is_none();
        let own_h2 = use_h2 && target.originate.is_none();
        let mut upstream_req = match headers::upstream_request(req, target, use_h2, last, !plain_h1)
        {
            Ok(r) => r,
            Err(e) => {
                return (
                    reply(StatusCode::BAD_REQUEST, &format!("cannot forward: {e}")),
                    "DPE",
                );
            }
        };
        if target.mtls {
            // Tells the peer sidecar which workload calls (for its metrics).
            upstream_req.headers_mut().insert(
                crate::metrics::PEER_HEADER.clone(),
                ctx.inputs.metrics.peer_header().clone(),
            );
        }
        let _active = ctx.inputs.loads.start(target.addr);
        let upstreams = &ctx.inputs.upstreams;
        // Without pools of our own, a cluster's breaker counts each request as holding a
        // connection for its whole exchange (HTTP/1.1's way).
        let mut conn_permit = None;
        let sent = async {
            if plain_h1 {
                let pool = cluster.as_ref().map_or(&upstreams.outbound_h1, |c| &c.h1);
                pool.send(target.addr, upstream_req)
                    .await
                    .map_err(Failure::from)
            } else if own_h2 {
                let identity = target.mtls.then_some(&*target.identity);
                let pool = cluster.as_ref().map_or(&upstreams.outbound_h2, |c| &c.h2);
                pool.send(target.addr, identity, upstream_req)
                    .await
                    .map_err(Failure::from)
            } else {
                if let Some(c) = &cluster {
                    // Boxed: a large future, kept out of every request's.
                    match Box::pin(c.breaker.room(target.addr, || None::<()>)).await? {
                        Room::Open(permit, _pending) => conn_permit = Some(permit),
                        Room::Ready(()) => {}
                    }
                }
                let by_identity;
                let client = if target.mtls && target.originate.is_none() {
                    by_identity = upstreams.outbound.pick_for(use_h2, &target.identity);
                    &by_identity
                } else {
                    upstreams.outbound.pick(use_h2)
                };
                client
                    .request(upstream_req)
                    .await
                    .map(|r| r.map(boxed))
                    .map_err(Failure::from)
            }
        };
        let result = if timeout_ms > 0 {
            match tokio::time::timeout(Duration::from_millis(timeout_ms), sent).await {
                Ok(r) => r,
                Err(_) => {
                    if let Some(o) = &target.outlier {
                        o.record(target.addr, Outcome::LocalFailure);
                    }
                    return (
                        reply(StatusCode::GATEWAY_TIMEOUT, "upstream request timeout"),
                        "UT",
                    );
                }
            }
        } else {
            sent.await
        };
        // Outlier detection hears what the endpoint answered; an overflow never reached it.
        if let Some(o) = &target.outlier {
            match &result {
                Ok(r) => o.record(target.addr, Outcome::Status(r.status().as_u16())),
                Err(e) if !e.overflow => o.record(target.addr, Outcome::LocalFailure),
                Err(_) => {}
            }
        }
        let retryable = match &result {
            Err(e) => e.connect,
            Ok(r) => r.status() == StatusCode::SERVICE_UNAVAILABLE,
        };
        // A retry over the cluster's maxRetries is not made: the answer goes back as it is.
        let retry = retryable
            && bodiless
            && attempt < retries
            && cluster
                .as_ref()
                .is_none_or(|c| match c.breaker.start_retry() {
                    Some(permit) => {
                        retry_permit = Some(permit);
                        true
                    }
                    None => false,
                });
        if retry {
            attempt += 1;
            if let (Some(svc), Some((d, port))) = (svc, dest)
                && let Some(next) = to_destination(state, svc, port, d, &ctx.inputs.loads, None)
            {
                *target = next;
            }
            continue;
        }
        return match result {
            Ok(mut resp) => {
                if upgrade && resp.status() == StatusCode::SWITCHING_PROTOCOLS {
                    headers::splice_upgrade(req, &mut resp);
                }
                if cluster.is_some() {
                    // The cluster counts the request (and its connection, where the pool does
                    // not) until the response has been read.
                    resp = resp.map(|b| holding(b, (active, conn_permit)));
                }
                (resp, if attempt > 0 { "URX" } else { "-" })
            }
            Err(e) if e.overflow => overflow_reply(target, &e.error.to_string()),
            Err(e) if e.connect => {
                // Say why, as Envoy does ("transport failure reason: ..."): a refused
                // connection and a peer proving the wrong identity call for different fixes.
                let why = error_causes(e.error.as_ref());
                tracing::warn!("upstream connect error to {}: {why}", target.addr);
                (
                    reply(
                        StatusCode::SERVICE_UNAVAILABLE,
                        &format!("upstream connect error: {why}"),
                    ),
                    "UF",
                )
            }
            Err(_) => (
                reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "upstream reset before response",
                ),
                "UC",
            ),
        };
    }
}

/// The answer to a request the cluster's circuit breaker refused: Envoy's words, then which
/// limit it was.
fn overflow(target: &Target, e: Overflow) -> (Response<Body>, &'static str) {
    overflow_reply(target, &e.to_string())
}

fn overflow_reply(target: &Target, why: &str) -> (Response<Body>, &'static str) {
    let cluster = target.limits.as_ref().map_or("", |l| l.cluster.as_str());
    tracing::debug!("circuit breaker of {cluster}: {why}");
    (
        reply(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!(
                "upstream connect error or disconnect/reset before headers. reset reason: overflow ({cluster}: {why})"
            ),
        ),
        "UO",
    )
}

/// An error's causes, innermost last, without the client's own wrapping words.
fn error_causes(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = Vec::new();
    let mut next = e.source();
    while let Some(cause) = next {
        let text = cause.to_string();
        if !parts.contains(&text) {
            parts.push(text);
        }
        next = cause.source();
    }
    if parts.is_empty() {
        e.to_string()
    } else {
        parts.join(": ")
    }
}
