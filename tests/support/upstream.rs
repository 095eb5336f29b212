//! The upstream behind the gateway: records every request it receives
//! (method, target as received, headers, body as it streams in) and answers
//! by mode — JSON echo, slow, reset, garbage, a status, a streamed body — and
//! echoes bytes over WebSocket-style upgrades.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{header, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Map, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinHandle;

use super::serve::{self, Connections};

/// How the upstream answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// `200`, `application/json`: `{"method", "path", "headers", "body_len"}`.
    Echo,
    /// Wait this long (tokio time) before the response headers, then echo.
    Slow(Duration),
    /// Read the request head, then close the socket with RST, unanswered.
    Reset,
    /// Read the request head, write `not http\r\n\r\n` and close.
    Garbage,
    /// The echo body with this status.
    Status(u16),
    /// `200`, chunked: `chunks` pieces `chunk {i}\n`, the first at once, then
    /// one every `interval` (tokio time).
    StreamBody { chunks: usize, interval: Duration },
    /// `200`, chunked, body pieces sent by the test through
    /// [`Upstream::stream_sender`]; the body ends when the sender is dropped.
    StreamManual,
}

/// One request as the upstream saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordedRequest {
    pub method: String,
    /// The request target's path and query as received (for an absolute-form
    /// target, without scheme and authority; see `uri`).
    pub path_and_query: String,
    /// The whole request target as hyper parsed it.
    pub uri: String,
    /// `HTTP/1.1`, `HTTP/1.0`.
    pub version: String,
    /// Lowercase names. Order: names in order of first appearance, each
    /// name's repeated values together in the order received (hyper's
    /// `HeaderMap` order; raw-mode requests keep exact wire order and case).
    pub headers: Vec<(String, String)>,
    /// The same headers in exact wire order with their original spelling,
    /// cut from the bytes read off the socket (empty if the head could not
    /// be found there, e.g. bare-LF line endings).
    pub raw_headers: Vec<(String, String)>,
    /// The body received so far (complete once `body_complete`).
    pub body: Vec<u8>,
    pub body_complete: bool,
    pub peer: SocketAddr,
}

impl RecordedRequest {
    /// First value of `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Every value of `name` (case-insensitive), in order.
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// Whether any header name equals `name` ignoring case.
    pub fn has_header(&self, name: &str) -> bool {
        self.header(name).is_some()
    }

    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

struct State {
    mode: Mutex<Mode>,
    requests: Mutex<Vec<RecordedRequest>>,
    response_headers: Mutex<Vec<(String, String)>>,
    manual_stream: Mutex<Option<mpsc::Sender<Bytes>>>,
    changed: Notify,
}

impl State {
    fn mode(&self) -> Mode {
        *self.mode.lock().expect("lock")
    }

    fn record(&self, request: RecordedRequest) -> usize {
        let mut requests = self.requests.lock().expect("lock");
        requests.push(request);
        self.changed.notify_waiters();
        requests.len() - 1
    }

