//! Forward-auth mode: "may this request pass?" for nginx `auth_request`,
//! Traefik ForwardAuth, Caddy `forward_auth` and Envoy `ext_authz` (HTTP).
//!
//! Same normalization, matching, verification, caches and metrics as the
//! proxy ([`crate::proxy::authorize`]); only where the original method and
//! path come from differs. Only peers in `trusted_peers` may name them.

use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use bytes::Bytes;
use http::header::HeaderName;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use tokio::net::TcpListener;

use crate::error::Rejection;
use crate::gateway::Gateway;
use crate::metrics::Decision;

static X_FORWARDED_METHOD: HeaderName = HeaderName::from_static("x-forwarded-method");
static X_FORWARDED_URI: HeaderName = HeaderName::from_static("x-forwarded-uri");
static X_ORIGINAL_METHOD: HeaderName = HeaderName::from_static("x-original-method");
static X_ORIGINAL_URI: HeaderName = HeaderName::from_static("x-original-uri");
/// ingress-nginx names the original request as a full URL here.
static X_ORIGINAL_URL: HeaderName = HeaderName::from_static("x-original-url");

/// The prefix Envoy's `ext_authz` `path_prefix` is configured with.
pub const ENVOY_PREFIX: &str = "/envoy";

/// Is `ip` inside one of the `(network, prefix length)` ranges?
pub fn is_trusted(ip: IpAddr, trusted: &[(IpAddr, u8)]) -> bool {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    };
    trusted.iter().any(|&(net, len)| match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let mask = u32::MAX
                .checked_shl(32 - u32::from(len.min(32)))
                .unwrap_or(0);
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let mask = u128::MAX
                .checked_shl(128 - u32::from(len.min(128)))
                .unwrap_or(0);
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    })
}

/// The original request named by a forward-auth call: (method, path without query).
fn original_request(
    method: &Method,
    path: &str,
    headers: &HeaderMap,
) -> Result<(Method, String), Rejection> {
    if let Some(rest) = path.strip_prefix(ENVOY_PREFIX) {
        if rest.is_empty() || rest.starts_with('/') {
            let original = if rest.is_empty() { "/" } else { rest };
            return Ok((method.clone(), original.to_owned()));
        }
    }
    if path != "/verify" {
        return Err(Rejection::NotFound);
    }
    // Every proxy passes the client's own headers on to the auth request,
    // and each sets only its own convention: nginx overwrites X-Original-*
    // but forwards a client's X-Forwarded-Uri, Traefik and Caddy the other
    // way round. So no convention may win by precedence: every header that is
    // present must name the same request, or the call is refused.
    let uri = agreeing(
        headers,
        &[&X_FORWARDED_URI, &X_ORIGINAL_URI, &X_ORIGINAL_URL],
        |v| {
            v.parse::<http::Uri>()
                .map(|uri| uri.path().to_owned())
                .map_err(|_| Rejection::BadRequest("malformed original URI"))
        },
    )?;
    let method = agreeing(headers, &[&X_FORWARDED_METHOD, &X_ORIGINAL_METHOD], |v| {
        Ok(v.to_ascii_uppercase())
    })?;
    let (method, uri) = match (method, uri) {
        (Some(m), Some(u)) => (m, u),
        (None, Some(u)) => ("GET".to_string(), u),
        _ => {
            return Err(Rejection::BadRequest(
                "missing X-Forwarded-Uri (or X-Original-URI) naming the original request",
            ))
        }
    };
    let method = Method::from_bytes(method.to_ascii_uppercase().as_bytes())
        .map_err(|_| Rejection::BadRequest("malformed original method"))?;
    // The URI may be origin-form (`/a?b`) or absolute (`https://host/a?b`).
    let uri: http::Uri = uri
        .parse()
        .map_err(|_| Rejection::BadRequest("malformed original URI"))?;
    let path = crate::proxy::target_path(&method, &uri)?;
    Ok((method, path.to_owned()))
}

