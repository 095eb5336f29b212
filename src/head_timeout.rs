//! `timeouts.client_header` on HTTP/1 connections: a request head must be
//! complete within it of the moment the connection started waiting for one
//! (its start, or the end of the previous response). A connection that
//! misses it is closed without an answer, which also closes idle keep-alive
//! connections `client_header` after their last response.
//!
//! hyper's `header_read_timeout` does this with a new boxed timer per
//! request, put into the runtime's timer wheel and taken out again: an
//! allocation, two wheel operations and a clock read, about 1,400
//! instructions of the 67k a proxied request costs. Here the connection
//! keeps one lazily re-armed timer (`deadline::LazyDeadline`), and a request
//! only adds a count and, when its response ends, the time:
//!
//! - [`Tracked`] wraps the connection's service: a call marks a request in
//!   flight; the response body's drop marks its end and when it was. A `101`
//!   marks the connection upgraded: a tunnel has no request heads.
//! - [`HeadGuard`] watches the connection's socket ([`Guarded`]): while
//!   hyper waits for bytes it checks the timer, and when the timer fires
//!   with no request in flight and the wait older than the limit, the read
//!   fails (`TimedOut`) and hyper closes the connection.
//!
//! [`FirstBytesGuard`] is the same limit on a TLS connection's first read
//! after the handshake, whatever its protocol (an HTTP/2 client that sends
//! no preface would otherwise hold its slot).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use http::{Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

use crate::deadline::LazyDeadline;

/// What the service side of one connection tells its socket side.
#[derive(Debug)]
pub struct HeadClock {
    /// Requests whose response has not ended yet.
    in_flight: AtomicUsize,
    /// When the connection last started waiting for a request head, in
    /// nanoseconds after `origin`.
    waiting_since: AtomicU64,
    origin: Instant,
    /// Switched protocols: the deadline no longer applies.
    upgraded: AtomicBool,
}

impl HeadClock {
    fn new() -> HeadClock {
        HeadClock {
            in_flight: AtomicUsize::new(0),
            waiting_since: AtomicU64::new(0),
            origin: Instant::now(),
            upgraded: AtomicBool::new(false),
        }
    }

    fn request_started(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
    }

    fn response_ended(&self) {
        let since = u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.waiting_since.store(since, Ordering::Relaxed);
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
    }

    /// The time by which the awaited head must be complete, if one is awaited.
    fn head_due(&self, limit: Duration) -> Option<Instant> {
        if self.upgraded.load(Ordering::Relaxed) || self.in_flight.load(Ordering::Relaxed) > 0 {
            return None;
        }
        let since = Duration::from_nanos(self.waiting_since.load(Ordering::Relaxed));
        Some(self.origin + since + limit)
    }
}

/// A new HTTP/1 connection's two halves: the socket, guarded, and the
/// service, tracked, sharing one [`HeadClock`].
pub fn wrap<T, S>(stream: T, service: S, limit: Duration) -> (Guarded<T, HeadGuard>, Tracked<S>) {
    let clock = Arc::new(HeadClock::new());
    let guard = HeadGuard {
        clock: clock.clone(),
        limit,
        deadline: LazyDeadline::new(Instant::now() + limit),
    };
    let socket = Guarded {
        inner: stream,
        guard,
    };
    (
        socket,
        Tracked {
            inner: service,
            clock,
        },
    )
}

/// `stream`, whose first read must bring bytes within `limit`.
pub fn first_bytes_within<T>(stream: T, limit: Duration) -> Guarded<T, FirstBytesGuard> {
    Guarded {
        inner: stream,
        guard: FirstBytesGuard {
            deadline: Some(Box::pin(tokio::time::sleep(limit))),
        },
    }
}

/// Decides, while a read waits, whether it must fail instead.
pub trait ReadGuard {
    /// A read returned; `got_bytes` if it brought any.
    fn on_read(&mut self, got_bytes: bool);
    /// A read is waiting: the error to fail it with, if its time is up (else
    /// the task is woken when it might be).
    fn expired(&mut self, cx: &mut Context<'_>) -> Option<io::Error>;
}

/// A socket whose waiting reads a [`ReadGuard`] may fail; writes pass through.
pub struct Guarded<T, G> {
    inner: T,
    guard: G,
}

/// [`ReadGuard`] for HTTP/1 request heads.
pub struct HeadGuard {
    clock: Arc<HeadClock>,
    limit: Duration,
    deadline: LazyDeadline,
}

impl ReadGuard for HeadGuard {
    fn on_read(&mut self, _got_bytes: bool) {}

