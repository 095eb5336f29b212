//! Header surgery on forwarded messages: hop-by-hop removal, identity-header
//! stripping (every spelling), `X-Forwarded-*`, and claims -> identity headers.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use crate::auth::Principal;

/// Hop-by-hop headers (RFC 9110 7.6.1, plus the legacy ones proxies still see).
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

pub(crate) static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub(crate) static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub(crate) static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Is this an HTTP/1.1 upgrade request or response (`Connection: upgrade` + `Upgrade`)?
pub fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .flat_map(|v| v.as_bytes().split(|&b| b == b','))
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"upgrade"))
}

/// `name`'s place in [`HOP_BY_HOP`], or [`UPGRADE_BIT`] for `upgrade`. By
/// length first: most names are ruled out without a comparison.
fn hop_by_hop_bit(name: &HeaderName) -> Option<u32> {
    let name = name.as_str();
    let i = match name.len() {
        2 if name == "te" => TE_BIT,
        7 if name == "upgrade" => UPGRADE_BIT,
        7 if name == "trailer" => 6,
        10 if name == "connection" => 0,
        10 if name == "keep-alive" => 1,
        16 if name == "proxy-connection" => 2,
        17 if name == "transfer-encoding" => 7,
        18 if name == "proxy-authenticate" => 3,
        19 if name == "proxy-authorization" => 4,
        _ => return None,
    };
    Some(i)
}

/// `te`'s place in [`HOP_BY_HOP`] (its value `trailers` survives).
const TE_BIT: u32 = 5;
/// The bit after the [`HOP_BY_HOP`] ones.
const UPGRADE_BIT: u32 = 8;

/// Removes hop-by-hop headers and every header the `Connection` header
/// names. With `keep_upgrade`, `Connection: upgrade` and `Upgrade` survive so
/// the next hop can switch protocols. `protected` names are never removed
/// because a `Connection` header named them.
pub fn remove_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool, protected: &[HeaderName]) {
    // One pass over the names finds which are present; only those are
    // removed (a hashed removal each). Most messages have none, or only
    // `Connection: keep-alive`.
    let present = headers
        .keys()
        .filter_map(hop_by_hop_bit)
        .fold(0u32, |bits, i| bits | 1 << i);
    let has = |i: u32| present & (1 << i) != 0;
    if present == 0 {
        if keep_upgrade {
            headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        }
        return;
    }
    // Names listed in Connection, collected first (rare: usually empty).
    let mut named: Vec<HeaderName> = Vec::new();
    for value in headers.get_all(header::CONNECTION) {
        for token in value.as_bytes().split(|&b| b == b',') {
            let token = token.trim_ascii();
            if token.is_empty() || (keep_upgrade && token.eq_ignore_ascii_case(b"upgrade")) {
                continue;
            }
            // `Connection: keep-alive` and friends: removed below anyway, and
            // parsing a name that is not a standard one allocates.
            if HOP_BY_HOP
                .iter()
                .any(|name| token.eq_ignore_ascii_case(name.as_str().as_bytes()))
            {
                continue;
            }
            if let Ok(name) = HeaderName::from_bytes(token) {
                if name != header::HOST && !protected.contains(&name) {
                    named.push(name);
                }
            }
        }
    }
    for name in named {
        headers.remove(name);
    }
    let te_trailers = has(TE_BIT)
        && headers
            .get(header::TE)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    for (i, name) in (0..).zip(&HOP_BY_HOP) {
        if has(i) {
            headers.remove(name);
        }
    }
    if te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    if keep_upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else if has(UPGRADE_BIT) {
        headers.remove(header::UPGRADE);
    }
}

/// The identity headers of a config: which names to strip, which claims to send.
#[derive(Debug, Clone)]
pub struct IdentityHeaders {
    /// (header name, claim name), names lower-case.
    pairs: Vec<(HeaderName, String)>,
    names: Vec<HeaderName>,
    /// Tells this configuration's values apart from those another one (before
    /// a reload) left on a cached principal.
    generation: u64,
}

impl IdentityHeaders {
    pub fn new(pairs: Vec<(HeaderName, String)>) -> Self {
        static GENERATIONS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let names = pairs.iter().map(|(n, _)| n.clone()).collect();
        let generation = GENERATIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        IdentityHeaders {
            pairs,
            names,
            generation,
        }
    }

    /// The header names, e.g. to protect them from `Connection`-named removal.
    pub fn names(&self) -> &[HeaderName] {
        &self.names
    }

