//! Real signing keys generated at runtime (aws-lc-rs), their public JWKs, and
//! a token builder that signs whatever header and claims a test hands it —
//! including tokens jsonwebtoken itself would refuse to build.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::encoding::{AsDer, PublicKeyX509Der};
use aws_lc_rs::hmac;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::{KeyPair as RsaKeyPair, KeySize};
use aws_lc_rs::signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair as _};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use serde_json::{json, Map, Value};

/// The JWS algorithms a [`TestKey`] can sign with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Alg {
    RS256,
    RS384,
    RS512,
    PS256,
    PS384,
    PS512,
    ES256,
    ES384,
    EdDSA,
}

impl Alg {
    /// Every asymmetric algorithm, one key type each where they differ.
    pub const ALL: [Alg; 9] = [
        Alg::RS256,
        Alg::RS384,
        Alg::RS512,
        Alg::PS256,
        Alg::PS384,
        Alg::PS512,
        Alg::ES256,
        Alg::ES384,
        Alg::EdDSA,
    ];

    /// The JOSE name (`"RS256"`, `"EdDSA"`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Alg::RS256 => "RS256",
            Alg::RS384 => "RS384",
            Alg::RS512 => "RS512",
            Alg::PS256 => "PS256",
            Alg::PS384 => "PS384",
            Alg::PS512 => "PS512",
            Alg::ES256 => "ES256",
            Alg::ES384 => "ES384",
            Alg::EdDSA => "EdDSA",
        }
    }

    fn rsa_encoding(self) -> Option<&'static dyn signature::RsaEncoding> {
        Some(match self {
            Alg::RS256 => &signature::RSA_PKCS1_SHA256,
            Alg::RS384 => &signature::RSA_PKCS1_SHA384,
            Alg::RS512 => &signature::RSA_PKCS1_SHA512,
            Alg::PS256 => &signature::RSA_PSS_SHA256,
            Alg::PS384 => &signature::RSA_PSS_SHA384,
            Alg::PS512 => &signature::RSA_PSS_SHA512,
            _ => return None,
        })
    }
}

impl fmt::Display for Alg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// HMAC algorithms, only for forging tokens (the gateway must refuse them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HmacAlg {
    HS256,
    HS384,
    HS512,
}

impl HmacAlg {
    pub fn name(self) -> &'static str {
        match self {
            HmacAlg::HS256 => "HS256",
            HmacAlg::HS384 => "HS384",
            HmacAlg::HS512 => "HS512",
        }
    }

    fn algorithm(self) -> hmac::Algorithm {
        match self {
            HmacAlg::HS256 => hmac::HMAC_SHA256,
            HmacAlg::HS384 => hmac::HMAC_SHA384,
            HmacAlg::HS512 => hmac::HMAC_SHA512,
        }
    }
}

enum Material {
    Rsa(RsaKeyPair),
    Ec {
        pair: EcdsaKeyPair,
        crv: &'static str,
    },
    Ed(Ed25519KeyPair),
}

/// A freshly generated key pair with a `kid` and the `alg` its JWK announces.
///
/// Cloning is cheap and shares the key material.
#[derive(Clone)]
pub struct TestKey {
    pub kid: String,
    pub alg: Alg,
    material: Arc<Material>,
}

impl fmt::Debug for TestKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestKey")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

impl TestKey {
    /// Generates a key fit for `alg`: RSA 2048 for RS*/PS*, P-256 for ES256,
    /// P-384 for ES384, Ed25519 for EdDSA.
    pub fn generate(alg: Alg, kid: &str) -> TestKey {
        let material = match alg {
            Alg::RS256 | Alg::RS384 | Alg::RS512 | Alg::PS256 | Alg::PS384 | Alg::PS512 => {
                Material::Rsa(RsaKeyPair::generate(KeySize::Rsa2048).expect("RSA keygen"))
            }
            Alg::ES256 => Material::Ec {
                pair: EcdsaKeyPair::generate(&signature::ECDSA_P256_SHA256_FIXED_SIGNING)
                    .expect("P-256 keygen"),
                crv: "P-256",
            },
            Alg::ES384 => Material::Ec {
                pair: EcdsaKeyPair::generate(&signature::ECDSA_P384_SHA384_FIXED_SIGNING)
                    .expect("P-384 keygen"),
                crv: "P-384",
            },
            Alg::EdDSA => Material::Ed(Ed25519KeyPair::generate().expect("Ed25519 keygen")),
        };
        TestKey {
            kid: kid.to_owned(),
            alg,
            material: Arc::new(material),
        }
    }

    /// The same key material under another `kid` and/or `alg` label.
    pub fn relabel(&self, kid: &str, alg: Alg) -> TestKey {
        TestKey {
            kid: kid.to_owned(),
            alg,
            material: Arc::clone(&self.material),
        }
    }

