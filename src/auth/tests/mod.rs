//! Verifier tests with real parts: generated keys, signed tokens, a loopback IdP.

mod introspect;
mod support;

use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde_json::{json, Value};

use super::jwks::Tuning;
use super::{authorize, AuthError, AuthSettings, Verifier};
use crate::route::Requirement;
use support::*;

/// An IdP serving `rsa_a` as `k1`, and a cold verifier for it.
async fn setup() -> (Idp, Arc<Verifier>) {
    let idp = Idp::start().await;
    idp.set_jwks(vec![rsa_a().jwk(Some("k1"))]);
    let verifier = Verifier::new(settings(&idp)).unwrap();
    (idp, verifier)
}

async fn setup_with(idp: &Idp, edit: impl FnOnce(&mut AuthSettings)) -> Arc<Verifier> {
    let mut s = settings(idp);
    edit(&mut s);
    Verifier::new(s).unwrap()
}

fn invalid(why: &'static str) -> Result<(), AuthError> {
    Err(AuthError::InvalidToken(why))
}

async fn outcome(v: &Verifier, token: &str) -> Result<(), AuthError> {
    v.verify(token).await.map(|_| ())
}

fn is_unavailable(r: &Result<(), AuthError>) -> bool {
    matches!(r, Err(AuthError::Unavailable { retry_after, .. }) if *retry_after >= Duration::from_secs(1))
}

#[tokio::test]
async fn a_good_token_verifies_and_is_cached() {
    let (idp, v) = setup().await;
    let token = mint(rsa_a(), &header("k1"), &claims(&idp));
    let p = v.verify(&token).await.unwrap();
    assert_eq!(p.subject.as_deref(), Some("alice"));
    assert!(p.has_scope("read") && p.has_scope("write") && !p.has_scope("admin"));
    assert_eq!(p.claims.get("iss"), Some(json!(idp.issuer())));
    assert_eq!(p.issuer.as_deref(), Some(idp.issuer().as_str()));
    let again = v.verify(&token).await.unwrap();
    assert!(
        Arc::ptr_eq(&p, &again),
        "second verification comes from the cache"
    );
    let m = v.metrics();
    assert_eq!((m.token_cache_hits, m.token_cache_misses), (1, 1));
    assert_eq!((m.jwks_fetch_ok, m.jwks_fetch_error), (1, 0));
    assert!(v.is_ready());
}

/// The non-RSA keys of [`idp_with_every_key_type`] (RSA is the shared `rsa_a`).
struct EveryKey {
    p256: TestKey,
    p384: TestKey,
    ed: TestKey,
}

impl EveryKey {
    /// Every supported algorithm with the key and `kid` that sign it.
    fn by_alg(&self) -> [(&TestKey, &'static str, &'static str); 5] {
        [
            (rsa_a(), "rsa", "RS256"),
            (rsa_a(), "rsa", "PS256"),
            (&self.p256, "p256", "ES256"),
            (&self.p384, "p384", "ES384"),
            (&self.ed, "ed", "EdDSA"),
        ]
    }
}

/// An issuer publishing one key of each type: RSA (`rsa`, shared), P-256
/// (`p256`), P-384 (`p384`) and Ed25519 (`ed`).
async fn idp_with_every_key_type() -> (Idp, EveryKey) {
    let idp = Idp::start().await;
    let keys = EveryKey {
        p256: TestKey::p256(),
        p384: TestKey::p384(),
        ed: TestKey::ed25519(),
    };
    idp.set_jwks(vec![
        rsa_a().jwk(Some("rsa")),
        keys.p256.jwk(Some("p256")),
        keys.p384.jwk(Some("p384")),
        keys.ed.jwk(Some("ed")),
    ]);
    (idp, keys)
}

#[tokio::test]
async fn every_supported_algorithm_verifies() {
    let (idp, keys) = idp_with_every_key_type().await;
    let v = Verifier::new(settings(&idp)).unwrap();
    for (key, kid, alg) in keys.by_alg() {
        let token = mint(key, &json!({"alg": alg, "kid": kid}), &claims(&idp));
        assert_eq!(outcome(&v, &token).await, Ok(()), "{alg}");
    }
}

/// One token per claim rule, each breaking only that rule.
#[tokio::test]
async fn claim_rules() {
    let (idp, v) = setup().await;
    let base = claims(&idp);
    let now = now() as i64;
    let cases: Vec<(&str, Value, Result<(), AuthError>)> = vec![
        (
            "wrong iss",
            json!({"iss": "https://evil.example"}),
            invalid("unknown issuer"),
        ),
        (
            "iss trailing slash",
            json!({"iss": format!("{}/", idp.issuer())}),
            invalid("unknown issuer"),
        ),
        (
            "iss not a string",
            json!({"iss": [idp.issuer()]}),
            invalid("unknown issuer"),
        ),
        (
            "wrong aud",
            json!({"aud": "someone-else"}),
            invalid("wrong audience"),
        ),
        (
            "aud array with ours",
            json!({"aud": ["x", "other-api"]}),
            Ok(()),
        ),
        (
            "aud array without ours",
            json!({"aud": ["x", "y"]}),
            invalid("wrong audience"),
        ),
        (
            "aud missing",
            json!({"aud": null}),
            invalid("wrong audience"),
        ),
        (
            "expired",
            json!({"exp": now - 31}),
            invalid("token expired"),
        ),
        ("expired within leeway", json!({"exp": now - 10}), Ok(())),
        ("exp missing", json!({"exp": null}), invalid("missing exp")),
        (
            "exp as string",
            json!({"exp": (now + 300).to_string()}),
            invalid("malformed exp"),
        ),
        ("exp negative", json!({"exp": -1}), invalid("malformed exp")),
        ("exp fractional", json!({"exp": now as f64 + 300.5}), Ok(())),
        (
            "nbf in the future",
            json!({"nbf": now + 60}),
            invalid("token not yet valid"),
        ),
        ("nbf within leeway", json!({"nbf": now + 10}), Ok(())),
        (
            "nbf as string",
            json!({"nbf": now.to_string()}),
            invalid("malformed nbf"),
        ),
        (
            "iat in the future",
            json!({"iat": now + 60}),
            invalid("token issued in the future"),
        ),
        (
            "iat as string",
            json!({"iat": now.to_string()}),
            invalid("malformed iat"),
        ),
        (
            "sub not a string",
            json!({"sub": 7}),
            invalid("malformed sub"),
        ),
        (
            "scope not a string",
            json!({"scope": ["read"]}),
            invalid("malformed scope"),
        ),
    ];
    for (name, patch, want) in cases {
        let token = mint(rsa_a(), &header("k1"), &with(&base, patch));
        assert_eq!(outcome(&v, &token).await, want, "{name}");
    }
}