    fn expired(&mut self, cx: &mut Context<'_>) -> Option<io::Error> {
        loop {
            if self.deadline.poll_passed(cx).is_pending() {
                return None;
            }
            // The timer is armed for the earliest time the head can be
            // overdue; now check whether it is.
            match self.clock.head_due(self.limit) {
                Some(due) if due <= Instant::now() => {
                    return Some(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "request head not complete within client_header",
                    ))
                }
                Some(due) => self.deadline.set(due),
                // A request in flight, or a tunnel: check again a limit
                // from now.
                None => self.deadline.set(Instant::now() + self.limit),
            }
        }
    }
}

/// [`ReadGuard`] for a connection's first bytes; done once they came.
pub struct FirstBytesGuard {
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl ReadGuard for FirstBytesGuard {
    fn on_read(&mut self, got_bytes: bool) {
        if got_bytes {
            self.deadline = None;
        }
    }

    fn expired(&mut self, cx: &mut Context<'_>) -> Option<io::Error> {
        let deadline = self.deadline.as_mut()?;
        deadline.as_mut().poll(cx).is_ready().then(|| {
            io::Error::new(
                io::ErrorKind::TimedOut,
                "client sent nothing within client_header",
            )
        })
    }
}

impl<T: AsyncRead + Unpin, G: ReadGuard + Unpin> AsyncRead for Guarded<T, G> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(result) => {
                this.guard.on_read(buf.filled().len() > before);
                Poll::Ready(result)
            }
            Poll::Pending => match this.guard.expired(cx) {
                Some(e) => Poll::Ready(Err(e)),
                None => Poll::Pending,
            },
        }
    }
}

impl<T: AsyncWrite + Unpin, G: Unpin> AsyncWrite for Guarded<T, G> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// The connection's service, telling its [`HeadClock`] when requests
/// start and their responses end.
pub struct Tracked<S> {
    inner: S,
    clock: Arc<HeadClock>,
}

impl<S, B, ReqBody> hyper::service::Service<Request<ReqBody>> for Tracked<S>
where
    S: hyper::service::Service<Request<ReqBody>, Response = Response<B>>,
{
    type Response = Response<TrackedBody<B>>;
    type Error = S::Error;
    type Future = TrackedFuture<S::Future>;

    fn call(&self, request: Request<ReqBody>) -> Self::Future {
        self.clock.request_started();
        TrackedFuture {
            inner: self.inner.call(request),
            end: Some(ResponseEnd(self.clock.clone())),
        }
    }
}

/// Marks its request's response ended when dropped.
struct ResponseEnd(Arc<HeadClock>);

impl Drop for ResponseEnd {
    fn drop(&mut self) {
        self.0.response_ended();
    }
}

pin_project_lite::pin_project! {
    /// A request's response future; the [`ResponseEnd`] moves into its body.
    pub struct TrackedFuture<F> {
        #[pin]
        inner: F,
        end: Option<ResponseEnd>,
    }
}

impl<F, B, E> Future for TrackedFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<TrackedBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx));
        let end = this.end.take();
        Poll::Ready(result.map(|response| {
            if response.status() == StatusCode::SWITCHING_PROTOCOLS {
                if let Some(end) = &end {
                    end.0.upgraded.store(true, Ordering::Relaxed);
                }
            }
            response.map(|inner| TrackedBody { inner, _end: end })
        }))
    }
}

pin_project_lite::pin_project! {
    /// A response body; its drop (hyper drops it once written, or when the
    /// connection fails) ends the response for the [`HeadClock`].
    pub struct TrackedBody<B> {
        #[pin]
        inner: B,
        _end: Option<ResponseEnd>,
    }
}

