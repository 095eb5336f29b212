//! The one place that turns a rejection into status + `WWW-Authenticate` + JSON body.
//!
//! Every response the gateway makes itself (as opposed to relaying the
//! upstream's) is built here, from a [`Rejection`]. Descriptions are static
//! strings chosen by the gateway: they never contain a token, a secret or an
//! upstream's internal detail.

use std::borrow::Cow;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{Response, StatusCode};
use http_body_util::Full;

/// The realm named in every `WWW-Authenticate` challenge.
pub const REALM: &str = "scopegate";

/// Why the gateway answered a request itself instead of forwarding it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    /// Malformed request target (-> 400, no challenge).
    BadRequest(&'static str),
    /// A path the normalizer refused (-> 400, no challenge).
    BadPath(crate::route::NormalizeError),
    /// Several Authorization headers or a malformed Bearer header (-> 400 with challenge).
    BadAuthorization(&'static str),
    /// Protected route, no bearer token (-> 401, challenge without error code).
    MissingToken,
    /// Token invalid, expired, wrong iss/aud/alg/typ, bad signature, inactive (-> 401).
    InvalidToken(&'static str),
    /// Valid token without the route's scopes (-> 403). Holds the `scope=` value.
    InsufficientScope(String),
    /// Forward-auth request from a peer outside `trusted_peers` (-> 403, no challenge).
    UntrustedPeer,
    /// No route matches (-> 404).
    NotFound,
    /// Issuer keys or introspection unavailable (-> 503 with Retry-After).
    Unavailable { retry_after: Duration },
    /// Upstream refused, reset, or answered garbage (-> 502).
    BadGateway(&'static str),
    /// Upstream slower than `timeouts.upstream_response` (-> 504).
    GatewayTimeout,
}

impl Rejection {
    pub fn status(&self) -> StatusCode {
        match self {
            Rejection::BadRequest(_) | Rejection::BadPath(_) | Rejection::BadAuthorization(_) => {
                StatusCode::BAD_REQUEST
            }
            Rejection::MissingToken | Rejection::InvalidToken(_) => StatusCode::UNAUTHORIZED,
            Rejection::InsufficientScope(_) | Rejection::UntrustedPeer => StatusCode::FORBIDDEN,
            Rejection::NotFound => StatusCode::NOT_FOUND,
            Rejection::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Rejection::BadGateway(_) => StatusCode::BAD_GATEWAY,
            Rejection::GatewayTimeout => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// The `error` code of the JSON body (RFC 6750 codes where they apply).
    pub fn code(&self) -> &'static str {
        match self {
            Rejection::BadRequest(_) | Rejection::BadPath(_) | Rejection::BadAuthorization(_) => {
                "invalid_request"
            }
            Rejection::MissingToken => "unauthorized",
            Rejection::InvalidToken(_) => "invalid_token",
            Rejection::InsufficientScope(_) => "insufficient_scope",
            Rejection::UntrustedPeer => "forbidden",
            Rejection::NotFound => "not_found",
            Rejection::Unavailable { .. } => "temporarily_unavailable",
            Rejection::BadGateway(_) => "bad_gateway",
            Rejection::GatewayTimeout => "gateway_timeout",
        }
    }

    /// The human-readable `error_description`.
    pub fn description(&self) -> Cow<'_, str> {
        Cow::Borrowed(match self {
            Rejection::BadRequest(d) | Rejection::BadAuthorization(d) => d,
            Rejection::BadPath(e) => return Cow::Owned(format!("malformed path: {e}")),
            Rejection::MissingToken => "a bearer token is required",
            Rejection::InvalidToken(d) => d,
            Rejection::InsufficientScope(_) => "the token lacks the scopes this route requires",
            Rejection::UntrustedPeer => "this peer may not ask for authorization decisions",
            Rejection::NotFound => "no route matches this request",
            Rejection::Unavailable { .. } => "token verification is temporarily unavailable",
            Rejection::BadGateway(d) => d,
            Rejection::GatewayTimeout => "the upstream did not answer in time",
        })
    }

    /// The `WWW-Authenticate` challenge, where RFC 6750 asks for one.
    fn challenge(&self) -> Option<String> {
        match self {
            Rejection::BadAuthorization(_) => Some(format!(
                "Bearer realm=\"{REALM}\", error=\"invalid_request\""
            )),
            Rejection::MissingToken => Some(format!("Bearer realm=\"{REALM}\"")),
            Rejection::InvalidToken(d) => Some(format!(
                "Bearer realm=\"{REALM}\", error=\"invalid_token\", error_description=\"{}\"",
                quoted_string_safe(d)
            )),
            Rejection::InsufficientScope(scope) => Some(format!(
                "Bearer realm=\"{REALM}\", error=\"insufficient_scope\", scope=\"{}\"",
                quoted_string_safe(scope)
            )),
            _ => None,
        }
    }

    /// Builds the response.
    pub fn to_response(&self) -> Response<Full<Bytes>> {
        let body = serde_json::json!({
            "error": self.code(),
            "error_description": self.description(),
        });
        let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
        *response.status_mut() = self.status();
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if let Some(challenge) = self.challenge() {
            if let Ok(value) = HeaderValue::try_from(challenge) {
                headers.insert(WWW_AUTHENTICATE, value);
            }
        }
        if let Rejection::Unavailable { retry_after } = self {
            let seconds = retry_after.as_secs_f64().ceil().max(1.0) as u64;
            headers.insert(RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

/// Keeps a value inside an RFC 9110 quoted-string: drops `"`, `\` and
/// anything outside visible ASCII and space.
fn quoted_string_safe(s: &str) -> Cow<'_, str> {
    if s.bytes()
        .all(|b| (b == b' ' || b.is_ascii_graphic()) && b != b'"' && b != b'\\')
    {
        Cow::Borrowed(s)
    } else {
        Cow::Owned(
            s.chars()
                .filter(|&c| (c == ' ' || c.is_ascii_graphic()) && c != '"' && c != '\\')
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    async fn check(
        rejection: Rejection,
        status: u16,
        code: &str,
        challenge: Option<&str>,
    ) -> Response<Full<Bytes>> {
        let response: Response<Full<Bytes>> = rejection.to_response();
        assert_eq!(response.status().as_u16(), status, "{rejection:?}");
        assert_eq!(
            response.headers().get(CONTENT_TYPE).unwrap(),
            "application/json"
        );
        assert_eq!(
            response
                .headers()
                .get(WWW_AUTHENTICATE)
                .map(|v| v.to_str().unwrap()),
            challenge,
            "{rejection:?}"
        );
        let (parts, body) = response.into_parts();
        let bytes = body.collect().await.unwrap().to_bytes();
        let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(json["error"], code);
        assert!(json["error_description"].is_string());
        Response::from_parts(parts, Full::new(bytes))
    }

    #[tokio::test]
    async fn every_row_of_the_contract_table() {
        check(
            Rejection::BadRequest("bad path"),
            400,
            "invalid_request",
            None,
        )
        .await;
        check(
            Rejection::BadAuthorization("several Authorization headers"),
            400,
            "invalid_request",
            Some(r#"Bearer realm="scopegate", error="invalid_request""#),
        )
        .await;
        check(
            Rejection::MissingToken,
            401,
            "unauthorized",
            Some(r#"Bearer realm="scopegate""#),
        )
        .await;
        check(
            Rejection::InvalidToken("token expired"),
            401,
            "invalid_token",
            Some(r#"Bearer realm="scopegate", error="invalid_token", error_description="token expired""#),
        )
        .await;
        check(
            Rejection::InsufficientScope("message admin".into()),
            403,
            "insufficient_scope",
            Some(r#"Bearer realm="scopegate", error="insufficient_scope", scope="message admin""#),
        )
        .await;
        check(Rejection::NotFound, 404, "not_found", None).await;
        check(Rejection::BadGateway("refused"), 502, "bad_gateway", None).await;
        check(Rejection::GatewayTimeout, 504, "gateway_timeout", None).await;
        let r = check(
            Rejection::Unavailable {
                retry_after: Duration::from_millis(200),
            },
            503,
            "temporarily_unavailable",
            None,
        )
        .await;
        assert_eq!(r.headers().get(RETRY_AFTER).unwrap(), "1");
        let r: Response<Full<Bytes>> = Rejection::Unavailable {
            retry_after: Duration::from_millis(4500),
        }
        .to_response();
        assert_eq!(r.headers().get(RETRY_AFTER).unwrap(), "5");
    }

    #[test]
    fn challenge_values_stay_quoted_strings() {
        assert_eq!(quoted_string_safe("a \"b\" \\c\n"), "a b c");
        assert_eq!(quoted_string_safe("plain"), "plain");
    }
}
