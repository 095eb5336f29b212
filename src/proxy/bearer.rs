//! Reading the bearer token out of `Authorization` (RFC 6750 2.1).

use http::header::{HeaderMap, AUTHORIZATION};

use crate::error::Rejection;

/// The token of `Authorization: Bearer <token>`.
///
/// - no Authorization header, or one with another scheme (`Basic ...`): `Ok(None)` (-> 401)
/// - several Authorization headers: 400 `invalid_request`
/// - `Bearer` with no token, a token that is not a b64token, or trailing
///   garbage: 400 `invalid_request`
pub fn bearer_token(headers: &HeaderMap) -> Result<Option<&str>, Rejection> {
    bearer_credentials(headers)?.map(b64token).transpose()
}

/// The bytes after `Bearer ` in the one `Authorization` header, not yet
/// checked against the b64token grammar ([`b64token`] does that). The
/// proxy looks these up in the verified-token cache first: a token found
/// there passed the check when it was verified.
pub fn bearer_credentials(headers: &HeaderMap) -> Result<Option<&[u8]>, Rejection> {
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(Rejection::BadAuthorization(
            "more than one Authorization header",
        ));
    }
    let bytes = value.as_bytes().trim_ascii();
    let (scheme, rest) = match bytes.iter().position(|&b| b == b' ') {
        Some(i) => (&bytes[..i], &bytes[i..]),
        None => (bytes, &b""[..]),
    };
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        return Ok(None);
    }
    let token = rest.trim_ascii_start();
    if token.is_empty() {
        return Err(Rejection::BadAuthorization(
            "the Bearer header has no token",
        ));
    }
    Ok(Some(token))
}

/// The token, if it is a b64token (400 `invalid_request` otherwise).
pub fn b64token(token: &[u8]) -> Result<&str, Rejection> {
    if !is_b64token(token) {
        return Err(Rejection::BadAuthorization("malformed Bearer token"));
    }
    // b64token is ASCII, so this cannot fail.
    std::str::from_utf8(token).map_err(|_| Rejection::BadAuthorization("malformed Bearer token"))
}

/// `b64token = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="`
fn is_b64token(token: &[u8]) -> bool {
    let body_len = token.len() - token.iter().rev().take_while(|&&b| b == b'=').count();
    // Comparisons folded without an early exit, so the loop vectorizes:
    // tokens are long (hundreds of bytes) and nearly always valid. A table
    // lookup per byte does not vectorize: 168 ns against 96 ns on a
    // 700-byte RS256 token.
    body_len > 0
        && token[..body_len].iter().fold(true, |ok, &b| {
            ok & (b.is_ascii_alphanumeric()
                | (b == b'-')
                | (b == b'.')
                | (b == b'_')
                | (b == b'~')
                | (b == b'+')
                | (b == b'/'))
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn check(values: &[&str], expected: Result<Option<&str>, ()>) {
        let mut headers = HeaderMap::new();
        for v in values {
            headers.append(AUTHORIZATION, HeaderValue::from_str(v).unwrap());
        }
        let got = bearer_token(&headers).map_err(|e| {
            assert!(matches!(e, Rejection::BadAuthorization(_)), "{e:?}");
        });
        assert_eq!(got, expected, "{values:?}");
    }

    #[test]
    fn bearer_header_forms() {
        check(&[], Ok(None));
        check(&["Bearer abc.def.ghi"], Ok(Some("abc.def.ghi")));
        check(&["bearer abc"], Ok(Some("abc")));
        check(&["BEARER   abc=="], Ok(Some("abc==")));
        check(&["Basic dXNlcjpwYXNz"], Ok(None));
        check(&["Bearerabc"], Ok(None));
        check(&["Bearer"], Err(()));
        check(&["Bearer "], Err(()));
        check(&["Bearer a b"], Err(()));
        check(&["Bearer a,b"], Err(()));
        check(&["Bearer ==="], Err(()));
        check(&["Bearer a=b"], Err(()));
        check(&["Bearer a", "Bearer b"], Err(()));
        check(&["Bearer a", "Basic b"], Err(()));
    }

    /// The folded check agrees with the grammar read literally, for every
    /// byte alone and in every short mix of allowed, `=` and other bytes.
    #[test]
    fn b64token_agrees_with_the_grammar() {
        let body = |b: u8| b.is_ascii_alphanumeric() || b"-._~+/".contains(&b);
        let reference = |t: &[u8]| {
            let body_len = t.iter().position(|&b| b == b'=').unwrap_or(t.len());
            body_len > 0
                && t[..body_len].iter().all(|&b| body(b))
                && t[body_len..].iter().all(|&b| b == b'=')
        };
        for b in 0..=255u8 {
            assert_eq!(is_b64token(&[b]), reference(&[b]), "{b}");
            assert_eq!(
                is_b64token(&[b'a', b, b'=']),
                reference(&[b'a', b, b'=']),
                "{b}"
            );
        }
        let alphabet = [b'a', b'~', b'=', b' ', 0xff];
        let mut token = Vec::new();
        for n in 1..=6u32 {
            for mut i in 0..alphabet.len().pow(n) {
                token.clear();
                for _ in 0..n {
                    token.push(alphabet[i % alphabet.len()]);
                    i /= alphabet.len();
                }
                assert_eq!(is_b64token(&token), reference(&token), "{token:?}");
            }
        }
    }
}
