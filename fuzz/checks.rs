//! The fuzz targets' bodies: one `pub fn <target>(data: &[u8])` each, which
//! panics when a property fails. Shared by the libFuzzer targets
//! (`fuzz_targets/<target>.rs`, run by `cargo fuzz`) and by the stable test
//! `tests/fuzz_corpus.rs` in the main crate, which replays the committed
//! corpus, every `fuzz/regressions/<target>/` input, and random inputs
//! through the same functions, so a crash once found stays covered by
//! `cargo test` on a stable toolchain.
#![allow(dead_code, unreachable_pub)]

pub mod normalize_match {
    /// Path normalizer + route matcher against an independent, slow reference.
    ///
    /// Input: UTF-8 lines. Lines `R <METHODS|*> <pattern>` define the route
    /// table (none: a fixed table); the last other line is `<METHOD> <path>` (or
    /// just a path, asked as GET).
    ///
    /// Properties: `normalize` never panics and is idempotent; its output starts
    /// with `/` and holds no `//`, no `.`/`..` segment, no `%2F`/`%5C`, no
    /// control character (raw or escaped), no lower-case hex escape; `lookup`
    /// never panics and returns exactly the route the reference picks (the most
    /// specific matching one, per the contract), and never a route whose pattern
    /// does not match the normalized path.
    use scopegate::route::{normalize, Requirement, RouteSpec, RouteTable};

    const DEFAULT_ROUTES: &[(&str, &str)] = &[
        ("*", "/"),
        ("GET", "/healthz"),
        ("*", "/public/**"),
        ("GET", "/api/messages"),
        ("PUT DELETE", "/api/messages/{id}"),
        ("*", "/api/reports/**"),
        ("*", "/api/**"),
        ("*", "/api/{a}/x/{b}"),
        ("POST", "/api/{a}/x/**"),
        ("*", "/users/@me"),
        ("*", "/users/{id}"),
        ("*", "/caf%C3%A9/**"),
        ("GET", "/a:b"),
        ("*", "/{x}"),
    ];

    fn spec(methods: &str, path: &str) -> RouteSpec {
        RouteSpec {
            path: path.to_owned(),
            methods: (methods != "*").then(|| methods.split(' ').map(str::to_owned).collect()),
            requirement: Requirement::AnyToken,
            upstream: 0,
        }
    }

    pub fn normalize_match(data: &[u8]) {
        let Ok(text) = std::str::from_utf8(data) else {
            return;
        };
        let mut specs = Vec::new();
        let mut request = "";
        for line in text.split('\n') {
            if let Some(rest) = line.strip_prefix("R ") {
                if let Some((methods, pattern)) = rest.rsplit_once(' ') {
                    specs.push(spec(methods, pattern));
                }
            } else {
                request = line;
            }
        }
        if specs.is_empty() {
            specs = DEFAULT_ROUTES.iter().map(|(m, p)| spec(m, p)).collect();
        }
        let (method, path) = match request.split_once(' ') {
            Some((m, p)) if !m.is_empty() => (m, p),
            _ => ("GET", request),
        };

        let Ok(normal) = normalize(path) else {
            return;
        };
        reference::check_normal_form(path, &normal);

        let Ok(table) = RouteTable::build(specs) else {
            return;
        };
        let got = table.lookup(method, &normal).map(|r| r.index);
        let want = reference::best(table.routes(), method, &normal);
        assert_eq!(got, want, "{method} {normal:?}");
        // The trailing slash never changes the answer.
        if normal.len() > 1 {
            let other = match normal.strip_suffix('/') {
                Some(bare) => bare.to_owned(),
                None => format!("{normal}/"),
            };
            assert_eq!(
                table.lookup(method, &other).map(|r| r.index),
                got,
                "{other:?}"
            );
        }
    }

    mod reference {
        use scopegate::route::{normalize, Route};

