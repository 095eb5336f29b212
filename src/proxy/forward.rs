//! The upstream client: keep-alive HTTP/1.1 connections, pooled per
//! upstream, each driven inside the request that uses it.
//!
//! hyper's pooled client runs every upstream connection as a task of its
//! own, so one forwarded request hops between tasks several times (pool
//! checkout, request hand-off, response head, every body chunk). Here a
//! request checks a connection (`conn::Connection`, which speaks HTTP/1.1
//! through [`super::h1`]) out of its upstream's idle stack, drives it while
//! it waits for the response head, and hands it to the response body, which
//! drives it while the body streams and puts it back on the stack once the
//! body has ended. No connection task, no channel hop: the client
//! connection's task does all of it.
//!
//! Upgrades (`101 Switching Protocols`) need the connection to outlive the
//! response, so an upgrade request gets a fresh connection run by hyper as
//! a task of its own. Idle connections are closed after `idle_timeout` by a
//! sweeper that also notices upstreams closing them first.

use std::collections::HashMap;
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::uri::{Authority, Scheme};
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::sync::{Semaphore, SemaphorePermit};
use tokio::time::Instant;

use super::conn::{self, Connection, Connector};
use super::h1;
use crate::metrics::{Metrics, UpstreamError};

/// Pooled connections are boxed: responses and bodies move, and a
/// connection is large.
type Conn = Box<Connection>;

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
    /// For upgrade requests, which hyper's connection carries on.
    http1: http1::Builder,
    /// One pool per upstream origin, made when a runtime is built.
    pools: Mutex<HashMap<(Scheme, Authority), Arc<Pool>>>,
}

impl UpstreamClient {
    pub fn new(
        settings: ClientSettings,
        metrics: Arc<Metrics>,
    ) -> Result<Self, crate::tls::TlsError> {
        let tls = crate::tls::client_config(settings.ca_file.as_deref())?;
        let connector = Connector::new(tls, settings.connect_timeout);
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
                    scheme: scheme.clone(),
                    authority: authority.clone(),
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
    /// What the connector dials.
    scheme: Scheme,
    authority: Authority,
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
    conn: Conn,
    since: Instant,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("origin", &self.pool.authority)
            .finish_non_exhaustive()
    }
}

impl Upstream {
    /// Sends the request; waits at most `response_timeout` for the response
    /// head: for a request slot, a connection and the head, together. The
    /// body streams afterwards, without a deadline.
    ///
    /// An `async` block rather than an `async fn`, which would store the
    /// request twice: its argument and its local copy.
    #[allow(clippy::manual_async_fn)]
    pub fn send(
        &self,
        request: Request<Incoming>,
    ) -> impl Future<Output = Result<Response<UpstreamBody>, UpstreamError>> + '_ {
        async move {
            let deadline = Instant::now() + self.shared.settings.response_timeout;
            let _slot = self.slot(deadline).await?;
            let (mut conn, mut pooled) = match self.checkout().await {
                Some(mut conn) => {
                    conn.set_response_deadline(deadline);
                    (conn, true)
                }
                // Boxed: the connect future is large and rare; the pooled
                // path should not carry (and move) it on every request.
                None => (Box::pin(self.connect(deadline)).await?, false),
            };
            conn.start(request);
            loop {
                let failed = match response_head(&mut conn).await {
                    Some(Ok(head)) => return Ok(self.response(head, conn)),
                    Some(Err(e)) => e,
                    None => return Err(UpstreamError::Timeout),
                };
                // A pooled connection the upstream closed as the request
                // went out: a request without a body and with an idempotent
                // method is sent once more, on a new connection. Nothing
                // else is retried, and nothing twice.
                let Some(replay) = conn.take_replay().filter(|_| pooled) else {
                    return Err(protocol_error(&failed));
                };
                tracing::debug!(error = %failed, "pooled upstream connection failed; sending again");
                drop(conn);
                conn = Box::pin(self.connect(deadline)).await?;
                conn.start_replay(replay);
                pooled = false;
            }
        }
    }

    fn response(&self, head: Response<()>, conn: Conn) -> Response<UpstreamBody> {
        head.map(|()| UpstreamBody {
            conn: Some(conn),
            pool: self.pool.clone(),
        })
    }

    /// A slot for one more request waiting for a response head on this
    /// worker: at once when one is free, else in turn (FIFO), until
    /// `deadline`. Under overload, requests wait here rather than each
    /// holding an upstream connection (and its buffers) whose response the
    /// busy worker has not yet read.
    async fn slot(&self, deadline: Instant) -> Result<Option<SemaphorePermit<'_>>, UpstreamError> {
        let slots = self.pool.local_slots();
        if let Ok(slot) = slots.try_acquire() {
            return Ok(Some(slot));
        }
        self.shared.metrics.upstream_request_queued();
        match tokio::time::timeout_at(deadline, slots.acquire()).await {
            // The semaphore is never closed.
            Ok(slot) => Ok(slot.ok()),
            Err(_) => Err(UpstreamError::Timeout),
        }
    }

    /// A pooled connection that is open and ready for a request, if any.
    async fn checkout(&self) -> Option<Conn> {
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
            if poll_fn(|cx| Poll::Ready(conn.poll_open(cx))).await {
                return Some(conn);
            }
        }
    }

    /// A new connection, made by `deadline`, whose first response head is
    /// due by then too.
    async fn connect(&self, deadline: Instant) -> Result<Conn, UpstreamError> {
        let stream = tokio::time::timeout_at(deadline, self.connect_stream())
            .await
            .map_err(|_| UpstreamError::Timeout)??;
        Ok(Box::new(Connection::new(
            stream,
            &self.shared.metrics,
            deadline,
        )))
    }

    async fn connect_stream(&self) -> Result<conn::Stream, UpstreamError> {
        let pool = &self.pool;
        self.shared
            .connector
            .connect(&pool.scheme, &pool.authority)
            .await
            .map_err(|e| {
                tracing::debug!(error = %e, scheme = %pool.scheme, authority = %pool.authority, "upstream connect failed");
                UpstreamError::Connect
            })
    }

    /// Sends a request that asks for a protocol upgrade, on a new
    /// connection run as its own task so that it survives the `101`.
    pub async fn send_upgrade(
        &self,
        request: Request<Incoming>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let deadline = Instant::now() + self.shared.settings.response_timeout;
        let exchange = async {
            let _slot = self.slot(deadline).await?;
            let io = TokioIo::new(self.connect_stream().await?);
            let (mut sender, connection) = self.shared.http1.handshake(io).await.map_err(|e| {
                tracing::debug!(error = %e, "upstream handshake failed");
                UpstreamError::Connect
            })?;
            tokio::spawn(async move {
                if let Err(e) = connection.with_upgrades().await {
                    tracing::debug!(error = %e, "upstream upgrade connection ended");
                }
            });
            sender.send_request(request).await.map_err(|e| {
                tracing::debug!(error = %e, "upstream upgrade request failed");
                UpstreamError::Protocol
            })
        };
        tokio::time::timeout_at(deadline, exchange)
            .await
            .unwrap_or(Err(UpstreamError::Timeout))
    }
}

