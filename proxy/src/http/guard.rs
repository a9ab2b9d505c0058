//! The time limits of a served HTTP connection: a request's head must arrive within
//! [`crate::inputs::HEADER_READ_TIMEOUT`] of its first byte (a slowloris client, trickling headers to hold a
//! connection, is closed), and a connection on which nothing moves for [`crate::inputs::IDLE_TIMEOUT`] is
//! closed gracefully.
//!
//! hyper's own `header_read_timeout` is not used: its timer also runs while a kept-alive
//! connection waits for its next request, which closes the idle connections apps keep pooled.
//! Here the timer starts at the first byte of a head. The connection's IO ([`Guarded`]) and its
//! requests ([`Tracker::request`]) share a [`Tracker`] saying whether a head is awaited: true
//! from the start and again once a request's body has been read, false from the moment hyper
//! hands a request over. Only HTTP/1 is timed this way; an HTTP/2 connection's frames are
//! bounded by its stream and header-list limits.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use hyper::Request;
use hyper::body::{Body as _, Incoming};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use super::Body;
use crate::inputs::Limits;
use crate::metrics::{Listener, Metrics, Refusal};

/// `Tracker::phase` once heads are no longer timed (HTTP/2, an upgraded connection).
const UNTIMED: u32 = u32::MAX;

/// What a connection's IO and its requests share.
#[derive(Debug, Default)]
pub(crate) struct Tracker {
    /// Even: a head is awaited (the number of requests so far, doubled); odd: a request is
    /// being read (its body); [`UNTIMED`]: heads are not timed.
    phase: AtomicU32,
    /// Set by the IO once nothing has moved for the idle timeout.
    idle: AtomicBool,
}

impl Tracker {
    /// Marks `req` as handed over (its head is complete). A request with a body carries a
    /// [`BodyDone`] in its extensions, which [`into_proxy_body`] attaches to the body, so that
    /// the next head is awaited once the body has been read (or dropped).
    pub(crate) fn request(self: &Arc<Self>, req: &mut Request<Incoming>) {
        let phase = self.phase.load(Ordering::Relaxed);
        if phase == UNTIMED {
            return;
        }
        if req.version() == hyper::Version::HTTP_2 || is_upgrade(req) {
            // An upgraded connection carries another protocol from here; HTTP/2 (told apart
            // late, from a preface split across reads) is not timed per head.
            self.phase.store(UNTIMED, Ordering::Relaxed);
        } else if req.body().is_end_stream() {
            self.phase
                .store(phase.wrapping_add(2) & !1, Ordering::Relaxed);
        } else {
            self.phase.store(phase | 1, Ordering::Relaxed);
            req.extensions_mut().insert(BodyDone(self.clone()));
        }
    }

    fn body_read(&self) {
        let phase = self.phase.load(Ordering::Relaxed);
        if phase != UNTIMED && phase & 1 == 1 {
            self.phase.store(phase.wrapping_add(1), Ordering::Relaxed);
        }
    }

