//! One upstream HTTP/1.1 connection: the socket (TCP, or TLS over it), its
//! read buffer, the bytes on their way out, and the exchange in progress.
//!
//! Whoever holds the connection drives it: the request future while it
//! waits for the response head, then the response body while it streams.
//! The request body keeps going out meanwhile (full duplex): an upstream
//! may answer before it has read all of it.
//!
//! The read buffer lives as long as the connection: a response's head and
//! body are slices of it, and once they have been written to the client
//! the next response is read into the same memory.

use std::future::Future;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::uri::{Authority, Scheme};
use http::Response;
use http_body::{Body as _, Frame, SizeHint};
use hyper::body::Incoming;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::dial;
use super::h1::{self, BodyDecoder, Decoded, Error, RequestFraming};
use crate::deadline::LazyDeadline;
use crate::metrics::Metrics;

/// Room a read gets at least; the buffer grows by `read_size` below it.
const MIN_READ_ROOM: usize = 1024;
/// The first read size of a response, doubled after every read that
/// filled it, up to `MAX_READ_SIZE` (large bodies come in large frames).
const FIRST_READ_SIZE: usize = 8 * 1024;
const MAX_READ_SIZE: usize = 64 * 1024;
/// A pooled connection keeps a read buffer up to this size; a larger one
/// (from a large body) is given back when the connection goes idle.
const KEPT_READ_BUFFER: usize = 16 * 1024;

/// Opens connections to one upstream origin.
#[derive(Clone)]
pub(crate) struct Connector {
    tls: tokio_rustls::TlsConnector,
    timeout: Duration,
}

impl Connector {
    /// `tls`: the client config for `https://` upstreams (ALPN is set here).
    pub(crate) fn new(mut tls: rustls::ClientConfig, timeout: Duration) -> Connector {
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        Connector {
            tls: tokio_rustls::TlsConnector::from(Arc::new(tls)),
            timeout,
        }
    }

    /// A TCP connection (with `TCP_NODELAY`), and TLS over it for
    /// `https`, each step within the connect timeout. A name is resolved
    /// and its addresses dialed Happy Eyeballs style (see [`dial`]).
    pub(crate) async fn connect(
        &self,
        scheme: &Scheme,
        authority: &Authority,
    ) -> io::Result<Stream> {
        let https = *scheme == Scheme::HTTPS;
        let host = authority.host();
        // `[::1]` in a URI, `::1` to resolve and to name.
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
        let tcp = within(self.timeout, async {
            let addrs = tokio::net::lookup_host((host, port)).await?.collect();
            dial::dial(
                addrs,
                self.timeout,
                dial::FALLBACK_DELAY,
                TcpStream::connect,
            )
            .await
        })
        .await?;
        tcp.set_nodelay(true)?;
        if !https {
            return Ok(Stream::Plain(tcp));
        }
        let name = ServerName::try_from(host.to_owned())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let tls = within(self.timeout, self.tls.connect(name, tcp)).await?;
        Ok(Stream::Tls(Box::new(tls)))
    }
}

async fn within<T>(limit: Duration, step: impl Future<Output = io::Result<T>>) -> io::Result<T> {
    tokio::time::timeout(limit, step)
        .await
        .unwrap_or_else(|_| Err(io::Error::new(io::ErrorKind::TimedOut, "connect timed out")))
}

/// A connection's socket.
pub(crate) enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// One keep-alive connection to an upstream and the exchange on it.
pub(crate) struct Connection {
    stream: Stream,
    read_buf: BytesMut,
    read_size: usize,
    out: Outbox,
    /// The client's request body while it is still going out.
    upload: Option<Upload>,
    /// The response body being read (done between exchanges).
    body: BodyDecoder,
    /// The current request was `HEAD`.
    head_request: bool,
    /// The current request may be sent again on another connection if
    /// this one fails before answering: it has no body and an idempotent
    /// method (RFC 9110 9.2.2).
    replayable: bool,
    /// Some bytes of an answer to the current request have arrived.
    answered: bool,
    /// Neither side asked to close, and every message so far was whole.
    keep_alive: bool,
    /// The last request's header map, emptied: the next response's
    /// headers go into its memory (see `h1::parse_response_head`).
    spare_headers: http::HeaderMap,
    /// Until when the current exchange may wait for its response head.
    response_deadline: LazyDeadline,
    _counted: Counted,
}

