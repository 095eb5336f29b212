//! JWT checks: the token's form, its header (strictly, by hand) and the
//! signature (aws-lc-rs, pinned to one alg and one key); the claims are
//! `claims.rs`'s. Pure and synchronous; key lookup and caching live in
//! `mod.rs` / `jwks.rs`.

use std::borrow::Cow;
use std::str::FromStr;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::{DecodeSliceError, Engine as _};
use jsonwebtoken::Algorithm;
use serde::de::{self, IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::Value;

use super::claims::{Checked, ClaimValue, Claims, Registered};
use super::jwks::Key;
use super::{AuthError, IssuerSettings, Principal};

fn invalid(why: &'static str) -> AuthError {
    AuthError::InvalidToken(why)
}

/// Three dot-separated, non-empty base64url parts: a JWT. Anything else is opaque.
pub(crate) fn looks_like_jwt(token: &str) -> bool {
    // The alphabet check is one pass without an early exit, so it
    // vectorizes: a quarter of the cost of checking part by part (about
    // 0.5 us saved on an RS256 token, on every cache miss). Splitting on
    // dots is memchr-fast; folding dot counts and positions instead measured
    // 2.5-7x slower.
    let alphabet_ok = token.bytes().fold(true, |ok, b| {
        ok & (b.is_ascii_alphanumeric() | (b == b'-') | (b == b'_') | (b == b'.'))
    });
    let mut parts = token.split('.');
    alphabet_ok
        && matches!(
            (parts.next(), parts.next(), parts.next(), parts.next()),
            (Some(h), Some(p), Some(s), None) if !h.is_empty() && !p.is_empty() && !s.is_empty()
        )
}

/// A JWT whose header passed the issuer-independent checks.
#[derive(Debug)]
pub(crate) struct Parsed<'a> {
    pub(crate) alg: Algorithm,
    /// The header's `alg`, as written (the one spelling of `alg`).
    pub(crate) alg_name: &'static str,
    pub(crate) kid: Option<String>,
    /// `typ` after normalization: `Some("jwt")` or `Some("at+jwt")`.
    typ: Option<&'static str>,
    /// The decoded payload: JSON text, not yet known to be an object
    /// ([`Parsed::claims`] reads it).
    payload: String,
    token: &'a str,
}

/// More members than any JOSE header has (RFC 7515 and RFC 7519 register
/// fewer than twenty).
const MAX_HEADER_MEMBERS: usize = 64;

/// The header members the rules read; every other member is skipped
/// unread (and unallocated), but no member name may appear twice, so no
/// other JOSE parser can read another `alg` or `kid` out of it than we do.
#[derive(Default)]
struct Header<'de> {
    alg: Option<ClaimValue<'de>>,
    kid: Option<ClaimValue<'de>>,
    typ: Option<ClaimValue<'de>>,
    crit: bool,
    b64: Option<Value>,
}

impl<'de> Deserialize<'de> for Header<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct HeaderVisitor;
        impl<'de> Visitor<'de> for HeaderVisitor {
            type Value = Header<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Header<'de>, A::Error> {
                let mut header = Header::default();
                let mut seen: Vec<Cow<'de, str>> = Vec::new();
                while let Some(name) = access.next_key::<ClaimValue<'de>>()? {
                    let ClaimValue::Text(name) = name else {
                        return Err(de::Error::custom("member name not a string"));
                    };
                    // The duplicate check is quadratic: bounded, so a header
                    // of thousands of members costs nothing to refuse.
                    if seen.len() == MAX_HEADER_MEMBERS {
                        return Err(de::Error::custom("too many members"));
                    }
                    if seen.contains(&name) {
                        return Err(de::Error::custom("duplicate member"));
                    }
                    match &*name {
                        "alg" => header.alg = Some(access.next_value()?),
                        "kid" => header.kid = Some(access.next_value()?),
                        "typ" => header.typ = Some(access.next_value()?),
                        "crit" => {
                            access.next_value::<IgnoredAny>()?;
                            header.crit = true;
                        }
                        "b64" => header.b64 = Some(access.next_value()?),
                        _ => {
                            access.next_value::<IgnoredAny>()?;
                        }
                    }
                    seen.push(name);
                }
                Ok(header)
            }
        }
        d.deserialize_map(HeaderVisitor)
    }
}

