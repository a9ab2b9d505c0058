//! When a request is tried again: a route's retry policy (VirtualService `retries`; pilot fills
//! in Istio's default, two retries on `connect-failure,refused-stream,unavailable,cancelled,
//! retriable-status-codes` with 503) read as Envoy reads its conditions, and Envoy's fully
//! jittered exponential back-off between tries.
//!
//! One rule of our own, on top of Envoy's: a request that may have reached the application (it
//! was answered, reset after it was sent, or timed out) is tried again only if its method is
//! idempotent (RFC 9110: GET, HEAD, OPTIONS, TRACE, PUT, DELETE), so that a retry never makes
//! a POST happen twice. A request that never left (no connection, a refused stream) is tried
//! again whatever its method. A request body is tried again only when it was buffered whole
//! (up to [`BODY_LIMIT`]).

use std::time::Duration;

use hyper::{Method, Response};

use super::Body;
use crate::state::proto;

/// The largest request body kept so it can be sent again (Envoy buffers up to its
/// per-connection buffer limit; a larger body goes once).
pub const BODY_LIMIT: u64 = 64 * 1024;

/// Envoy's base back-off interval when a route sets none; the most is ten times the base.
const BACKOFF_BASE: Duration = Duration::from_millis(25);

const ON_5XX: u32 = 1;
const ON_GATEWAY: u32 = 1 << 1;
const ON_RESET: u32 = 1 << 2;
const ON_RESET_BEFORE_REQUEST: u32 = 1 << 3;
const ON_CONNECT_FAILURE: u32 = 1 << 4;
const ON_REFUSED_STREAM: u32 = 1 << 5;
const ON_4XX: u32 = 1 << 6;
const ON_STATUS_CODES: u32 = 1 << 7;
const ON_RATE_LIMITED: u32 = 1 << 8;
const ON_CANCELLED: u32 = 1 << 9;
const ON_DEADLINE_EXCEEDED: u32 = 1 << 10;
const ON_INTERNAL: u32 = 1 << 11;
const ON_RESOURCE_EXHAUSTED: u32 = 1 << 12;
const ON_UNAVAILABLE: u32 = 1 << 13;

/// A condition's bit; conditions that can never hold here (`retriable-headers`: Istio's API
/// names no header; `http3-post-connect-failure`: no HTTP/3) have none.
fn condition(name: &str) -> u32 {
    match name {
        "5xx" => ON_5XX,
        "gateway-error" => ON_GATEWAY,
        "reset" => ON_RESET,
        "reset-before-request" => ON_RESET_BEFORE_REQUEST,
        "connect-failure" => ON_CONNECT_FAILURE,
        "refused-stream" => ON_REFUSED_STREAM,
        "retriable-4xx" => ON_4XX,
        "retriable-status-codes" => ON_STATUS_CODES,
        "envoy-ratelimited" => ON_RATE_LIMITED,
        "cancelled" => ON_CANCELLED,
        "deadline-exceeded" => ON_DEADLINE_EXCEEDED,
        "internal" => ON_INTERNAL,
        "resource-exhausted" => ON_RESOURCE_EXHAUSTED,
        "unavailable" => ON_UNAVAILABLE,
        _ => 0,
    }
}

/// A route's retry policy, read once per request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Policy<'a> {
    /// Tries after the first.
    pub attempts: u32,
    /// How long each try may take.
    pub per_try_timeout: Option<Duration>,
    /// The conditions by name (read only when a try did not simply succeed).
    names: &'a [String],
    /// Conditions given as bits (Istio's default for an older pilot's state).
    on: u32,
    codes: &'a [u32],
    backoff_base: Duration,
    /// Retries leave the locality ranks already tried.
    pub remote_localities: bool,
}

/// What one try came to.
#[derive(Debug)]
pub(super) enum Try<'a> {
    /// An answer.
    Answer(&'a Response<Body>),
    /// No connection could be made (the request never left).
    ConnectFailure,
    /// The peer refused the stream (HTTP/2 REFUSED_STREAM: it never processed it).
    RefusedStream,
    /// The connection or stream failed after the request was sent.
    Reset,
    /// The try took longer than `perTryTimeout`.
    Timeout,
}