    /// Resolves once the IO found the connection idle. It registers no waker of its own: the
    /// IO sets the flag while the connection's task polls it, and this is polled in the same
    /// task right after (`serve_until_drained`'s select), so the check costs a load per wake.
    pub(crate) fn idle(&self) -> impl std::future::Future<Output = ()> + '_ {
        std::future::poll_fn(|_| {
            if self.idle.load(Ordering::Relaxed) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
    }
}

/// A connection's requests, handed to `serve` once their heads are marked in its tracker.
pub(crate) struct Tracked<S> {
    serve: S,
    tracker: Arc<Tracker>,
}

impl<S> Tracked<S> {
    pub(crate) fn new(serve: S, tracker: Arc<Tracker>) -> Self {
        Tracked { serve, tracker }
    }
}

impl<S, F, B, E> hyper::service::Service<Request<Incoming>> for Tracked<S>
where
    S: Fn(Request<Incoming>) -> F,
    F: std::future::Future<Output = Result<hyper::Response<B>, E>>,
{
    type Response = hyper::Response<B>;
    type Error = E;
    type Future = F;

    fn call(&self, mut req: Request<Incoming>) -> F {
        self.tracker.request(&mut req);
        (self.serve)(req)
    }
}

/// A request that asks to switch protocols: hyper gives exactly those an `OnUpgrade` (a
/// lookup in an extensions map that is empty otherwise, cheaper than one in the headers).
fn is_upgrade<B>(req: &Request<B>) -> bool {
    req.method() == hyper::Method::CONNECT
        || req
            .extensions()
            .get::<hyper::upgrade::OnUpgrade>()
            .is_some()
}

/// Carried by a request whose head was timed and which has a body: dropped once the body has
/// been read to its end (or dropped), it tells the connection that the next head is awaited.
#[derive(Clone)]
struct BodyDone(Arc<Tracker>);

impl Drop for BodyDone {
    fn drop(&mut self) {
        // Read or not, the body is done with: what comes next is the next head (hyper reads
        // what is left of an unread body once, then closes the connection if more remains).
        self.0.body_read();
    }
}

/// `req` with the proxy's body type, holding its [`BodyDone`] (when it has one) until the body
/// has been read.
pub(crate) fn into_proxy_body(req: Request<Incoming>) -> Request<Body> {
    // A request without a body (most are) trades hyper's empty body for one that boxing does
    // not allocate.
    let mut req = if req.body().is_end_stream() {
        req.map(|_| super::full(bytes::Bytes::new()))
    } else {
        req.map(super::boxed)
    };
    if let Some(done) = req.extensions_mut().remove::<BodyDone>() {
        let body = std::mem::replace(req.body_mut(), super::full(bytes::Bytes::new()));
        *req.body_mut() = crate::body::holding(body, done);
    }
    req
}

/// A served connection's IO, timing each request's head from its first byte and watching for
/// the connection going idle.
pub(crate) struct Guarded<I> {
    io: I,
    tracker: Arc<Tracker>,
    limits: Limits,
    /// The head being timed: its phase, and when the clock started (read once the head has
    /// needed a second read; a head that comes in one read, as nearly all do, never reads it).
    head: Option<(u32, Option<Instant>)>,
    /// Wakes the connection when the head's time is up (made the first time a head spans
    /// more than one read, then moved).
    head_timer: Option<Pin<Box<Sleep>>>,
    /// Reads and writes so far.
    moved: u64,
    /// `moved` at the idle timer's last tick, and for how long it has not changed since.
    idle_seen: (u64, Duration),
    /// Ticks four times per idle timeout; made on the first read. Checked, not polled, on
    /// each read (it wakes the connection's task, whose read is pending while idle).
    idle_timer: Option<Pin<Box<Sleep>>>,
    /// On an HTTP/2 connection (told by its preface): the frames the server writes, followed
    /// to count the streams it refuses past the concurrency limit (the HTTP/2 library refuses
    /// them on its own, with RST_STREAM REFUSED_STREAM, and says nothing to the proxy).
    frames: Option<FrameScan>,
    /// Where those refusals are counted (`mesh_proxy_refused_total{reason="stream_limit"}`).
    refused: (Arc<Metrics>, Listener),
}

impl<I> Guarded<I> {
    pub(crate) fn new(
        io: I,
        tracker: Arc<Tracker>,
        limits: Limits,
        refused: (Arc<Metrics>, Listener),
    ) -> Self {
        Guarded {
            io,
            tracker,
            limits,
            frames: None,
            refused,
            head: None,
            head_timer: None,
            moved: 0,
            idle_seen: (0, Duration::ZERO),
            idle_timer: None,
        }
    }

    /// Whether the head under way is past its time; when not, the timer is set to wake the
    /// connection when it will be.
    fn head_expired(&mut self, started: Instant, cx: &mut Context<'_>) -> bool {
        let deadline = started + self.limits.header_read_timeout;
        if Instant::now() >= deadline {
            return true;
        }
        let timer = self
            .head_timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if timer.deadline() != deadline {
            timer.as_mut().reset(deadline);
        }
        // Registers the waker; it cannot be ready before the deadline.
        timer.as_mut().poll(cx).is_ready()
    }

    /// The idle timer's part of a read: a tick that found nothing moved for the whole idle
    /// timeout raises the tracker's flag; otherwise the timer is set for the next tick.
    fn watch_idle(&mut self, cx: &mut Context<'_>) {
        let tick = self.limits.idle_timeout / 4;
        let timer = match &mut self.idle_timer {
            Some(t) if !t.is_elapsed() => return,
            Some(t) => t,
            None => self.idle_timer.insert(Box::pin(tokio::time::sleep(tick))),
        };
        if timer.is_elapsed() {
            let (last, quiet) = self.idle_seen;
            self.idle_seen = if last == self.moved {
                (last, quiet + tick)
            } else {
                (self.moved, Duration::ZERO)
            };
            if self.idle_seen.1 >= self.limits.idle_timeout {
                self.tracker.idle.store(true, Ordering::Relaxed);
                return;
            }
            timer.as_mut().reset(Instant::now() + tick);
        }
        // Registers the waker for the next tick.
        let _ = timer.as_mut().poll(cx);
    }
}

impl<I> Guarded<I> {
    /// Follows what the server wrote on an HTTP/2 connection, counting refused streams.
    fn scan(&mut self, written: &[u8]) {
        if let Some(frames) = &mut self.frames {
            let refused = frames.feed(written);
            if refused > 0 {
                let (metrics, listener) = &self.refused;
                metrics
                    .refused()
                    .counter(*listener, Refusal::StreamLimit)
                    .fetch_add(refused, Ordering::Relaxed);
            }
        }
    }
}

/// HTTP/2 frames followed through the bytes of one direction: only each frame's 9-byte header
/// is read (and a RST_STREAM's error code); payloads are skipped.
#[derive(Debug, Default)]
pub(crate) struct FrameScan {
    head: [u8; 9],
    filled: usize,
    /// Payload bytes of the current frame still to pass.
    skip: usize,
    /// Within a RST_STREAM's payload: its error code so far, and how many of its bytes.
    code: Option<(u32, u8)>,
}

/// RST_STREAM's frame type, and REFUSED_STREAM's error code (RFC 9113).
const RST_STREAM: u8 = 0x3;
const REFUSED_STREAM: u32 = 0x7;

impl FrameScan {
    /// Takes the next bytes of the direction; returns how many RST_STREAM REFUSED_STREAM
    /// frames ended in them.
    pub(crate) fn feed(&mut self, mut data: &[u8]) -> u64 {
        let mut refused = 0;
        while !data.is_empty() {
            if self.skip > 0 {
                if let Some((code, got)) = &mut self.code {
                    *code = (*code << 8) | u32::from(data[0]);
                    *got += 1;
                    if *got == 4 {
                        refused += u64::from(*code == REFUSED_STREAM);
                        self.code = None;
                    }
                    self.skip -= 1;
                    data = &data[1..];
                    continue;
                }
                let n = self.skip.min(data.len());
                self.skip -= n;
                data = &data[n..];
                continue;
            }
            let n = (9 - self.filled).min(data.len());
            self.head[self.filled..self.filled + n].copy_from_slice(&data[..n]);
            self.filled += n;
            data = &data[n..];
            if self.filled == 9 {
                self.filled = 0;
                let h = &self.head;
                self.skip = usize::from(h[0]) << 16 | usize::from(h[1]) << 8 | usize::from(h[2]);
                if h[3] == RST_STREAM && self.skip == 4 {
                    self.code = Some((0, 0));
                }
            }
        }
        refused
    }
}

fn head_timed_out() -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        "the request's headers took longer than the header read timeout",
    )
}