/// `typ` as RFC 8725 / RFC 9068 compare it: case-insensitive, with an
/// optional `application/` prefix.
fn normalized_typ(typ: &str) -> Option<&'static str> {
    const PREFIX: &str = "application/";
    let typ = match typ.get(..PREFIX.len()) {
        Some(head) if head.eq_ignore_ascii_case(PREFIX) => &typ[PREFIX.len()..],
        _ => typ,
    };
    if typ.eq_ignore_ascii_case("jwt") {
        Some("jwt")
    } else if typ.eq_ignore_ascii_case("at+jwt") {
        Some("at+jwt")
    } else {
        None
    }
}

/// The `alg` values a token may carry: the asymmetric JWS algorithms, each
/// in its one spelling (`Algorithm::from_str` accepts exactly these). HMAC
/// and `none` are not here, so never accepted.
const ASYMMETRIC_ALGS: [&str; 9] = [
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
];

/// Parses a token `looks_like_jwt` accepted and checks its header.
pub(crate) fn parse(token: &str) -> Result<Parsed<'_>, AuthError> {
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(_sig)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(invalid("malformed token"));
    };
    // A header is small: decoded on the stack, a long one on the heap.
    let mut stack = [0u8; 512];
    let heap;
    let header_bytes: &[u8] = match URL_SAFE_NO_PAD.decode_slice(header, &mut stack) {
        Ok(len) => &stack[..len],
        Err(DecodeSliceError::OutputSliceTooSmall) => {
            heap = URL_SAFE_NO_PAD
                .decode(header)
                .map_err(|_| invalid("malformed token"))?;
            &heap
        }
        Err(DecodeSliceError::DecodeError(_)) => return Err(invalid("malformed token")),
    };
    let header: Header<'_> =
        serde_json::from_slice(header_bytes).map_err(|_| invalid("malformed token"))?;
    let payload = URL_SAFE_NO_PAD
        .decode(payload)
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .ok_or(invalid("malformed token"))?;

    if header.crit {
        return Err(invalid("unsupported critical header"));
    }
    // RFC 7797 unencoded payloads are not supported (and need `crit` anyway).
    if header.b64.is_some_and(|v| v != Value::Bool(true)) {
        return Err(invalid("unsupported b64 header"));
    }
    let typ = match &header.typ {
        None => None,
        Some(ClaimValue::Text(t)) => Some(normalized_typ(t).ok_or(invalid("wrong token type"))?),
        Some(_) => return Err(invalid("wrong token type")),
    };
    let alg_name = match &header.alg {
        Some(ClaimValue::Text(a)) => ASYMMETRIC_ALGS.into_iter().find(|name| name == a),
        _ => None,
    }
    .ok_or(invalid("algorithm not allowed"))?;
    let alg = Algorithm::from_str(alg_name).map_err(|_| invalid("algorithm not allowed"))?;
    if matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512) {
        return Err(invalid("algorithm not allowed"));
    }
    let kid = match header.kid {
        None => None,
        Some(ClaimValue::Text(k)) => Some(k.into_owned()),
        Some(_) => return Err(invalid("malformed token")),
    };
    // `jku`, `x5u`, `jwk`, `x5c` are deliberately ignored: keys come only
    // from the configured issuer's JWKS.
    Ok(Parsed {
        alg,
        alg_name,
        kid,
        typ,
        payload,
        token,
    })
}

