//! Signature verification per algorithm: the per-request cost of the cold
//! path (a token not in the verified-token cache), and the same through
//! scopegate's own [`scopegate::auth::Verifier`], hot and cold.
//!
//! Keys are generated at bench start with aws-lc-rs and tokens signed with
//! them. Groups:
//! - `raw_signature_verify`: aws-lc-rs's signature check alone, the public
//!   key parsed again on every check (`UnparsedPublicKey`).
//! - `parsed_signature_verify`: the same check with the key parsed once
//!   (`ParsedPublicKey`), the floor.
//! - `jsonwebtoken_crypto_verify`: `jsonwebtoken::crypto::verify`, the
//!   signature alone through jsonwebtoken (no header or claims decoding).
//! - `jsonwebtoken_decode`: `jsonwebtoken::decode` (aws_lc_rs backend):
//!   signature plus `iss`/`aud`/`exp`, as a cache miss does.
//! - `verifier_hot`: `Verifier::verify` of one token again and again (a cache hit).
//! - `verifier_cold`: `Verifier::verify` of a token never seen before, every
//!   iteration (miss, signature, claims, cache insert). Fresh tokens are signed
//!   outside the timed loop, so RS256 takes a while to set up.
//!
//! Run: `cargo bench --bench verify` (compare with `openssl speed rsa2048
//! ecdsap256 ed25519`, which bench/run.sh prints).

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::{KeyPair as RsaKeyPair, KeySize};
use aws_lc_rs::signature::{
    self, EcdsaKeyPair, Ed25519KeyPair, KeyPair as _, ParsedPublicKey, RsaPublicKeyComponents,
    UnparsedPublicKey,
};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use criterion::{criterion_group, criterion_main, Criterion};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use scopegate::auth::{AuthSettings, IssuerSettings, Verifier};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const ISSUER: &str = "https://bench.scopegate.test";
const AUDIENCE: &str = "bench-api";

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

/// A signing key for one algorithm.
enum Key {
    Rs256(RsaKeyPair),
    Es256(EcdsaKeyPair),
    EdDsa(Ed25519KeyPair),
}

impl Key {
    fn generate(alg: Algorithm) -> Key {
        match alg {
            Algorithm::RS256 => Key::Rs256(RsaKeyPair::generate(KeySize::Rsa2048).expect("RSA")),
            Algorithm::ES256 => Key::Es256(
                EcdsaKeyPair::generate(&signature::ECDSA_P256_SHA256_FIXED_SIGNING).expect("P-256"),
            ),
            Algorithm::EdDSA => Key::EdDsa(Ed25519KeyPair::generate().expect("Ed25519")),
            other => panic!("no bench key for {other:?}"),
        }
    }

    fn alg(&self) -> Algorithm {
        match self {
            Key::Rs256(_) => Algorithm::RS256,
            Key::Es256(_) => Algorithm::ES256,
            Key::EdDsa(_) => Algorithm::EdDSA,
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Key::Rs256(_) => "RS256",
            Key::Es256(_) => "ES256",
            Key::EdDsa(_) => "EdDSA",
        }
    }

    fn kid(&self) -> String {
        format!("bench-{}", self.name())
    }

    /// A token `header.claims.signature` for this key, `sub` = `user-{n}`.
    fn token(&self, n: u64) -> String {
        let now = now();
        let header = json!({"alg": self.name(), "kid": self.kid(), "typ": "JWT"});
        let claims = json!({
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": format!("user-{n}"),
            "jti": format!("bench-{n}"),
            "scope": "openid bench:read",
            "iat": now,
            "exp": now + 3600,
            "client_id": "bench-client",
        });
        let input = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let sig = match self {
            Key::Rs256(pair) => {
                let mut sig = vec![0; pair.public_modulus_len()];
                pair.sign(
                    &signature::RSA_PKCS1_SHA256,
                    &SystemRandom::new(),
                    input.as_bytes(),
                    &mut sig,
                )
                .expect("RSA sign");
                sig
            }
            Key::Es256(pair) => pair
                .sign(&SystemRandom::new(), input.as_bytes())
                .expect("ECDSA sign")
                .as_ref()
                .to_vec(),
            Key::EdDsa(pair) => pair.sign(input.as_bytes()).as_ref().to_vec(),
        };
        format!("{input}.{}", b64(&sig))
    }

    /// `count` distinct tokens, signed on every core.
    fn tokens(&self, first: u64, count: u64) -> Vec<String> {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
        let per = count.div_ceil(threads);
        std::thread::scope(|s| {
            let parts: Vec<_> = (0..threads)
                .map(|t| {
                    let start = first + t * per;
                    let end = (first + (t + 1) * per).min(first + count);
                    s.spawn(move || (start..end).map(|n| self.token(n)).collect::<Vec<_>>())
                })
                .collect();
            parts
                .into_iter()
                .flat_map(|p| p.join().expect("signing thread"))
                .collect()
        })
    }

