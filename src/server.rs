//! Accept loop, TLS, HTTP/1.1 + HTTP/2 (ALPN or prior knowledge), limits,
//! and graceful drain. `serve(listener, ..., shutdown)` so tests bind port 0
//! and pass their own shutdown future.
//!
//! The protocol is chosen before hyper sees the connection: by ALPN on TLS,
//! and on cleartext by peeking at the first bytes for the HTTP/2 preface.
//! Peeking consumes nothing, so hyper's HTTP/1 reader gets the whole first
//! request in one read and keeps a single 8 KiB buffer. (hyper-util's auto
//! builder reads 24 bytes to sniff and hands them over separately; hyper's
//! second read then doubles its buffer to 16 KiB for the connection's life.)

use std::error::Error as StdError;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::{Body, Incoming};
use hyper::server::conn::{http1, http2};
use hyper::service::{service_fn, Service};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

pub use crate::drain::{Drain, DrainSignal};
use crate::gateway::Gateway;
use crate::head_timeout;
use crate::proxy::{self, Peer};
use crate::workers::Workers;

/// Connection-level settings, read from the config the listener started
/// with (a reload does not change them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerLimits {
    pub max_header_bytes: usize,
    pub client_header_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
    pub shutdown_grace: Duration,
}

impl ServerLimits {
    pub fn from_config(config: &crate::config::Config) -> Self {
        ServerLimits {
            max_header_bytes: config.limits.max_header_bytes,
            client_header_timeout: config.timeouts.client_header,
            idle_timeout: config.timeouts.idle,
            max_connections: config.limits.max_connections,
            shutdown_grace: config.shutdown_grace,
        }
    }
}

/// HTTP/2's connection preface (RFC 9113 §3.4). A cleartext connection that
/// opens with it speaks HTTP/2 with prior knowledge; any other opening is
/// HTTP/1.
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The protocol a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    Http1,
    Http2,
}

