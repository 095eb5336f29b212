//! The upstream client: keep-alive HTTP/1.1 connections, pooled per
//! upstream, each driven inside the request that uses it.
//!
//! hyper's pooled client runs every upstream connection as a task of its
//! own, so one forwarded request hops between tasks several times (pool
//! checkout, request hand-off, response head, every body chunk). Here a
//! request checks a connection out of its upstream's idle stack, polls the
//! connection itself while it waits for the response head, and hands it to
//! the response body, which polls it while the body streams and puts it back
//! on the stack once the body has ended. No connection task, no channel
//! hop: the client connection's task does all of it.
//!
//! Upgrades (`101 Switching Protocols`) need the connection to outlive the
//! response, so an upgrade request gets a fresh connection run as its own
//! task. Idle connections are closed after `idle_timeout` by a sweeper that
//! also notices upstreams closing them first.

use std::collections::HashMap;
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::uri::{Authority, Scheme};
use http::{Request, Response, Uri};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;
use tokio::sync::{Semaphore, SemaphorePermit};
use tower_service::Service as _;

use crate::metrics::{Metrics, UpstreamError};

type Connector = hyper_rustls::HttpsConnector<HttpConnector>;
type Io = hyper_rustls::MaybeHttpsStream<TokioIo<tokio::net::TcpStream>>;
type TrySendError = hyper::client::conn::TrySendError<Request<Incoming>>;

/// Idle connections kept per upstream and worker at most; more are closed
/// when released. A ceiling, not the working size: idle connections no
/// request needed for a whole sweep interval are closed (see [`sweep`]).
const MAX_IDLE_PER_UPSTREAM: usize = 1024;

/// Settings the client is built from; a reload with equal settings keeps the pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientSettings {
    pub connect_timeout: Duration,
    pub response_timeout: Duration,
    pub idle_timeout: Duration,
    pub ca_file: Option<std::path::PathBuf>,
    /// Requests per worker and upstream waiting for a response head at
    /// once (`limits.max_upstream_requests`); more wait for a slot.
    pub max_requests_per_worker: usize,
}

/// Forwards requests upstream over pooled keep-alive connections. Cheap to
/// clone; every clone shares the pools.
#[derive(Clone)]
pub struct UpstreamClient {
    shared: Arc<Shared>,
}

struct Shared {
    settings: ClientSettings,
    /// For the open-connection gauge.
    metrics: Arc<Metrics>,
    connector: Connector,
    http1: http1::Builder,
    /// One pool per upstream origin, made when a runtime is built.
    pools: Mutex<HashMap<(Scheme, Authority), Arc<Pool>>>,
}

impl UpstreamClient {
    pub fn new(
        settings: ClientSettings,
        metrics: Arc<Metrics>,
    ) -> Result<Self, crate::tls::TlsError> {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(settings.connect_timeout));
        let tls = crate::tls::client_config(settings.ca_file.as_deref())?;
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        // hyper's default of 100 header fields: see `server::HttpBuilders`.
        let http1 = http1::Builder::new();
        let shared = Arc::new(Shared {
            settings,
            metrics,
            connector,
            http1,
            pools: Mutex::new(HashMap::new()),
        });
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(sweep(Arc::downgrade(&shared)));
        }
        Ok(UpstreamClient { shared })
    }

    pub fn settings(&self) -> &ClientSettings {
        &self.shared.settings
    }

    /// The pool of connections to one upstream origin (made on first use;
    /// called when a runtime is built, not per request).
    pub fn upstream(&self, scheme: &Scheme, authority: &Authority) -> Upstream {
        let mut pools = self
            .shared
            .pools
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let pool = pools
            .entry((scheme.clone(), authority.clone()))
            .or_insert_with(|| {
                Arc::new(Pool {
                    origin: Uri::builder()
                        .scheme(scheme.clone())
                        .authority(authority.clone())
                        .path_and_query("/")
                        .build()
                        .unwrap_or_default(),
                    idle: (0..=crate::workers::default_count())
                        .map(|_| Mutex::new(IdleStack::default()))
                        .collect(),
                    slots: (0..=crate::workers::default_count())
                        .map(|_| Semaphore::new(self.shared.settings.max_requests_per_worker))
                        .collect(),
                })
            })
            .clone();
        Upstream {
            shared: self.shared.clone(),
            pool,
        }
    }
}

