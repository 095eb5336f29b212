//! Signature verification per algorithm: the per-request cost of the cold
//! path (a token not in the verified-token cache).
//!
//! Keys are generated at bench start with aws-lc-rs and tokens signed with
//! them; `jsonwebtoken::decode` (aws_lc_rs backend) then checks the signature
//! and the `iss`/`aud`/`exp` claims, as the gateway does on a cache miss. The
//! `raw` group is aws-lc-rs's own signature check alone, the floor under it.
//!
//! Run: `cargo bench --bench verify` (compare with `openssl speed rsa2048
//! ecdsap256 ed25519`, which bench/run.sh prints).

use std::hint::black_box;
use std::time::{SystemTime, UNIX_EPOCH};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::{KeyPair as RsaKeyPair, KeySize};
use aws_lc_rs::signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair as _, UnparsedPublicKey};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use criterion::{criterion_group, criterion_main, Criterion};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::json;

const ISSUER: &str = "https://bench.scopegate.test";
const AUDIENCE: &str = "bench-api";

/// One algorithm's key, a token signed with it, and what verifies it.
struct Case {
    name: &'static str,
    token: String,
    decoding_key: DecodingKey,
    validation: Validation,
    /// Public key bytes and the aws-lc-rs verification algorithm, for `raw`.
    public_key: Vec<u8>,
    raw_alg: &'static dyn signature::VerificationAlgorithm,
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn signing_input(alg: &str) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs();
    let header = json!({"alg": alg, "kid": "bench-1", "typ": "JWT"});
    let claims = json!({
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "user-1",
        "scope": "openid bench:read",
        "iat": now,
        "exp": now + 3600,
        "client_id": "bench-client",
    });
    format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    )
}

fn validation(alg: Algorithm) -> Validation {
    let mut v = Validation::new(alg);
    v.set_issuer(&[ISSUER]);
    v.set_audience(&[AUDIENCE]);
    v.set_required_spec_claims(&["exp", "iss", "aud"]);
    v
}

fn rs256() -> Case {
    let pair = RsaKeyPair::generate(KeySize::Rsa2048).expect("RSA keygen");
    let input = signing_input("RS256");
    let mut sig = vec![0; pair.public_modulus_len()];
    pair.sign(
        &signature::RSA_PKCS1_SHA256,
        &SystemRandom::new(),
        input.as_bytes(),
        &mut sig,
    )
    .expect("RSA sign");
    let public = pair.public_key();
    let n = public.modulus().big_endian_without_leading_zero();
    let e = public.exponent().big_endian_without_leading_zero();
    Case {
        name: "RS256",
        token: format!("{input}.{}", b64(&sig)),
        decoding_key: DecodingKey::from_rsa_raw_components(n, e),
        validation: validation(Algorithm::RS256),
        public_key: public.as_ref().to_vec(),
        raw_alg: &signature::RSA_PKCS1_2048_8192_SHA256,
    }
}

fn es256() -> Case {
    let pair =
        EcdsaKeyPair::generate(&signature::ECDSA_P256_SHA256_FIXED_SIGNING).expect("P-256 keygen");
    let input = signing_input("ES256");
    let sig = pair
        .sign(&SystemRandom::new(), input.as_bytes())
        .expect("ECDSA sign");
    // Uncompressed SEC1 point: 0x04 || x || y.
    let point = pair.public_key().as_ref();
    let (x, y) = point[1..].split_at(32);
    Case {
        name: "ES256",
        token: format!("{input}.{}", b64(sig.as_ref())),
        decoding_key: DecodingKey::from_ec_components(&b64(x), &b64(y)).expect("EC key"),
        validation: validation(Algorithm::ES256),
        public_key: point.to_vec(),
        raw_alg: &signature::ECDSA_P256_SHA256_FIXED,
    }
}

fn eddsa() -> Case {
    let pair = Ed25519KeyPair::generate().expect("Ed25519 keygen");
    let input = signing_input("EdDSA");
    let sig = pair.sign(input.as_bytes());
    let public = pair.public_key().as_ref().to_vec();
    Case {
        name: "EdDSA",
        token: format!("{input}.{}", b64(sig.as_ref())),
        decoding_key: DecodingKey::from_ed_components(&b64(&public)).expect("Ed25519 key"),
        validation: validation(Algorithm::EdDSA),
        public_key: public,
        raw_alg: &signature::ED25519,
    }
}

fn cases() -> Vec<Case> {
    let cases = vec![rs256(), es256(), eddsa()];
    for case in &cases {
        // A bench of a check that fails would measure the wrong path.
        jsonwebtoken::decode::<serde_json::Value>(
            &case.token,
            &case.decoding_key,
            &case.validation,
        )
        .unwrap_or_else(|e| panic!("{} token does not verify: {e}", case.name));
    }
    cases
}

fn bench_decode(c: &mut Criterion) {
    let cases = cases();
    let mut group = c.benchmark_group("jsonwebtoken_decode");
    for case in &cases {
        group.bench_function(case.name, |b| {
            b.iter(|| {
                jsonwebtoken::decode::<serde_json::Value>(
                    black_box(&case.token),
                    &case.decoding_key,
                    &case.validation,
                )
                .expect("valid token")
            })
        });
    }
    group.finish();

    let mut group = c.benchmark_group("raw_signature_verify");
    for case in &cases {
        let (message, sig) = case.token.rsplit_once('.').expect("three parts");
        let sig = URL_SAFE_NO_PAD.decode(sig).expect("base64url signature");
        let key = UnparsedPublicKey::new(case.raw_alg, case.public_key.clone());
        group.bench_function(case.name, |b| {
            b.iter(|| {
                key.verify(black_box(message.as_bytes()), black_box(&sig))
                    .expect("valid signature")
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench_decode);
criterion_main!(benches);