    fn decoding_key(&self) -> DecodingKey {
        match self {
            Key::Rs256(pair) => {
                let public = pair.public_key();
                DecodingKey::from_rsa_raw_components(
                    public.modulus().big_endian_without_leading_zero(),
                    public.exponent().big_endian_without_leading_zero(),
                )
            }
            Key::Es256(pair) => {
                let (x, y) = pair.public_key().as_ref()[1..].split_at(32);
                DecodingKey::from_ec_components(&b64(x), &b64(y)).expect("EC key")
            }
            Key::EdDsa(pair) => {
                DecodingKey::from_ed_components(&b64(pair.public_key().as_ref())).expect("Ed key")
            }
        }
    }

    fn public_jwk(&self) -> Value {
        let mut jwk = match self {
            Key::Rs256(pair) => {
                let public = pair.public_key();
                json!({
                    "kty": "RSA",
                    "n": b64(public.modulus().big_endian_without_leading_zero()),
                    "e": b64(public.exponent().big_endian_without_leading_zero()),
                })
            }
            Key::Es256(pair) => {
                let (x, y) = pair.public_key().as_ref()[1..].split_at(32);
                json!({"kty": "EC", "crv": "P-256", "x": b64(x), "y": b64(y)})
            }
            Key::EdDsa(pair) => {
                json!({"kty": "OKP", "crv": "Ed25519", "x": b64(pair.public_key().as_ref())})
            }
        };
        let obj = jwk.as_object_mut().expect("object");
        obj.insert("kid".into(), self.kid().into());
        obj.insert("use".into(), "sig".into());
        obj.insert("alg".into(), self.name().into());
        jwk
    }

    /// The public key and aws-lc-rs algorithm for the `raw` group.
    fn raw(&self) -> (Vec<u8>, &'static dyn signature::VerificationAlgorithm) {
        match self {
            Key::Rs256(pair) => (
                pair.public_key().as_ref().to_vec(),
                &signature::RSA_PKCS1_2048_8192_SHA256,
            ),
            Key::Es256(pair) => (
                pair.public_key().as_ref().to_vec(),
                &signature::ECDSA_P256_SHA256_FIXED,
            ),
            Key::EdDsa(pair) => (pair.public_key().as_ref().to_vec(), &signature::ED25519),
        }
    }
}

impl Key {
    /// The public key parsed once, as the verifier holds it.
    fn parsed(&self) -> ParsedPublicKey {
        match self {
            Key::Rs256(pair) => {
                let public = pair.public_key();
                RsaPublicKeyComponents {
                    n: public.modulus().big_endian_without_leading_zero(),
                    e: public.exponent().big_endian_without_leading_zero(),
                }
                .to_parsed_public_key(&signature::RSA_PKCS1_2048_8192_SHA256)
                .expect("RSA public key")
            }
            _ => {
                let (public, alg) = self.raw();
                ParsedPublicKey::new(alg, public).expect("public key")
            }
        }
    }
}

fn validation(alg: Algorithm) -> Validation {
    let mut v = Validation::new(alg);
    v.set_issuer(&[ISSUER]);
    v.set_audience(&[AUDIENCE]);
    v.set_required_spec_claims(&["exp", "iss", "aud"]);
    v
}

fn keys() -> Vec<Key> {
    [Algorithm::RS256, Algorithm::ES256, Algorithm::EdDSA]
        .into_iter()
        .map(Key::generate)
        .collect()
}