impl<'a> Policy<'a> {
    /// No retries.
    pub const NONE: Policy<'static> = Policy {
        attempts: 0,
        per_try_timeout: None,
        names: &[],
        on: 0,
        codes: &[],
        backoff_base: BACKOFF_BASE,
        remote_localities: false,
    };

    /// The policy of `route`: its `retry`, or for a state from an older pilot its count of
    /// retries on Istio's default conditions.
    pub fn of(route: Option<&'a proto::HttpRoute>) -> Self {
        let Some(route) = route else {
            return Self::NONE;
        };
        let Some(r) = &route.retry else {
            return Policy {
                attempts: route.retries,
                on: ON_CONNECT_FAILURE
                    | ON_REFUSED_STREAM
                    | ON_UNAVAILABLE
                    | ON_CANCELLED
                    | ON_STATUS_CODES,
                codes: &[503],
                ..Self::NONE
            };
        };
        Policy {
            attempts: r.attempts,
            per_try_timeout: (r.per_try_timeout_ms > 0)
                .then(|| Duration::from_millis(r.per_try_timeout_ms)),
            names: &r.retry_on,
            on: 0,
            codes: &r.retriable_status_codes,
            backoff_base: match r.backoff_base_ms {
                0 => BACKOFF_BASE,
                ms => Duration::from_millis(ms),
            },
            remote_localities: r.retry_remote_localities,
        }
    }

    /// Whether a `method` request that came to `t` is tried again (attempts left aside).
    pub fn wants(&self, t: &Try<'_>, method: &Method) -> bool {
        if self.attempts == 0 {
            return false;
        }
        // Most answers: a success, nothing to read.
        if let Try::Answer(resp) = t
            && resp.status().as_u16() < 400
            && !resp.headers().contains_key(&GRPC_STATUS)
        {
            return false;
        }
        let never_sent = matches!(t, Try::ConnectFailure | Try::RefusedStream);
        if !never_sent && !idempotent(method) {
            return false;
        }
        let on = self.names.iter().fold(self.on, |on, c| on | condition(c));
        let any = |bits: u32| on & bits != 0;
        match t {
            Try::ConnectFailure => {
                any(ON_CONNECT_FAILURE | ON_RESET_BEFORE_REQUEST | ON_RESET | ON_5XX | ON_GATEWAY)
            }
            Try::RefusedStream => {
                any(ON_REFUSED_STREAM | ON_RESET_BEFORE_REQUEST | ON_RESET | ON_5XX | ON_GATEWAY)
            }
            Try::Reset | Try::Timeout => any(ON_RESET | ON_5XX | ON_GATEWAY),
            Try::Answer(resp) => {
                let code = resp.status().as_u16();
                (any(ON_5XX) && code >= 500)
                    || (any(ON_GATEWAY) && matches!(code, 502..=504))
                    || (any(ON_4XX) && code == 409)
                    || (any(ON_STATUS_CODES) && self.codes.contains(&u32::from(code)))
                    || (any(ON_RATE_LIMITED) && resp.headers().contains_key("x-envoy-ratelimited"))
                    || grpc(on, resp)
            }
        }
    }

    /// How long to wait before retry number `retry` (1 for the first): Envoy's fully jittered
    /// exponential back-off, uniformly up to (2^retry - 1) × the base, at most ten times it.
    pub fn backoff(&self, retry: u32) -> Duration {
        let factor = (1u64 << retry.min(20)) - 1;
        let most = self
            .backoff_base
            .saturating_mul(u32::try_from(factor).unwrap_or(u32::MAX))
            .min(self.backoff_base * 10);
        most.mul_f64(fastrand::f64())
    }
}

static GRPC_STATUS: hyper::header::HeaderName =
    hyper::header::HeaderName::from_static("grpc-status");

/// The gRPC conditions `on` holds, from a trailers-only answer's `grpc-status`.
fn grpc(on: u32, resp: &Response<Body>) -> bool {
    const GRPC: u32 =
        ON_CANCELLED | ON_DEADLINE_EXCEEDED | ON_INTERNAL | ON_RESOURCE_EXHAUSTED | ON_UNAVAILABLE;
    if on & GRPC == 0 {
        return false;
    }
    let Some(status) = resp
        .headers()
        .get(&GRPC_STATUS)
        .and_then(|v| v.to_str().ok()?.parse::<u32>().ok())
    else {
        return false;
    };
    let bit = match status {
        1 => ON_CANCELLED,
        4 => ON_DEADLINE_EXCEEDED,
        8 => ON_RESOURCE_EXHAUSTED,
        13 => ON_INTERNAL,
        14 => ON_UNAVAILABLE,
        _ => 0,
    };
    on & bit != 0
}

