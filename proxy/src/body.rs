//! The body type every HTTP message in the proxy has: a boxed body of `Bytes` whose error is
//! boxed too, so hyper's, h2's and the proxy's own bodies travel through one type.

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};

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

/// A fixed response body.
pub fn full(body: impl Into<Bytes>) -> Body {
    Full::new(body.into())
        .map_err(|never| match never {})
        .boxed()
}