/// One token per header rule, each breaking only that rule.
#[tokio::test]
async fn header_rules() {
    let idp = Idp::start().await;
    let p256 = TestKey::p256();
    let mut rs_pinned = rsa_b().jwk(Some("pinned"));
    rs_pinned["alg"] = json!("RS256");
    idp.set_jwks(vec![
        rsa_a().jwk(Some("k1")),
        p256.jwk(Some("ec")),
        rs_pinned,
    ]);
    let v = Verifier::new(settings(&idp)).unwrap();
    let c = claims(&idp);
    let h = header("k1");
    let cases: Vec<(&str, &TestKey, Value, Result<(), AuthError>)> = vec![
        ("baseline", rsa_a(), h.clone(), Ok(())),
        ("no typ", rsa_a(), with(&h, json!({"typ": null})), Ok(())),
        (
            "typ at+jwt",
            rsa_a(),
            with(&h, json!({"typ": "at+jwt"})),
            Ok(()),
        ),
        (
            "typ application/AT+JWT",
            rsa_a(),
            with(&h, json!({"typ": "application/AT+JWT"})),
            Ok(()),
        ),
        (
            "typ jwt lower case",
            rsa_a(),
            with(&h, json!({"typ": "jwt"})),
            Ok(()),
        ),
        (
            "typ wrong",
            rsa_a(),
            with(&h, json!({"typ": "JOSE"})),
            invalid("wrong token type"),
        ),
        (
            "typ not a string",
            rsa_a(),
            with(&h, json!({"typ": 1})),
            invalid("wrong token type"),
        ),
        (
            "crit",
            rsa_a(),
            with(&h, json!({"crit": ["exp"], "exp": 1})),
            invalid("unsupported critical header"),
        ),
        (
            "crit b64",
            rsa_a(),
            with(&h, json!({"crit": ["b64"], "b64": true})),
            invalid("unsupported critical header"),
        ),
        (
            "alg not in allow-list",
            rsa_a(),
            with(&h, json!({"alg": "RS384"})),
            invalid("algorithm not allowed"),
        ),
        (
            "alg unknown",
            rsa_a(),
            with(&h, json!({"alg": "XS256"})),
            invalid("algorithm not allowed"),
        ),
        (
            "alg missing",
            rsa_a(),
            with(&h, json!({"alg": null})),
            invalid("algorithm not allowed"),
        ),
        (
            "RS256 header on EC key",
            rsa_a(),
            json!({"alg": "RS256", "kid": "ec"}),
            invalid("algorithm does not fit the key"),
        ),
        (
            "ES256 header on RSA key",
            &p256,
            json!({"alg": "ES256", "kid": "k1"}),
            invalid("algorithm does not fit the key"),
        ),
        (
            "JWK pins another alg",
            rsa_b(),
            json!({"alg": "PS256", "kid": "pinned"}),
            invalid("algorithm does not fit the key"),
        ),
        (
            "JWK pins this alg",
            rsa_b(),
            json!({"alg": "RS256", "kid": "pinned"}),
            Ok(()),
        ),
        (
            "signed by another key",
            rsa_b(),
            h.clone(),
            invalid("bad signature"),
        ),
        (
            "kid not a string",
            rsa_a(),
            with(&h, json!({"kid": 1})),
            invalid("malformed token"),
        ),
    ];
    for (name, key, header, want) in cases {
        let token = mint(key, &header, &c);
        assert_eq!(outcome(&v, &token).await, want, "{name}");
    }
}

#[tokio::test]
async fn alg_none_and_hmac_are_never_accepted() {
    let (idp, v) = setup().await;
    let c = claims(&idp);
    // Prime the key set, so a failure below is the alg rule and not the fetch.
    assert_eq!(outcome(&v, &mint(rsa_a(), &header("k1"), &c)).await, Ok(()));

    let unsigned = format!(
        "{}.{}.{}",
        b64(json!({"alg": "none", "kid": "k1"}).to_string()),
        b64(c.to_string()),
        b64("x")
    );
    assert_eq!(
        outcome(&v, &unsigned).await,
        invalid("algorithm not allowed")
    );

    // HS256 keyed with the public key material an attacker can download.
    let public = rsa_a().jwk(None);
    for secret in [
        public.to_string().into_bytes(),
        public["n"].as_str().unwrap().as_bytes().to_vec(),
    ] {
        let input = format!(
            "{}.{}",
            b64(json!({"alg": "HS256", "kid": "k1", "typ": "JWT"}).to_string()),
            b64(c.to_string())
        );
        let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &secret);
        let tag = aws_lc_rs::hmac::sign(&key, input.as_bytes());
        let token = format!("{input}.{}", b64(tag.as_ref()));
        assert_eq!(outcome(&v, &token).await, invalid("algorithm not allowed"));
    }
}

#[tokio::test]
async fn tampered_payload_fails_the_signature() {
    let (idp, v) = setup().await;
    let token = mint(rsa_a(), &header("k1"), &claims(&idp));
    let mut parts: Vec<String> = token.split('.').map(String::from).collect();
    parts[1] = b64(with(&claims(&idp), json!({"scope": "admin"})).to_string());
    assert_eq!(
        outcome(&v, &parts.join(".")).await,
        invalid("bad signature")
    );
    assert_eq!(outcome(&v, &token).await, Ok(()));
}