/// A request to send again on a new connection: its encoded head (it has no body).
pub(crate) struct Replay {
    head: Vec<u8>,
    head_request: bool,
}

struct Upload {
    body: Incoming,
    chunked: bool,
}

impl Connection {
    /// A connection whose first exchange must have its response head by
    /// `response_deadline`.
    pub(crate) fn new(
        stream: Stream,
        metrics: &Arc<Metrics>,
        response_deadline: Instant,
    ) -> Connection {
        Connection {
            stream,
            read_buf: BytesMut::new(),
            read_size: FIRST_READ_SIZE,
            out: Outbox::default(),
            upload: None,
            body: BodyDecoder::new(h1::BodyFraming::Empty),
            head_request: false,
            replayable: false,
            answered: false,
            keep_alive: true,
            spare_headers: http::HeaderMap::new(),
            response_deadline: LazyDeadline::new(response_deadline),
            _counted: Counted::new(metrics),
        }
    }

    /// Starts an exchange: the request head goes out with the first poll,
    /// the body after it.
    pub(crate) fn start(&mut self, request: http::Request<Incoming>) {
        let (mut parts, body) = request.into_parts();
        let framing = h1::request_framing(&mut parts.headers, &body);
        let target = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
        self.out.clear();
        h1::encode_request_head(&mut self.out.head, &parts.method, target, &parts.headers);
        self.head_request = parts.method == http::Method::HEAD;
        self.replayable = framing == RequestFraming::None && parts.method.is_idempotent();
        self.answered = false;
        self.read_size = FIRST_READ_SIZE;
        parts.headers.clear();
        self.spare_headers = std::mem::take(&mut parts.headers);
        self.upload = (framing != RequestFraming::None).then(|| Upload {
            body,
            chunked: framing == RequestFraming::Chunked,
        });
    }

    /// Sends what it can of the request and reads until the response head
    /// has arrived. A failure to send ends the upload but not the exchange:
    /// the upstream may have answered already (say, `413` and a close).
    pub(crate) fn poll_head(&mut self, cx: &mut Context<'_>) -> Poll<Result<Response<()>, Error>> {
        loop {
            if let Err(e) = self.push_request(cx) {
                if matches!(e, Error::RequestBody(_)) {
                    return Poll::Ready(Err(e));
                }
                self.end_upload();
            }
            if let Some(head) = h1::parse_response_head(
                &mut self.read_buf,
                self.head_request,
                &mut self.spare_headers,
            )? {
                self.body = BodyDecoder::new(head.body);
                self.keep_alive &= head.keep_alive;
                return Poll::Ready(Ok(head.response));
            }
            match ready!(self.poll_read(cx)) {
                Ok(0) => {
                    self.keep_alive = false;
                    return Poll::Ready(Err(Error::Closed("before answering")));
                }
                Ok(_) => self.answered = true,
                Err(e) => {
                    self.keep_alive = false;
                    return Poll::Ready(Err(e.into()));
                }
            }
        }
    }

    /// Moves the deadline for the next response head (a pooled
    /// connection's next exchange).
    pub(crate) fn set_response_deadline(&mut self, at: Instant) {
        self.response_deadline.set(at);
    }

    /// Ready once the response deadline has passed (see [`LazyDeadline`]).
    pub(crate) fn poll_response_deadline(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        self.response_deadline.poll_passed(cx)
    }