impl<B: Body> Body for TrackedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        self.project().inner.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    const LIMIT: Duration = Duration::from_secs(10);

    type Empty = http_body_util::Empty<bytes::Bytes>;

    /// A service answering every request with `status` and an empty body.
    fn service(
        status: StatusCode,
    ) -> impl hyper::service::Service<
        Request<Empty>,
        Response = Response<Empty>,
        Error = std::convert::Infallible,
        Future = std::future::Ready<Result<Response<Empty>, std::convert::Infallible>>,
    > {
        hyper::service::service_fn(move |_: Request<Empty>| {
            let mut response = Response::new(Empty::new());
            *response.status_mut() = status;
            std::future::ready(Ok(response))
        })
    }

    /// Reads from `socket` until it fails; when, after the start.
    async fn fails_after<T: AsyncRead + Unpin>(socket: &mut Guarded<T, HeadGuard>) -> Duration {
        let started = Instant::now();
        let mut buf = [0u8; 16];
        let e = socket.read(&mut buf).await.expect_err("the read fails");
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        started.elapsed()
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_that_sends_no_head_fails_after_the_limit() {
        let (_client, server) = tokio::io::duplex(64);
        let (mut socket, _service) = wrap(server, service(StatusCode::OK), LIMIT);
        assert_eq!(fails_after(&mut socket).await, LIMIT);
    }

    #[tokio::test(start_paused = true)]
    async fn the_limit_counts_from_the_end_of_the_last_response() {
        use hyper::service::Service as _;
        let (_client, server) = tokio::io::duplex(64);
        let (mut socket, service) = wrap(server, service(StatusCode::OK), LIMIT);
        let started = Instant::now();
        let response = service.call(Request::new(Empty::new())).await.unwrap();
        // A response that takes 25 s, longer than the limit: not cut.
        let waiting = tokio::spawn(async move {
            let mut buf = [0u8; 16];
            let e = socket.read(&mut buf).await.expect_err("fails");
            (e.kind(), started.elapsed())
        });
        tokio::time::sleep(Duration::from_secs(25)).await;
        drop(response);
        let (kind, at) = waiting.await.unwrap();
        assert_eq!(kind, io::ErrorKind::TimedOut);
        assert_eq!(at, Duration::from_secs(25) + LIMIT);
    }

    #[tokio::test(start_paused = true)]
    async fn an_upgraded_connection_is_never_cut() {
        use hyper::service::Service as _;
        let (_client, server) = tokio::io::duplex(64);
        let (mut socket, service) = wrap(server, service(StatusCode::SWITCHING_PROTOCOLS), LIMIT);
        drop(service.call(Request::new(Empty::new())).await.unwrap());
        let mut buf = [0u8; 16];
        let read = tokio::time::timeout(LIMIT * 10, socket.read(&mut buf)).await;
        assert!(read.is_err(), "still waiting after ten limits: {read:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn bytes_that_arrive_are_read_whatever_the_time() {
        let (mut client, server) = tokio::io::duplex(64);
        let (mut socket, _service) = wrap(server, service(StatusCode::OK), LIMIT);
        tokio::time::advance(LIMIT * 2).await;
        tokio::io::AsyncWriteExt::write_all(&mut client, b"GET")
            .await
            .unwrap();
        let mut buf = [0u8; 3];
        socket.read_exact(&mut buf).await.unwrap();
        // Waiting for more: overdue now.
        let waker = std::task::Waker::noop();
        let mut more = [0u8; 1];
        let mut more = ReadBuf::new(&mut more);
        let poll = Pin::new(&mut socket).poll_read(&mut Context::from_waker(waker), &mut more);
        assert!(matches!(poll, Poll::Ready(Err(_))), "{poll:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn first_bytes_must_come_within_the_limit_and_later_reads_may_wait() {
        let (_client, server) = tokio::io::duplex(64);
        let mut silent = first_bytes_within(server, LIMIT);
        let started = Instant::now();
        let mut buf = [0u8; 4];
        let e = silent.read(&mut buf).await.expect_err("fails");
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), LIMIT);

        let (mut client, server) = tokio::io::duplex(64);
        let mut talking = first_bytes_within(server, LIMIT);
        tokio::io::AsyncWriteExt::write_all(&mut client, b"hi")
            .await
            .unwrap();
        talking.read_exact(&mut buf[..2]).await.unwrap();
        let later = tokio::time::timeout(LIMIT * 10, talking.read(&mut buf)).await;
        assert!(later.is_err(), "still waiting after ten limits: {later:?}");
    }
}