        pub fn check_normal_form(input: &str, normal: &str) {
            assert!(normal.starts_with('/'), "{input:?} -> {normal:?}");
            assert!(!normal.contains("//"), "{input:?} -> {normal:?}");
            assert!(
                !normal.bytes().any(|b| b < 0x20 || b == 0x7f || b == b'\\'),
                "{input:?} -> {normal:?}"
            );
            assert!(
                normal.split('/').all(|s| s != "." && s != ".."),
                "{input:?} -> {normal:?}"
            );
            let bytes = normal.as_bytes();
            let mut i = 0;
            while i < bytes.len() {
                if bytes[i] == b'%' {
                    let h = &normal[i + 1..i + 3];
                    assert!(
                        h.bytes()
                            .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b)),
                        "{input:?} -> {normal:?}"
                    );
                    let v = u8::from_str_radix(h, 16).unwrap();
                    assert!(
                        !(v.is_ascii_alphanumeric() || b"-._~".contains(&v)),
                        "escaped unreserved: {normal:?}"
                    );
                    assert!(
                        v != b'/' && v != b'\\' && v >= 0x20 && v != 0x7f,
                        "{normal:?}"
                    );
                    i += 3;
                } else {
                    i += 1;
                }
            }
            assert!(!normal.contains(['#', ';']), "{normal:?}");
            let again = normalize(normal).expect("a normal form normalizes");
            assert_eq!(again, normal, "not idempotent for {input:?}");
        }

        fn hex(b: u8) -> Option<u8> {
            (b as char).to_digit(16).map(|v| v as u8)
        }

        /// Percent-decodes (a malformed escape stays as it is).
        fn decode(s: &str) -> Vec<u8> {
            let b = s.as_bytes();
            let mut out = Vec::new();
            let mut i = 0;
            while i < b.len() {
                if b[i] == b'%' && i + 2 < b.len() {
                    if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                        out.push(h << 4 | l);
                        i += 3;
                        continue;
                    }
                }
                out.push(b[i]);
                i += 1;
            }
            out
        }

        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
        enum Rank {
            Glob = 1,
            End = 2,
            Param = 3,
            Literal = 4,
        }

        /// Specificity key of a pattern, left to right, padded with `End`.
        fn ranks(pattern: &str) -> Vec<Rank> {
            pattern_segments(pattern)
                .iter()
                .map(|s| match *s {
                    "**" => Rank::Glob,
                    s if s.starts_with('{') => Rank::Param,
                    _ => Rank::Literal,
                })
                .collect()
        }

        fn pattern_segments(pattern: &str) -> Vec<&str> {
            let body = &pattern[1..];
            let body = body.strip_suffix('/').unwrap_or(body);
            if body.is_empty() {
                Vec::new()
            } else {
                body.split('/').collect()
            }
        }

        pub fn matches(pattern: &str, path: &str) -> bool {
            let pat = pattern_segments(pattern);
            let body = &path[1..];
            let body = body.strip_suffix('/').unwrap_or(body);
            let segs: Vec<&str> = if body.is_empty() {
                Vec::new()
            } else {
                body.split('/').collect()
            };
            for (i, p) in pat.iter().enumerate() {
                if *p == "**" {
                    return true; // last segment by construction
                }
                let Some(seg) = segs.get(i) else {
                    return false;
                };
                if p.starts_with('{') {
                    if seg.is_empty() {
                        return false;
                    }
                } else if decode(p) != decode(seg) {
                    return false;
                }
            }
            pat.len() == segs.len()
        }

        pub fn allows(methods: Option<&[Box<str>]>, method: &str) -> bool {
            match methods {
                None => true,
                Some(list) => list
                    .iter()
                    .any(|m| &**m == method || (&**m == "GET" && method == "HEAD")),
            }
        }

        /// The most specific route that matches, by brute force.
        pub fn best(routes: &[Route], method: &str, path: &str) -> Option<usize> {
            let mut best: Option<(&Route, Vec<Rank>)> = None;
            for r in routes {
                if !matches(&r.pattern, path) || !allows(r.methods.as_deref(), method) {
                    continue;
                }
                let key = ranks(&r.pattern);
                let better = match &best {
                    None => true,
                    Some((b, bkey)) => {
                        let n = key.len().max(bkey.len());
                        let pad = |k: &Vec<Rank>, i: usize| k.get(i).copied().unwrap_or(Rank::End);
                        let ord = (0..n)
                            .map(|i| pad(&key, i).cmp(&pad(bkey, i)))
                            .find(|o| o.is_ne())
                            .unwrap_or(std::cmp::Ordering::Equal);
                        match ord {
                            std::cmp::Ordering::Greater => true,
                            std::cmp::Ordering::Less => false,
                            // Equal patterns: one naming methods beats one that does not.
                            std::cmp::Ordering::Equal => b.methods.is_none() && r.methods.is_some(),
                        }
                    }
                };
                if better {
                    best = Some((r, key));
                }
            }
            best.map(|(r, _)| r.index)
        }
    }
}

