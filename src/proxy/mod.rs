//! The request path: normalize -> match -> authorize -> forward.
//!
//! [`handle`] logs, counts and turns any [`Rejection`] into a response;
//! [`authorize`] (shared with forward-auth mode) and [`forward`] return
//! `Result`s and never build error responses themselves.

pub mod bearer;
mod conn;
mod dial;
pub mod forward;
pub mod h1;
pub mod headers;

use std::borrow::Cow;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{HeaderValue, HOST};
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use crate::auth::{self, AuthError, Principal};
use crate::error::Rejection;
use crate::gateway::{Gateway, Runtime};
use crate::metrics::{Decision, Metrics, UpstreamError};
use crate::route::{Requirement, Route};

/// Response bodies: the upstream's, streamed (an upgrade's is empty and
/// comes off its own connection), or one the gateway made.
pub type Body = Either<Either<forward::UpstreamBody, Incoming>, Full<Bytes>>;

/// Facts about the client connection a request came in on.
#[derive(Debug, Clone)]
pub struct Peer {
    pub addr: SocketAddr,
    /// Did the client connect over TLS (for `X-Forwarded-Proto`)?
    pub tls: bool,
    /// The client's address as an `X-Forwarded-For` entry, rendered once per
    /// connection rather than per request.
    pub forwarded_for: HeaderValue,
}

impl Peer {
    pub fn new(addr: SocketAddr, tls: bool) -> Peer {
        Peer {
            addr,
            tls,
            forwarded_for: headers::forwarded_for_entry(addr.ip()),
        }
    }
}

/// A request that may pass: its route (borrowed from the runtime) and its
/// path (borrowed from the request when normalizing changed nothing).
#[derive(Debug)]
pub struct Allowed<'r, 'p> {
    pub route: &'r Route,
    /// `None` on public routes.
    pub principal: Option<Arc<Principal>>,
    /// The normalized path: what is matched and what is forwarded.
    pub path: Cow<'p, str>,
}

/// A request that may not pass, with the route it matched (if any).
#[derive(Debug)]
pub struct Denied<'a> {
    pub rejection: Rejection,
    pub route: Option<&'a Route>,
}

impl Denied<'_> {
    pub fn decision(&self) -> Decision {
        decision_of(&self.rejection)
    }
}

fn decision_of(rejection: &Rejection) -> Decision {
    match rejection {
        Rejection::BadRequest(_) | Rejection::BadPath(_) | Rejection::BadAuthorization(_) => {
            Decision::InvalidRequest
        }
        Rejection::MissingToken => Decision::Unauthorized,
        Rejection::InvalidToken(_) => Decision::InvalidToken,
        Rejection::InsufficientScope(_) => Decision::InsufficientScope,
        Rejection::UntrustedPeer => Decision::UntrustedPeer,
        Rejection::NotFound => Decision::NotFound,
        Rejection::Unavailable { .. } => Decision::Unavailable,
        // Not authorization decisions: the request was allowed.
        Rejection::BadGateway(_) | Rejection::GatewayTimeout => Decision::Allow,
    }
}

/// Checks a request target and returns its path, before normalization.
pub fn target_path<'a>(method: &Method, uri: &'a Uri) -> Result<&'a str, Rejection> {
    if method == Method::CONNECT {
        return Err(Rejection::BadRequest(
            "the authority form (CONNECT) is not supported",
        ));
    }
    let path = uri.path();
    if path == "*" {
        return Err(Rejection::BadRequest(
            "the asterisk form (OPTIONS *) is not supported",
        ));
    }
    if !path.starts_with('/') {
        return Err(Rejection::BadRequest("malformed request target"));
    }
    Ok(path)
}

/// Checks that a request names its host once (RFC 9112 §3.2): one valid
/// `Host` header, or, with none, an authority in the target (the absolute
/// form, or HTTP/2's `:authority`). Otherwise the upstream would answer a
/// request the gateway had authorized with its own 400 and close the
/// connection, or two hosts would leave it to the upstream to pick one.
/// An HTTP/2 request that sends both must name the same host in each (RFC
/// 9113 §8.3.1): it goes upstream as HTTP/1.1, with only one of them.
pub fn check_host(version: Version, uri: &Uri, headers: &HeaderMap) -> Result<(), Rejection> {
    let mut hosts = headers.get_all(HOST).iter();
    match (hosts.next(), hosts.next()) {
        (Some(_), Some(_)) => Err(Rejection::BadRequest("more than one Host header")),
        (Some(host), None) if is_host_value(host.as_bytes()) => match uri.authority() {
            Some(authority)
                if version == Version::HTTP_2
                    && !authority
                        .as_str()
                        .as_bytes()
                        .eq_ignore_ascii_case(host.as_bytes()) =>
            {
                Err(Rejection::BadRequest("Host header differs from :authority"))
            }
            _ => Ok(()),
        },
        (Some(_), None) => Err(Rejection::BadRequest("malformed Host header")),
        (None, _) if uri.authority().is_some() => Ok(()),
        (None, _) => Err(Rejection::BadRequest("missing Host header")),
    }
}