/// The response head of the exchange on `conn`, or `None` once its
/// response deadline has passed.
async fn response_head(conn: &mut Connection) -> Option<Result<Response<()>, h1::Error>> {
    poll_fn(|cx| match conn.poll_head(cx) {
        Poll::Ready(head) => Poll::Ready(Some(head)),
        Poll::Pending => conn.poll_response_deadline(cx).map(|()| None),
    })
    .await
}

fn protocol_error(e: &h1::Error) -> UpstreamError {
    tracing::debug!(error = %e, "upstream request failed");
    UpstreamError::Protocol
}

/// An upstream response body. Polling it also drives the connection it
/// arrives on; once it has ended, the connection goes back to its pool.
pub struct UpstreamBody {
    /// `None` once released, or once it failed.
    conn: Option<Conn>,
    pool: Arc<Pool>,
}

impl std::fmt::Debug for UpstreamBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamBody").finish_non_exhaustive()
    }
}

impl UpstreamBody {
    /// Puts the connection back on its pool's idle stack (the body is
    /// done), unless it cannot carry another request.
    fn release(&mut self) {
        let Some(mut conn) = self.conn.take() else {
            return;
        };
        if !conn.reusable() {
            return;
        }
        conn.idle();
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
    type Error = h1::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, h1::Error>>> {
        let this = &mut *self;
        let Some(conn) = &mut this.conn else {
            return Poll::Ready(None);
        };
        let frame = ready!(conn.poll_frame(cx));
        match &frame {
            Some(Ok(_)) if !conn.response_done() => {}
            Some(Err(_)) => this.conn = None,
            _ => this.release(),
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.conn.as_ref().is_none_or(|c| c.response_done())
    }

    fn size_hint(&self) -> SizeHint {
        self.conn
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), |c| c.size_hint())
    }
}

impl Drop for UpstreamBody {
    /// A body dropped before its end leaves the connection mid-response:
    /// that connection is closed, not pooled.
    fn drop(&mut self) {
        if self.is_end_stream() {
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
                stack
                    .conns
                    .retain_mut(|i| i.since.elapsed() < timeout && i.conn.poll_open(cx));
                stack.low_water = stack.conns.len();
            }
            Poll::Ready(())
        })
        .await;
    }
}
