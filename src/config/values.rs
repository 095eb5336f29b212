//! Parsers for the scalar value kinds of routes.yaml: durations, `${NAME}`
//! substitution, CIDRs, URLs. Pure functions; errors are messages without a
//! position (the caller knows where the value sits).

use std::net::IpAddr;
use std::time::Duration;

/// `500ms`, `30s`, `5m`, `1h`, and sums of them written together: `1m30s`.
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    if t.is_empty() {
        return Err("empty duration; write e.g. `30s`".into());
    }
    if t.parse::<f64>().is_ok() {
        return Err(format!(
            "`{t}` has no unit; write a duration with one, e.g. `{t}s` or `{t}ms`"
        ));
    }
    let bad = || {
        format!("bad duration `{t}`: write a number and a unit (ms, s, m, h), e.g. `500ms`, `30s`, `5m`, `1m30s`")
    };
    let mut total = Duration::ZERO;
    let mut rest = t;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(bad());
        }
        let n: u64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let part = match unit {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => n.checked_mul(60).map(Duration::from_secs).ok_or_else(bad)?,
            "h" => n
                .checked_mul(3600)
                .map(Duration::from_secs)
                .ok_or_else(bad)?,
            _ => return Err(bad()),
        };
        total = total.checked_add(part).ok_or_else(bad)?;
    }
    Ok(total)
}

/// The shortest way to write `d` in the syntax `parse_duration` reads.
pub(crate) fn format_duration(d: Duration) -> String {
    if d.subsec_nanos() != 0 || d.is_zero() {
        return format!("{}ms", d.as_millis());
    }
    let mut s = d.as_secs();
    let mut out = String::new();
    for (unit, len) in [("h", 3600), ("m", 60), ("s", 1)] {
        if s >= len {
            out.push_str(&format!("{}{unit}", s / len));
            s %= len;
        }
    }
    out
}

/// Replaces `${NAME}` with the variable NAME from `env`; `$${` stands for a
/// literal `${`. Errors name the first problem (a missing variable, a bad
/// name, an unterminated `${`).
pub(crate) fn substitute_env(
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<String, String> {
    if !text.contains('$') {
        return Ok(text.to_string());
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i..];
        if let Some(tail) = after.strip_prefix("$${") {
            out.push_str("${");
            rest = tail;
        } else if let Some(tail) = after.strip_prefix("${") {
            let Some(end) = tail.find('}') else {
                return Err(
                    "unterminated `${`: write `${NAME}` (or `$${` for a literal `${`)".into(),
                );
            };
            let name = &tail[..end];
            let valid = !name.is_empty()
                && !name.starts_with(|c: char| c.is_ascii_digit())
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid {
                return Err(format!(
                    "`${{{name}}}` is not a valid variable name (letters, digits, `_`)"
                ));
            }
            match env(name) {
                Some(v) => out.push_str(&v),
                None => return Err(format!("environment variable `{name}` is not set")),
            }
            rest = &tail[end + 1..];
        } else {
            out.push('$');
            rest = &after[1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// `10.0.0.0/8`, `::1/128`, or a bare IP (= /32 or /128). Host bits must be zero.
pub(crate) fn parse_cidr(text: &str) -> Result<(IpAddr, u8), String> {
    let t = text.trim();
    let (ip_text, len_text) = match t.split_once('/') {
        Some((a, b)) => (a, Some(b)),
        None => (t, None),
    };
    let ip: IpAddr = ip_text.parse().map_err(|_| {
        format!("`{t}` is not a CIDR: write e.g. `10.0.0.0/8`, `::1/128` or a bare IP")
    })?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let len = match len_text {
        None => max,
        Some(l) => match l.parse::<u8>() {
            Ok(n) if n <= max => n,
            _ => {
                return Err(format!(
                    "`{t}`: the prefix length must be a number from 0 to {max}"
                ))
            }
        },
    };
    let masked = mask(ip, len);
    if masked != ip {
        return Err(format!(
            "`{t}` has bits set past the /{len} prefix; did you mean `{masked}/{len}`?"
        ));
    }
    Ok((ip, len))
}

fn mask(ip: IpAddr, len: u8) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => {
            let bits = u32::from(v4);
            let m = if len == 0 {
                0
            } else {
                u32::MAX << (32 - u32::from(len))
            };
            IpAddr::V4((bits & m).into())
        }
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            let m = if len == 0 {
                0
            } else {
                u128::MAX << (128 - u32::from(len))
            };
            IpAddr::V6((bits & m).into())
        }
    }
}

/// What a URL is for decides what it may contain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum UrlUse {
    /// An issuer identifier: no query, no fragment (RFC 8414).
    Issuer,
    /// A JWKS or introspection endpoint: a query is allowed.
    Endpoint,
    /// An upstream origin: no path other than `/`, no query.
    Upstream,
}

/// A checked URL, and whether it is plain http to a non-loopback host.
#[derive(Debug)]
pub(crate) struct CheckedUrl {
    pub(crate) uri: http::Uri,
    pub(crate) insecure: bool,
}

