//! RFC 7662 token introspection for opaque tokens: the request (client
//! credentials by `client_secret_basic` or `client_secret_post`), the answer's
//! checks, and the cache (by token hash, at most `cache_ttl`, never past
//! `exp`; inactive answers briefly; failures never).
//!
//! Neither the token nor the client secret is ever logged.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use http::StatusCode;
use serde_json::{Map, Value};

use super::claims::{self, ClaimValue, Claims};
use super::fetch::IdpClient;
use super::metrics::Counters;
use super::token_cache::{now_unix, token_hash, Cached, TokenCache};
use super::{AuthError, ClientAuthMethod, IntrospectionSettings, Principal};

/// How long an `active: false` answer is remembered.
const INACTIVE_TTL: Duration = Duration::from_secs(5);

const UNAVAILABLE: AuthError = AuthError::Unavailable {
    reason: "introspection unavailable",
    retry_after: Duration::from_secs(1),
};

/// `application/x-www-form-urlencoded` encoding of one name or value.
pub(crate) fn form_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'*' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// The cache deadline of an active answer: `cache_ttl`, never past `exp`.
pub(crate) fn cache_until(exp: Option<u64>, now: u64, cache_ttl: Duration) -> u64 {
    let ttl_end = now.saturating_add(cache_ttl.as_secs());
    exp.map_or(ttl_end, |exp| exp.min(ttl_end))
}

pub(crate) struct Introspector {
    settings: IntrospectionSettings,
    client: Arc<IdpClient>,
    counters: Arc<Counters>,
}

impl Introspector {
    pub(crate) fn new(
        settings: IntrospectionSettings,
        client: Arc<IdpClient>,
        counters: Arc<Counters>,
    ) -> Self {
        Introspector {
            settings,
            client,
            counters,
        }
    }

    /// Verifies an opaque token, through `cache`; concurrent lookups of one
    /// token share one request.
    pub(crate) async fn verify(
        &self,
        cache: &TokenCache,
        token: &str,
    ) -> Result<Arc<Principal>, AuthError> {
        let hash = token_hash(token.as_bytes());
        let cached = match cache.get_opaque(&hash).await {
            Some(hit) => {
                self.counters
                    .token_cache_hits
                    .fetch_add(1, Ordering::Relaxed);
                hit
            }
            None => {
                self.counters
                    .token_cache_misses
                    .fetch_add(1, Ordering::Relaxed);
                cache
                    .get_or_try_insert_opaque(hash, self.ask(token))
                    .await
                    .map_err(|e| (*e).clone())?
            }
        };
        match cached.principal {
            Some(principal) => Ok(principal),
            None => Err(AuthError::InvalidToken(cached.rejection)),
        }
    }

    /// One introspection request. `Err` only for "cannot tell" (never cached);
    /// a token the answer rules out is a short-lived negative entry.
    async fn ask(&self, token: &str) -> Result<Cached, AuthError> {
        let s = &self.settings;
        let mut form = format!("token={}&token_type_hint=access_token", form_encode(token));
        let authorization = match s.auth_method {
            ClientAuthMethod::ClientSecretBasic => {
                let pair = format!(
                    "{}:{}",
                    form_encode(&s.client_id),
                    form_encode(&s.client_secret)
                );
                Some(format!("Basic {}", STANDARD.encode(pair)))
            }
            ClientAuthMethod::ClientSecretPost => {
                form.push_str("&client_id=");
                form.push_str(&form_encode(&s.client_id));
                form.push_str("&client_secret=");
                form.push_str(&form_encode(&s.client_secret));
                None
            }
        };
        let answer = match self
            .client
            .post_form(&s.endpoint, form, authorization)
            .await
        {
            Ok(answer) => answer,
            Err(err) => {
                tracing::warn!(endpoint = %s.endpoint, error = %err, "introspection failed");
                return Err(self.unavailable());
            }
        };
        if answer.status != StatusCode::OK {
            if matches!(
                answer.status,
                StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN
            ) {
                tracing::error!(endpoint = %s.endpoint, status = %answer.status,
                    "the introspection endpoint rejects our client credentials");
            } else {
                tracing::warn!(endpoint = %s.endpoint, status = %answer.status, "introspection failed");
            }
            return Err(self.unavailable());
        }
        let doc = match serde_json::from_slice::<Value>(&answer.body) {
            Ok(Value::Object(doc)) => doc,
            _ => {
                tracing::warn!(endpoint = %s.endpoint, "introspection answer is not a JSON object");
                return Err(self.unavailable());
            }
        };
        let result = judge(&self.settings, doc, now_unix());
        match &result {
            Ok(_) => self
                .counters
                .introspection_ok
                .fetch_add(1, Ordering::Relaxed),
            Err(_) => self
                .counters
                .introspection_error
                .fetch_add(1, Ordering::Relaxed),
        };
        result
    }