/// `uri-host [ ":" port ]` (RFC 9110 §7.2), by its characters: a reg-name,
/// an IPv4 address or a bracketed IPv6 literal, and digits. Empty is what a
/// client sends for a target without an authority; the upstream gets it
/// as it came.
fn is_host_value(host: &[u8]) -> bool {
    host.iter()
        .all(|&b| b.is_ascii_alphanumeric() || b"-._~%!$&'()*+,;=:[]".contains(&b))
}

/// Normalize, match, verify, check scopes. Shared by the proxy and forward-auth.
pub async fn authorize<'r, 'p>(
    runtime: &'r Runtime,
    method: &Method,
    raw_path: &'p str,
    headers: &HeaderMap,
) -> Result<Allowed<'r, 'p>, Denied<'r>> {
    let deny = |rejection, route| Denied { rejection, route };
    let path = crate::route::normalize(raw_path).map_err(|e| deny(Rejection::BadPath(e), None))?;
    let Some(route) = runtime.config.routes.lookup(method.as_str(), &path) else {
        return Err(deny(Rejection::NotFound, None));
    };
    if route.requirement == Requirement::Public {
        return Ok(Allowed {
            route,
            principal: None,
            path,
        });
    }
    let credentials = match bearer::bearer_credentials(headers) {
        Ok(Some(credentials)) => credentials,
        Ok(None) => return Err(deny(Rejection::MissingToken, Some(route))),
        Err(rejection) => return Err(deny(rejection, Some(route))),
    };
    // The common case first: a token verified before. Only a token the
    // cache does not know is checked for its syntax and verified.
    let principal = match runtime.verifier.cached_jwt(credentials) {
        Ok(principal) => principal,
        Err(hash) => {
            let token = bearer::b64token(credentials).map_err(|r| deny(r, Some(route)))?;
            runtime
                .verifier
                .verify_uncached(token, hash)
                .await
                .map_err(|e| deny(auth_rejection(e), Some(route)))?
        }
    };
    if !auth::authorize(&route.requirement, &principal) {
        return Err(deny(
            Rejection::InsufficientScope(required_scopes(&route.requirement)),
            Some(route),
        ));
    }
    Ok(Allowed {
        route,
        principal: Some(principal),
        path,
    })
}

/// What a token the verifier refused answers: 401, or 503 with `Retry-After`.
fn auth_rejection(e: AuthError) -> Rejection {
    match e {
        AuthError::InvalidToken(why) => Rejection::InvalidToken(why),
        AuthError::Unavailable { retry_after, .. } => Rejection::Unavailable { retry_after },
    }
}

/// The `scope=` attribute of a 403: all required scopes, or the alternatives.
fn required_scopes(requirement: &Requirement) -> String {
    match requirement {
        Requirement::AllScopes(s) | Requirement::AnyScopes(s) => s.join(" "),
        Requirement::Public | Requirement::AnyToken => String::new(),
    }
}

/// What the access log says about one request, filled in as it goes.
#[derive(Debug, Default)]
struct AccessRecord {
    path: Option<String>,
    route: Option<usize>,
    decision: Option<Decision>,
    subject: Option<Box<str>>,
}