impl Parsed<'_> {
    /// The claims the checks read, from the payload (which must be a JSON
    /// object, each of those claims in it once).
    pub(crate) fn claims(&self) -> Result<Registered<'_>, AuthError> {
        Registered::read(&self.payload)
    }

    /// The principal of a token whose signature and claims passed.
    pub(crate) fn into_principal(self, checked: Checked) -> Principal {
        Principal {
            issuer: Some(checked.issuer),
            subject: checked.subject,
            scopes: checked.scopes,
            claims: Claims::from_object_text(self.payload),
            expires_at: checked.expires_at,
            identity_headers: Default::default(),
        }
    }

    /// Header rules that depend on the issuer's settings.
    pub(crate) fn check_header_for(&self, issuer: &IssuerSettings) -> Result<(), AuthError> {
        if issuer.require_at_jwt && self.typ != Some("at+jwt") {
            return Err(invalid("wrong token type"));
        }
        if !issuer.algorithms.contains(&self.alg) {
            return Err(invalid("algorithm not allowed"));
        }
        Ok(())
    }

    /// Checks the signature with `key`, for this token's one `alg`.
    ///
    /// Only the signature: header and claims were decoded once by `parse`
    /// and are checked by `check_header_for` / `check_claims`, so nothing is
    /// decoded twice. The check is aws-lc-rs's, on the public key parsed
    /// when the JWKS was loaded (`Key::verifier`): building the key from its
    /// components on every verify (what `jsonwebtoken::crypto::verify` does)
    /// costs RS256 about 3 us of its 21. The algorithm is still pinned twice
    /// over: the issuer's allow-list (`check_header_for`) and the key
    /// (`usable_for`, and a parsed key exists only for the algs it fits).
    pub(crate) fn verify_signature(&self, key: &Key) -> Result<(), AuthError> {
        if !key.usable_for(self.alg, self.alg_name) {
            return Err(invalid("algorithm does not fit the key"));
        }
        let public = key
            .verifier(self.alg)
            .ok_or(invalid("algorithm does not fit the key"))?;
        let (message, signature) = self
            .token
            .rsplit_once('.')
            .ok_or(invalid("malformed token"))?;
        // On the stack: the largest signature is an 8192-bit RSA one (1024
        // bytes; the slack is base64's conservative length estimate).
        let mut buf = [0u8; 1024 + 8];
        let len = URL_SAFE_NO_PAD
            .decode_slice(signature, &mut buf)
            .map_err(|_| invalid("bad signature"))?;
        public
            .verify_sig(message.as_bytes(), &buf[..len])
            .map_err(|_| invalid("bad signature"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_form() {
        let cases = [
            ("a.b.c", true),
            ("eyJ.eyJ.sig-_", true),
            ("a.b", false),
            ("a.b.c.d", false),
            ("a..c", false),
            (".b.c", false),
            ("a.b.", false),
            ("a.b.c=", false),
            ("a+b.c.d", false),
            ("opaque-token", false),
            ("", false),
            (".", false),
            ("..", false),
            ("a.b.c ", false),
            ("a.b.c\n", false),
            ("a.b.\u{e9}", false),
            ("a.b%2E.c", false),
        ];
        for (token, want) in cases {
            assert_eq!(looks_like_jwt(token), want, "{token:?}");
        }
    }

    /// The folded check agrees with splitting on dots, for every short mix
    /// of base64url, dot and other characters.
    #[test]
    fn jwt_shape_agrees_with_splitting() {
        let reference = |t: &str| {
            let parts: Vec<&str> = t.split('.').collect();
            parts.len() == 3
                && parts.iter().all(|p| {
                    !p.is_empty()
                        && p.bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                })
        };
        let alphabet = ['a', '.', '-', '=', '\u{e9}'];
        let mut token = String::new();
        for n in 0..=7u32 {
            for mut i in 0..alphabet.len().pow(n) {
                token.clear();
                for _ in 0..n {
                    token.push(alphabet[i % alphabet.len()]);
                    i /= alphabet.len();
                }
                assert_eq!(looks_like_jwt(&token), reference(&token), "{token:?}");
            }
        }
    }
}