    /// Does `name` fold into one of the identity headers (any case — header
    /// maps are already lower-case — and `_` in place of `-`)?
    fn is_spelling_of_identity(&self, name: &HeaderName) -> bool {
        let candidate = name.as_str().as_bytes();
        self.pairs.iter().any(|(n, _)| {
            let n = n.as_str().as_bytes();
            n.len() == candidate.len()
                && n.iter()
                    .zip(candidate)
                    .all(|(&a, &b)| a == b || (a == b'-' && b == b'_'))
        })
    }

    /// Removes every client-sent copy of the identity headers.
    pub fn strip(&self, headers: &mut HeaderMap) {
        if self.pairs.is_empty() {
            return;
        }
        let doomed: Vec<HeaderName> = headers
            .keys()
            .filter(|name| self.is_spelling_of_identity(name))
            .cloned()
            .collect();
        for name in doomed {
            headers.remove(name);
        }
    }

    /// Adds the identity headers from the principal's claims. A claim that is
    /// absent, null or cannot be a header value adds nothing.
    ///
    /// The values are made once per cached principal and kept on it, so a
    /// request with a cached token only clones them.
    pub fn insert(&self, headers: &mut HeaderMap, principal: &Principal) {
        let (generation, values) = principal
            .identity_headers
            .get_or_init(|| (self.generation, self.values(principal)));
        if *generation == self.generation {
            for (name, value) in values.iter() {
                headers.insert(name.clone(), value.clone());
            }
        } else {
            // Made by the configuration before a reload.
            for (name, value) in self.values(principal) {
                headers.insert(name, value);
            }
        }
    }

    fn values(&self, principal: &Principal) -> Box<[(HeaderName, HeaderValue)]> {
        self.pairs
            .iter()
            .filter_map(|(name, claim)| {
                let value = match (&**claim, &principal.subject) {
                    // Normalized: whichever claim carried them, space-separated.
                    ("scope" | "scp", _) => Some(principal.scopes.join(" ")),
                    // `sub` as a string, already read out of the claims.
                    ("sub", Some(subject)) => Some(subject.to_string()),
                    _ => principal
                        .claims
                        .get(claim)
                        .as_ref()
                        .and_then(claim_as_header_text),
                };
                let value = HeaderValue::try_from(value?).ok()?;
                // A copy of the name, not a clone: a clone of a custom
                // name shares its reference count with the configuration,
                // which every worker's requests would then write.
                let name = HeaderName::from_bytes(name.as_str().as_bytes()).ok()?;
                Some((name, value))
            })
            .collect()
    }
}