/// Serves one proxied request: never fails, every error becomes a response.
///
/// hyper keeps this future in a box per client connection, sized for its
/// largest state, so its shape is chosen for size: one `async` block that
/// uses what it captured in place (an `async fn` copies its arguments into
/// locals first, and every nested `async` layer taking the request by value
/// stores it again), and the work around its two awaits (authorize, the
/// upstream's answer) in plain functions, whose locals never live in the
/// future.
#[allow(clippy::manual_async_fn)] // see above: an `async fn` is larger
pub fn handle(
    gateway: Arc<Gateway>,
    request: Request<Incoming>,
    peer: Peer,
) -> impl Future<Output = Result<Response<Body>, Infallible>> {
    async move {
        let started = Instant::now();
        let runtime = gateway.runtime();
        let method = request.method().clone();
        let mut record = AccessRecord::default();
        let outcome: Result<Response<Body>, Rejection> = 'outcome: {
            let target = target_path(request.method(), request.uri()).and_then(|p| {
                check_host(request.version(), request.uri(), request.headers()).map(|()| p)
            });
            let raw_path = match target {
                Ok(p) => p,
                Err(rejection) => {
                    gateway.metrics.unmatched().record(Decision::InvalidRequest);
                    record.decision = Some(Decision::InvalidRequest);
                    break 'outcome Err(rejection);
                }
            };
            // Matched as it comes and destructured in place: a named
            // result would stay in the future while the upstream answers.
            let (
                upstream,
                Forward {
                    request,
                    client_upgrade,
                },
            ) = match authorize(&runtime, request.method(), raw_path, request.headers()).await {
                Ok(allowed) => {
                    record.allowed(&runtime, &gateway.metrics, &allowed);
                    let Allowed {
                        route,
                        principal,
                        path,
                    } = allowed;
                    let Some(upstream) = runtime.upstreams.get(route.upstream) else {
                        break 'outcome Err(Rejection::BadGateway("route has no upstream"));
                    };
                    let forward = origin_form(path, request.uri())
                        .and_then(|uri| prepare_forward(&runtime, &peer, uri, request, principal));
                    match forward {
                        Ok(forward) => (upstream, forward),
                        Err(rejection) => break 'outcome Err(rejection),
                    }
                }
                Err(denied) => {
                    record.denied(&runtime, &gateway.metrics, &denied);
                    break 'outcome Err(denied.rejection);
                }
            };
            let sent = match client_upgrade {
                Some(client_upgrade) => Box::pin(upstream.send_upgrade(request))
                    .await
                    .map(|r| Upstreamed::Upgrade(r, client_upgrade)),
                None => upstream.send(request).await.map(Upstreamed::Pooled),
            };
            match sent {
                Ok(upstreamed) => Ok(upstreamed.into_response()),
                Err(kind) => {
                    gateway.metrics.upstream_error(kind);
                    Err(upstream_rejection(kind))
                }
            }
        };
        let response =
            outcome.unwrap_or_else(|rejection| rejection.to_response().map(Either::Right));
        let elapsed = started.elapsed();
        gateway.metrics.observe_latency(elapsed);
        if tracing::enabled!(target: "scopegate::access", tracing::Level::INFO) {
            let route = record
                .route
                .and_then(|i| runtime.config.routes.routes().get(i))
                .map(crate::gateway::route_label);
            tracing::info!(
                target: "scopegate::access",
                peer = %peer.addr,
                %method,
                path = record.path.as_deref().unwrap_or("-"),
                route = route.as_deref().unwrap_or("-"),
                decision = record.decision.map_or("-", Decision::as_str),
                status = response.status().as_u16(),
                subject = record.subject.as_deref().unwrap_or("-"),
                latency_us = elapsed.as_micros() as u64,
            );
        }
        Ok(response)
    }
}

impl AccessRecord {
    /// Counts an allowed request and notes it for the access log.
    fn allowed(&mut self, runtime: &Runtime, metrics: &Metrics, allowed: &Allowed<'_, '_>) {
        let decision = if allowed.principal.is_some() {
            Decision::Allow
        } else {
            Decision::Public
        };
        runtime
            .counters(Some(allowed.route), metrics)
            .record(decision);
        self.decision = Some(decision);
        self.route = Some(allowed.route.index);
        if tracing::enabled!(target: "scopegate::access", tracing::Level::INFO) {
            self.path = Some(allowed.path.to_string());
            self.subject = allowed.principal.as_ref().and_then(|p| p.subject.clone());
        }
    }

    /// Counts a denied request and notes it for the access log.
    fn denied(&mut self, runtime: &Runtime, metrics: &Metrics, denied: &Denied<'_>) {
        let decision = denied.decision();
        runtime.counters(denied.route, metrics).record(decision);
        self.decision = Some(decision);
        self.route = denied.route.map(|r| r.index);
    }
}

/// The request to send upstream, and the client's side of an upgrade it asks for.
struct Forward {
    request: Request<Incoming>,
    client_upgrade: Option<hyper::upgrade::OnUpgrade>,
}