    /// The public JWK: `kty`, `kid`, `use: "sig"`, `alg`, and `n`/`e` (RSA),
    /// `crv`/`x`/`y` (EC) or `crv`/`x` (OKP).
    pub fn public_jwk(&self) -> Value {
        let mut jwk = match &*self.material {
            Material::Rsa(pair) => {
                let public = pair.public_key();
                json!({
                    "kty": "RSA",
                    "n": b64(public.modulus().big_endian_without_leading_zero()),
                    "e": b64(public.exponent().big_endian_without_leading_zero()),
                })
            }
            Material::Ec { pair, crv } => {
                // Uncompressed SEC1 point: 0x04 || x || y.
                let point = pair.public_key().as_ref();
                let half = (point.len() - 1) / 2;
                json!({
                    "kty": "EC",
                    "crv": crv,
                    "x": b64(&point[1..1 + half]),
                    "y": b64(&point[1 + half..]),
                })
            }
            Material::Ed(pair) => json!({
                "kty": "OKP",
                "crv": "Ed25519",
                "x": b64(pair.public_key().as_ref()),
            }),
        };
        let obj = jwk.as_object_mut().expect("object");
        obj.insert("kid".into(), self.kid.clone().into());
        obj.insert("use".into(), "sig".into());
        obj.insert("alg".into(), self.alg.name().into());
        jwk
    }

    /// The public key as X.509 SubjectPublicKeyInfo DER.
    pub fn public_key_der(&self) -> Vec<u8> {
        let der: PublicKeyX509Der<'static> = match &*self.material {
            Material::Rsa(pair) => pair.public_key().as_der(),
            Material::Ec { pair, .. } => pair.public_key().as_der(),
            Material::Ed(pair) => pair.public_key().as_der(),
        }
        .expect("public key DER");
        der.as_ref().to_vec()
    }

    /// The public key as a `-----BEGIN PUBLIC KEY-----` PEM document (the
    /// bytes a classic HS256/RS256 confusion attack MACs with).
    pub fn public_key_pem(&self) -> String {
        let body = STANDARD.encode(self.public_key_der());
        let mut pem = String::from("-----BEGIN PUBLIC KEY-----\n");
        for line in body.as_bytes().chunks(64) {
            pem.push_str(std::str::from_utf8(line).expect("base64 is ascii"));
            pem.push('\n');
        }
        pem.push_str("-----END PUBLIC KEY-----\n");
        pem
    }

    /// Signs `message` with this key's own `alg`.
    pub fn sign_bytes(&self, message: &[u8]) -> Vec<u8> {
        self.sign_bytes_as(self.alg, message)
    }

    /// Signs `message` with `alg`, which must fit the key type (RSA keys take
    /// any RS*/PS*; EC and Ed25519 keys only their own). Panics otherwise.
    pub fn sign_bytes_as(&self, alg: Alg, message: &[u8]) -> Vec<u8> {
        match (&*self.material, alg) {
            (Material::Rsa(pair), alg) if alg.rsa_encoding().is_some() => {
                let mut sig = vec![0; pair.public_modulus_len()];
                let encoding = alg.rsa_encoding().expect("checked");
                pair.sign(encoding, &SystemRandom::new(), message, &mut sig)
                    .expect("RSA sign");
                sig
            }
            (Material::Ec { pair, crv }, alg)
                if (alg == Alg::ES256 && *crv == "P-256")
                    || (alg == Alg::ES384 && *crv == "P-384") =>
            {
                pair.sign(&SystemRandom::new(), message)
                    .expect("ECDSA sign")
                    .as_ref()
                    .to_vec()
            }
            (Material::Ed(pair), Alg::EdDSA) => pair.sign(message).as_ref().to_vec(),
            _ => panic!("key {} cannot sign {alg}", self.kid),
        }
    }

    /// A token with header `{alg, kid, typ: "JWT"}` and these claims.
    pub fn sign(&self, claims: &Value) -> String {
        TokenBuilder::for_key(self, claims.clone()).sign(self)
    }
}

/// Builds `header.payload.signature` from free-form JSON (or raw bytes).
///
/// Nothing is checked: absent `kid`, a lying `alg`, `crit`, `jku`, a
/// non-object header — the test decides.
#[derive(Clone, Debug)]
pub struct TokenBuilder {
    header: Vec<u8>,
    payload: Vec<u8>,
}

impl TokenBuilder {
    /// Header and claims as given.
    pub fn new(header: Value, claims: Value) -> TokenBuilder {
        TokenBuilder {
            header: header.to_string().into_bytes(),
            payload: claims.to_string().into_bytes(),
        }
    }

    /// Header `{"alg": key.alg, "kid": key.kid, "typ": "JWT"}`.
    pub fn for_key(key: &TestKey, claims: Value) -> TokenBuilder {
        TokenBuilder::new(
            json!({"alg": key.alg.name(), "kid": key.kid, "typ": "JWT"}),
            claims,
        )
    }

