//! A real identity provider on loopback: OIDC discovery, a JWKS that tests
//! rotate while it runs, RFC 7662 introspection with client credentials, and
//! failure modes (down on the same port, garbage, slow, status, huge).

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{header, Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use super::serve::{self, Connections};

/// How the IdP answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Normal answers.
    Up,
    /// Accept, then close the connection without answering (the listener
    /// stays open; for "connection refused" use [`Idp::down`]).
    Down,
    /// `200`, `Content-Type: application/json`, a body that is not JSON.
    Garbage,
    /// Wait this long (tokio time), then answer normally.
    Slow(Duration),
    /// Answer with this status and a small JSON error body.
    Status(u16),
    /// `200` with a 10 MB (valid JSON) body.
    Huge,
}

/// The endpoints, for per-endpoint modes ([`Idp::set_mode_for`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Endpoint {
    Discovery,
    Jwks,
    Introspection,
}

/// How an introspection caller presented its client credentials.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientAuth {
    /// `Authorization: Basic` (client_secret_basic).
    Basic { client_id: String, secret: String },
    /// `client_id` and `client_secret` in the form (client_secret_post).
    Post { client_id: String, secret: String },
    /// Neither.
    None,
}

/// One request the introspection endpoint received.
#[derive(Clone, Debug)]
pub struct IntrospectionCall {
    pub auth: ClientAuth,
    /// The `token` form field.
    pub token: Option<String>,
    /// Every form field, decoded, in order.
    pub form: Vec<(String, String)>,
    pub content_type: Option<String>,
    /// Whether the credentials matched (if not, the answer was 401).
    pub authorized: bool,
}

/// Size of the [`Mode::Huge`] body.
pub const HUGE_BODY_BYTES: usize = 10 * 1024 * 1024;

struct State {
    issuer: String,
    keys: Mutex<Vec<Value>>,
    mode: Mutex<Mode>,
    endpoint_modes: Mutex<HashMap<Endpoint, Mode>>,
    discovery_override: Mutex<Option<Value>>,
    introspection: Mutex<HashMap<String, Value>>,
    credentials: Mutex<(String, String)>,
    introspection_calls: Mutex<Vec<IntrospectionCall>>,
    discovery_requests: AtomicUsize,
    jwks_requests: AtomicUsize,
    introspection_requests: AtomicUsize,
    changed: Notify,
}

/// The IdP server. Dropping it stops it.
pub struct Idp {
    addr: SocketAddr,
    state: Arc<State>,
    accept: Mutex<Option<JoinHandle<()>>>,
    conns: Connections,
}

impl Idp {
    /// Default introspection client id.
    pub const CLIENT_ID: &'static str = "scopegate";
    /// Default introspection client secret.
    pub const CLIENT_SECRET: &'static str = "introspection-secret";

    /// Binds `127.0.0.1:0` and serves with no keys, mode `Up`.
    pub async fn start() -> Idp {
        let listener = serve::bind_loopback(0).expect("bind IdP");
        let addr = listener.local_addr().expect("IdP address");
        let state = Arc::new(State {
            issuer: format!("http://{addr}"),
            keys: Mutex::new(Vec::new()),
            mode: Mutex::new(Mode::Up),
            endpoint_modes: Mutex::new(HashMap::new()),
            discovery_override: Mutex::new(None),
            introspection: Mutex::new(HashMap::new()),
            credentials: Mutex::new((Self::CLIENT_ID.into(), Self::CLIENT_SECRET.into())),
            introspection_calls: Mutex::new(Vec::new()),
            discovery_requests: AtomicUsize::new(0),
            jwks_requests: AtomicUsize::new(0),
            introspection_requests: AtomicUsize::new(0),
            changed: Notify::new(),
        });
        let idp = Idp {
            addr,
            state,
            accept: Mutex::new(None),
            conns: Connections::default(),
        };
        idp.spawn(listener);
        idp
    }

    /// [`Idp::start`], then [`Idp::set_keys`] with these keys' public JWKs.
    pub async fn start_with_keys(keys: &[&super::keys::TestKey]) -> Idp {
        let idp = Idp::start().await;
        idp.set_keys(keys.iter().map(|k| k.public_jwk()).collect());
        idp
    }