fn bench_signature(c: &mut Criterion) {
    let keys = keys();
    let mut group = c.benchmark_group("raw_signature_verify");
    for key in &keys {
        let token = key.token(0);
        let (message, sig) = token.rsplit_once('.').expect("three parts");
        let sig = URL_SAFE_NO_PAD.decode(sig).expect("base64url signature");
        let (public, alg) = key.raw();
        let public = UnparsedPublicKey::new(alg, public);
        public
            .verify(message.as_bytes(), &sig)
            .expect("a bench of a failing check would measure the wrong path");
        group.bench_function(key.name(), |b| {
            b.iter(|| {
                public
                    .verify(black_box(message.as_bytes()), black_box(&sig))
                    .expect("valid signature")
            })
        });
    }
    group.finish();

    let mut group = c.benchmark_group("parsed_signature_verify");
    for key in &keys {
        let token = key.token(0);
        let (message, sig) = token.rsplit_once('.').expect("three parts");
        let sig = URL_SAFE_NO_PAD.decode(sig).expect("base64url signature");
        let public = key.parsed();
        public
            .verify_sig(message.as_bytes(), &sig)
            .expect("a bench of a failing check would measure the wrong path");
        group.bench_function(key.name(), |b| {
            b.iter(|| {
                public
                    .verify_sig(black_box(message.as_bytes()), black_box(&sig))
                    .expect("valid signature")
            })
        });
    }
    group.finish();

    let mut group = c.benchmark_group("jsonwebtoken_crypto_verify");
    for key in &keys {
        let token = key.token(0);
        let (message, sig) = token.rsplit_once('.').expect("three parts");
        let decoding_key = key.decoding_key();
        assert!(
            jsonwebtoken::crypto::verify(sig, message.as_bytes(), &decoding_key, key.alg())
                .expect("verify")
        );
        group.bench_function(key.name(), |b| {
            b.iter(|| {
                jsonwebtoken::crypto::verify(
                    black_box(sig),
                    black_box(message.as_bytes()),
                    &decoding_key,
                    key.alg(),
                )
                .expect("valid signature")
            })
        });
    }
    group.finish();

    let mut group = c.benchmark_group("jsonwebtoken_decode");
    for key in &keys {
        let token = key.token(0);
        let decoding_key = key.decoding_key();
        let validation = validation(key.alg());
        jsonwebtoken::decode::<Value>(&token, &decoding_key, &validation)
            .unwrap_or_else(|e| panic!("{} token does not verify: {e}", key.name()));
        group.bench_function(key.name(), |b| {
            b.iter(|| {
                jsonwebtoken::decode::<Value>(black_box(&token), &decoding_key, &validation)
                    .expect("valid token")
            })
        });
    }
    group.finish();
}

/// Serves `body` as `application/json` to every request on 127.0.0.1:0.
async fn serve_jwks(body: String) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let response = Arc::new(format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    ));
    tokio::spawn(async move {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else {
                continue;
            };
            let response = Arc::clone(&response);
            tokio::spawn(async move {
                let mut buf = vec![0; 8192];
                let mut seen = Vec::new();
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = conn.write_all(response.as_bytes()).await;
                let _ = conn.shutdown().await;
            });
        }
    });
    addr
}

fn bench_verifier(c: &mut Criterion) {
    let keys = keys();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let jwks = json!({"keys": keys.iter().map(Key::public_jwk).collect::<Vec<_>>()}).to_string();
    let verifier = rt.block_on(async {
        let addr = serve_jwks(jwks).await;
        let settings = AuthSettings {
            issuers: vec![IssuerSettings {
                issuer: ISSUER.to_owned(),
                audiences: vec![AUDIENCE.to_owned()],
                jwks_uri: Some(format!("http://{addr}/jwks.json").parse().expect("uri")),
                algorithms: keys.iter().map(Key::alg).collect(),
                require_at_jwt: false,
                jwks_refresh: Duration::from_secs(3600),
            }],
            introspection: None,
            leeway: Duration::from_secs(30),
            idp_timeout: Duration::from_secs(5),
            ca_file: None,
        };
        let verifier = Verifier::new(settings).expect("verifier");
        tokio::spawn(Arc::clone(&verifier).run_background(std::future::pending()));
        tokio::time::timeout(Duration::from_secs(10), verifier.wait_ready())
            .await
            .expect("JWKS fetched within 10 s");
        verifier
    });

    let mut group = c.benchmark_group("verifier_hot");
    for key in &keys {
        let token = key.token(0);
        rt.block_on(verifier.verify(&token))
            .unwrap_or_else(|e| panic!("{} token refused: {e}", key.name()));
        group.bench_function(key.name(), |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let start = Instant::now();
                    for _ in 0..iters {
                        black_box(verifier.verify(black_box(&token)).await.expect("valid"));
                    }
                    start.elapsed()
                })
            })
        });
    }
    group.finish();

    let mut group = c.benchmark_group("verifier_cold");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(2));
    for key in &keys {
        // Token numbers never repeat, so no iteration hits the cache.
        let mut next = 1_000_000u64;
        group.bench_function(key.name(), |b| {
            b.iter_custom(|iters| {
                let tokens = key.tokens(next, iters);
                next += iters;
                rt.block_on(async {
                    let start = Instant::now();
                    for token in &tokens {
                        black_box(verifier.verify(token).await.expect("valid"));
                    }
                    start.elapsed()
                })
            })
        });
    }
    group.finish();
    let m = verifier.metrics();
    eprintln!(
        "verifier token cache over the run: {} hits, {} misses",
        m.token_cache_hits, m.token_cache_misses
    );
}

criterion_group!(benches, bench_signature, bench_verifier);
criterion_main!(benches);