    /// Exact header and payload bytes (before base64url), e.g. JSON with
    /// duplicate keys or not JSON at all.
    pub fn raw(header: impl Into<Vec<u8>>, payload: impl Into<Vec<u8>>) -> TokenBuilder {
        TokenBuilder {
            header: header.into(),
            payload: payload.into(),
        }
    }

    /// Sets (or replaces) one header field. The header must be a JSON object.
    pub fn header(self, name: &str, value: impl Into<Value>) -> TokenBuilder {
        let header = edit_object(&self.header, |obj| {
            obj.insert(name.to_owned(), value.into());
        });
        TokenBuilder { header, ..self }
    }

    /// Removes one header field (e.g. `kid`, `typ`).
    pub fn without_header(self, name: &str) -> TokenBuilder {
        let header = edit_object(&self.header, |obj| {
            obj.remove(name);
        });
        TokenBuilder { header, ..self }
    }

    /// Sets (or replaces) one claim. The claims must be a JSON object.
    pub fn claim(self, name: &str, value: impl Into<Value>) -> TokenBuilder {
        let payload = edit_object(&self.payload, |obj| {
            obj.insert(name.to_owned(), value.into());
        });
        TokenBuilder { payload, ..self }
    }

    /// Removes one claim.
    pub fn without_claim(self, name: &str) -> TokenBuilder {
        let payload = edit_object(&self.payload, |obj| {
            obj.remove(name);
        });
        TokenBuilder { payload, ..self }
    }

    /// `b64url(header) + "." + b64url(payload)`: the bytes that get signed.
    pub fn signing_input(&self) -> String {
        format!("{}.{}", b64(&self.header), b64(&self.payload))
    }

    /// Signed with the key's own algorithm, whatever the header says.
    pub fn sign(&self, key: &TestKey) -> String {
        self.sign_as(key, key.alg)
    }

    /// Signed with `alg` (must fit the key type), whatever the header says.
    pub fn sign_as(&self, key: &TestKey, alg: Alg) -> String {
        let input = self.signing_input();
        let sig = key.sign_bytes_as(alg, input.as_bytes());
        format!("{input}.{}", b64(&sig))
    }

    /// MACed with `secret` (the header is not changed; set `alg` yourself).
    pub fn sign_hmac(&self, alg: HmacAlg, secret: &[u8]) -> String {
        let input = self.signing_input();
        let tag = hmac::sign(&hmac::Key::new(alg.algorithm(), secret), input.as_bytes());
        format!("{input}.{}", b64(tag.as_ref()))
    }

    /// `header.payload.` with an empty signature.
    pub fn unsigned(&self) -> String {
        format!("{}.", self.signing_input())
    }

    /// `header.payload.` + base64url of these exact signature bytes.
    pub fn with_signature(&self, signature: &[u8]) -> String {
        format!("{}.{}", self.signing_input(), b64(signature))
    }
}

fn edit_object(json_bytes: &[u8], edit: impl FnOnce(&mut Map<String, Value>)) -> Vec<u8> {
    let mut value: Value = serde_json::from_slice(json_bytes).expect("part is JSON");
    edit(value.as_object_mut().expect("part is a JSON object"));
    value.to_string().into_bytes()
}

/// Attack: `{"alg":"none","typ":"JWT"}` + claims + empty signature.
pub fn alg_none_token(claims: &Value) -> String {
    TokenBuilder::new(json!({"alg": "none", "typ": "JWT"}), claims.clone()).unsigned()
}

/// Attack: HS256 token (header `alg: HS256`, `kid` of `key`) MACed with the
/// RSA/EC public key's PEM bytes, as a verifier confusing the public key for
/// an HMAC secret would check it.
pub fn hs256_confusion_token(key: &TestKey, claims: &Value) -> String {
    TokenBuilder::new(
        json!({"alg": "HS256", "kid": key.kid, "typ": "JWT"}),
        claims.clone(),
    )
    .sign_hmac(HmacAlg::HS256, key.public_key_pem().as_bytes())
}

/// Seconds since the Unix epoch (wall clock, not tokio's clock).
pub fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as i64
}

/// Claims a gateway should accept: `iss`, `aud` (string or array), `sub`
/// (`"user-123"`), `iat` = `nbf` = now, `exp` = now + `ttl`, `scope`.
pub fn valid_claims(iss: &str, aud: impl Into<Value>, scope: &str, ttl: Duration) -> Value {
    let now = now_secs();
    json!({
        "iss": iss,
        "aud": aud.into(),
        "sub": "user-123",
        "iat": now,
        "nbf": now,
        "exp": now + ttl.as_secs() as i64,
        "scope": scope,
    })
}

/// base64url without padding.
pub fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}