pub mod bearer {
    /// The Authorization header parser over arbitrary header values.
    ///
    /// Input: header values separated by `\n` (one or more Authorization
    /// headers). Properties: never panics; two or more headers are always a 400;
    /// a returned token is a non-empty RFC 6750 b64token that appears verbatim in
    /// the header, after a case-insensitive `Bearer` scheme.
    use http::header::{HeaderMap, HeaderValue, AUTHORIZATION};
    use scopegate::error::Rejection;
    use scopegate::proxy::bearer::bearer_token;

    fn b64token(t: &str) -> bool {
        let body = t.trim_end_matches('=');
        !body.is_empty()
            && body
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._~+/".contains(&b))
    }

    pub fn bearer(data: &[u8]) {
        let mut headers = HeaderMap::new();
        for value in data.split(|&b| b == b'\n') {
            // Only values hyper could have parsed reach the parser.
            if let Ok(value) = HeaderValue::from_bytes(value) {
                headers.append(AUTHORIZATION, value);
            }
        }
        let count = headers.get_all(AUTHORIZATION).iter().count();
        match bearer_token(&headers) {
            Ok(None) => assert!(count <= 1),
            Ok(Some(token)) => {
                assert_eq!(count, 1);
                assert!(b64token(token), "{token:?}");
                let value = headers[AUTHORIZATION].as_bytes();
                let value = value.trim_ascii();
                assert!(value[..6].eq_ignore_ascii_case(b"bearer"));
                assert!(value.ends_with(token.as_bytes()));
                assert!(value[6..value.len() - token.len()]
                    .iter()
                    .all(|b| b.is_ascii_whitespace()));
                assert!(value.len() > 6 + token.len());
            }
            Err(Rejection::BadAuthorization(_)) => assert!(count >= 1),
            Err(other) => panic!("unexpected rejection {other:?}"),
        }
    }
}

pub mod jwt {
    /// JWT header/claims decoding and the full verify path (signature
    /// included) against a fixed issuer and key set (RSA, EC P-256, Ed25519;
    /// the seed corpus holds real tokens signed by the matching private keys).
    ///
    /// Properties: never panics; deterministic; a token that is accepted has,
    /// by an independent decoding: an allowed asymmetric `alg`, no `crit`, the
    /// issuer's `iss`, an `aud` holding the audience, numeric `exp` in the
    /// future (with leeway) and the scopes of its `scope`/`scp` claim; and the
    /// same token with one signature character changed is rejected.
    use std::sync::OnceLock;
    use std::time::Duration;

    use scopegate::auth::fuzzing::{self, KeySet};
    use scopegate::auth::{Algorithm, IssuerSettings};
    use serde_json::Value;

    pub const NOW: u64 = 1_800_000_100;
    pub const LEEWAY: u64 = 30;