    fn update(&self, index: usize, edit: impl FnOnce(&mut RecordedRequest)) {
        edit(&mut self.requests.lock().expect("lock")[index]);
        self.changed.notify_waiters();
    }
}

/// The upstream server. Dropping it stops it.
pub struct Upstream {
    addr: SocketAddr,
    state: Arc<State>,
    accept: JoinHandle<()>,
    conns: Connections,
}

impl Upstream {
    /// Binds `127.0.0.1:0`, mode [`Mode::Echo`].
    pub async fn start() -> Upstream {
        let listener = serve::bind_loopback(0).expect("bind upstream");
        let addr = listener.local_addr().expect("upstream address");
        let state = Arc::new(State {
            mode: Mutex::new(Mode::Echo),
            requests: Mutex::new(Vec::new()),
            response_headers: Mutex::new(Vec::new()),
            manual_stream: Mutex::new(None),
            changed: Notify::new(),
        });
        let conns = Connections::default();
        let accept_state = Arc::clone(&state);
        let accept = serve::spawn_accept_loop(listener, Arc::clone(&conns), move |stream| {
            serve_connection(Arc::clone(&accept_state), stream)
        });
        Upstream {
            addr,
            state,
            accept,
            conns,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Changes the mode for the next request. Switching to `Reset` or
    /// `Garbage` also closes every open connection, so a client's pooled
    /// keep-alive connection cannot dodge the new behaviour.
    pub async fn set_mode(&self, mode: Mode) {
        *self.state.mode.lock().expect("lock") = mode;
        if matches!(mode, Mode::Reset | Mode::Garbage) {
            serve::abort_connections(&self.conns).await;
        }
    }

    /// Extra headers added to every hyper-served response (e.g. hop-by-hop
    /// headers the gateway must drop).
    pub fn set_response_headers(&self, headers: Vec<(String, String)>) {
        *self.state.response_headers.lock().expect("lock") = headers;
    }

    /// Every request received so far, in arrival order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.state.requests.lock().expect("lock").clone()
    }

    pub fn last(&self) -> Option<RecordedRequest> {
        self.state.requests.lock().expect("lock").last().cloned()
    }

    pub fn count(&self) -> usize {
        self.state.requests.lock().expect("lock").len()
    }

    pub fn clear(&self) {
        self.state.requests.lock().expect("lock").clear();
    }

    /// Resolves once `done(requests)` holds; re-checked on every new request
    /// and every body piece received.
    pub async fn wait_until(&self, done: impl Fn(&[RecordedRequest]) -> bool) {
        loop {
            let changed = self.state.changed.notified();
            if done(&self.state.requests.lock().expect("lock")) {
                return;
            }
            changed.await;
        }
    }

    /// Resolves once at least `n` requests arrived (headers; bodies may still
    /// be streaming).
    pub async fn wait_for_requests(&self, n: usize) {
        self.wait_until(|r| r.len() >= n).await;
    }

    /// In [`Mode::StreamManual`]: resolves once a streamed response has
    /// started and returns the sender of its body pieces (drop it to end the
    /// body).
    pub async fn stream_sender(&self) -> mpsc::Sender<Bytes> {
        loop {
            let changed = self.state.changed.notified();
            if let Some(sender) = self.state.manual_stream.lock().expect("lock").take() {
                return sender;
            }
            changed.await;
        }
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.accept.abort();
        self.conns.lock().expect("lock").abort_all();
    }
}

async fn serve_connection(state: Arc<State>, stream: TcpStream) {
    let peer = stream
        .peer_addr()
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
    if let mode @ (Mode::Reset | Mode::Garbage) = state.mode() {
        return misbehave(&state, stream, peer, mode).await;
    }
    let tap = Tap::default();
    let io = TapIo {
        inner: stream,
        tap: Arc::clone(&tap),
    };
    let service = service_fn(move |req| handle(Arc::clone(&state), peer, Arc::clone(&tap), req));
    // More header fields than the gateway accepts, so its limit is what tests see.
    let _ = http1::Builder::new()
        .max_headers(200)
        .keep_alive(true)
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades()
        .await;
}

/// Reset / Garbage on a fresh connection: read the head raw, record it, then
/// misbehave.
async fn misbehave(state: &State, mut stream: TcpStream, peer: SocketAddr, mode: Mode) {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 1 << 20 {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    if let Some(request) = parse_raw_head(&head, peer) {
        state.record(request);
    }
    if mode == Mode::Garbage {
        let _ = stream.write_all(b"not http\r\n\r\n").await;
        let _ = stream.shutdown().await;
    } else {
        let _ = stream.set_zero_linger();
    }
    drop(stream);
}

fn parse_raw_head(head: &[u8], peer: SocketAddr) -> Option<RecordedRequest> {
    let text = String::from_utf8_lossy(head);
    let text = text.split("\r\n\r\n").next()?;
    let mut lines = text.split("\r\n");
    let mut request_line = lines.next()?.split(' ');
    let method = request_line.next()?.to_owned();
    let target = request_line.next()?.to_owned();
    let version = request_line.next().unwrap_or_default().to_owned();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.to_owned(), v.trim().to_owned()))
        .collect();
    Some(RecordedRequest {
        method,
        path_and_query: target.clone(),
        uri: target,
        version,
        raw_headers: headers.clone(),
        headers,
        body: Vec::new(),
        body_complete: false,
        peer,
    })
}

type ResBody = BoxBody<Bytes, Infallible>;

async fn handle(
    state: Arc<State>,
    peer: SocketAddr,
    tap: Tap,
    mut req: Request<Incoming>,
) -> Result<Response<ResBody>, io::Error> {
    let headers: Vec<(String, String)> = req
        .headers()
        .iter()
        .map(|(n, v)| {
            (
                n.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let path_and_query = req
        .uri()
        .path_and_query()
        .map(|pq| pq.as_str().to_owned())
        .unwrap_or_default();
    let index = state.record(RecordedRequest {
        method: req.method().as_str().to_owned(),
        path_and_query: path_and_query.clone(),
        uri: req.uri().to_string(),
        version: format!("{:?}", req.version()),
        headers: headers.clone(),
        raw_headers: take_raw_head(&tap, req.method().as_str(), &req.uri().to_string()),
        body: Vec::new(),
        body_complete: false,
        peer,
    });

    let mode = state.mode();
    match mode {
        Mode::Reset | Mode::Garbage => return Err(serve::drop_connection()),
        Mode::Slow(delay) => tokio::time::sleep(delay).await,
        _ => {}
    }

    if is_websocket_upgrade(&req) {
        let on_upgrade = hyper::upgrade::on(&mut req);
        state.update(index, |r| r.body_complete = true);
        tokio::spawn(async move {
            if let Ok(upgraded) = on_upgrade.await {
                let (mut read, mut write) = tokio::io::split(TokioIo::new(upgraded));
                let _ = tokio::io::copy(&mut read, &mut write).await;
                let _ = write.shutdown().await;
            }
        });
        let mut resp = Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header(header::CONNECTION, "upgrade")
            .header(header::UPGRADE, "websocket")
            .body(Full::new(Bytes::new()).boxed())
            .expect("valid response");
        add_headers(&state, &mut resp);
        return Ok(resp);
    }

    // Read the body piece by piece so tests can watch it arrive.
    let mut body = req.into_body();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(io::Error::other)?;
        if let Some(data) = frame.data_ref() {
            state.update(index, |r| r.body.extend_from_slice(data));
        }
    }
    let body_len = {
        let mut requests = state.requests.lock().expect("lock");
        requests[index].body_complete = true;
        requests[index].body.len()
    };
    state.changed.notify_waiters();

    let mut resp = match mode {
        Mode::StreamBody { chunks, interval } => {
            let (tx, rx) = mpsc::channel(1);
            tokio::spawn(async move {
                for i in 0..chunks {
                    if i > 0 {
                        tokio::time::sleep(interval).await;
                    }
                    if tx.send(Bytes::from(format!("chunk {i}\n"))).await.is_err() {
                        return;
                    }
                }
            });
            streamed(rx)
        }
        Mode::StreamManual => {
            let (tx, rx) = mpsc::channel(16);
            *state.manual_stream.lock().expect("lock") = Some(tx);
            state.changed.notify_waiters();
            streamed(rx)
        }
        _ => {
            let status = match mode {
                Mode::Status(s) => {
                    StatusCode::from_u16(s).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
                }
                _ => StatusCode::OK,
            };
            let mut header_map = Map::new();
            for (name, value) in &headers {
                header_map
                    .entry(name.clone())
                    .or_insert_with(|| Value::Array(Vec::new()))
                    .as_array_mut()
                    .expect("array")
                    .push(value.clone().into());
            }
            let echo = json!({
                "method": req_method_of(&state, index),
                "path": path_and_query,
                "headers": header_map,
                "body_len": body_len,
            });
            Response::builder()
                .status(status)
                .header(header::CONTENT_TYPE, "application/json")
                .body(Full::new(Bytes::from(echo.to_string())).boxed())
                .expect("valid response")
        }
    };
    add_headers(&state, &mut resp);
    Ok(resp)
}

fn req_method_of(state: &State, index: usize) -> String {
    state.requests.lock().expect("lock")[index].method.clone()
}

fn streamed(rx: mpsc::Receiver<Bytes>) -> Response<ResBody> {
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/plain")
        .body(ChannelBody { rx }.boxed())
        .expect("valid response")
}

fn add_headers(state: &State, resp: &mut Response<ResBody>) {
    for (name, value) in state.response_headers.lock().expect("lock").iter() {
        if let (Ok(name), Ok(value)) = (
            header::HeaderName::from_bytes(name.as_bytes()),
            header::HeaderValue::from_str(value),
        ) {
            resp.headers_mut().append(name, value);
        }
    }
}

fn is_websocket_upgrade(req: &Request<Incoming>) -> bool {
    let connection_upgrade = req.headers().get_all(header::CONNECTION).iter().any(|v| {
        v.to_str()
            .unwrap_or_default()
            .split(',')
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
    });
    let upgrade_websocket = req
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("websocket"));
    connection_upgrade && upgrade_websocket
}

/// A response body fed from a channel, one frame per message.
struct ChannelBody {
    rx: mpsc::Receiver<Bytes>,
}

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.rx.poll_recv(cx).map(|m| m.map(|b| Ok(Frame::data(b))))
    }
}