    fn spawn(&self, listener: tokio::net::TcpListener) {
        let state = Arc::clone(&self.state);
        let handle = serve::spawn_accept_loop(listener, Arc::clone(&self.conns), move |stream| {
            let state = Arc::clone(&state);
            async move {
                if state.mode(None) == Mode::Down {
                    return; // dropped unanswered
                }
                let service = service_fn(move |req| handle(Arc::clone(&state), req));
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            }
        });
        *self.accept.lock().expect("lock") = Some(handle);
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT` — the `issuer` of the discovery document.
    pub fn issuer(&self) -> String {
        self.state.issuer.clone()
    }

    pub fn discovery_url(&self) -> String {
        format!("{}/.well-known/openid-configuration", self.state.issuer)
    }

    pub fn jwks_uri(&self) -> String {
        format!("{}/jwks", self.state.issuer)
    }

    pub fn introspection_endpoint(&self) -> String {
        format!("{}/introspect", self.state.issuer)
    }

    /// Replaces the served key set (`{"keys": keys}`) at once.
    pub fn set_keys(&self, keys: Vec<Value>) {
        *self.state.keys.lock().expect("lock") = keys;
    }

    /// The key set currently served.
    pub fn keys(&self) -> Vec<Value> {
        self.state.keys.lock().expect("lock").clone()
    }

    /// Serve this discovery document instead of the generated one (`None`
    /// restores it), e.g. with a different `issuer` or `jwks_uri`.
    pub fn set_discovery(&self, document: Option<Value>) {
        *self.state.discovery_override.lock().expect("lock") = document;
    }

    /// Mode of every endpoint without its own mode.
    pub fn set_mode(&self, mode: Mode) {
        *self.state.mode.lock().expect("lock") = mode;
    }

    /// Mode of one endpoint; `None` makes it follow [`Idp::set_mode`] again.
    pub fn set_mode_for(&self, endpoint: Endpoint, mode: Option<Mode>) {
        let mut modes = self.state.endpoint_modes.lock().expect("lock");
        match mode {
            Some(mode) => modes.insert(endpoint, mode),
            None => modes.remove(&endpoint),
        };
    }

    /// Stops accepting: the listener is closed and every open connection
    /// dropped when this returns, so connecting is refused.
    pub async fn down(&self) {
        let accept = self.accept.lock().expect("lock").take();
        serve::shut_down(accept, &self.conns).await;
    }

    /// Serves again on the same port (no-op when already up).
    pub async fn up(&self) {
        if self.accept.lock().expect("lock").is_some() {
            return;
        }
        let listener = serve::bind_loopback(self.addr.port()).expect("rebind IdP on its port");
        self.spawn(listener);
    }

    /// Sets the introspection answer for `token` (unknown tokens get
    /// `{"active": false}`).
    pub fn set_introspection(&self, token: &str, answer: Value) {
        self.state
            .introspection
            .lock()
            .expect("lock")
            .insert(token.to_owned(), answer);
    }

    /// The client credentials introspection accepts (default
    /// [`Idp::CLIENT_ID`] / [`Idp::CLIENT_SECRET`]).
    pub fn set_client_credentials(&self, client_id: &str, secret: &str) {
        *self.state.credentials.lock().expect("lock") = (client_id.to_owned(), secret.to_owned());
    }

    /// Every introspection request received, in order.
    pub fn introspection_calls(&self) -> Vec<IntrospectionCall> {
        self.state.introspection_calls.lock().expect("lock").clone()
    }

    /// Requests that reached `/jwks` (any mode but a closed listener).
    pub fn jwks_requests(&self) -> usize {
        self.state.jwks_requests.load(Ordering::SeqCst)
    }

    pub fn discovery_requests(&self) -> usize {
        self.state.discovery_requests.load(Ordering::SeqCst)
    }

    pub fn introspection_requests(&self) -> usize {
        self.state.introspection_requests.load(Ordering::SeqCst)
    }

    /// Resolves once `/jwks` has been asked at least `n` times in total.
    pub async fn wait_jwks_requests(&self, n: usize) {
        self.wait_until(|| self.jwks_requests() >= n).await;
    }

    pub async fn wait_discovery_requests(&self, n: usize) {
        self.wait_until(|| self.discovery_requests() >= n).await;
    }

    pub async fn wait_introspection_requests(&self, n: usize) {
        self.wait_until(|| self.introspection_requests() >= n).await;
    }

    async fn wait_until(&self, done: impl Fn() -> bool) {
        loop {
            // Created before the check, so a request in between still wakes us.
            let changed = self.state.changed.notified();
            if done() {
                return;
            }
            changed.await;
        }
    }
}

impl Drop for Idp {
    fn drop(&mut self) {
        if let Some(accept) = self.accept.lock().expect("lock").take() {
            accept.abort();
        }
        self.conns.lock().expect("lock").abort_all();
    }
}

impl State {
    fn mode(&self, endpoint: Option<Endpoint>) -> Mode {
        if let Some(endpoint) = endpoint {
            if let Some(mode) = self.endpoint_modes.lock().expect("lock").get(&endpoint) {
                return *mode;
            }
        }
        *self.mode.lock().expect("lock")
    }

    fn count(&self, endpoint: Endpoint) {
        let counter = match endpoint {
            Endpoint::Discovery => &self.discovery_requests,
            Endpoint::Jwks => &self.jwks_requests,
            Endpoint::Introspection => &self.introspection_requests,
        };
        counter.fetch_add(1, Ordering::SeqCst);
        self.changed.notify_waiters();
    }
}

type Reply = Result<Response<Full<Bytes>>, io::Error>;

async fn handle(state: Arc<State>, req: Request<Incoming>) -> Reply {
    let endpoint = match req.uri().path() {
        "/.well-known/openid-configuration" => Endpoint::Discovery,
        "/jwks" => Endpoint::Jwks,
        "/introspect" => Endpoint::Introspection,
        _ => return Ok(json_response(404, &json!({"error": "not_found"}))),
    };
    state.count(endpoint);
    match state.mode(Some(endpoint)) {
        Mode::Up => {}
        Mode::Down => return Err(serve::drop_connection()),
        Mode::Slow(delay) => tokio::time::sleep(delay).await,
        Mode::Garbage => {
            return Ok(response(
                200,
                "application/json",
                Bytes::from_static(b"<html>this is not json"),
            ))
        }
        Mode::Status(status) => {
            return Ok(json_response(status, &json!({"error": "forced_status"})))
        }
        Mode::Huge => {
            let mut body = String::with_capacity(HUGE_BODY_BYTES + 32);
            body.push_str(r#"{"keys":[],"padding":""#);
            body.extend(std::iter::repeat_n('a', HUGE_BODY_BYTES));
            body.push_str("\"}");
            return Ok(response(200, "application/json", Bytes::from(body)));
        }
    }
    match endpoint {
        Endpoint::Discovery if req.method() == Method::GET => {
            let document = state
                .discovery_override
                .lock()
                .expect("lock")
                .clone()
                .unwrap_or_else(|| {
                    json!({
                        "issuer": state.issuer,
                        "jwks_uri": format!("{}/jwks", state.issuer),
                        "introspection_endpoint": format!("{}/introspect", state.issuer),
                        "response_types_supported": ["code"],
                        "subject_types_supported": ["public"],
                        "id_token_signing_alg_values_supported": ["RS256", "ES256"],
                    })
                });
            Ok(json_response(200, &document))
        }
        Endpoint::Jwks if req.method() == Method::GET => {
            let keys = state.keys.lock().expect("lock").clone();
            Ok(json_response(200, &json!({ "keys": keys })))
        }
        Endpoint::Introspection if req.method() == Method::POST => introspect(&state, req).await,
        _ => Ok(json_response(405, &json!({"error": "method_not_allowed"}))),
    }
}

async fn introspect(state: &State, req: Request<Incoming>) -> Reply {
    let content_type = header_str(&req, header::CONTENT_TYPE);
    let basic = header_str(&req, header::AUTHORIZATION).and_then(|v| parse_basic(&v));
    let body = req.into_body().collect().await.map_err(io::Error::other)?;
    let form = parse_form(&body.to_bytes());
    let field = |name: &str| form.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    let auth = match (basic, field("client_id"), field("client_secret")) {
        (Some((client_id, secret)), _, _) => ClientAuth::Basic { client_id, secret },
        (None, Some(client_id), Some(secret)) => ClientAuth::Post { client_id, secret },
        _ => ClientAuth::None,
    };
    let (want_id, want_secret) = state.credentials.lock().expect("lock").clone();
    let authorized = match &auth {
        ClientAuth::Basic { client_id, secret } | ClientAuth::Post { client_id, secret } => {
            *client_id == want_id && *secret == want_secret
        }
        ClientAuth::None => false,
    };
    let token = field("token");
    state
        .introspection_calls
        .lock()
        .expect("lock")
        .push(IntrospectionCall {
            auth,
            token: token.clone(),
            form: form.clone(),
            content_type,
            authorized,
        });
    if !authorized {
        let mut resp = json_response(401, &json!({"error": "invalid_client"}));
        resp.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Basic realm=\"idp\""),
        );
        return Ok(resp);
    }
    let answer = token
        .and_then(|t| state.introspection.lock().expect("lock").get(&t).cloned())
        .unwrap_or_else(|| json!({"active": false}));
    Ok(json_response(200, &answer))
}

fn header_str(req: &Request<Incoming>, name: header::HeaderName) -> Option<String> {
    req.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// `Basic base64(id:secret)`, each half form-urlencoded per RFC 6749 2.3.1.
fn parse_basic(value: &str) -> Option<(String, String)> {
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = STANDARD.decode(encoded.trim()).ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (id, secret) = decoded.split_once(':')?;
    Some((form_decode(id), form_decode(secret)))
}

/// `application/x-www-form-urlencoded` pairs.
pub fn parse_form(body: &[u8]) -> Vec<(String, String)> {
    String::from_utf8_lossy(body)
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (form_decode(k), form_decode(v))
        })
        .collect()
}

fn form_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = s
                    .get(i + 1..i + 3)
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn response(status: u16, content_type: &str, body: Bytes) -> Response<Full<Bytes>> {
    Response::builder()
        .status(StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header(header::CONTENT_TYPE, content_type)
        .body(Full::new(body))
        .expect("valid response")
}

fn json_response(status: u16, body: &Value) -> Response<Full<Bytes>> {
    response(status, "application/json", Bytes::from(body.to_string()))
}