    pub fn setup() -> &'static (IssuerSettings, KeySet) {
        static SETUP: OnceLock<(IssuerSettings, KeySet)> = OnceLock::new();
        SETUP.get_or_init(|| {
            let issuer = IssuerSettings {
                issuer: "https://idp.fuzz".into(),
                audiences: vec!["fuzz-api".into()],
                jwks_uri: None,
                algorithms: vec![
                    Algorithm::RS256,
                    Algorithm::PS256,
                    Algorithm::ES256,
                    Algorithm::EdDSA,
                ],
                require_at_jwt: false,
                jwks_refresh: Duration::from_secs(300),
            };
            let keys = fuzzing::parse_jwks(include_bytes!("jwt_keys.json")).expect("fixed JWKS");
            assert_eq!(keys.len(), 3);
            (issuer, keys)
        })
    }

    fn decode(part: &str) -> Value {
        use base64::Engine as _;
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(part)
            .expect("accepted token part is base64url");
        serde_json::from_slice(&bytes).expect("accepted token part is JSON")
    }

    pub fn jwt(data: &[u8]) {
        let Ok(token) = std::str::from_utf8(data) else {
            return;
        };
        let (issuer, keys) = setup();
        let result = fuzzing::verify_jwt(token, issuer, keys, LEEWAY, NOW);
        let again = fuzzing::verify_jwt(token, issuer, keys, LEEWAY, NOW);
        assert_eq!(result.is_ok(), again.is_ok());
        let Ok(principal) = result else {
            return;
        };

        let parts: Vec<&str> = token.split('.').collect();
        assert_eq!(parts.len(), 3);
        let header = decode(parts[0]);
        let claims = decode(parts[1]);
        let alg = header["alg"].as_str().expect("alg is a string");
        assert!(["RS256", "PS256", "ES256", "EdDSA"].contains(&alg), "{alg}");
        assert!(header.get("crit").is_none());
        assert_eq!(claims["iss"], "https://idp.fuzz");
        let aud_ok = match &claims["aud"] {
            Value::String(a) => a == "fuzz-api",
            Value::Array(a) => a.iter().any(|a| a == "fuzz-api"),
            _ => false,
        };
        assert!(aud_ok, "{claims}");
        let exp = claims["exp"].as_f64().expect("numeric exp");
        assert!(exp + LEEWAY as f64 > NOW as f64, "{exp}");
        assert_eq!(principal.expires_at, exp.floor() as u64);
        let want: Vec<&str> = match (&claims["scope"], &claims["scp"]) {
            (Value::String(s), _) => s.split_ascii_whitespace().collect(),
            (Value::Null, Value::String(s)) => s.split_ascii_whitespace().collect(),
            (Value::Null, Value::Array(a)) => a.iter().map(|s| s.as_str().unwrap()).collect(),
            (Value::Null, Value::Null) => vec![],
            other => panic!("scopes from {other:?}"),
        };
        let got: Vec<&str> = principal.scopes.iter().map(|s| &**s).collect();
        assert_eq!(got, want);

        // The signature binds: change one character in the middle of it.
        let sig = parts[2].as_bytes();
        let mid = sig.len() / 2;
        let mut forged = sig.to_vec();
        forged[mid] = if forged[mid] == b'A' { b'B' } else { b'A' };
        let forged = format!(
            "{}.{}.{}",
            parts[0],
            parts[1],
            std::str::from_utf8(&forged).unwrap()
        );
        assert!(
            fuzzing::verify_jwt(&forged, issuer, keys, LEEWAY, NOW).is_err(),
            "a changed signature verified"
        );
    }
}

pub mod jwks {
    /// The JWKS document parser (what the verifier runs on every fetched key set).
    ///
    /// Properties: never panics; a document that is not JSON, or has no `keys`
    /// array, is an error; an accepted set holds no more keys than the array
    /// has entries, and every accepted key's `kid` is the string its entry had.
    use scopegate::auth::fuzzing;
    use serde_json::Value;

    pub fn jwks(data: &[u8]) {
        let result = fuzzing::parse_jwks(data);
        let doc: Option<Value> = serde_json::from_slice(data).ok();
        let entries = doc
            .as_ref()
            .and_then(|d| d.get("keys"))
            .and_then(Value::as_array);
        match (result, entries) {
            (Ok(_), None) => panic!("accepted a document without a keys array"),
            (Ok(set), Some(entries)) => {
                assert!(set.len() <= entries.len());
                assert!(entries.is_empty() || !set.is_empty());
                let kids: Vec<Option<&str>> = entries
                    .iter()
                    .map(|e| e.get("kid").and_then(Value::as_str))
                    .collect();
                for kid in set.kids() {
                    assert!(kids.contains(&kid), "{kid:?} not in the document");
                }
            }
            (Err(_), _) => {}
        }
    }
}

pub mod introspection {
    /// The RFC 7662 introspection answer check (what the introspector runs on a
    /// 200 answer's body).
    ///
    /// Properties: never panics; a body that is not a JSON object, or has no
    /// boolean `active`, is "cannot tell" (-> 503), never a principal; an
    /// accepted answer has `active: true`, an `exp` (when present) in the
    /// future, the configured `iss` and an `aud` holding the audience when they
    /// are present, and a principal that never outlives `exp` or `cache_ttl`.
    use std::sync::OnceLock;
    use std::time::Duration;

    use scopegate::auth::fuzzing;
    use scopegate::auth::{AuthError, ClientAuthMethod, IntrospectionSettings};
    use serde_json::Value;

    const NOW: u64 = 1_800_000_000;