/// The value of the first of `names` present, after checking that every one
/// present holds exactly one value and that they all have the same `key`
/// (the path of a URI, the uppercased method). `None` when none is present.
fn agreeing(
    headers: &HeaderMap,
    names: &[&HeaderName],
    key: impl Fn(&str) -> Result<String, Rejection>,
) -> Result<Option<String>, Rejection> {
    let mut first: Option<(String, String)> = None;
    for &name in names {
        let mut values = headers.get_all(name).iter();
        let Some(value) = values.next() else {
            continue;
        };
        if values.next().is_some() {
            return Err(Rejection::BadRequest(
                "several values for one original-request header",
            ));
        }
        let value = value
            .to_str()
            .map_err(|_| Rejection::BadRequest("original-request header is not visible ASCII"))?
            .trim()
            .to_owned();
        let value_key = key(&value)?;
        match &first {
            None => first = Some((value, value_key)),
            Some((_, first_key)) if *first_key == value_key => {}
            Some(_) => {
                return Err(Rejection::BadRequest(
                    "original-request headers of two conventions disagree",
                ))
            }
        }
    }
    Ok(first.map(|(value, _)| value))
}

/// Answers one forward-auth request.
pub async fn respond(
    gateway: &Gateway,
    request: &Request<Incoming>,
    peer: SocketAddr,
) -> Response<Full<Bytes>> {
    let runtime = gateway.runtime();
    let Some(settings) = &runtime.config.forward_auth else {
        return Rejection::NotFound.to_response();
    };
    if !is_trusted(peer.ip(), &settings.trusted_peers) {
        gateway.metrics.unmatched().record(Decision::UntrustedPeer);
        tracing::warn!(%peer, "forward-auth request from an untrusted peer");
        return Rejection::UntrustedPeer.to_response();
    }
    let (method, path) =
        match original_request(request.method(), request.uri().path(), request.headers()) {
            Ok(original) => original,
            Err(rejection) => {
                gateway.metrics.unmatched().record(Decision::InvalidRequest);
                return rejection.to_response();
            }
        };
    match crate::proxy::authorize(&runtime, &method, &path, request.headers()).await {
        Err(denied) => {
            runtime
                .counters(denied.route, &gateway.metrics)
                .record(denied.decision());
            denied.rejection.to_response()
        }
        Ok(allowed) => {
            let decision = if allowed.principal.is_some() {
                Decision::Allow
            } else {
                Decision::Public
            };
            runtime
                .counters(Some(allowed.route), &gateway.metrics)
                .record(decision);
            let mut response = Response::new(Full::new(Bytes::new()));
            *response.status_mut() = StatusCode::OK;
            let headers = response.headers_mut();
            if let Some(principal) = &allowed.principal {
                runtime.identity.insert(headers, principal);
            }
            // Every identity header is on every allow, empty when there is no
            // value (public routes, an absent claim). A proxy that copies a
            // header only when the answer has it would otherwise leave the
            // client's own copy in place, and Caddy 2.6's copy_headers then
            // forwards its unexpanded placeholder
            // `{http.reverse_proxy.header.X-Auth-Subject}` as the value.
            for name in runtime.identity.names() {
                if !headers.contains_key(name) {
                    headers.insert(name.clone(), http::HeaderValue::from_static(""));
                }
            }
            response
        }
    }
}

