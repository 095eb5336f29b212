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
    if !is_b64token(token) {
        return Err(Rejection::BadAuthorization("malformed Bearer token"));
    }
    // b64token is ASCII, so this cannot fail.
    std::str::from_utf8(token)
        .map(Some)
        .map_err(|_| Rejection::BadAuthorization("malformed Bearer token"))
}

/// `b64token = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="`
fn is_b64token(token: &[u8]) -> bool {
    let body_len = token.len() - token.iter().rev().take_while(|&&b| b == b'=').count();
    // A table lookup per byte, folded without early exit: tokens are long
    // (hundreds of bytes) and nearly always valid.
    body_len > 0
        && token[..body_len]
            .iter()
            .fold(true, |ok, &b| ok & B64TOKEN[usize::from(b)])
}

/// The `b64token` body alphabet, indexed by byte.
static B64TOKEN: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] =
            c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~' | b'+' | b'/');
        b += 1;
    }
    table
};

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
}
