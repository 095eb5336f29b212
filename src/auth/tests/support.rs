//! Test parts: real key pairs (aws-lc-rs), hand-made signed tokens, and a
//! loopback HTTP server playing the identity provider.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair, RsaKeyPair};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{Notify, Semaphore};

use crate::auth::{Algorithm, AuthSettings, IssuerSettings};

pub(crate) fn b64(bytes: impl AsRef<[u8]>) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

pub(crate) fn now() -> u64 {
    crate::auth::token_cache::now_unix()
}

pub(crate) enum TestKey {
    Rsa(RsaKeyPair),
    P256(EcdsaKeyPair),
    P384(EcdsaKeyPair),
    Ed(Ed25519KeyPair),
}

impl TestKey {
    pub(crate) fn rsa() -> TestKey {
        TestKey::Rsa(RsaKeyPair::generate(KeySize::Rsa2048).unwrap())
    }
    pub(crate) fn p256() -> TestKey {
        TestKey::P256(EcdsaKeyPair::generate(&signature::ECDSA_P256_SHA256_FIXED_SIGNING).unwrap())
    }
    pub(crate) fn p384() -> TestKey {
        TestKey::P384(EcdsaKeyPair::generate(&signature::ECDSA_P384_SHA384_FIXED_SIGNING).unwrap())
    }
    pub(crate) fn ed25519() -> TestKey {
        TestKey::Ed(Ed25519KeyPair::generate().unwrap())
    }

    /// The public JWK, with `kid` when given.
    pub(crate) fn jwk(&self, kid: Option<&str>) -> Value {
        let mut jwk = match self {
            TestKey::Rsa(k) => {
                let c = signature::RsaPublicKeyComponents::<Vec<u8>>::from(k.public_key());
                json!({"kty": "RSA", "n": b64(&c.n), "e": b64(&c.e)})
            }
            TestKey::P256(k) | TestKey::P384(k) => {
                let point = k.public_key().as_ref();
                let len = (point.len() - 1) / 2;
                let crv = if len == 32 { "P-256" } else { "P-384" };
                json!({"kty": "EC", "crv": crv, "x": b64(&point[1..1 + len]), "y": b64(&point[1 + len..])})
            }
            TestKey::Ed(k) => {
                json!({"kty": "OKP", "crv": "Ed25519", "x": b64(k.public_key().as_ref())})
            }
        };
        if let Some(kid) = kid {
            jwk["kid"] = json!(kid);
        }
        jwk
    }

    pub(crate) fn sign(&self, alg: &str, message: &[u8]) -> Vec<u8> {
        let rng = SystemRandom::new();
        match self {
            TestKey::Rsa(k) => {
                let params: &'static dyn signature::RsaEncoding = match alg {
                    "RS384" => &signature::RSA_PKCS1_SHA384,
                    "RS512" => &signature::RSA_PKCS1_SHA512,
                    "PS256" => &signature::RSA_PSS_SHA256,
                    "PS384" => &signature::RSA_PSS_SHA384,
                    "PS512" => &signature::RSA_PSS_SHA512,
                    _ => &signature::RSA_PKCS1_SHA256,
                };
                let mut sig = vec![0; k.public_modulus_len()];
                k.sign(params, &rng, message, &mut sig).unwrap();
                sig
            }
            TestKey::P256(k) | TestKey::P384(k) => k.sign(&rng, message).unwrap().as_ref().to_vec(),
            TestKey::Ed(k) => k.sign(message).as_ref().to_vec(),
        }
    }
}

/// Shared keys: RSA generation is the slow part of the suite.
pub(crate) fn rsa_a() -> &'static TestKey {
    static KEY: OnceLock<TestKey> = OnceLock::new();
    KEY.get_or_init(TestKey::rsa)
}
pub(crate) fn rsa_b() -> &'static TestKey {
    static KEY: OnceLock<TestKey> = OnceLock::new();
    KEY.get_or_init(TestKey::rsa)
}

/// Signs `header.claims` with `key`, using the header's `alg` for the scheme.
pub(crate) fn mint(key: &TestKey, header: &Value, claims: &Value) -> String {
    let alg = header["alg"].as_str().unwrap_or("RS256");
    let input = format!("{}.{}", b64(header.to_string()), b64(claims.to_string()));
    let sig = key.sign(alg, input.as_bytes());
    format!("{input}.{}", b64(sig))
}

/// Sets (or, for `null`, removes) the members of `patch` in `base`.
pub(crate) fn with(base: &Value, patch: Value) -> Value {
    let mut out = base.clone();
    let (Value::Object(out_map), Value::Object(patch)) = (&mut out, patch) else {
        panic!("objects only");
    };
    for (k, v) in patch {
        if v.is_null() {
            out_map.remove(&k);
        } else {
            out_map.insert(k, v);
        }
    }
    out
}

/// One canned answer.
#[derive(Clone)]
pub(crate) struct Reply {
    pub(crate) status: u16,
    pub(crate) body: String,
    pub(crate) delay: Duration,
    /// Send no content-length: the body ends when the connection closes.
    pub(crate) unsized_body: bool,
}