/// Serves forward-auth on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    gateway: Arc<Gateway>,
    workers: crate::workers::Workers,
    shutdown: impl Future<Output = ()>,
) {
    let limits = crate::server::ServerLimits::from_config(&gateway.runtime().config);
    let builders = Arc::new(crate::server::HttpBuilders::new(&limits));
    let drain = crate::server::Drain::default();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = crate::server::accept(&listener, "forward-auth") => accepted,
        };
        let _ = stream.set_nodelay(true);
        let gateway = gateway.clone();
        let builders = builders.clone();
        let signal = drain.signal();
        workers.spawn_connection(stream, move |stream| async move {
            let service = service_fn(move |request| {
                let gateway = gateway.clone();
                async move { Ok::<_, Infallible>(respond(&gateway, &request, peer).await) }
            });
            builders.serve_cleartext(stream, service, signal).await;
        });
    }
    drop(listener);
    drain.run(limits.shutdown_grace).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trusted_peer_ranges() {
        let trusted = [
            ("127.0.0.1".parse().unwrap(), 32),
            ("10.1.0.0".parse().unwrap(), 16),
            ("::1".parse().unwrap(), 128),
        ];
        let check = |ip: &str, expected: bool| {
            assert_eq!(is_trusted(ip.parse().unwrap(), &trusted), expected, "{ip}");
        };
        check("127.0.0.1", true);
        check("127.0.0.2", false);
        check("10.1.200.3", true);
        check("10.2.0.1", false);
        check("::1", true);
        check("::ffff:127.0.0.1", true);
        check("::2", false);
        assert!(is_trusted(
            "8.8.8.8".parse().unwrap(),
            &[("0.0.0.0".parse().unwrap(), 0)]
        ));
    }

    #[test]
    fn original_request_from_headers() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-method", "post".parse().unwrap());
        h.insert("x-forwarded-uri", "/api/x?y=1".parse().unwrap());
        let (m, p) = original_request(&Method::GET, "/verify", &h).unwrap();
        assert_eq!((m, p.as_str()), (Method::POST, "/api/x"));

        let mut nginx = HeaderMap::new();
        nginx.insert("x-original-method", "DELETE".parse().unwrap());
        nginx.insert("x-original-uri", "/api/messages/7".parse().unwrap());
        let (m, p) = original_request(&Method::GET, "/verify", &nginx).unwrap();
        assert_eq!((m, p.as_str()), (Method::DELETE, "/api/messages/7"));

        let (m, p) =
            original_request(&Method::PUT, "/envoy/api/messages/7", &HeaderMap::new()).unwrap();
        assert_eq!((m, p.as_str()), (Method::PUT, "/api/messages/7"));

        assert_eq!(
            original_request(&Method::GET, "/verify", &HeaderMap::new())
                .unwrap_err()
                .status(),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            original_request(&Method::GET, "/envoyx", &HeaderMap::new()).unwrap_err(),
            Rejection::NotFound
        );
    }

    #[test]
    fn conventions_must_agree() {
        let check = |headers: &[(&str, &str)], expected: Result<(Method, &str), ()>| {
            let mut h = HeaderMap::new();
            for (name, value) in headers {
                h.append(
                    HeaderName::from_bytes(name.as_bytes()).unwrap(),
                    value.parse().unwrap(),
                );
            }
            let got = original_request(&Method::GET, "/verify", &h);
            match expected {
                Ok((m, p)) => {
                    let (gm, gp) = got.unwrap_or_else(|e| panic!("{headers:?}: {e:?}"));
                    assert_eq!((gm, gp.as_str()), (m, p), "{headers:?}");
                }
                Err(()) => assert_eq!(
                    got.map_err(|e| e.status()),
                    Err(StatusCode::BAD_REQUEST),
                    "{headers:?}"
                ),
            }
        };
        // ingress-nginx: a full URL plus (from the ConfigMap) the URI.
        check(
            &[
                ("x-original-method", "GET"),
                ("x-original-url", "https://h.example/api/x?q=1"),
                ("x-original-uri", "/api/x?q=1"),
            ],
            Ok((Method::GET, "/api/x")),
        );
        check(
            &[("x-original-url", "https://h.example/api/x")],
            Ok((Method::GET, "/api/x")),
        );
        // A client's X-Forwarded-Uri passed on by nginx next to nginx's own.
        check(
            &[
                ("x-original-method", "GET"),
                ("x-original-uri", "/api/x"),
                ("x-forwarded-uri", "/public/x"),
            ],
            Err(()),
        );
        // A client's X-Original-URI passed on by Traefik or Caddy.
        check(
            &[
                ("x-forwarded-method", "GET"),
                ("x-forwarded-uri", "/api/x"),
                ("x-original-uri", "/public/x"),
            ],
            Err(()),
        );
        check(
            &[
                ("x-original-uri", "/api/x"),
                ("x-original-url", "http://h/public/x"),
            ],
            Err(()),
        );
        // Methods too: a client's X-Forwarded-Method: GET on a DELETE.
        check(
            &[
                ("x-original-method", "DELETE"),
                ("x-original-uri", "/api/x"),
                ("x-forwarded-method", "GET"),
            ],
            Err(()),
        );
        check(
            &[
                ("x-forwarded-method", "delete"),
                ("x-original-method", "DELETE"),
                ("x-forwarded-uri", "/api/x"),
            ],
            Ok((Method::DELETE, "/api/x")),
        );
        // Repeated headers of one convention.
        check(
            &[
                ("x-forwarded-uri", "/api/x"),
                ("x-forwarded-uri", "/public/x"),
            ],
            Err(()),
        );
    }
}