    /// The request of an exchange that failed before any answer came, if
    /// it may be sent again: a pooled connection the upstream closed just
    /// as the request went out. Go's `http.Transport` and nginx retry
    /// these; a request with a body, or a method that is not idempotent,
    /// is never sent twice.
    pub(crate) fn take_replay(&mut self) -> Option<Replay> {
        (self.replayable && !self.answered).then(|| Replay {
            head: std::mem::take(&mut self.out.head),
            head_request: self.head_request,
        })
    }

    /// Starts the exchange a failed connection gave up (`take_replay`).
    pub(crate) fn start_replay(&mut self, replay: Replay) {
        self.out.clear();
        self.out.head = replay.head;
        self.head_request = replay.head_request;
        self.replayable = false;
        self.answered = false;
        self.read_size = FIRST_READ_SIZE;
    }

    /// The next piece of the response body; `None` at its end.
    pub(crate) fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        if self.push_request(cx).is_err() {
            // The answer is coming: a request that cannot be sent whole
            // ends the upload, and the connection after this response.
            self.end_upload();
        }
        loop {
            let decoded = match self.body.decode(&mut self.read_buf) {
                Ok(decoded) => decoded,
                Err(e) => return self.fail(e),
            };
            match decoded {
                Decoded::Data(data) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                Decoded::Trailers(trailers) => {
                    return Poll::Ready(Some(Ok(Frame::trailers(trailers))))
                }
                Decoded::End => return Poll::Ready(None),
                Decoded::NeedMore => match ready!(self.poll_read(cx)) {
                    Ok(0) => {
                        self.keep_alive = false;
                        return match self.body.at_eof() {
                            Ok(()) => Poll::Ready(None),
                            Err(e) => self.fail(e),
                        };
                    }
                    Ok(_) => {}
                    Err(e) => return self.fail(e.into()),
                },
            }
        }
    }

    fn fail<T>(&mut self, e: Error) -> Poll<Option<Result<T, Error>>> {
        self.keep_alive = false;
        Poll::Ready(Some(Err(e)))
    }

    /// Has the response body been read to its end?
    pub(crate) fn response_done(&self) -> bool {
        self.body.is_done()
    }

    pub(crate) fn size_hint(&self) -> SizeHint {
        match self.body.remaining() {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }

    /// May the connection carry the next request? Both messages complete,
    /// neither side asked to close, nothing unread.
    pub(crate) fn reusable(&self) -> bool {
        self.keep_alive
            && self.body.is_done()
            && self.upload.is_none()
            && self.out.is_empty()
            && self.read_buf.is_empty()
    }

    /// Prepares an idle connection for the pool: a buffer grown by a large
    /// body is given back.
    pub(crate) fn idle(&mut self) {
        if self.read_buf.capacity() > KEPT_READ_BUFFER {
            self.read_buf = BytesMut::new();
        }
    }

    /// Is an idle connection still open? The upstream may have closed it
    /// (or, against the protocol, sent bytes nobody asked for). Registers
    /// for the close, so that a sweep notices it.
    pub(crate) fn poll_open(&mut self, cx: &mut Context<'_>) -> bool {
        self.read_buf.is_empty() && self.poll_read(cx).is_pending()
    }

    fn end_upload(&mut self) {
        self.upload = None;
        self.out.abandon();
        self.keep_alive = false;
    }

    /// Reads more of the response into the buffer: the bytes read, 0 at
    /// the end of the stream.
    fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.read_buf.capacity() - self.read_buf.len() < MIN_READ_ROOM {
            self.read_buf.reserve(self.read_size);
        }
        let room = self.read_buf.capacity() - self.read_buf.len();
        let n = ready!(tokio_util::io::poll_read_buf(
            Pin::new(&mut self.stream),
            cx,
            &mut self.read_buf
        ))?;
        if n == room && self.read_size < MAX_READ_SIZE {
            self.read_size *= 2;
        }
        Poll::Ready(Ok(n))
    }

    /// Writes what is queued and queues the next frame of the request body,
    /// until the socket or the body must wait or the request is all sent.
    fn push_request(&mut self, cx: &mut Context<'_>) -> Result<(), Error> {
        loop {
            match self.out.poll_write(&mut self.stream, cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => return Err(e.into()),
                Poll::Pending => return Ok(()),
            }
            let Some(upload) = &mut self.upload else {
                return Ok(());
            };
            // The head (or the last frame) is out: make room for the next.
            self.out.clear();
            let frame = match Pin::new(&mut upload.body).poll_frame(cx) {
                Poll::Pending => return Ok(()),
                Poll::Ready(None) => {
                    if upload.chunked {
                        self.out.tail = h1::LAST_CHUNK;
                    }
                    self.upload = None;
                    continue;
                }
                Poll::Ready(Some(Err(e))) => {
                    self.upload = None;
                    self.keep_alive = false;
                    return Err(Error::RequestBody(e));
                }
                Poll::Ready(Some(Ok(frame))) => frame,
            };
            match frame.into_data() {
                Ok(data) if data.is_empty() => {}
                Ok(data) => {
                    if upload.chunked {
                        h1::encode_chunk_size(&mut self.out.head, data.len());
                        self.out.tail = h1::CHUNK_END;
                    }
                    self.out.data = data;
                }
                Err(frame) => {
                    // Trailers end a chunked body; a body with a length
                    // has no place for them, and they are dropped.
                    if let (Ok(trailers), true) = (frame.into_trailers(), upload.chunked) {
                        h1::encode_last_chunk(&mut self.out.head, &trailers);
                        self.upload = None;
                    }
                }
            }
        }
    }
}