/// The protocol of a cleartext connection, from its first bytes, peeked
/// without consuming them; `None` when the client closed without sending
/// any. The caller bounds the wait.
async fn sniff_protocol(stream: &TcpStream) -> std::io::Result<Option<Protocol>> {
    let mut head = [0u8; H2_PREFACE.len()];
    let mut pause = Duration::from_millis(1);
    loop {
        let n = stream.peek(&mut head).await?;
        if n == 0 {
            return Ok(None);
        }
        if head[..n] != H2_PREFACE[..n] {
            return Ok(Some(Protocol::Http1));
        }
        if n == H2_PREFACE.len() {
            return Ok(Some(Protocol::Http2));
        }
        // A strict prefix of the preface so far (a client writing it in
        // pieces). Peeking again at once would return the same bytes and
        // spin, so wait a little before looking again.
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

/// The protocol a TLS client chose by ALPN: HTTP/2 only when it asked for
/// `h2` (RFC 9113 §3.2 negotiates HTTP/2 over TLS that way), else HTTP/1.1.
fn negotiated_protocol(stream: &tokio_rustls::server::TlsStream<TcpStream>) -> Protocol {
    match stream.get_ref().1.alpn_protocol() {
        Some(b"h2") => Protocol::Http2,
        _ => Protocol::Http1,
    }
}

type BoxError = Box<dyn StdError + Send + Sync>;

/// A listener's service: a hyper service whose futures and bodies may be
/// sent to a worker thread.
pub trait ConnService:
    Service<
        Request<Incoming>,
        Response = Response<Self::Body>,
        Future: Send + 'static,
        Error: Into<BoxError>,
    > + Send
    + 'static
{
    type Body: Body<Data: Send, Error: Into<BoxError>> + Send + 'static;
}

impl<S, B> ConnService for S
where
    S: Service<
            Request<Incoming>,
            Response = Response<B>,
            Future: Send + 'static,
            Error: Into<BoxError>,
        > + Send
        + 'static,
    B: Body<Data: Send, Error: Into<BoxError>> + Send + 'static,
{
    type Body = B;
}

/// The HTTP/1.1 and HTTP/2 connection builders for one listener's limits.
pub struct HttpBuilders {
    http1: http1::Builder,
    http2: http2::Builder<TokioExecutor>,
    /// How long a new connection may take to send its first bytes (or to
    /// finish the TLS handshake), and an HTTP/1 request head to arrive.
    client_header: Duration,
}

impl HttpBuilders {
    pub fn new(limits: &ServerLimits) -> Self {
        let mut http1 = http1::Builder::new();
        http1
            // `client_header` is kept by `head_timeout`, with one timer per
            // connection rather than one per request.
            .header_read_timeout(None)
            .max_buf_size(limits.max_header_bytes.max(8192))
            // hyper's default of 100 header fields (Envoy's too) stays: a
            // higher `max_headers` moves its parse arrays to the heap, two
            // 8 KiB allocations per message.
            .keep_alive(true);
        let mut http2 = http2::Builder::new(TokioExecutor::new());
        http2
            .timer(TokioTimer::new())
            .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
            .keep_alive_interval(Some(limits.idle_timeout))
            .max_concurrent_streams(256);
        HttpBuilders {
            http1,
            http2,
            client_header: limits.client_header_timeout,
        }
    }

    /// Serves one cleartext connection to its end: HTTP/1.1 (with
    /// upgrades) or HTTP/2 by its first bytes. A client that sends nothing
    /// within `client_header` is dropped.
    ///
    /// This and `HttpBuilders::serve` are `async` blocks rather than
    /// `async fn`s: an `async fn` stores its arguments twice (as passed,
    /// and moved into its body), and this future is every connection's task.
    #[allow(clippy::manual_async_fn)]
    pub fn serve_cleartext<S: ConnService>(
        &self,
        stream: TcpStream,
        service: S,
        drain: DrainSignal,
    ) -> impl Future<Output = ()> + '_ {
        async move {
            // `None` inside: the client closed without sending a byte.
            let Some(Some(protocol)) = self
                .within_first_bytes("reading the first bytes", sniff_protocol(&stream))
                .await
            else {
                return;
            };
            self.serve(stream, protocol, service, drain).await;
        }
    }

    /// Serves one TLS connection to its end, in the protocol ALPN chose.
    pub async fn serve_tls<S: ConnService>(
        &self,
        stream: TcpStream,
        acceptor: TlsAcceptor,
        service: S,
        drain: DrainSignal,
    ) {
        let Some(stream) = self
            .within_first_bytes("the TLS handshake", acceptor.accept(stream))
            .await
        else {
            return;
        };
        let protocol = negotiated_protocol(&stream);
        let stream = head_timeout::first_bytes_within(stream, self.client_header);
        self.serve(stream, protocol, service, drain).await;
    }

    /// The result of a connection's first step (reading its first bytes,
    /// the TLS handshake), or `None`, logged, when it fails or takes longer
    /// than `client_header`.
    async fn within_first_bytes<T>(
        &self,
        what: &str,
        step: impl Future<Output = std::io::Result<T>>,
    ) -> Option<T> {
        match tokio::time::timeout(self.client_header, step).await {
            Ok(Ok(done)) => Some(done),
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "{what} failed");
                None
            }
            Err(_) => {
                tracing::debug!("{what} took longer than client_header");
                None
            }
        }
    }

    #[allow(clippy::manual_async_fn)]
    fn serve<T, S>(
        &self,
        stream: T,
        protocol: Protocol,
        service: S,
        drain: DrainSignal,
    ) -> impl Future<Output = ()> + '_
    where
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        S: ConnService,
    {
        async move {
            let result = match protocol {
                // Pinned where it is made: moved into a helper, it would be
                // stored twice.
                Protocol::Http1 => {
                    let (stream, service) = head_timeout::wrap(stream, service, self.client_header);
                    let conn = std::pin::pin!(self
                        .http1
                        .serve_connection(TokioIo::new(stream), service)
                        .with_upgrades());
                    until_drained(conn, drain, |conn| conn.graceful_shutdown()).await
                }
                // Boxed: HTTP/2's state is twice HTTP/1's, and the HTTP/1
                // connections should not carry its size in their task.
                Protocol::Http2 => {
                    Box::pin(async move {
                        let conn = std::pin::pin!(self
                            .http2
                            .serve_connection(TokioIo::new(stream), service));
                        until_drained(conn, drain, |conn| conn.graceful_shutdown()).await
                    })
                    .await
                }
            };
            if let Err(e) = result {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        }
    }
}