/// One upstream origin's connections, and the means to make more.
#[derive(Clone)]
pub struct Upstream {
    shared: Arc<Shared>,
    pool: Arc<Pool>,
}

struct Pool {
    /// `scheme://authority/`, what the connector dials.
    origin: Uri,
    /// One idle stack per worker thread (see [`crate::workers`]), indexed by
    /// [`crate::workers::current`]: a connection is registered with the
    /// I/O driver of the thread that opened it and stays on that thread.
    /// Each lock is taken only by its own thread and the sweeper.
    idle: Box<[Mutex<IdleStack>]>,
    /// Per worker thread, like `idle`: the slots for requests waiting for
    /// a response head. Held from before checkout until the head arrives,
    /// never while a body streams.
    slots: Box<[Semaphore]>,
}

impl Pool {
    /// The calling thread's idle stack.
    fn local(&self) -> &Mutex<IdleStack> {
        &self.idle[crate::workers::current() % self.idle.len()]
    }

    /// The calling thread's request slots.
    fn local_slots(&self) -> &Semaphore {
        &self.slots[crate::workers::current() % self.slots.len()]
    }
}

/// One worker's idle connections to one upstream. Most recently used last:
/// the hot connections stay hot, and the bottom ones are those no request
/// needed for longest.
#[derive(Default)]
struct IdleStack {
    conns: Vec<Idle>,
    /// The fewest connections the stack held since the last sweep: that
    /// many were not needed by any request in the interval (the surplus).
    low_water: usize,
}

struct Idle {
    conn: Box<Conn>,
    since: Instant,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("origin", &self.pool.origin)
            .finish_non_exhaustive()
    }
}

impl Upstream {
    /// Sends the request; waits at most `response_timeout` for the response
    /// head. The body streams afterwards, without a deadline.
    ///
    /// A named future rather than an `async fn`: each `async` layer that
    /// takes a future by value stores it twice, and this one sits in every
    /// client connection's request future.
    pub fn send(
        &self,
        request: Request<Incoming>,
    ) -> WithinResponseTimeout<
        impl Future<Output = Result<Response<UpstreamBody>, UpstreamError>> + '_,
    > {
        self.within_response_timeout(self.exchange(request))
    }

    /// `exchange`, or `Timeout` once `response_timeout` has passed.
    fn within_response_timeout<F: Future>(&self, exchange: F) -> WithinResponseTimeout<F> {
        WithinResponseTimeout {
            inner: tokio::time::timeout(self.shared.settings.response_timeout, exchange),
        }
    }