/// Bytes on their way upstream, in order: `head` (a request head, a chunk
/// size line), `data` (a body frame, sent from where it is), `tail`.
#[derive(Default)]
struct Outbox {
    head: Vec<u8>,
    written: usize,
    data: Bytes,
    tail: &'static [u8],
}

impl Outbox {
    fn is_empty(&self) -> bool {
        self.written == self.head.len() && self.data.is_empty() && self.tail.is_empty()
    }

    /// Gives up on what is not written yet; the head stays for a replay.
    fn abandon(&mut self) {
        self.written = self.head.len();
        self.data = Bytes::new();
        self.tail = b"";
    }

    fn clear(&mut self) {
        self.head.clear();
        self.written = 0;
        self.data = Bytes::new();
        self.tail = b"";
    }

    /// Writes everything queued, then flushes (TLS buffers records).
    fn poll_write(&mut self, stream: &mut Stream, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.is_empty() {
            let head = &self.head[self.written..];
            let n = if self.data.is_empty() && self.tail.is_empty() {
                ready!(Pin::new(&mut *stream).poll_write(cx, head))?
            } else if stream.is_write_vectored() {
                let parts = [
                    IoSlice::new(head),
                    IoSlice::new(&self.data),
                    IoSlice::new(self.tail),
                ];
                ready!(Pin::new(&mut *stream).poll_write_vectored(cx, &parts))?
            } else {
                let first = [head, &self.data[..], self.tail]
                    .into_iter()
                    .find(|part| !part.is_empty())
                    .unwrap_or_default();
                ready!(Pin::new(&mut *stream).poll_write(cx, first))?
            };
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.advance(n);
        }
        // The head stays until the next exchange: a request without a
        // body may have to be sent again (`Connection::take_replay`).
        Pin::new(stream).poll_flush(cx)
    }

    fn advance(&mut self, mut n: usize) {
        let from_head = n.min(self.head.len() - self.written);
        self.written += from_head;
        n -= from_head;
        let from_data = n.min(self.data.len());
        self.data.advance(from_data);
        n -= from_data;
        self.tail = &self.tail[n.min(self.tail.len())..];
    }
}

/// Counts a pooled connection in `scopegate_upstream_connections` while it
/// exists.
struct Counted(Arc<Metrics>);

impl Counted {
    fn new(metrics: &Arc<Metrics>) -> Self {
        metrics.upstream_connection_opened();
        Counted(Arc::clone(metrics))
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.upstream_connection_closed();
    }
}