impl Reply {
    pub(crate) fn raw(body: impl Into<String>) -> Reply {
        Reply {
            status: 200,
            body: body.into(),
            delay: Duration::ZERO,
            unsized_body: false,
        }
    }
    pub(crate) fn json(body: Value) -> Reply {
        Reply::raw(body.to_string())
    }
    pub(crate) fn status(status: u16) -> Reply {
        Reply {
            status,
            ..Reply::raw("{}")
        }
    }
}

/// A request as the fake IdP saw it.
#[derive(Debug, Clone)]
pub(crate) struct Seen {
    pub(crate) path: String,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: String,
}

#[derive(Default)]
struct IdpState {
    replies: Mutex<HashMap<String, Reply>>,
    hits: Mutex<HashMap<String, u64>>,
    seen: Mutex<Vec<Seen>>,
    total: AtomicU64,
    arrived: Notify,
    /// When set, every answer waits for a permit first.
    gate: Mutex<Option<Arc<Semaphore>>>,
}

/// A loopback HTTP/1.1 server answering canned replies per path.
#[derive(Clone)]
pub(crate) struct Idp {
    pub(crate) addr: SocketAddr,
    state: Arc<IdpState>,
}

impl Idp {
    pub(crate) async fn start() -> Idp {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(IdpState::default());
        let st = Arc::clone(&state);
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(serve_one(stream, Arc::clone(&st)));
            }
        });
        Idp { addr, state }
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub(crate) fn issuer(&self) -> String {
        self.url("/idp")
    }

    pub(crate) fn set(&self, path: &str, reply: Reply) {
        self.state
            .replies
            .lock()
            .unwrap()
            .insert(path.to_string(), reply);
    }

    pub(crate) fn set_jwks(&self, keys: Vec<Value>) {
        self.set_jwks_path("/jwks", keys);
    }

    pub(crate) fn set_jwks_path(&self, path: &str, keys: Vec<Value>) {
        self.set(path, Reply::json(json!({ "keys": keys })));
    }

    pub(crate) fn hits(&self, path: &str) -> u64 {
        *self.state.hits.lock().unwrap().get(path).unwrap_or(&0)
    }

    pub(crate) fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().unwrap().clone()
    }

    /// Holds every answer until `release`.
    pub(crate) fn close_gate(&self) -> Arc<Semaphore> {
        let gate = Arc::new(Semaphore::new(0));
        *self.state.gate.lock().unwrap() = Some(Arc::clone(&gate));
        gate
    }

    /// Resolves when a request has arrived (one permit per request).
    pub(crate) async fn arrived(&self) {
        self.state.arrived.notified().await;
    }
}

async fn serve_one(mut stream: tokio::net::TcpStream, state: Arc<IdpState>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        let Ok(n) = stream.read(&mut chunk).await else {
            return;
        };
        if n == 0 {
            return;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let mut lines = head.split("\r\n");
    let path = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .unwrap_or("/")
        .to_string();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let length: usize = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    while buf.len() < head_end + length {
        let Ok(n) = stream.read(&mut chunk).await else {
            return;
        };
        if n == 0 {
            return;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let body = String::from_utf8_lossy(&buf[head_end..head_end + length]).to_string();
    *state.hits.lock().unwrap().entry(path.clone()).or_default() += 1;
    state.seen.lock().unwrap().push(Seen {
        path: path.clone(),
        headers,
        body,
    });
    state.total.fetch_add(1, Ordering::SeqCst);
    state.arrived.notify_one();
    let gate = state.gate.lock().unwrap().clone();
    if let Some(gate) = gate {
        let Ok(permit) = gate.acquire().await else {
            return;
        };
        permit.forget();
    }
    let reply = state
        .replies
        .lock()
        .unwrap()
        .get(&path)
        .cloned()
        .unwrap_or(Reply::status(404));
    if !reply.delay.is_zero() {
        tokio::time::sleep(reply.delay).await;
    }
    let length = if reply.unsized_body {
        String::new()
    } else {
        format!("content-length: {}\r\n", reply.body.len())
    };
    let out = format!(
        "HTTP/1.1 {} X\r\ncontent-type: application/json\r\n{length}connection: close\r\n\r\n{}",
        reply.status, reply.body
    );
    let _ = stream.write_all(out.as_bytes()).await;
    let _ = stream.shutdown().await;
}

/// Settings for one issuer served by `idp` at `/jwks`.
pub(crate) fn settings(idp: &Idp) -> AuthSettings {
    AuthSettings {
        issuers: vec![IssuerSettings {
            issuer: idp.issuer(),
            audiences: vec!["api".into(), "other-api".into()],
            jwks_uri: Some(idp.url("/jwks").parse().unwrap()),
            algorithms: vec![
                Algorithm::RS256,
                Algorithm::PS256,
                Algorithm::ES256,
                Algorithm::ES384,
                Algorithm::EdDSA,
            ],
            require_at_jwt: false,
            jwks_refresh: Duration::from_secs(300),
        }],
        introspection: None,
        leeway: Duration::from_secs(30),
        idp_timeout: Duration::from_secs(2),
        ca_file: None,
    }
}

pub(crate) fn claims(idp: &Idp) -> Value {
    let now = now();
    json!({
        "iss": idp.issuer(),
        "aud": "api",
        "sub": "alice",
        "exp": now + 300,
        "iat": now,
        "scope": "read write",
    })
}

pub(crate) fn header(kid: &str) -> Value {
    json!({"alg": "RS256", "typ": "JWT", "kid": kid})
}