    /// An `async` block rather than an `async fn`, which would store the
    /// request twice: its argument and its local copy.
    #[allow(clippy::manual_async_fn)]
    fn exchange(
        &self,
        mut request: Request<Incoming>,
    ) -> impl Future<Output = Result<Response<UpstreamBody>, UpstreamError>> + '_ {
        async move {
            let _slot = self.slot().await;
            // A pooled connection the upstream closed meanwhile refuses the
            // request before sending any of it; that one is retried on a new
            // connection. Once bytes have left, nothing is retried.
            while let Some(mut conn) = self.checkout().await {
                match conn.send(request).await {
                    Ok(response) => return Ok(self.response(response, conn)),
                    Err(mut e) => match e.take_message() {
                        Some(unsent) => request = unsent,
                        None => return Err(protocol_error(&e.into_error())),
                    },
                }
            }
            // Boxed: the connect future is large and rare; the pooled path
            // should not carry (and move) it on every request.
            let mut conn = Box::pin(self.connect()).await?;
            match conn.send(request).await {
                Ok(response) => Ok(self.response(response, conn)),
                Err(e) => Err(protocol_error(&e.into_error())),
            }
        }
    }

    fn response(&self, response: Response<Incoming>, conn: Box<Conn>) -> Response<UpstreamBody> {
        response.map(|incoming| UpstreamBody {
            incoming,
            conn: Some(conn),
            pool: self.pool.clone(),
        })
    }

    /// A slot for one more request waiting for a response head on this
    /// worker: at once when one is free, else in turn (FIFO), within the
    /// caller's `response_timeout`. Under overload, requests wait here
    /// rather than each holding an upstream connection (and its buffers)
    /// whose response the busy worker has not yet read.
    async fn slot(&self) -> Option<SemaphorePermit<'_>> {
        let slots = self.pool.local_slots();
        match slots.try_acquire() {
            Ok(slot) => Some(slot),
            Err(_) => {
                self.shared.metrics.upstream_request_queued();
                // The semaphore is never closed.
                slots.acquire().await.ok()
            }
        }
    }

    /// A pooled connection that is open and ready for a request, if any.
    async fn checkout(&self) -> Option<Box<Conn>> {
        loop {
            let mut conn = {
                let mut stack = self
                    .pool
                    .local()
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                let idle = stack.conns.pop()?;
                stack.low_water = stack.low_water.min(stack.conns.len());
                idle.conn
            };
            if poll_fn(|cx| Poll::Ready(conn.ready_now(cx))).await {
                return Some(conn);
            }
        }
    }

    async fn connect(&self) -> Result<Box<Conn>, UpstreamError> {
        let io = self
            .shared
            .connector
            .clone()
            .call(self.pool.origin.clone())
            .await
            .map_err(|e| {
                tracing::debug!(error = %e, origin = %self.pool.origin, "upstream connect failed");
                UpstreamError::Connect
            })?;
        let (sender, connection) = self.shared.http1.handshake(io).await.map_err(|e| {
            tracing::debug!(error = %e, "upstream handshake failed");
            UpstreamError::Connect
        })?;
        Ok(Box::new(Conn {
            sender,
            connection,
            closed: false,
            _counted: Counted::new(&self.shared.metrics),
        }))
    }

    /// Sends a request that asks for a protocol upgrade, on a new
    /// connection run as its own task so that it survives the `101`.
    pub async fn send_upgrade(
        &self,
        request: Request<Incoming>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let exchange = async {
            let _slot = self.slot().await;
            let Conn {
                mut sender,
                connection,
                ..
            } = *self.connect().await?;
            tokio::spawn(async move {
                if let Err(e) = connection.with_upgrades().await {
                    tracing::debug!(error = %e, "upstream upgrade connection ended");
                }
            });
            sender
                .send_request(request)
                .await
                .map_err(|e| protocol_error(&e))
        };
        self.within_response_timeout(exchange).await
    }
}

pin_project_lite::pin_project! {
    /// An upstream exchange bounded by `response_timeout`.
    pub struct WithinResponseTimeout<F> {
        #[pin]
        inner: tokio::time::Timeout<F>,
    }
}

impl<F, T> Future for WithinResponseTimeout<F>
where
    F: Future<Output = Result<T, UpstreamError>>,
{
    type Output = Result<T, UpstreamError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.project()
            .inner
            .poll(cx)
            .map(|result| result.unwrap_or(Err(UpstreamError::Timeout)))
    }
}

fn protocol_error(e: &hyper::Error) -> UpstreamError {
    tracing::debug!(error = %e, "upstream request failed");
    UpstreamError::Protocol
}

/// One HTTP/1.1 connection: the request sender and the connection state
/// machine, which whoever holds it must poll.
struct Conn {
    sender: http1::SendRequest<Incoming>,
    connection: http1::Connection<Io, Incoming>,
    /// The connection future has finished (closed or failed).
    closed: bool,
    _counted: Counted,
}

/// Counts a pooled connection in `scopegate_upstream_connections` while it
/// exists (an upgrade's connection stops counting when it becomes a tunnel).
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

impl Conn {
    /// Reads and writes whatever the connection can right now.
    fn drive(&mut self, cx: &mut Context<'_>) {
        if self.closed {
            return;
        }
        if let Poll::Ready(result) = Pin::new(&mut self.connection).poll(cx) {
            self.closed = true;
            if let Err(e) = result {
                tracing::debug!(error = %e, "upstream connection ended");
            }
        }
    }