/// Runs `conn` to its end; when `drain` fires first, asks it to finish
/// what is in flight (`shutdown`) and then runs it to its end.
async fn until_drained<C, E>(
    mut conn: Pin<&mut C>,
    mut drain: DrainSignal,
    shutdown: impl FnOnce(Pin<&mut C>),
) -> Result<(), E>
where
    C: Future<Output = Result<(), E>>,
{
    let ended = std::future::poll_fn(|cx| {
        // The connection first: it is what wakes the task nearly always.
        if let Poll::Ready(result) = conn.as_mut().poll(cx) {
            return Poll::Ready(Some(result));
        }
        drain.poll_fired(cx).map(|()| None)
    })
    .await;
    match ended {
        Some(result) => result,
        None => {
            shutdown(conn.as_mut());
            conn.await
        }
    }
}

/// Serves the proxy on `listener` until `shutdown` resolves, then stops
/// accepting and lets in-flight requests finish within the grace period.
/// Accepts here; each connection is served on one of `workers`.
pub async fn serve(
    listener: TcpListener,
    gateway: Arc<Gateway>,
    tls: Option<TlsAcceptor>,
    workers: Workers,
    shutdown: impl Future<Output = ()>,
) {
    let limits = ServerLimits::from_config(&gateway.runtime().config);
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    // Client connections, and the upstream connections pooled for them
    // (a burst's surplus is closed by the pool's sweeper a little later).
    let open_connections = {
        let (permits, max) = (Arc::downgrade(&permits), limits.max_connections.max(1));
        let metrics = gateway.metrics.clone();
        move || {
            let clients = max - permits.upgrade()?.available_permits();
            Some(clients + usize::try_from(metrics.upstream_connections()).unwrap_or(0))
        }
    };
    tokio::spawn(crate::memory::release_after_load(
        gateway.metrics.clone(),
        open_connections,
    ));
    let drain = Drain::default();
    let builders = Arc::new(HttpBuilders::new(&limits));
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            _ = &mut shutdown => break,
            permit = permits.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let (stream, addr) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = accept(&listener, "proxy") => accepted,
        };
        let _ = stream.set_nodelay(true);
        let gateway = gateway.clone();
        let builders = builders.clone();
        let tls = tls.clone();
        let signal = drain.signal();
        workers.spawn_connection(stream, move |stream| async move {
            let _permit = permit;
            let peer = Peer::new(addr, tls.is_some());
            let service =
                service_fn(move |request| proxy::handle(gateway.clone(), request, peer.clone()));
            match tls {
                None => builders.serve_cleartext(stream, service, signal).await,
                // Boxed: the TLS state is large, and cleartext connections
                // should not carry its size in their task.
                Some(acceptor) => {
                    Box::pin(builders.serve_tls(stream, acceptor, service, signal)).await
                }
            }
        });
    }
    drop(listener);
    drain.run(limits.shutdown_grace).await;
}

/// The next connection on `listener`. Accept errors (EMFILE and friends) are
/// logged and retried after a short pause instead of spinning. Cancel-safe.
pub async fn accept(
    listener: &TcpListener,
    what: &str,
) -> (tokio::net::TcpStream, std::net::SocketAddr) {
    loop {
        match listener.accept().await {
            Ok(accepted) => return accepted,
            Err(e) => {
                tracing::warn!(listener = what, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}