/// The signature check on the keys parsed at JWKS load, for every alg: the
/// good token passes, a changed payload or signature does not.
#[tokio::test]
async fn every_algorithm_rejects_a_tampered_token() {
    let (idp, keys) = idp_with_every_key_type().await;
    let v = Verifier::new(settings(&idp)).unwrap();
    let c = claims(&idp);
    for (key, kid, alg) in keys.by_alg() {
        let token = mint(key, &json!({"alg": alg, "kid": kid}), &c);
        let mut parts: Vec<String> = token.split('.').map(String::from).collect();
        let good = parts.clone();
        parts[1] = b64(with(&c, json!({"scope": "admin"})).to_string());
        assert_eq!(
            outcome(&v, &parts.join(".")).await,
            invalid("bad signature"),
            "{alg} payload"
        );
        let mut parts = good.clone();
        let mut sig = URL_SAFE_NO_PAD.decode(&parts[2]).unwrap();
        sig[0] ^= 1;
        parts[2] = b64(&sig);
        assert_eq!(
            outcome(&v, &parts.join(".")).await,
            invalid("bad signature"),
            "{alg} signature"
        );
        // A signature cut short or padded out is refused too, not an error.
        let mut parts = good.clone();
        parts[2] = b64(&sig[..sig.len() - 1]);
        assert_eq!(
            outcome(&v, &parts.join(".")).await,
            invalid("bad signature"),
            "{alg} short signature"
        );
        // Longer than any signature (8192-bit RSA): refused, not a panic.
        let mut parts = good.clone();
        parts[2] = b64(vec![7u8; 1500]);
        assert_eq!(
            outcome(&v, &parts.join(".")).await,
            invalid("bad signature"),
            "{alg} long signature"
        );
        assert_eq!(outcome(&v, &good.join(".")).await, Ok(()), "{alg}");
    }
}

/// The parsed key fixes the scheme: an RSA-PSS signature under an RS256
/// header (same key, same kid) does not verify, nor the reverse.
#[tokio::test]
async fn the_parsed_key_pins_the_scheme() {
    let (idp, v) = setup().await;
    let c = claims(&idp);
    for (header_alg, signed_as) in [("RS256", "PS256"), ("PS256", "RS256")] {
        let input = format!(
            "{}.{}",
            b64(json!({"alg": header_alg, "kid": "k1"}).to_string()),
            b64(c.to_string())
        );
        let sig = rsa_a().sign(signed_as, input.as_bytes());
        let token = format!("{input}.{}", b64(sig));
        assert_eq!(
            outcome(&v, &token).await,
            invalid("bad signature"),
            "{header_alg} header, {signed_as} signature"
        );
    }
}

/// Which algorithms each parsed JWK holds a verification key for: exactly
/// those `usable_for` allows, and none for a key that may not verify.
#[test]
fn parsed_keys_hold_only_the_algorithms_they_fit() {
    use super::jwks::parse_jwks;
    use crate::auth::Algorithm::*;
    let p256 = TestKey::p256();
    let ed = TestKey::ed25519();
    let mut pinned = rsa_a().jwk(Some("pinned"));
    pinned["alg"] = json!("PS256");
    let mut enc = rsa_a().jwk(Some("enc"));
    enc["use"] = json!("enc");
    let mut unknown_alg = rsa_a().jwk(Some("unknown-alg"));
    unknown_alg["alg"] = json!("RS999");
    let jwks = json!({"keys": [
        rsa_a().jwk(Some("rsa")),
        pinned,
        enc,
        unknown_alg,
        p256.jwk(Some("p256")),
        ed.jwk(Some("ed")),
    ]});
    let set = parse_jwks("test", jwks.to_string().as_bytes()).unwrap();
    let all = [
        RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA,
    ];
    let want: [(&str, &[jsonwebtoken::Algorithm]); 6] = [
        ("rsa", &[RS256, RS384, RS512, PS256, PS384, PS512]),
        ("pinned", &[PS256]),
        ("enc", &[]),
        ("unknown-alg", &[]),
        ("p256", &[ES256]),
        ("ed", &[EdDSA]),
    ];
    assert_eq!(set.keys.len(), want.len());
    for (key, (kid, algs)) in set.keys.iter().zip(want) {
        assert_eq!(key.kid.as_deref(), Some(kid));
        for alg in all {
            let name = format!("{alg:?}");
            assert_eq!(
                key.verifier(alg).is_some(),
                algs.contains(&alg),
                "{kid} {name}"
            );
            // A parsed key exists exactly where the lookup would use the key.
            assert_eq!(
                key.verifier(alg).is_some(),
                key.usable_for(alg, &name),
                "{kid} {name}"
            );
        }
    }
}

/// Key material is parsed when the JWKS is loaded: a key aws-lc-rs refuses
/// is skipped there (with a warning), like any other unusable JWK.
#[test]
fn bad_key_material_is_skipped_at_load() {
    use super::jwks::parse_jwks;
    let p256 = TestKey::p256();
    let mut off_curve = p256.jwk(Some("off-curve"));
    let mut y = URL_SAFE_NO_PAD
        .decode(off_curve["y"].as_str().unwrap())
        .unwrap();
    y[31] ^= 1;
    off_curve["y"] = json!(b64(&y));
    let mut leading_zero = rsa_a().jwk(Some("leading-zero"));
    let mut n = vec![0u8];
    n.extend(
        URL_SAFE_NO_PAD
            .decode(leading_zero["n"].as_str().unwrap())
            .unwrap(),
    );
    leading_zero["n"] = json!(b64(&n));
    let jwks = json!({"keys": [off_curve, leading_zero, p256.jwk(Some("good"))]});
    let set = parse_jwks("test", jwks.to_string().as_bytes()).unwrap();
    let kids: Vec<_> = set.keys.iter().map(|k| k.kid.as_deref()).collect();
    assert_eq!(kids, [Some("good")]);
}

