//! The body type every HTTP message in the proxy has: a boxed body of `Bytes` whose error is
//! boxed too, so hyper's, h2's and the proxy's own bodies travel through one type.

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};

/// The body type the proxy moves around.
pub type Body = BoxBody<Bytes, BoxError>;

/// What a body's error may be: hyper's, h2's, or ours.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// `body` as the proxy's body type.
pub fn boxed<B>(body: B) -> Body
where
    B: hyper::body::Body<Data = Bytes> + Send + Sync + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed()
}

/// A fixed body.
pub fn full(body: impl Into<Bytes>) -> Body {
    let body = body.into();
    if body.is_empty() {
        // No bytes: a zero-sized body, which boxing does not allocate (a request without a
        // body, the common case, is forwarded with one).
        return Empty::new().map_err(|never| match never {}).boxed();
    }
    Full::new(body).map_err(|never| match never {}).boxed()
}

/// `body`, holding `guard` until the body has been read to its end or dropped: a count that
/// must last as long as the exchange (a circuit breaker's active request, say).
pub fn holding<G>(body: Body, guard: G) -> Body
where
    G: Send + Sync + Unpin + 'static,
{
    BodyExt::boxed(Holding {
        body,
        guard: Some(guard),
    })
}

struct Holding<G> {
    body: Body,
    guard: Option<G>,
}

impl<G: Unpin> hyper::body::Body for Holding<G> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let polled = std::pin::Pin::new(&mut this.body).poll_frame(cx);
        if let std::task::Poll::Ready(frame) = &polled
            && (frame.is_none() || this.body.is_end_stream())
        {
            this.guard = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}