/// A claim as header text: strings as they are, arrays of strings joined by
/// spaces, numbers and booleans printed, objects as compact JSON.
fn claim_as_header_text(value: &serde_json::Value) -> Option<String> {
    use serde_json::Value;
    match value {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        Value::Bool(_) | Value::Number(_) | Value::Object(_) => Some(value.to_string()),
        Value::Array(items) => {
            let parts: Vec<String> = items
                .iter()
                .map(|v| match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .collect();
            Some(parts.join(" "))
        }
    }
}

/// A client address as an `X-Forwarded-For` entry.
pub fn forwarded_for_entry(ip: std::net::IpAddr) -> HeaderValue {
    // An address prints as digits, dots, colons and hex: always a valid value.
    HeaderValue::try_from(ip.to_string()).unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

/// Sets `X-Forwarded-For` (all incoming values kept, in order, the peer
/// appended), and `X-Forwarded-Proto` / `X-Forwarded-Host` (replacing what
/// the client sent).
pub fn set_forwarded(
    headers: &mut HeaderMap,
    peer: &HeaderValue,
    proto: &'static str,
    host: Option<HeaderValue>,
) {
    let mut xff = String::new();
    for value in headers.get_all(&X_FORWARDED_FOR) {
        if let Ok(v) = value.to_str() {
            let v = v.trim();
            if !v.is_empty() {
                xff.push_str(v);
                xff.push_str(", ");
            }
        }
    }
    if xff.is_empty() {
        // The common case (the gateway is the first hop): no copy at all.
        headers.insert(X_FORWARDED_FOR.clone(), peer.clone());
    } else {
        xff.push_str(peer.to_str().unwrap_or_default());
        if let Ok(v) = HeaderValue::try_from(xff) {
            headers.insert(X_FORWARDED_FOR.clone(), v);
        }
    }
    headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(proto));
    match host {
        Some(h) => {
            headers.insert(X_FORWARDED_HOST.clone(), h);
        }
        None => {
            headers.remove(&X_FORWARDED_HOST);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn identity() -> IdentityHeaders {
        IdentityHeaders::new(vec![
            (HeaderName::from_static("x-auth-subject"), "sub".into()),
            (HeaderName::from_static("x-auth-scopes"), "scope".into()),
        ])
    }

    #[test]
    fn the_quick_name_check_knows_exactly_the_hop_by_hop_names() {
        for (i, name) in (0..).zip(HOP_BY_HOP.iter()) {
            assert_eq!(hop_by_hop_bit(name), Some(i), "{name}");
        }
        assert_eq!(hop_by_hop_bit(&header::UPGRADE), Some(UPGRADE_BIT));
        for name in [
            "host",
            "tee",
            "upgrades",
            "trailers",
            "x-connection",
            "keep-alive2",
            "authorization",
            "proxy-authorizatio",
        ] {
            let name = HeaderName::from_bytes(name.as_bytes()).unwrap();
            assert_eq!(hop_by_hop_bit(&name), None, "{name}");
        }
    }

    #[test]
    fn hop_by_hop_and_connection_named_headers_go() {
        let mut h = map(&[
            ("connection", "keep-alive, x-secret, Host, x-auth-subject"),
            ("keep-alive", "timeout=5"),
            ("x-secret", "1"),
            ("te", "gzip"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "h2c"),
            ("host", "api.example"),
            ("x-auth-subject", "gateway-set"),
            ("x-kept", "yes"),
        ]);
        remove_hop_by_hop(&mut h, false, identity().names());
        let mut names: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        names.sort();
        assert_eq!(names, ["host", "x-auth-subject", "x-kept"]);
    }

    #[test]
    fn te_trailers_and_upgrades_survive_when_asked() {
        let mut h = map(&[
            ("connection", "Upgrade"),
            ("upgrade", "websocket"),
            ("te", "trailers"),
        ]);
        assert!(is_upgrade(&h));
        remove_hop_by_hop(&mut h, true, &[]);
        assert_eq!(h["connection"], "upgrade");
        assert_eq!(h["upgrade"], "websocket");
        assert_eq!(h["te"], "trailers");
    }

    #[test]
    fn identity_headers_are_stripped_in_every_spelling() {
        let mut h = map(&[
            ("x-auth-subject", "forged"),
            ("x_auth_subject", "forged"),
            ("X_AUTH_SCOPES", "admin"),
            ("x-auth-subjects", "different header"),
            ("x-other", "kept"),
        ]);
        identity().strip(&mut h);
        let mut names: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        names.sort();
        assert_eq!(names, ["x-auth-subjects", "x-other"]);
    }

    #[test]
    fn identity_headers_come_from_claims() {
        let mut claims = serde_json::Map::new();
        claims.insert("sub".into(), "user-1".into());
        claims.insert("groups".into(), serde_json::json!(["a", "b"]));
        let principal = Principal {
            issuer: None,
            subject: Some("user-1".into()),
            scopes: vec!["message".into(), "email".into()].into(),
            claims: crate::auth::Claims::from_map(&claims),
            expires_at: 0,
            identity_headers: Default::default(),
        };
        let ids = IdentityHeaders::new(vec![
            (HeaderName::from_static("x-auth-subject"), "sub".into()),
            (HeaderName::from_static("x-auth-scopes"), "scope".into()),
            (HeaderName::from_static("x-groups"), "groups".into()),
            (HeaderName::from_static("x-missing"), "nope".into()),
        ]);
        let mut h = HeaderMap::new();
        ids.insert(&mut h, &principal);
        assert_eq!(h["x-auth-subject"], "user-1");
        assert_eq!(h["x-auth-scopes"], "message email");
        assert_eq!(h["x-groups"], "a b");
        assert!(!h.contains_key("x-missing"));
        // Kept on the principal, and used again.
        let (_, kept) = principal.identity_headers.get().expect("kept");
        assert_eq!(kept.len(), 3);
        let mut again = HeaderMap::new();
        ids.insert(&mut again, &principal);
        assert_eq!(again, h);

        // Another configuration (a reload) makes its own, from the claims.
        let other = IdentityHeaders::new(vec![(HeaderName::from_static("x-user"), "sub".into())]);
        let mut h = HeaderMap::new();
        other.insert(&mut h, &principal);
        assert_eq!(h["x-user"], "user-1");
        assert_eq!(h.len(), 1);
    }

    #[test]
    fn forwarded_headers() {
        let mut h = map(&[
            ("x-forwarded-for", "10.0.0.1"),
            ("x-forwarded-for", "10.0.0.2, 10.0.0.3"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "evil"),
        ]);
        set_forwarded(
            &mut h,
            &forwarded_for_entry("127.0.0.9".parse().unwrap()),
            "http",
            Some(HeaderValue::from_static("api.example")),
        );
        assert_eq!(
            h["x-forwarded-for"],
            "10.0.0.1, 10.0.0.2, 10.0.0.3, 127.0.0.9"
        );
        assert_eq!(h.get_all("x-forwarded-for").iter().count(), 1);
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "api.example");
    }
}
