//! Fault injection (VirtualService `http[].fault`), as Envoy's fault filter does it: a share of
//! a route's requests waits `fixedDelay` before it is forwarded (flag DI), a share is answered
//! at once without reaching the destination (flag FI): with the HTTP status and the body
//! `fault filter abort`, or, for a `grpcStatus`, with HTTP 200 and that `grpc-status`. The delay
//! comes first, and it does not count towards the route's timeout (the fault filter runs
//! before the router in Envoy too).

use std::time::Duration;

use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Response, StatusCode};
use mesh_api::proto::state::v1 as proto;

use super::{Body, full};

/// The body of an injected abort, Envoy's words.
pub const ABORT_BODY: &str = "fault filter abort";

/// What the route's fault did to a request.
pub enum Injected {
    /// Nothing: forward it.
    None,
    /// It waited; forward it now.
    Delayed,
    /// Answer this instead of forwarding it.
    Aborted(Response<Body>),
}

/// Whether a request falls in a share of `percent` (0-100).
fn hit(percent: f64) -> bool {
    percent >= 100.0 || (percent > 0.0 && fastrand::f64() * 100.0 < percent)
}

/// Applies `fault` to one request: waits for a delay that falls on it, then tells whether an
/// abort does.
pub async fn inject(fault: &proto::FaultInjection) -> Injected {
    let mut out = Injected::None;
    if fault.delay_ms > 0 && hit(fault.delay_percent) {
        tokio::time::sleep(Duration::from_millis(fault.delay_ms)).await;
        out = Injected::Delayed;
    }
    let aborts = fault.has_abort_grpc || fault.abort_http_status > 0;
    if aborts && hit(fault.abort_percent) {
        return Injected::Aborted(abort(fault));
    }
    out
}

fn abort(fault: &proto::FaultInjection) -> Response<Body> {
    if fault.has_abort_grpc {
        // A trailers-only gRPC answer: the status travels in the headers.
        let mut resp = Response::new(full(""));
        let h = resp.headers_mut();
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        h.insert("grpc-status", HeaderValue::from(fault.abort_grpc_status));
        h.insert("grpc-message", HeaderValue::from_static(ABORT_BODY));
        return resp;
    }
    let status = u16::try_from(fault.abort_http_status)
        .ok()
        .and_then(|s| StatusCode::from_u16(s).ok())
        .unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
    let mut resp = Response::new(full(ABORT_BODY));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fault(delay_ms: u64, delay: f64, status: u32, abort: f64) -> proto::FaultInjection {
        proto::FaultInjection {
            delay_ms,
            delay_percent: delay,
            abort_http_status: status,
            abort_percent: abort,
            ..Default::default()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_delay_on_every_request_waits_its_time_then_forwards() {
        let start = tokio::time::Instant::now();
        let got = inject(&fault(7_000, 100.0, 0, 0.0)).await;
        assert!(matches!(got, Injected::Delayed));
        assert_eq!(start.elapsed(), Duration::from_secs(7));
    }

    #[tokio::test(start_paused = true)]
    async fn an_unset_share_injects_nothing() {
        let start = tokio::time::Instant::now();
        for _ in 0..100 {
            assert!(matches!(
                inject(&fault(7_000, 0.0, 503, 0.0)).await,
                Injected::None
            ));
        }
        assert_eq!(start.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn aborts_answer_with_the_status_or_the_grpc_status() {
        let Injected::Aborted(resp) = inject(&fault(0, 0.0, 418, 100.0)).await else {
            panic!("not aborted");
        };
        assert_eq!(resp.status().as_u16(), 418);
        let grpc = proto::FaultInjection {
            abort_grpc_status: 14,
            has_abort_grpc: true,
            abort_percent: 100.0,
            ..Default::default()
        };
        let Injected::Aborted(resp) = inject(&grpc).await else {
            panic!("not aborted");
        };
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.headers()["grpc-status"], "14");
    }

    #[tokio::test(start_paused = true)]
    async fn a_share_aborts_about_that_share() {
        let mut aborted = 0;
        for _ in 0..2_000 {
            if matches!(
                inject(&fault(0, 0.0, 503, 25.0)).await,
                Injected::Aborted(_)
            ) {
                aborted += 1;
            }
        }
        // 25% of 2000 is 500, with a standard deviation of about 19: ten of them either side.
        assert!((310..=690).contains(&aborted), "{aborted} of 2000 aborted");
    }
}