/// The upstream request's target, in origin form (`/path?query`): the
/// connection already goes to the upstream, and hyper writes the target as
/// given. Made before the request is taken apart, so that nothing but the
/// upstream request holds the client's request target afterwards: it shares
/// the connection's read buffer, which would otherwise stay pinned (and be
/// reallocated for the next read) until the response.
fn origin_form(path: Cow<'_, str>, target: &Uri) -> Result<Uri, Rejection> {
    if let (Cow::Borrowed(_), Some(as_sent)) = (&path, target.path_and_query()) {
        // Normalizing changed nothing: the target goes on as it came, its
        // bytes shared rather than copied.
        if as_sent.as_str().starts_with('/') {
            return Ok(Uri::from(as_sent.clone()));
        }
    }
    let path_and_query = match target.query() {
        Some(q) => format!("{path}?{q}"),
        None => path.into_owned(),
    };
    Uri::try_from(path_and_query).map_err(|_| Rejection::BadRequest("malformed request target"))
}

/// Turns the client's request into the upstream's: `uri` as its target,
/// hop-by-hop and identity headers replaced, forwarding headers set.
fn prepare_forward(
    runtime: &Runtime,
    peer: &Peer,
    uri: Uri,
    mut request: Request<Incoming>,
    principal: Option<Arc<Principal>>,
) -> Result<Forward, Rejection> {
    let upgrade = headers::is_upgrade(request.headers());
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut request));
    let (mut parts, body) = request.into_parts();

    let h = &mut parts.headers;
    headers::remove_hop_by_hop(h, upgrade, runtime.identity.names());
    runtime.identity.strip(h);
    let host = match h.get(HOST) {
        Some(host) => Some(host.clone()),
        None => parts
            .uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok()),
    };
    if let Some(host) = &host {
        if !h.contains_key(HOST) {
            h.insert(HOST, host.clone());
        }
    }
    headers::set_forwarded(
        h,
        &peer.forwarded_for,
        if peer.tls { "https" } else { "http" },
        host,
    );
    if let Some(principal) = &principal {
        if runtime.config.forward.strip_authorization {
            h.remove(http::header::AUTHORIZATION);
        }
        runtime.identity.insert(h, principal);
    }
    parts.uri = uri;
    parts.version = Version::HTTP_11;
    Ok(Forward {
        request: Request::from_parts(parts, body),
        client_upgrade,
    })
}

/// What the upstream answered: a pooled exchange, or an upgrade request's
/// answer with the client's side of the upgrade.
enum Upstreamed {
    Pooled(Response<forward::UpstreamBody>),
    Upgrade(Response<Incoming>, hyper::upgrade::OnUpgrade),
}

impl Upstreamed {
    /// The response for the client, without hop-by-hop headers; a `101`
    /// also starts relaying bytes between the two upgraded connections.
    fn into_response(self) -> Response<Body> {
        let mut response = match self {
            Upstreamed::Pooled(response) => response.map(|b| Either::Left(Either::Left(b))),
            Upstreamed::Upgrade(mut response, client_upgrade) => {
                if response.status() == StatusCode::SWITCHING_PROTOCOLS {
                    relay_upgrade(client_upgrade, hyper::upgrade::on(&mut response));
                }
                response.map(|b| Either::Left(Either::Right(b)))
            }
        };
        let switching = response.status() == StatusCode::SWITCHING_PROTOCOLS;
        headers::remove_hop_by_hop(response.headers_mut(), switching, &[]);
        response
    }
}

/// Copies bytes both ways between the client and the upstream once both
/// sides have switched protocols.
fn relay_upgrade(client: hyper::upgrade::OnUpgrade, upstream: hyper::upgrade::OnUpgrade) {
    tokio::spawn(async move {
        match tokio::try_join!(client, upstream) {
            Ok((client, upstream)) => {
                let mut client = TokioIo::new(client);
                let mut upstream = TokioIo::new(upstream);
                let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
            }
            Err(e) => tracing::debug!(error = %e, "upgrade failed"),
        }
    });
}

fn upstream_rejection(kind: UpstreamError) -> Rejection {
    match kind {
        UpstreamError::Timeout => Rejection::GatewayTimeout,
        UpstreamError::Connect => Rejection::BadGateway("the upstream refused the connection"),
        UpstreamError::Protocol => Rejection::BadGateway("the upstream failed to answer"),
    }
}