    fn settings() -> &'static IntrospectionSettings {
        static S: OnceLock<IntrospectionSettings> = OnceLock::new();
        S.get_or_init(|| IntrospectionSettings {
            endpoint: "http://127.0.0.1:1/introspect".parse().unwrap(),
            client_id: "scopegate".into(),
            client_secret: "secret".into(),
            auth_method: ClientAuthMethod::ClientSecretBasic,
            issuer: Some("https://idp.fuzz".into()),
            audiences: Some(vec!["fuzz-api".into()]),
            cache_ttl: Duration::from_secs(60),
        })
    }

    pub fn introspection(data: &[u8]) {
        let result = fuzzing::judge_introspection(settings(), data, NOW);
        let doc: Option<serde_json::Map<String, Value>> = serde_json::from_slice(data).ok();
        match result {
            Err(AuthError::Unavailable { .. }) => {}
            Err(AuthError::InvalidToken(why)) => {
                panic!("invalid token is a cached negative, got {why}")
            }
            Ok(None) => {
                let doc = doc.expect("a verdict needs a JSON object");
                assert!(doc.get("active").is_some_and(Value::is_boolean));
            }
            Ok(Some(p)) => {
                let doc = doc.expect("a principal needs a JSON object");
                assert_eq!(doc.get("active"), Some(&Value::Bool(true)));
                if let Some(exp) = doc.get("exp") {
                    let exp = exp.as_f64().expect("numeric exp");
                    assert!(exp >= (NOW + 1) as f64, "{exp}");
                    assert!(p.expires_at <= exp.floor() as u64);
                }
                assert!(p.expires_at > NOW);
                if let Some(iss) = doc.get("iss") {
                    assert_eq!(iss, "https://idp.fuzz");
                }
                if let Some(aud) = doc.get("aud") {
                    let ok = match aud {
                        Value::String(a) => a == "fuzz-api",
                        Value::Array(a) => a.iter().any(|a| a == "fuzz-api"),
                        _ => false,
                    };
                    assert!(ok, "{aud}");
                }
            }
        }
    }
}

pub mod config {
    /// `config::from_yaml` on arbitrary text.
    ///
    /// Properties: never panics (YAML anchors/aliases, deep nesting, huge
    /// numbers, odd durations, bad URLs, `${NAME}`...); every error names the
    /// file and has line >= 1 and col >= 1; loading is deterministic.
    use std::path::Path;

    pub fn config(data: &[u8]) {
        let Ok(text) = std::str::from_utf8(data) else {
            return;
        };
        let env = |name: &str| (name == "SECRET").then(|| "s3cret".to_owned());
        let path = Path::new("fuzz.yaml");
        let first = scopegate::config::from_yaml_with_env(text, path, &env);
        match &first {
            Ok(config) => {
                for w in &config.warnings {
                    assert!(w.line >= 1 && w.col >= 1, "{w}");
                }
            }
            Err(errors) => {
                assert!(!errors.0.is_empty());
                for e in &errors.0 {
                    assert!(e.line >= 1 && e.col >= 1, "{e}");
                    assert_eq!(e.file, "fuzz.yaml");
                }
            }
        }
        let second = scopegate::config::from_yaml_with_env(text, path, &env);
        assert_eq!(first.is_ok(), second.is_ok());
        if let (Err(a), Err(b)) = (&first, &second) {
            assert_eq!(a, b);
        }
    }
}

pub mod upstream_response {
    /// scopegate's HTTP/1.1 response reader (head parser and body decoder)
    /// over arbitrary upstream bytes.
    ///
    /// Input: the first byte's low bit says whether the request was `HEAD`;
    /// the rest is what the upstream sent. Properties: never panics; the
    /// body is never longer than the input; and reading the bytes in pieces
    /// of 1, 3 or 64 bytes gives exactly what reading them at once gives
    /// (the same response, or an error every time), as reads may split a
    /// response anywhere.
    use scopegate::proxy::h1::read_response_for_fuzzing as read;

    pub fn upstream_response(data: &[u8]) {
        let Some((&first, wire)) = data.split_first() else {
            return;
        };
        let head_request = first & 1 == 1;
        let whole = read(wire, head_request, wire.len());
        if let Ok(Some(r)) = &whole {
            assert!(r.body.len() <= wire.len());
            assert!((100..=999).contains(&r.status));
            if head_request || r.status == 204 || r.status == 304 {
                assert!(r.body.is_empty());
            }
        }
        for step in [1, 3, 64] {
            let pieces = read(wire, head_request, step);
            match (&whole, &pieces) {
                (Ok(a), Ok(b)) => assert_eq!(a, b, "read in pieces of {step}"),
                (Err(_), Err(_)) => {}
                _ => panic!("at once: {whole:?}; in pieces of {step}: {pieces:?}"),
            }
        }
    }
}