/// Header rules on header JSON written by hand: repeated member names
/// (whichever value comes last: another parser could read the other `alg`
/// or `kid`), escapes, `null` members, non-object headers.
#[tokio::test]
async fn header_rules_on_raw_json() {
    let idp = Idp::start().await;
    idp.set_jwks(vec![rsa_a().jwk(Some("k1")), rsa_b().jwk(Some("k2"))]);
    let v = Verifier::new(settings(&idp)).unwrap();
    let c = claims(&idp);
    for (header, want) in [
        (r#"{"alg":"RS256","kid":"k1"}"#, Ok(())),
        (
            r#"{"alg":"HS256","alg":"RS256","kid":"k1"}"#,
            invalid("malformed token"),
        ),
        (
            r#"{"alg":"RS256","kid":"k2","kid":"k1"}"#,
            invalid("malformed token"),
        ),
        (
            r#"{"alg":"RS256","kid":"k1","typ":"JWT","typ":"JWT"}"#,
            invalid("malformed token"),
        ),
        (
            r#"{"alg":"RS256","kid":"k1","x":1,"x":2}"#,
            invalid("malformed token"),
        ),
        (
            r#"{"alg":"RS256","al\u0067":"RS256","kid":"k1"}"#,
            invalid("malformed token"),
        ),
        (r#"{"al\u0067":"RS\u00325\u0036","kid":"k\u0031"}"#, Ok(())),
        (
            r#"{"alg":"RS256","kid":"k1","jwk":{"kty":"RSA","n":[1,{"a":null}]},"x5c":["a"]}"#,
            Ok(()),
        ),
        (
            r#"{"alg":"RS256","kid":"k1","crit":null}"#,
            invalid("unsupported critical header"),
        ),
        (r#"{"alg":"RS256","kid":"k1","b64":true}"#, Ok(())),
        (
            r#"{"alg":"RS256","kid":"k1","b64":false}"#,
            invalid("unsupported b64 header"),
        ),
        (
            r#"{"alg":"RS256","kid":"k1","b64":null}"#,
            invalid("unsupported b64 header"),
        ),
        (
            r#"{"alg":"RS256","kid":"k1","typ":null}"#,
            invalid("wrong token type"),
        ),
        (
            r#"{"alg":"RS256","kid":"k1","typ":["JWT"]}"#,
            invalid("wrong token type"),
        ),
        (
            r#"{"alg":"RS256","kid":"k1","typ":"application/jwt"}"#,
            Ok(()),
        ),
        (
            r#"{"alg":"RS256","kid":"k1","typ":"application/"}"#,
            invalid("wrong token type"),
        ),
        (
            r#"{"alg":"RS256","kid":"k1","typ":"jwt\u00e9"}"#,
            invalid("wrong token type"),
        ),
        (
            r#"{"alg":"RS256","kid":{"id":"k1"}}"#,
            invalid("malformed token"),
        ),
        (r#"{"alg":"RS256","kid":null}"#, invalid("malformed token")),
        (
            r#"{"alg":null,"kid":"k1"}"#,
            invalid("algorithm not allowed"),
        ),
        (
            r#"{"alg":"rs256","kid":"k1"}"#,
            invalid("algorithm not allowed"),
        ),
        (
            r#"{"alg":"none","kid":"k1"}"#,
            invalid("algorithm not allowed"),
        ),
        (r#"["alg","RS256"]"#, invalid("malformed token")),
        (
            r#"{"alg":"RS256","kid":"k1"} x"#,
            invalid("malformed token"),
        ),
    ] {
        let input = format!("{}.{}", b64(header), b64(c.to_string()));
        let sig = rsa_a().sign("RS256", input.as_bytes());
        let token = format!("{input}.{}", b64(sig));
        assert_eq!(outcome(&v, &token).await, want, "{header}");
    }
}

/// A header with more members than any real one is refused before its
/// (quadratic) duplicate check can cost anything; a large real-looking
/// one still verifies.
#[tokio::test]
async fn header_member_count_is_bounded() {
    let idp = Idp::start().await;
    idp.set_jwks(vec![rsa_a().jwk(Some("k1"))]);
    let v = Verifier::new(settings(&idp)).unwrap();
    let c = claims(&idp);
    let header_with = |extra: usize| {
        let members: String = (0..extra).map(|i| format!(r#","x{i}":0"#)).collect();
        format!(r#"{{"alg":"RS256","kid":"k1"{members}}}"#)
    };
    for (extra, want) in [
        (62, Ok(())),
        (63, invalid("malformed token")),
        (5000, invalid("malformed token")),
    ] {
        let input = format!("{}.{}", b64(header_with(extra)), b64(c.to_string()));
        let sig = rsa_a().sign("RS256", input.as_bytes());
        let token = format!("{input}.{}", b64(sig));
        assert_eq!(outcome(&v, &token).await, want, "{extra} extra members");
    }
}

/// Payloads written by hand, signed for real: a claim scopegate checks may
/// not appear twice (no other JWT parser can read another `sub` or `exp`
/// out of the token than we did); any other may, and the last one is the
/// claim. The payload must be one JSON object.
#[tokio::test]
async fn payload_rules_on_raw_json() {
    let (idp, v) = setup().await;
    let c = claims(&idp);
    let body = c.to_string();
    let body = body.trim_end_matches('}');
    let cases = [
        (
            format!(r#"{body},"sub":"mallory"}}"#),
            invalid("duplicate claim"),
        ),
        (
            format!(r#"{body},"scope":"admin"}}"#),
            invalid("duplicate claim"),
        ),
        (
            format!(r#"{body},"\u0065xp":1}}"#),
            invalid("duplicate claim"),
        ),
        (
            format!(r#"{body},"aud":"api"}}"#),
            invalid("duplicate claim"),
        ),
        (format!(r#"{body},"email":"a@x","email":"b@x"}}"#), Ok(())),
        (format!("[{}]", c), invalid("malformed token")),
        (format!("{c} {c}"), invalid("malformed token")),
        (r#""text""#.to_string(), invalid("malformed token")),
    ];
    for (payload, want) in cases {
        let input = format!("{}.{}", b64(header("k1").to_string()), b64(&payload));
        let sig = rsa_a().sign("RS256", input.as_bytes());
        let token = format!("{input}.{}", b64(sig));
        assert_eq!(outcome(&v, &token).await, want, "{payload}");
        if want.is_ok() {
            let p = v.verify(&token).await.unwrap();
            assert_eq!(p.claims.get("email"), Some(json!("b@x")));
            assert_eq!(p.claims.as_json(), payload);
        }
    }
}

#[tokio::test]
async fn embedded_key_headers_are_never_used() {
    let (idp, v) = setup().await;
    let attacker = TestKey::rsa();
    idp.set_jwks_path("/evil", vec![attacker.jwk(Some("evil"))]);
    let c = claims(&idp);
    // The attacker's own key, in `jwk`, `x5c`-free header, with the real kid.
    let h = json!({"alg": "RS256", "kid": "k1", "jwk": attacker.jwk(None)});
    assert_eq!(
        outcome(&v, &mint(&attacker, &h, &c)).await,
        invalid("bad signature")
    );
    // `jku` / `x5u` pointing at a JWKS the attacker controls.
    let h =
        json!({"alg": "RS256", "kid": "evil", "jku": idp.url("/evil"), "x5u": idp.url("/evil")});
    assert_eq!(
        outcome(&v, &mint(&attacker, &h, &c)).await,
        invalid("unknown key")
    );
    assert_eq!(idp.hits("/evil"), 0, "jku must never be fetched");
}

#[tokio::test]
async fn token_without_kid() {
    let idp = Idp::start().await;
    let p256 = TestKey::p256();
    let c = claims(&idp);
    let no_kid = json!({"alg": "RS256"});

    // One RSA key (and an EC key that cannot do RS256): verified.
    idp.set_jwks(vec![rsa_a().jwk(Some("k1")), p256.jwk(Some("ec"))]);
    let v = Verifier::new(settings(&idp)).unwrap();
    assert_eq!(outcome(&v, &mint(rsa_a(), &no_kid, &c)).await, Ok(()));

    // Two RSA keys: refuse to guess, even for the right key.
    idp.set_jwks(vec![rsa_a().jwk(Some("k1")), rsa_b().jwk(Some("k2"))]);
    let v = Verifier::new(settings(&idp)).unwrap();
    assert_eq!(
        outcome(&v, &mint(rsa_a(), &no_kid, &c)).await,
        invalid("kid required")
    );
    assert_eq!(outcome(&v, &mint(rsa_a(), &header("k1"), &c)).await, Ok(()));
}

#[tokio::test]
async fn encryption_keys_never_verify() {
    let idp = Idp::start().await;
    let c = claims(&idp);
    let mut enc = rsa_a().jwk(Some("enc"));
    enc["use"] = json!("enc");
    let mut ops = rsa_a().jwk(Some("ops"));
    ops["key_ops"] = json!(["encrypt", "wrapKey"]);
    let mut sig_ops = rsa_a().jwk(Some("sig-ops"));
    sig_ops["use"] = json!("sig");
    sig_ops["key_ops"] = json!(["verify"]);
    idp.set_jwks(vec![enc, ops, sig_ops]);
    let v = Verifier::new(settings(&idp)).unwrap();
    assert_eq!(
        outcome(&v, &mint(rsa_a(), &header("enc"), &c)).await,
        invalid("algorithm does not fit the key")
    );
    assert_eq!(
        outcome(&v, &mint(rsa_a(), &header("ops"), &c)).await,
        invalid("algorithm does not fit the key")
    );
    assert_eq!(
        outcome(&v, &mint(rsa_a(), &header("sig-ops"), &c)).await,
        Ok(())
    );
    // Without kid, only the one signing key counts.
    assert_eq!(
        outcome(&v, &mint(rsa_a(), &json!({"alg": "RS256"}), &c)).await,
        Ok(())
    );
}

#[tokio::test]
async fn broken_keys_are_skipped_not_fatal() {
    let idp = Idp::start().await;
    idp.set_jwks(vec![
        json!({"kty": "RSA", "kid": "bad-b64", "n": "!!!", "e": "AQAB"}),
        json!({"kty": "EC", "kid": "bad-crv", "crv": "P-521", "x": "AA", "y": "AA"}),
        json!({"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"}),
        json!("not an object"),
        rsa_a().jwk(Some("k1")),
    ]);
    let v = Verifier::new(settings(&idp)).unwrap();
    assert_eq!(
        outcome(&v, &mint(rsa_a(), &header("k1"), &claims(&idp))).await,
        Ok(())
    );
    assert_eq!(
        outcome(&v, &mint(rsa_a(), &header("hmac"), &claims(&idp))).await,
        invalid("unknown key")
    );
}

#[tokio::test]
async fn scopes_from_scope_or_scp() {
    let (idp, v) = setup().await;
    let scopes = |p: &super::Principal| p.scopes.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let cases = [
        (
            json!({"scope": "openid email message"}),
            vec!["openid", "email", "message"],
        ),
        (
            json!({"scope": null, "scp": ["a", "b:c"]}),
            vec!["a", "b:c"],
        ),
        (json!({"scope": null, "scp": "a b"}), vec!["a", "b"]),
        (json!({"scope": null}), vec![]),
    ];
    for (patch, want) in cases {
        let token = mint(rsa_a(), &header("k1"), &with(&claims(&idp), patch.clone()));
        let p = v.verify(&token).await.unwrap();
        assert_eq!(scopes(&p), want, "{patch}");
    }
}

#[tokio::test]
async fn require_at_jwt() {
    let idp = Idp::start().await;
    idp.set_jwks(vec![rsa_a().jwk(Some("k1"))]);
    let v = setup_with(&idp, |s| s.issuers[0].require_at_jwt = true).await;
    let c = claims(&idp);
    let h = header("k1");
    assert_eq!(
        outcome(&v, &mint(rsa_a(), &h, &c)).await,
        invalid("wrong token type")
    );
    assert_eq!(
        outcome(&v, &mint(rsa_a(), &with(&h, json!({"typ": null})), &c)).await,
        invalid("wrong token type")
    );
    assert_eq!(
        outcome(&v, &mint(rsa_a(), &with(&h, json!({"typ": "at+JWT"})), &c)).await,
        Ok(())
    );
    assert_eq!(
        outcome(
            &v,
            &mint(rsa_a(), &with(&h, json!({"typ": "application/at+jwt"})), &c)
        )
        .await,
        Ok(())
    );
}

#[tokio::test]
async fn unknown_issuer_and_opaque_tokens() {
    let (idp, v) = setup().await;
    let token = mint(
        rsa_a(),
        &header("k1"),
        &with(&claims(&idp), json!({"iss": "https://other"})),
    );
    assert_eq!(outcome(&v, &token).await, invalid("unknown issuer"));
    assert_eq!(idp.hits("/jwks"), 0, "an unknown issuer fetches nothing");
    for opaque in [
        "",
        "abc",
        "a.b",
        "a.b.c.d",
        "a..c",
        "2YotnFZFEjr1zCsicMWpAA",
    ] {
        assert_eq!(
            outcome(&v, opaque).await,
            invalid("not a JWT"),
            "{opaque:?}"
        );
    }
    assert_eq!(
        outcome(&v, "e30.e30.e30").await,
        invalid("algorithm not allowed")
    );
    assert_eq!(
        outcome(&v, "bm90anNvbg.e30.e30").await,
        invalid("malformed token")
    );
}

#[tokio::test]
async fn new_kid_triggers_a_refetch_once_the_window_passed() {
    let (idp, v) = setup().await;
    let c = claims(&idp);
    assert_eq!(outcome(&v, &mint(rsa_a(), &header("k1"), &c)).await, Ok(()));
    assert_eq!(idp.hits("/jwks"), 1);

    // The issuer rotates to k2.
    idp.set_jwks(vec![rsa_a().jwk(Some("k1")), rsa_b().jwk(Some("k2"))]);
    let rotated = mint(rsa_b(), &header("k2"), &c);
    // Within 10 s of the last fetch: no refetch, and the last fetch was fine.
    assert_eq!(outcome(&v, &rotated).await, invalid("unknown key"));
    assert_eq!(idp.hits("/jwks"), 1);

    tokio::time::pause();
    tokio::time::advance(Duration::from_secs(11)).await;
    tokio::time::resume();
    assert_eq!(outcome(&v, &rotated).await, Ok(()));
    assert_eq!(idp.hits("/jwks"), 2);
    assert_eq!(outcome(&v, &mint(rsa_a(), &header("k1"), &c)).await, Ok(()));
}

#[tokio::test]
async fn a_flood_of_random_kids_fetches_at_most_once_per_window() {
    let (idp, v) = setup().await;
    let c = claims(&idp);
    assert_eq!(outcome(&v, &mint(rsa_a(), &header("k1"), &c)).await, Ok(()));
    tokio::time::pause();
    for round in 0..3u64 {
        for i in 0..100 {
            let token = mint(rsa_a(), &header(&format!("random-{round}-{i}")), &c);
            assert_eq!(outcome(&v, &token).await, invalid("unknown key"));
        }
        assert_eq!(idp.hits("/jwks"), 1 + round, "round {round}");
        let m = v.metrics();
        assert_eq!(m.jwks_fetch_ok + m.jwks_fetch_error, 1 + round);
        // Let the window pass; the next round may refetch exactly once.
        tokio::time::advance(Duration::from_secs(10)).await;
        tokio::time::resume();
        let token = mint(rsa_a(), &header(&format!("again-{round}")), &c);
        assert_eq!(outcome(&v, &token).await, invalid("unknown key"));
        tokio::time::pause();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_unknown_kids_share_one_fetch() {
    let (idp, v) = setup().await;
    let c = claims(&idp);
    let gate = idp.close_gate();
    let mut tasks = Vec::new();
    for i in 0..50 {
        let v = Arc::clone(&v);
        // Half know the (not yet fetched) k1, half are random.
        let kid = if i % 2 == 0 {
            "k1".to_string()
        } else {
            format!("rnd-{i}")
        };
        let token = mint(rsa_a(), &header(&kid), &c);
        tasks.push(tokio::spawn(
            async move { (kid, outcome(&v, &token).await) },
        ));
    }
    idp.arrived().await;
    // The first fetch is held at the IdP; give the other 49 callers the
    // chance to (wrongly) start their own before it is answered. There is
    // nothing to await for "no second request", hence this one pause.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(idp.hits("/jwks"), 1);
    gate.add_permits(1000);
    for task in tasks {
        let (kid, result) = task.await.unwrap();
        if kid == "k1" {
            assert_eq!(result, Ok(()));
        } else {
            assert_eq!(result, invalid("unknown key"), "{kid}");
        }
    }
    assert_eq!(idp.hits("/jwks"), 1);
}

#[tokio::test]
async fn issuer_down_warm_cache_keeps_serving() {
    let (idp, v) = setup().await;
    let c = claims(&idp);
    assert_eq!(outcome(&v, &mint(rsa_a(), &header("k1"), &c)).await, Ok(()));
    idp.set("/jwks", Reply::status(500));
    assert!(!v.key_sets.issuers[0].refresh().await);
    // A token not in the token cache still verifies with the last good keys.
    let fresh = mint(rsa_a(), &header("k1"), &with(&c, json!({"sub": "bob"})));
    assert_eq!(outcome(&v, &fresh).await, Ok(()));
    // An unknown kid now means "cannot tell": 503, not 401.
    let r = outcome(&v, &mint(rsa_a(), &header("k9"), &c)).await;
    assert!(is_unavailable(&r), "{r:?}");
    assert!(v.is_ready(), "readiness is a latch");
    assert_eq!(v.metrics().jwks_fetch_error, 1);
}

#[tokio::test]
async fn issuer_down_cold_is_unavailable() {
    let idp = Idp::start().await;
    idp.set("/jwks", Reply::status(503));
    let v = Verifier::new(settings(&idp)).unwrap();
    let r = outcome(&v, &mint(rsa_a(), &header("k1"), &claims(&idp))).await;
    assert!(is_unavailable(&r), "{r:?}");
    assert!(!v.is_ready());
    // Nothing listening at all.
    let closed = {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
    };
    let mut s = settings(&idp);
    s.issuers[0].jwks_uri = Some(format!("http://{closed}/jwks").parse().unwrap());
    let v = Verifier::new(s).unwrap();
    let r = outcome(&v, &mint(rsa_a(), &header("k1"), &claims(&idp))).await;
    assert!(is_unavailable(&r), "{r:?}");
}

/// Garbage, oversized and slow answers: the last good set keeps serving.
#[tokio::test]
async fn bad_jwks_answers_keep_the_last_good_set() {
    let big = format!(
        "{{\"keys\": [], \"pad\": \"{}\"}}",
        "x".repeat(2 * 1024 * 1024)
    );
    let bad = [
        ("not json", Reply::raw("<html>")),
        ("no keys", Reply::json(json!({"kid": "k1"}))),
        (
            "only broken keys",
            Reply::json(json!({"keys": [{"kty": "RSA", "n": "!"}]})),
        ),
        ("too large", Reply::raw(big.clone())),
        (
            "too large, no content-length",
            Reply {
                unsized_body: true,
                ..Reply::raw(big)
            },
        ),
        (
            "too slow",
            Reply {
                delay: Duration::from_secs(3),
                ..Reply::json(json!({"keys": []}))
            },
        ),
    ];
    for (name, reply) in bad {
        let (idp, v) = setup().await;
        let c = claims(&idp);
        assert_eq!(
            outcome(&v, &mint(rsa_a(), &header("k1"), &c)).await,
            Ok(()),
            "{name}"
        );
        idp.set("/jwks", reply);
        assert!(!v.key_sets.issuers[0].refresh().await, "{name}");
        let fresh = mint(rsa_a(), &header("k1"), &with(&c, json!({"sub": name})));
        assert_eq!(outcome(&v, &fresh).await, Ok(()), "{name}");
        assert_eq!(v.metrics().jwks_fetch_error, 1, "{name}");
    }
}

#[tokio::test]
async fn a_dropped_key_stops_verifying_after_refresh() {
    let (idp, v) = setup().await;
    let c = claims(&idp);
    let old = mint(rsa_a(), &header("k1"), &c);
    assert_eq!(outcome(&v, &old).await, Ok(()));
    assert_eq!(outcome(&v, &old).await, Ok(()), "cached");
    idp.set_jwks(vec![rsa_b().jwk(Some("k2"))]);
    assert!(v.key_sets.issuers[0].refresh().await);
    // Even the cached verification is not served with the key gone.
    assert_eq!(outcome(&v, &old).await, invalid("unknown key"));
    assert_eq!(outcome(&v, &mint(rsa_b(), &header("k2"), &c)).await, Ok(()));
}

#[tokio::test]
async fn an_unchanged_refresh_keeps_cached_tokens() {
    let (idp, v) = setup().await;
    let token = mint(rsa_a(), &header("k1"), &claims(&idp));
    assert_eq!(outcome(&v, &token).await, Ok(()));
    let before = v.metrics();
    // The issuer serves the same document again: the set, and the cached
    // verification made against it, stay.
    assert!(v.key_sets.issuers[0].refresh().await);
    assert_eq!(outcome(&v, &token).await, Ok(()));
    let after = v.metrics();
    assert_eq!(after.token_cache_hits, before.token_cache_hits + 1);
    assert_eq!(after.token_cache_misses, before.token_cache_misses);
}

#[tokio::test]
async fn discovery_finds_the_jwks() {
    let idp = Idp::start().await;
    idp.set_jwks_path("/keys", vec![rsa_a().jwk(Some("k1"))]);
    idp.set(
        "/idp/.well-known/openid-configuration",
        Reply::json(json!({"issuer": idp.issuer(), "jwks_uri": idp.url("/keys")})),
    );
    let v = setup_with(&idp, |s| s.issuers[0].jwks_uri = None).await;
    assert_eq!(
        outcome(&v, &mint(rsa_a(), &header("k1"), &claims(&idp))).await,
        Ok(())
    );
    assert_eq!(idp.hits("/keys"), 1);
}

#[tokio::test]
async fn discovery_with_another_issuer_is_refused() {
    let idp = Idp::start().await;
    idp.set_jwks_path("/keys", vec![rsa_a().jwk(Some("k1"))]);
    idp.set(
        "/idp/.well-known/openid-configuration",
        Reply::json(json!({"issuer": "https://evil.example", "jwks_uri": idp.url("/keys")})),
    );
    let v = setup_with(&idp, |s| s.issuers[0].jwks_uri = None).await;
    let r = outcome(&v, &mint(rsa_a(), &header("k1"), &claims(&idp))).await;
    assert!(is_unavailable(&r), "{r:?}");
    assert_eq!(idp.hits("/keys"), 0);
}

#[tokio::test]
async fn background_retries_until_ready_then_stops_on_shutdown() {
    let idp = Idp::start().await;
    idp.set("/jwks", Reply::status(500));
    let tuning = Tuning {
        initial_backoff: Duration::from_millis(10),
        ..Tuning::default()
    };
    let v = Verifier::with_tuning(settings(&idp), tuning, None).unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let bg = tokio::spawn(Arc::clone(&v).run_background(async {
        let _ = stopped.await;
    }));
    // Two failed attempts, then the IdP recovers.
    idp.arrived().await;
    idp.arrived().await;
    assert!(!v.is_ready());
    idp.set_jwks(vec![rsa_a().jwk(Some("k1"))]);
    tokio::time::timeout(Duration::from_secs(10), v.wait_ready())
        .await
        .expect("ready after the IdP recovers");
    assert!(v.is_ready());
    assert!(v.metrics().jwks_fetch_error >= 2);
    stop.send(()).unwrap();
    bg.await.unwrap();
}

#[tokio::test]
async fn never_cached_past_exp() {
    let (idp, v) = setup().await;
    // Expired 5 s ago but within the 30 s leeway: accepted, yet not cacheable.
    let token = mint(
        rsa_a(),
        &header("k1"),
        &with(&claims(&idp), json!({"exp": now() - 5})),
    );
    assert_eq!(outcome(&v, &token).await, Ok(()));
    assert_eq!(outcome(&v, &token).await, Ok(()));
    assert_eq!(v.metrics().token_cache_hits, 0);
    assert_eq!(v.metrics().token_cache_misses, 2);
}

#[test]
fn setup_rejects_unsafe_settings() {
    let base = AuthSettings {
        issuers: vec![super::IssuerSettings {
            issuer: "https://idp.example".into(),
            audiences: vec!["api".into()],
            jwks_uri: None,
            algorithms: vec![super::Algorithm::RS256],
            require_at_jwt: false,
            jwks_refresh: Duration::from_secs(60),
        }],
        introspection: None,
        leeway: Duration::from_secs(30),
        idp_timeout: Duration::from_secs(5),
        ca_file: None,
    };
    assert!(Verifier::new(base.clone()).is_ok());
    let mut hs = base.clone();
    hs.issuers[0].algorithms.push(super::Algorithm::HS256);
    assert!(Verifier::new(hs).is_err());
    let mut no_aud = base.clone();
    no_aud.issuers[0].audiences.clear();
    assert!(Verifier::new(no_aud).is_err());
    let mut twice = base.clone();
    twice.issuers.push(base.issuers[0].clone());
    assert!(Verifier::new(twice).is_err());
    let mut missing_ca = base;
    missing_ca.ca_file = Some("/nonexistent/ca.pem".into());
    assert!(Verifier::new(missing_ca).is_err());
}

#[test]
fn authorize_checks_scopes() {
    let p = super::Principal {
        issuer: None,
        subject: None,
        scopes: vec!["read".into(), "write".into()].into_boxed_slice(),
        claims: Default::default(),
        expires_at: 0,
        identity_headers: Default::default(),
    };
    let list = |s: &[&str]| s.iter().map(|s| Box::<str>::from(*s)).collect::<Box<[_]>>();
    assert!(authorize(&Requirement::AnyToken, &p));
    assert!(authorize(
        &Requirement::AllScopes(list(&["read", "write"])),
        &p
    ));
    assert!(!authorize(
        &Requirement::AllScopes(list(&["read", "admin"])),
        &p
    ));
    assert!(authorize(
        &Requirement::AnyScopes(list(&["admin", "write"])),
        &p
    ));
    assert!(!authorize(&Requirement::AnyScopes(list(&["admin"])), &p));
}

#[tokio::test]
async fn a_reload_keeps_unchanged_issuers_and_hands_over_their_refresh() {
    let one = Idp::start().await;
    let two = Idp::start().await;
    one.set_jwks(vec![rsa_a().jwk(Some("k1"))]);
    two.set_jwks(vec![rsa_b().jwk(Some("k2"))]);
    let old = Verifier::new(settings(&one)).unwrap();
    let old_background = old.start_background();
    tokio::time::timeout(Duration::from_secs(5), old.wait_ready())
        .await
        .expect("first issuer ready");
    let token = mint(rsa_a(), &header("k1"), &claims(&one));
    assert_eq!(outcome(&old, &token).await, Ok(()));
    assert_eq!(one.hits("/jwks"), 1);

    // Reload: the first issuer unchanged, a second one added.
    let mut both = settings(&one);
    both.issuers.push(settings(&two).issuers.remove(0));
    let new = Verifier::new_reusing(both.clone(), Some(&old)).unwrap();
    let new_background = new.start_background();
    drop(old_background);
    drop(old);
    assert!(!new.is_ready(), "the added issuer is not fetched yet");
    tokio::time::timeout(Duration::from_secs(5), new.wait_ready())
        .await
        .expect("added issuer fetched");
    // The kept issuer: same keys, no refetch, the cached token still a hit.
    assert_eq!(outcome(&new, &token).await, Ok(()));
    assert_eq!(
        new.metrics().token_cache_hits,
        1,
        "counters and cache carried over"
    );
    let token2 = mint(rsa_b(), &header("k2"), &claims(&two));
    assert_eq!(outcome(&new, &token2).await, Ok(()));
    assert_eq!(one.hits("/jwks"), 1, "unchanged issuer not refetched");
    assert_eq!(two.hits("/jwks"), 1);

    // An issuer whose settings changed starts afresh; the cached token of
    // that issuer is verified again (its key set is a new one).
    let mut changed = both.clone();
    changed.issuers[0].audiences = vec!["api".into()];
    let newer = Verifier::new_reusing(changed, Some(&new)).unwrap();
    let _newer_background = newer.start_background();
    drop(new_background);
    tokio::time::timeout(Duration::from_secs(5), newer.wait_ready())
        .await
        .expect("changed issuer fetched");
    assert_eq!(one.hits("/jwks"), 2);
    assert_eq!(two.hits("/jwks"), 1);
    let hits = newer.metrics().token_cache_hits;
    assert_eq!(outcome(&newer, &token).await, Ok(()));
    assert_eq!(
        newer.metrics().token_cache_hits,
        hits,
        "re-verified, not a hit"
    );
}