    fn unavailable(&self) -> AuthError {
        self.counters
            .introspection_error
            .fetch_add(1, Ordering::Relaxed);
        UNAVAILABLE
    }
}

/// Checks an RFC 7662 answer; `Err` when it is not one. Pure (no I/O).
pub(crate) fn judge(
    s: &IntrospectionSettings,
    doc: Map<String, Value>,
    now: u64,
) -> Result<Cached, AuthError> {
    let negative = |rejection: &'static str| Cached {
        principal: None,
        rejection,
        until: now.saturating_add(INACTIVE_TTL.min(s.cache_ttl).as_secs()),
        verified_with: None,
    };
    match doc.get("active") {
        Some(Value::Bool(true)) => {}
        Some(Value::Bool(false)) => return Ok(negative("token inactive")),
        _ => {
            tracing::warn!(endpoint = %s.endpoint, "introspection answer without a boolean active");
            return Err(UNAVAILABLE);
        }
    }
    let exp = match doc.get("exp") {
        None => None,
        Some(Value::Number(n)) => match n.as_f64() {
            Some(f) if f.is_finite() && f >= 0.0 => Some(f.floor() as u64),
            _ => return Err(UNAVAILABLE),
        },
        Some(_) => return Err(UNAVAILABLE),
    };
    if exp.is_some_and(|exp| exp <= now) {
        return Ok(negative("token expired"));
    }
    if let (Some(want), Some(iss)) = (&s.issuer, doc.get("iss")) {
        if iss.as_str() != Some(want.as_str()) {
            return Ok(negative("unknown issuer"));
        }
    }
    if let (Some(want), Some(aud)) = (&s.audiences, doc.get("aud")) {
        let ok = match aud {
            Value::String(a) => want.iter().any(|w| w == a),
            Value::Array(auds) => auds
                .iter()
                .filter_map(Value::as_str)
                .any(|a| want.iter().any(|w| w == a)),
            _ => false,
        };
        if !ok {
            return Ok(negative("wrong audience"));
        }
    }
    let claim = |name| doc.get(name).map(ClaimValue::of);
    let scopes = match claims::scopes_from(claim("scope").as_ref(), claim("scp").as_ref()) {
        Ok(scopes) => scopes,
        Err(_) => return Ok(negative("malformed scope")),
    };
    let subject = doc.get("sub").and_then(Value::as_str).map(Box::from);
    let until = cache_until(exp, now, s.cache_ttl);
    let principal = Principal {
        issuer: doc.get("iss").and_then(Value::as_str).map(Box::from),
        subject,
        scopes,
        expires_at: exp.unwrap_or(until),
        claims: Claims::from_map(&doc),
        identity_headers: Default::default(),
    };
    Ok(Cached {
        principal: Some(Arc::new(principal)),
        rejection: "token inactive",
        until,
        verified_with: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_encoding() {
        assert_eq!(form_encode("abc-._*XYZ09"), "abc-._*XYZ09");
        assert_eq!(form_encode("a b+c"), "a+b%2Bc");
        assert_eq!(form_encode("p@ss:w/rd=&"), "p%40ss%3Aw%2Frd%3D%26");
        assert_eq!(form_encode("é"), "%C3%A9");
    }

    #[test]
    fn cache_deadline() {
        let ttl = Duration::from_secs(60);
        assert_eq!(cache_until(None, 1000, ttl), 1060);
        assert_eq!(cache_until(Some(1010), 1000, ttl), 1010, "never past exp");
        assert_eq!(
            cache_until(Some(5000), 1000, ttl),
            1060,
            "at most cache_ttl"
        );
    }
}