    /// Has neither side closed it (as far as the last `drive` saw)?
    fn is_open(&self) -> bool {
        !self.closed && !self.sender.is_closed()
    }

    /// Is the connection open and free for the next request?
    fn ready_now(&mut self, cx: &mut Context<'_>) -> bool {
        self.drive(cx);
        self.is_open() && matches!(self.sender.poll_ready(cx), Poll::Ready(Ok(())))
    }

    /// Sends `request` and waits for the response head, driving the
    /// connection meanwhile. hyper takes the request at once, and its
    /// future holds no borrow of the sender.
    fn send(
        &mut self,
        request: Request<Incoming>,
    ) -> Sending<'_, impl Future<Output = Result<Response<Incoming>, TrySendError>>> {
        let response = self.sender.try_send_request(request);
        Sending {
            conn: self,
            response,
        }
    }
}

pin_project_lite::pin_project! {
    /// A response head on its way, and the connection it comes on, which
    /// must be polled for it to arrive.
    struct Sending<'c, F> {
        conn: &'c mut Conn,
        #[pin]
        response: F,
    }
}

impl<F: Future> Future for Sending<'_, F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        this.conn.drive(cx);
        this.response.poll(cx)
    }
}

/// An upstream response body. Polling it also drives the connection it
/// arrives on; once it has ended, the connection goes back to its pool.
pub struct UpstreamBody {
    incoming: Incoming,
    /// `None` once released (or when it must not be reused). Boxed, as
    /// everywhere: responses and bodies move, and a connection is large.
    conn: Option<Box<Conn>>,
    pool: Arc<Pool>,
}

impl std::fmt::Debug for UpstreamBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamBody").finish_non_exhaustive()
    }
}

impl UpstreamBody {
    /// Puts the connection back on its pool's idle stack (the body is done).
    fn release(&mut self) {
        let Some(conn) = self.conn.take() else {
            return;
        };
        if !conn.is_open() {
            return;
        }
        let mut stack = self
            .pool
            .local()
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if stack.conns.len() < MAX_IDLE_PER_UPSTREAM {
            stack.conns.push(Idle {
                conn,
                since: Instant::now(),
            });
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        if let Some(conn) = &mut this.conn {
            conn.drive(cx);
        }
        let frame = Pin::new(&mut this.incoming).poll_frame(cx);
        match &frame {
            Poll::Ready(None) => this.release(),
            Poll::Ready(Some(Ok(_))) if this.incoming.is_end_stream() => this.release(),
            Poll::Ready(Some(Err(_))) => this.conn = None,
            _ => {}
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.incoming.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.incoming.size_hint()
    }
}

impl Drop for UpstreamBody {
    /// A body dropped before its end leaves the connection mid-response:
    /// that connection is closed, not pooled.
    fn drop(&mut self) {
        if self.incoming.is_end_stream() {
            self.release();
        }
    }
}

/// Closes idle connections that outlived `idle_timeout`, that the upstream
/// closed, or that no request needed since the previous sweep (the stack
/// never went below them: HAProxy's idle-connection purge, so a burst's
/// connections do not stay for `idle_timeout`), until the client is dropped.
async fn sweep(shared: Weak<Shared>) {
    let every = match shared.upgrade() {
        Some(s) => {
            (s.settings.idle_timeout / 2).clamp(Duration::from_millis(50), Duration::from_secs(5))
        }
        None => return,
    };
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let pools: Vec<Arc<Pool>> = shared
            .pools
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect();
        let timeout = shared.settings.idle_timeout;
        drop(shared);
        poll_fn(|cx| {
            for stack in pools.iter().flat_map(|p| p.idle.iter()) {
                let mut stack = stack.lock().unwrap_or_else(PoisonError::into_inner);
                let surplus = stack.low_water.min(stack.conns.len());
                stack.conns.drain(..surplus);
                stack.conns.retain_mut(|i| {
                    i.since.elapsed() < timeout && {
                        i.conn.drive(cx);
                        i.conn.is_open()
                    }
                });
                stack.low_water = stack.conns.len();
            }
            Poll::Ready(())
        })
        .await;
    }
}