/// Every byte read from one connection that no request has claimed yet.
type Tap = Arc<Mutex<Vec<u8>>>;

/// The socket, copying what it reads into the tap.
struct TapIo {
    inner: TcpStream,
    tap: Tap,
}

impl tokio::io::AsyncRead for TapIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = result {
            let new = &buf.filled()[before..];
            self.tap.lock().expect("lock").extend_from_slice(new);
        }
        result
    }
}

impl tokio::io::AsyncWrite for TapIo {
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

/// Finds this request's head in the tap (by its request line), parses its
/// header lines, and drops everything read up to the head's end.
fn take_raw_head(tap: &Tap, method: &str, target: &str) -> Vec<(String, String)> {
    let mut bytes = tap.lock().expect("lock");
    let find = |hay: &[u8], needle: &[u8]| hay.windows(needle.len()).position(|w| w == needle);
    let line = format!("{method} {target} ");
    let Some(start) =
        find(&bytes, line.as_bytes()).or_else(|| find(&bytes, format!("{method} ").as_bytes()))
    else {
        return Vec::new();
    };
    let Some(len) = find(&bytes[start..], b"\r\n\r\n") else {
        return Vec::new();
    };
    let head = String::from_utf8_lossy(&bytes[start..start + len]).into_owned();
    bytes.drain(..start + len + 4);
    head.split("\r\n")
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.to_owned(), v.trim().to_owned()))
        .collect()
}