impl<I: AsyncRead + Unpin> AsyncRead for Guarded<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        this.watch_idle(cx);
        let phase = this.tracker.phase.load(Ordering::Relaxed);
        let awaited = phase & 1 == 0 && phase != UNTIMED;
        let head = match this.head {
            Some((p, started)) if awaited && p == phase => Some(started),
            Some(_) => {
                this.head = None;
                None
            }
            None => None,
        };
        if let Some(Some(started)) = head
            && this.head_expired(started, cx)
        {
            return Poll::Ready(Err(head_timed_out()));
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.io).poll_read(cx, buf);
        match polled {
            Poll::Ready(Ok(())) => {
                this.moved = this.moved.wrapping_add(1);
                let read = &buf.filled()[before..];
                if awaited && head.is_none() && !read.is_empty() {
                    if phase == 0 && read.starts_with(b"PRI ") {
                        // HTTP/2's preface: its frames are bounded otherwise, and the frames
                        // the server writes are followed from the start.
                        this.tracker.phase.store(UNTIMED, Ordering::Relaxed);
                        this.frames = Some(FrameScan::default());
                    } else {
                        this.head = Some((phase, None));
                    }
                }
            }
            Poll::Pending => {
                if let Some((p, None)) = this.head {
                    // The head needs another read: its clock starts now (a read's turn after
                    // its first byte), and the timer is set.
                    let started = Instant::now();
                    this.head = Some((p, Some(started)));
                    if this.head_expired(started, cx) {
                        return Poll::Ready(Err(head_timed_out()));
                    }
                }
            }
            Poll::Ready(Err(_)) => {}
        }
        polled
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Guarded<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let n = ready!(Pin::new(&mut self.io).poll_write(cx, buf))?;
        self.moved = self.moved.wrapping_add(1);
        self.scan(&buf[..n]);
        Poll::Ready(Ok(n))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let n = ready!(Pin::new(&mut self.io).poll_write_vectored(cx, bufs))?;
        self.moved = self.moved.wrapping_add(1);
        if self.frames.is_some() {
            let mut left = n;
            for b in bufs {
                let take = left.min(b.len());
                self.scan(&b[..take]);
                left -= take;
                if left == 0 {
                    break;
                }
            }
        }
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::FrameScan;

    fn frame(kind: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = u32::try_from(payload.len()).unwrap().to_be_bytes();
        let mut f = vec![len[1], len[2], len[3], kind, 0];
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    #[test]
    fn refused_streams_are_counted_however_the_bytes_are_cut() {
        let mut out = frame(0x4, 0, &[0, 3, 0, 0, 4, 0]); // SETTINGS
        out.extend(frame(0x1, 1, &[0x88])); // HEADERS :status 200
        out.extend(frame(0x3, 3, &7u32.to_be_bytes())); // RST_STREAM REFUSED_STREAM
        out.extend(frame(0x0, 1, b"hello")); // DATA
        out.extend(frame(0x3, 5, &8u32.to_be_bytes())); // RST_STREAM CANCEL
        out.extend(frame(0x3, 7, &7u32.to_be_bytes())); // RST_STREAM REFUSED_STREAM
        for cut in 1..=out.len() {
            let mut scan = FrameScan::default();
            let counted: u64 = out.chunks(cut).map(|c| scan.feed(c)).sum();
            assert_eq!(counted, 2, "written {cut} bytes at a time");
        }
    }
}