pub(crate) fn parse_url(text: &str, usage: UrlUse) -> Result<CheckedUrl, String> {
    let t = text.trim();
    if t.is_empty() {
        return Err("empty URL".into());
    }
    if t.contains('#') {
        return Err(format!("`{t}`: a URL here must not have a #fragment"));
    }
    if !t.contains("://") {
        return Err(format!("`{t}` must be an absolute http:// or https:// URL"));
    }
    let uri: http::Uri = t
        .parse()
        .map_err(|e| format!("`{t}` is not a valid URL ({e})"))?;
    let scheme = uri.scheme_str().map(str::to_ascii_lowercase);
    if !matches!(scheme.as_deref(), Some("http" | "https")) {
        return Err(format!("`{t}` must be an absolute http:// or https:// URL"));
    }
    let Some(authority) = uri.authority() else {
        return Err(format!("`{t}` has no host"));
    };
    if authority.as_str().contains('@') {
        return Err(format!("`{t}`: credentials in URLs are not supported"));
    }
    let host = authority.host();
    if host.is_empty() {
        return Err(format!("`{t}` has no host"));
    }
    let has_query = uri.query().is_some() || t.ends_with('?');
    match usage {
        UrlUse::Issuer if has_query => {
            return Err(format!("`{t}`: an issuer identifier has no query string"));
        }
        UrlUse::Upstream if has_query || !matches!(uri.path(), "" | "/") => {
            return Err(format!(
                "`{t}`: an upstream is an origin (scheme://host[:port]) and must have no path, query or fragment; the request's own path is forwarded as it came"
            ));
        }
        _ => {}
    }
    let insecure = scheme.as_deref() == Some("http") && !is_loopback(host);
    Ok(CheckedUrl { uri, insecure })
}

/// 127.0.0.0/8, ::1 and `localhost`.
pub(crate) fn is_loopback(host: &str) -> bool {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    if h.eq_ignore_ascii_case("localhost") {
        return true;
    }
    h.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        let ok = [
            ("500ms", Duration::from_millis(500)),
            ("30s", Duration::from_secs(30)),
            ("5m", Duration::from_secs(300)),
            ("1h", Duration::from_secs(3600)),
            ("1m30s", Duration::from_secs(90)),
            ("0s", Duration::ZERO),
        ];
        for (text, want) in ok {
            assert_eq!(parse_duration(text), Ok(want), "{text}");
            assert_eq!(parse_duration(&format_duration(want)), Ok(want), "{text}");
        }
        for bad in ["", "30", "1.5s", "5 m", "s", "10d", "-1s", "5mm"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        assert!(parse_duration("30").unwrap_err().contains("`30s`"));
        assert_eq!(format_duration(Duration::from_secs(90)), "1m30s");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1500ms");
    }

    #[test]
    fn env_substitution() {
        let env = |n: &str| (n == "A").then(|| "x".to_string());
        assert_eq!(substitute_env("a${A}b${A}", &env).as_deref(), Ok("axbx"));
        assert_eq!(substitute_env("$${A} $5", &env).as_deref(), Ok("${A} $5"));
        assert!(substitute_env("${B}", &env)
            .unwrap_err()
            .contains("`B` is not set"));
        assert!(substitute_env("${A", &env)
            .unwrap_err()
            .contains("unterminated"));
        assert!(substitute_env("${1A}", &env)
            .unwrap_err()
            .contains("not a valid"));
    }

    #[test]
    fn cidrs() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(parse_cidr("127.0.0.1/32"), Ok((ip("127.0.0.1"), 32)));
        assert_eq!(parse_cidr("10.0.0.0/8"), Ok((ip("10.0.0.0"), 8)));
        assert_eq!(parse_cidr("::1/128"), Ok((ip("::1"), 128)));
        assert_eq!(parse_cidr("::1"), Ok((ip("::1"), 128)));
        assert_eq!(parse_cidr("192.168.1.7"), Ok((ip("192.168.1.7"), 32)));
        assert_eq!(parse_cidr("0.0.0.0/0"), Ok((ip("0.0.0.0"), 0)));
        assert!(parse_cidr("10.0.0.1/8")
            .unwrap_err()
            .contains("`10.0.0.0/8`"));
        for bad in [
            "10.0.0.0/33",
            "::/129",
            "localhost",
            "10.0.0/8",
            "1.2.3.4/x",
        ] {
            assert!(parse_cidr(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn urls() {
        let up = |s| parse_url(s, UrlUse::Upstream);
        assert!(up("http://127.0.0.1:3000").is_ok_and(|u| !u.insecure));
        assert!(up("http://127.0.0.1:3000/").is_ok());
        assert!(up("http://backend:3000").is_ok_and(|u| u.insecure));
        assert!(up("http://127.0.0.1:3000/api")
            .unwrap_err()
            .contains("no path"));
        assert!(up("http://127.0.0.1:3000/?a=b").is_err());
        assert!(up("http://127.0.0.1:3000/#x").is_err());
        let ep = |s| parse_url(s, UrlUse::Endpoint);
        assert!(ep("https://idp.example.com/jwks?x=1").is_ok_and(|u| !u.insecure));
        assert!(ep("http://[::1]:8080/jwks").is_ok_and(|u| !u.insecure));
        assert!(ep("http://localhost/jwks").is_ok_and(|u| !u.insecure));
        assert!(ep("http://idp.example.com/jwks").is_ok_and(|u| u.insecure));
        for bad in [
            "idp.example.com",
            "/jwks",
            "ftp://x/y",
            "https://",
            "https://u:p@x/",
        ] {
            assert!(ep(bad).is_err(), "{bad}");
        }
        assert!(parse_url("https://x/oidc?a", UrlUse::Issuer).is_err());
    }
}
