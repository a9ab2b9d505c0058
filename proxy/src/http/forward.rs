//! Sending a request to its target: the pool that fits (plaintext HTTP/1.1, HTTP/2 between
//! sidecars, hyper-util's client for TLS origination and upgrades), the cluster's circuit
//! breaker (503 with flag UO on overflow), the route's timeout, and retries of bodiless
//! requests on connect failures and 503s with a new endpoint each time.

use std::sync::Arc;
use std::time::Duration;

use hyper::body::Body as _;
use hyper::{Request, Response, StatusCode};

use super::{Body, Conn, boxed, headers, reply};
use bytes::Bytes;
use http_body_util::BodyExt;
use tokio::time::Instant;

use super::retry::{BODY_LIMIT, Policy, Try};
use crate::body::{full, holding};
use crate::route::budget::RetryPermit;
use crate::route::outlier::Outcome;
use crate::route::retry_budget_of;
use crate::route::{Target, to_destination, to_destination_after};
use crate::state::{Port, Service, State, proto};
use crate::upstream::Failure;
use crate::upstream::breaker::RequestPermit;
use crate::upstream::breaker::{Overflow, Room};

/// Sends the request to `target`, trying again on a new endpoint as the route's retry policy
/// says, within the route's timeout (every try and back-off included).
#[allow(clippy::too_many_arguments)]
pub(super) async fn forward(
    req: &mut Request<Body>,
    target: &mut Target,
    h2: bool,
    timeout_ms: u64,
    retry: &Policy<'_>,
    ctx: &Conn,
    state: &State,
    svc: Option<&Arc<Service>>,
    dest: Option<(&proto::WeightedDestination, &Port)>,
) -> (Response<Body>, &'static str) {
    headers::prepare_upstream(req, ctx.peer);
    let upgrade = headers::is_upgrade(req);
    let deadline = (timeout_ms > 0).then(|| Instant::now() + Duration::from_millis(timeout_ms));
    // A body can go again only if it was kept whole; an upgrade goes once.
    let mut attempts = if upgrade { 0 } else { retry.attempts };
    let mut body = None;
    if attempts > 0 && !req.body().is_end_stream() {
        match keep_body(req).await {
            Ok(Some(kept)) => body = Some(kept),
            Ok(None) => attempts = 0,
            Err(e) => {
                return (
                    reply(
                        StatusCode::BAD_REQUEST,
                        &format!("reading the request body: {e}"),
                    ),
                    "DPE",
                );
            }
        }
    }
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
    // The counts of the retry in flight (the breaker's maxRetries, the budget), held until the
    // next try ends.
    let mut retrying = None;
    let mut attempt = 0;
    // The endpoints tried so far, kept only for `retryRemoteLocalities`.
    let mut tried_addrs = Vec::new();
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
        if attempt > 0
            && let Some(kept) = &body
        {
            *req.body_mut() = full(kept.clone());
        }
        // The last try hands the request's headers over instead of copying them.
        let last = attempt >= attempts;
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
        // This try's limit: its own timeout, and what is left of the route's.
        let per_try = retry.per_try_timeout.map(|t| Instant::now() + t);
        let until = match (per_try, deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let result = match until {
            Some(until) => tokio::time::timeout_at(until, sent).await.ok(),
            None => Some(sent.await),
        };
        // Outlier detection hears what the endpoint answered; an overflow never reached it.
        if let Some(o) = &target.outlier {
            match &result {
                Some(Ok(r)) => o.record(target.addr, Outcome::Status(r.status().as_u16())),
                Some(Err(e)) if e.overflow => {}
                Some(Err(_)) | None => o.record(target.addr, Outcome::LocalFailure),
            }
        }
        let timed_out = || {
            (
                reply(StatusCode::GATEWAY_TIMEOUT, "upstream request timeout"),
                "UT",
            )
        };
        let tried = match &result {
            None if deadline.is_some_and(|d| Instant::now() >= d) => return timed_out(),
            None => Try::Timeout,
            Some(Ok(resp)) => Try::Answer(resp),
            Some(Err(e)) if e.overflow => return overflow_reply(target, &e.error.to_string()),
            Some(Err(e)) if e.connect => Try::ConnectFailure,
            Some(Err(e)) if refused_stream(e.error.as_ref()) => Try::RefusedStream,
            Some(Err(_)) => Try::Reset,
        };
        if attempt < attempts
            && retry.wants(&tried, req.method())
            && let Some(held) = retry_allowed(cluster.as_deref(), ctx, state, svc, dest)
        {
            drop(retrying.replace(held));
            attempt += 1;
            // Envoy's jittered back-off, within the route's timeout.
            let wait = Instant::now() + retry.backoff(attempt);
            if deadline.is_some_and(|d| d <= wait) {
                if let Some(d) = deadline {
                    tokio::time::sleep_until(d).await;
                }
                return timed_out();
            }
            tokio::time::sleep_until(wait).await;
            // Another endpoint than the one that failed, when there is one (Istio's
            // previous-hosts predicate, five picks at most); with `retryRemoteLocalities`,
            // in a locality rank not tried yet (Envoy's previous_priorities).
            if let (Some(svc), Some((d, port))) = (svc, dest) {
                if retry.remote_localities {
                    tried_addrs.push(target.addr);
                }
                for _ in 0..5 {
                    let loads = &ctx.inputs.loads;
                    let next = if retry.remote_localities {
                        to_destination_after(state, svc, port, d, loads, &tried_addrs)
                    } else {
                        to_destination(state, svc, port, d, loads, None)
                    };
                    let Some(next) = next else {
                        break;
                    };
                    let same = next.addr == target.addr;
                    *target = next;
                    if !same {
                        break;
                    }
                }
            }
            continue;
        }
        let Some(result) = result else {
            return timed_out();
        };
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

/// Reads a request body small enough to send again (its size known and within
/// [`BODY_LIMIT`]) and puts it back; `None` (nothing read) for a larger or unsized one.
pub(super) async fn keep_body(
    req: &mut Request<Body>,
) -> Result<Option<Bytes>, crate::body::BoxError> {
    if req
        .body()
        .size_hint()
        .upper()
        .is_none_or(|n| n > BODY_LIMIT)
    {
        return Ok(None);
    }
    let taken = std::mem::replace(req.body_mut(), full(Bytes::new()));
    let bytes = taken.collect().await?.to_bytes();
    *req.body_mut() = full(bytes.clone());
    Ok(Some(bytes))
}

/// The counts a retry takes, if the cluster allows one: its circuit breaker's `maxRetries`
/// and its retry budget.
fn retry_allowed(
    cluster: Option<&crate::upstream::LimitedCluster>,
    ctx: &Conn,
    state: &State,
    svc: Option<&Arc<Service>>,
    dest: Option<(&proto::WeightedDestination, &Port)>,
) -> Option<(Option<RequestPermit>, Option<RetryPermit>)> {
    let breaker = match cluster {
        Some(c) => Some(c.breaker.start_retry()?),
        None => None,
    };
    let budget = match (svc, dest) {
        (Some(svc), Some((d, port))) => {
            let loads = &ctx.inputs.loads;
            let (name, in_flight, budget) = retry_budget_of(state, svc, port, d, loads)?;
            Some(loads.retry_budgets.try_retry(&name, budget, in_flight)?)
        }
        _ => None,
    };
    Some((breaker, budget))
}

/// Whether an HTTP/2 peer refused the stream (REFUSED_STREAM: it did not process it).
fn refused_stream(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(e);
    while let Some(err) = next {
        if err
            .downcast_ref::<h2::Error>()
            .is_some_and(|h| h.reason() == Some(h2::Reason::REFUSED_STREAM))
        {
            return true;
        }
        next = err.source();
    }
    false
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
