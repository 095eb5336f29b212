//! Network-free entry points into the token checks, for the fuzz targets
//! (`fuzz/`) and their regression tests. Not an API: hidden, and free to change.
//!
//! Each function runs the same code the [`super::Verifier`] runs, minus
//! fetching and caching: the JWKS parser, the JWT header/signature/claims
//! checks in the order `Verifier::verify_jwt` applies them, and the RFC 7662
//! answer check.

use serde_json::Value;

use super::jwks::{self, Lookup};
use super::{introspect, jwt, AuthError, IntrospectionSettings, IssuerSettings, Principal};

/// A parsed JWKS document.
pub struct KeySet(jwks::KeySet);

impl KeySet {
    /// How many keys were accepted.
    pub fn len(&self) -> usize {
        self.0.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.keys.is_empty()
    }

    /// The `kid`s of the accepted keys, in document order.
    pub fn kids(&self) -> Vec<Option<&str>> {
        self.0.keys.iter().map(|k| k.kid.as_deref()).collect()
    }
}

/// The JWKS parser the verifier uses on a fetched document.
pub fn parse_jwks(body: &[u8]) -> Result<KeySet, String> {
    jwks::parse_jwks("fuzz", body)
        .map(KeySet)
        .map_err(|e| e.to_string())
}

/// Is this token handed to the JWT path (else to introspection)?
pub fn looks_like_jwt(token: &str) -> bool {
    jwt::looks_like_jwt(token)
}

/// Verifies a JWT against one issuer and its key set, as `Verifier` does
/// once the key set is in hand; `now` in Unix seconds.
pub fn verify_jwt(
    token: &str,
    issuer: &IssuerSettings,
    keys: &KeySet,
    leeway: u64,
    now: u64,
) -> Result<Principal, AuthError> {
    if !jwt::looks_like_jwt(token) {
        return Err(AuthError::InvalidToken("not a JWT"));
    }
    let parsed = jwt::parse(token)?;
    let claims = parsed.claims()?;
    if claims.issuer()? != issuer.issuer {
        return Err(AuthError::InvalidToken("unknown issuer"));
    }
    parsed.check_header_for(issuer)?;
    let key = match keys
        .0
        .find(parsed.kid.as_deref(), parsed.alg, parsed.alg_name)
    {
        Lookup::Found(key) => key,
        Lookup::Missing => return Err(AuthError::InvalidToken("unknown key")),
        Lookup::Unusable => return Err(AuthError::InvalidToken("algorithm does not fit the key")),
        Lookup::Ambiguous => return Err(AuthError::InvalidToken("kid required")),
    };
    parsed.verify_signature(key)?;
    let checked = claims.check(issuer, leeway, now)?;
    drop(claims);
    Ok(parsed.into_principal(checked))
}

/// Checks an introspection answer body as the introspector does after a
/// 200: `Ok(Some(_))` active, `Ok(None)` ruled out (inactive, expired, wrong
/// iss/aud), `Err` not an RFC 7662 answer (-> 503).
pub fn judge_introspection(
    settings: &IntrospectionSettings,
    body: &[u8],
    now: u64,
) -> Result<Option<Principal>, AuthError> {
    let doc = match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(doc)) => doc,
        _ => {
            return Err(AuthError::Unavailable {
                reason: "introspection unavailable",
                retry_after: std::time::Duration::from_secs(1),
            })
        }
    };
    let cached = introspect::judge(settings, doc, now)?;
    Ok(cached.principal.map(|p| (*p).clone()))
}