/// Methods a retry cannot make happen twice (RFC 9110 §9.2.2).
fn idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::body::full;

    fn route(retry_on: &[&str], codes: &[u32]) -> proto::HttpRoute {
        proto::HttpRoute {
            retry: Some(proto::RetryPolicy {
                attempts: 2,
                retry_on: retry_on.iter().map(|s| (*s).to_string()).collect(),
                retriable_status_codes: codes.to_vec(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn answer(status: u16, headers: &[(&str, &str)]) -> Response<Body> {
        let mut b = Response::builder().status(status);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(full("")).unwrap()
    }

    #[test]
    fn conditions_read_as_envoys() {
        let get = Method::GET;
        let r = route(&["5xx"], &[]);
        let p = Policy::of(Some(&r));
        assert!(p.wants(&Try::Answer(&answer(500, &[])), &get));
        assert!(!p.wants(&Try::Answer(&answer(404, &[])), &get));
        assert!(p.wants(&Try::Reset, &get));
        assert!(p.wants(&Try::Timeout, &get));
        assert!(p.wants(&Try::ConnectFailure, &get));
        let r = route(&["gateway-error"], &[]);
        let p = Policy::of(Some(&r));
        assert!(!p.wants(&Try::Answer(&answer(500, &[])), &get));
        assert!(p.wants(&Try::Answer(&answer(504, &[])), &get));
        let r = route(&["connect-failure"], &[]);
        let p = Policy::of(Some(&r));
        assert!(p.wants(&Try::ConnectFailure, &get));
        assert!(!p.wants(&Try::Reset, &get));
        assert!(!p.wants(&Try::Answer(&answer(503, &[])), &get));
        let r = route(&["retriable-status-codes", "retriable-4xx"], &[418]);
        let p = Policy::of(Some(&r));
        assert!(p.wants(&Try::Answer(&answer(418, &[])), &get));
        assert!(p.wants(&Try::Answer(&answer(409, &[])), &get));
        assert!(!p.wants(&Try::Answer(&answer(503, &[])), &get));
        let r = route(&["unavailable", "cancelled"], &[]);
        let p = Policy::of(Some(&r));
        assert!(p.wants(&Try::Answer(&answer(200, &[("grpc-status", "14")])), &get));
        assert!(p.wants(&Try::Answer(&answer(200, &[("grpc-status", "1")])), &get));
        assert!(!p.wants(&Try::Answer(&answer(200, &[("grpc-status", "13")])), &get));
        assert!(!p.wants(&Try::Answer(&answer(200, &[])), &get));
    }

    #[test]
    fn a_post_is_retried_only_when_it_never_left() {
        let r = route(&["5xx", "refused-stream"], &[]);
        let p = Policy::of(Some(&r));
        let post = Method::POST;
        assert!(p.wants(&Try::ConnectFailure, &post));
        assert!(p.wants(&Try::RefusedStream, &post));
        assert!(!p.wants(&Try::Answer(&answer(503, &[])), &post));
        assert!(!p.wants(&Try::Reset, &post));
        assert!(p.wants(&Try::Answer(&answer(503, &[])), &Method::PUT));
    }

    #[test]
    fn istios_default_retries_503_and_unavailable_but_not_500() {
        let old_pilot = proto::HttpRoute {
            retries: 2,
            ..Default::default()
        };
        let p = Policy::of(Some(&old_pilot));
        assert_eq!(p.attempts, 2);
        assert!(p.wants(&Try::Answer(&answer(503, &[])), &Method::GET));
        assert!(!p.wants(&Try::Answer(&answer(500, &[])), &Method::GET));
        assert!(p.wants(&Try::ConnectFailure, &Method::GET));
        assert!(!p.wants(&Try::Reset, &Method::GET));
        assert_eq!(Policy::of(None), Policy::NONE);
        assert!(!Policy::NONE.wants(&Try::ConnectFailure, &Method::GET));
    }

    #[test]
    fn back_off_is_jittered_and_capped_at_ten_times_the_base() {
        let r = route(&["5xx"], &[]);
        let p = Policy::of(Some(&r));
        for retry in 1..8 {
            for _ in 0..100 {
                let wait = p.backoff(retry);
                let most = BACKOFF_BASE * ((1 << retry) - 1).min(10);
                assert!(wait <= most, "retry {retry}: {wait:?} > {most:?}");
            }
        }
        let spread: std::collections::HashSet<Duration> = (0..20).map(|_| p.backoff(3)).collect();
        assert!(spread.len() > 10, "jittered");
    }
}
