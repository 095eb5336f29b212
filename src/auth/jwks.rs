//! Key sets per issuer: fetch (JWKS, optionally via OIDC discovery), parse,
//! keep the last good set, single-flight refetch with a rate limit, readiness.
//!
//! Invariants:
//! - the hot path (`KeySet` lookup) is an `ArcSwap` load: no lock, no await;
//! - no lock is ever held across `.await` (the only mutex guards a few
//!   scalars and is released before any fetch starts);
//! - a fetch is started at most once per `min_refetch_interval` per issuer by
//!   unknown `kid`s; concurrent waiters share it through moka's `get_with`
//!   keyed by a fetch generation (one HTTP request, many waiters).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use aws_lc_rs::signature::{self, ParsedPublicKey, RsaParameters, RsaPublicKeyComponents};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use http::Uri;
use jsonwebtoken::Algorithm;
use serde_json::Value;
use tokio::time::Instant;

use super::fetch::{FetchError, IdpClient};
use super::metrics::Counters;
use super::IssuerSettings;

/// What kind of public key a JWK holds; decides which `alg`s it can verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeyKind {
    Rsa,
    EcP256,
    EcP384,
    Ed25519,
}

impl KeyKind {
    pub(crate) fn fits(self, alg: Algorithm) -> bool {
        use Algorithm::*;
        match self {
            KeyKind::Rsa => matches!(alg, RS256 | RS384 | RS512 | PS256 | PS384 | PS512),
            KeyKind::EcP256 => alg == ES256,
            KeyKind::EcP384 => alg == ES384,
            KeyKind::Ed25519 => alg == EdDSA,
        }
    }
}

/// Every `alg` an RSA key may verify, in `KeyKind::fits` order.
const RSA_ALGS: [Algorithm; 6] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
];

/// What a JWS `alg` means for an RSA key: padding, digest and the accepted
/// modulus sizes (2048-8192 bits). Fixed here, never taken from a token.
fn rsa_parameters(alg: Algorithm) -> Option<&'static RsaParameters> {
    match alg {
        Algorithm::RS256 => Some(&signature::RSA_PKCS1_2048_8192_SHA256),
        Algorithm::RS384 => Some(&signature::RSA_PKCS1_2048_8192_SHA384),
        Algorithm::RS512 => Some(&signature::RSA_PKCS1_2048_8192_SHA512),
        Algorithm::PS256 => Some(&signature::RSA_PSS_2048_8192_SHA256),
        Algorithm::PS384 => Some(&signature::RSA_PSS_2048_8192_SHA384),
        Algorithm::PS512 => Some(&signature::RSA_PSS_2048_8192_SHA512),
        _ => None,
    }
}

/// One parsed JWK.
pub(crate) struct Key {
    pub(crate) kid: Option<String>,
    pub(crate) kind: KeyKind,
    /// The JWK's own `alg`, as written; when present the token's must equal it.
    pub(crate) alg: Option<String>,
    /// False for `use` other than `sig`, or `key_ops` without `verify`.
    pub(crate) can_verify: bool,
    /// The public key, parsed once when the JWKS is loaded (not on every
    /// verify), for each `alg` it may verify. aws-lc-rs binds a parsed key to
    /// one verification algorithm, so an RSA key without its own `alg` holds
    /// one entry per RS*/PS* alg; a key that may not verify holds none.
    verifiers: Box<[(Algorithm, ParsedPublicKey)]>,
}

impl Key {
    /// May this key verify a token signed with `alg` (`alg_name` as in the header)?
    pub(crate) fn usable_for(&self, alg: Algorithm, alg_name: &str) -> bool {
        self.can_verify
            && self.kind.fits(alg)
            && self.alg.as_deref().is_none_or(|own| own == alg_name)
    }

    /// The parsed public key that checks `alg` signatures: the algorithm is
    /// the one the key was parsed for, never one the token picks.
    pub(crate) fn verifier(&self, alg: Algorithm) -> Option<&ParsedPublicKey> {
        self.verifiers
            .iter()
            .find(|(a, _)| *a == alg)
            .map(|(_, key)| key)
    }
}

/// One fetched JWKS document, parsed. Replaced whole on every successful fetch.
#[derive(Default)]
pub(crate) struct KeySet {
    pub(crate) keys: Vec<Key>,
    /// SHA-256 of the JWKS document this set was parsed from: a refresh that
    /// fetches the same bytes keeps the current set (and so every token
    /// cached against it) instead of installing an equal copy.
    pub(crate) digest: [u8; 32],
}

/// The outcome of looking a key up.
pub(crate) enum Lookup<'a> {
    Found(&'a Key),
    /// Keys with this kid exist but none may verify this alg.
    Unusable,
    /// No key with this kid (or, without kid, no single usable key).
    Missing,
    /// No kid and several keys could verify: refuse to guess.
    Ambiguous,
}

impl KeySet {
    pub(crate) fn find(&self, kid: Option<&str>, alg: Algorithm, alg_name: &str) -> Lookup<'_> {
        match kid {
            Some(kid) => {
                let mut seen = false;
                for key in self.keys.iter().filter(|k| k.kid.as_deref() == Some(kid)) {
                    seen = true;
                    if key.usable_for(alg, alg_name) {
                        return Lookup::Found(key);
                    }
                }
                if seen {
                    Lookup::Unusable
                } else {
                    Lookup::Missing
                }
            }
            None => {
                let mut usable = self.keys.iter().filter(|k| k.usable_for(alg, alg_name));
                match (usable.next(), usable.next()) {
                    (Some(key), None) => Lookup::Found(key),
                    (None, _) => Lookup::Missing,
                    (Some(_), Some(_)) => Lookup::Ambiguous,
                }
            }
        }
    }
}

/// Why a JWKS (or discovery) fetch failed. Logged, never shown to clients.
#[derive(Debug, thiserror::Error)]
pub(crate) enum KeySetError {
    #[error("discovery: {0}")]
    Discovery(FetchError),
    #[error("discovery document: {0}")]
    DiscoveryDocument(&'static str),
    #[error("JWKS: {0}")]
    Fetch(FetchError),
    #[error("JWKS document: {0}")]
    Document(&'static str),
}

/// Parses a JWKS document. Keys that cannot be parsed are skipped with a warning.
pub(crate) fn parse_jwks(issuer: &str, body: &[u8]) -> Result<KeySet, KeySetError> {
    let doc: Value = serde_json::from_slice(body).map_err(|_| KeySetError::Document("not JSON"))?;
    let entries = doc
        .get("keys")
        .and_then(Value::as_array)
        .ok_or(KeySetError::Document("no \"keys\" array"))?;
    let mut keys = Vec::with_capacity(entries.len());
    for (index, entry) in entries.iter().enumerate() {
        match parse_jwk(entry) {
            Ok(key) => keys.push(key),
            Err(why) => {
                let kid = entry.get("kid").and_then(Value::as_str).unwrap_or("");
                tracing::warn!(issuer, index, kid, reason = why, "skipping a JWK");
            }
        }
    }
    if keys.is_empty() && !entries.is_empty() {
        // Every key failed to parse: treat as garbage and keep the last good set.
        return Err(KeySetError::Document("no usable key"));
    }
    use sha2::Digest as _;
    Ok(KeySet {
        keys,
        digest: sha2::Sha256::digest(body).into(),
    })
}

fn b64_field(jwk: &Value, name: &'static str) -> Result<Vec<u8>, &'static str> {
    let text = jwk
        .get(name)
        .and_then(Value::as_str)
        .ok_or("missing key parameter")?;
    URL_SAFE_NO_PAD
        .decode(text)
        .map_err(|_| "key parameter is not base64url")
}

fn parse_jwk(jwk: &Value) -> Result<Key, &'static str> {
    let obj = jwk.as_object().ok_or("not an object")?;
    let opt_str = |name: &str| -> Result<Option<String>, &'static str> {
        match obj.get(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err("a string member is not a string"),
        }
    };
    let kid = opt_str("kid")?;
    let alg = opt_str("alg")?;
    let key_use = opt_str("use")?;
    let mut can_verify = key_use.as_deref().is_none_or(|u| u == "sig");
    if let Some(ops) = obj.get("key_ops") {
        let ops = ops.as_array().ok_or("key_ops is not an array")?;
        if !ops.iter().any(|op| op.as_str() == Some("verify")) {
            can_verify = false;
        }
    }
    let kty = opt_str("kty")?.ok_or("missing kty")?;
    // The algorithms this key will be asked to verify: those its kind fits,
    // narrowed to its own `alg` when it names one (as `usable_for` does).
    let own_alg = alg.as_deref().map(str::parse::<Algorithm>);
    let wanted = |a: Algorithm| {
        can_verify
            && match &own_alg {
                None => true,
                Some(own) => own.as_ref().is_ok_and(|own| *own == a),
            }
    };
    let (kind, verifiers) = match kty.as_str() {
        "RSA" => {
            let n = b64_field(jwk, "n")?;
            let e = b64_field(jwk, "e")?;
            if n.len() < 256 - 1 || e.is_empty() {
                return Err("RSA key too small");
            }
            let components = RsaPublicKeyComponents { n: &n, e: &e };
            let parse = |a| {
                rsa_parameters(a)
                    .and_then(|params| components.to_parsed_public_key(params).ok())
                    .ok_or("bad RSA key")
            };
            // Parsed once whatever its use, so a bad key is skipped here and
            // not found out by every token; then once per further alg.
            let rs256 = parse(Algorithm::RS256)?;
            let mut verifiers = Vec::new();
            if wanted(Algorithm::RS256) {
                verifiers.push((Algorithm::RS256, rs256));
            }
            for a in RSA_ALGS[1..].iter().copied().filter(|a| wanted(*a)) {
                verifiers.push((a, parse(a)?));
            }
            (KeyKind::Rsa, verifiers)
        }
        "EC" => {
            let (kind, len, a, verification): (
                _,
                _,
                _,
                &'static signature::EcdsaVerificationAlgorithm,
            ) = match opt_str("crv")?.as_deref() {
                Some("P-256") => (
                    KeyKind::EcP256,
                    32,
                    Algorithm::ES256,
                    &signature::ECDSA_P256_SHA256_FIXED,
                ),
                Some("P-384") => (
                    KeyKind::EcP384,
                    48,
                    Algorithm::ES384,
                    &signature::ECDSA_P384_SHA384_FIXED,
                ),
                _ => return Err("unsupported EC curve"),
            };
            let x = b64_field(jwk, "x")?;
            let y = b64_field(jwk, "y")?;
            if x.len() != len || y.len() != len {
                return Err("EC coordinate of the wrong length");
            }
            // SEC1 uncompressed point; aws-lc-rs checks that it is on the curve.
            let mut point = Vec::with_capacity(1 + 2 * len);
            point.push(0x04);
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            let key = ParsedPublicKey::new(verification, &point).map_err(|_| "bad EC key")?;
            (
                kind,
                if wanted(a) {
                    vec![(a, key)]
                } else {
                    Vec::new()
                },
            )
        }
        "OKP" => {
            if opt_str("crv")?.as_deref() != Some("Ed25519") {
                return Err("unsupported OKP curve");
            }
            let x = b64_field(jwk, "x")?;
            if x.len() != 32 {
                return Err("Ed25519 key of the wrong length");
            }
            let key =
                ParsedPublicKey::new(&signature::ED25519, &x).map_err(|_| "bad Ed25519 key")?;
            let a = Algorithm::EdDSA;
            (
                KeyKind::Ed25519,
                if wanted(a) {
                    vec![(a, key)]
                } else {
                    Vec::new()
                },
            )
        }
        _ => return Err("unsupported kty"),
    };
    Ok(Key {
        kid,
        kind,
        alg,
        can_verify,
        verifiers: verifiers.into_boxed_slice(),
    })
}

/// Rate-limit bookkeeping; guarded by a std mutex that is never held across `.await`.
struct FetchState {
    /// Start of the most recent fetch (any cause).
    last_started: Option<Instant>,
    /// The generation of the most recent fetch.
    generation: u64,
}

/// Timing knobs; tests shorten them.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Tuning {
    /// An unknown kid refetches at most this often.
    pub(crate) min_refetch_interval: Duration,
    /// First retry delay while an issuer has never been fetched (doubles, capped).
    pub(crate) initial_backoff: Duration,
    pub(crate) max_backoff: Duration,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            min_refetch_interval: Duration::from_secs(10),
            initial_backoff: Duration::from_millis(250),
            max_backoff: Duration::from_secs(5),
        }
    }
}

/// The keys of one issuer and everything needed to refresh them.
pub(crate) struct IssuerKeys {
    pub(crate) settings: IssuerSettings,
    client: Arc<IdpClient>,
    counters: Arc<Counters>,
    tuning: Tuning,
    /// The last good key set; `None` until the first successful fetch.
    current: ArcSwapOption<KeySet>,
    /// The JWKS URI: configured, or found by discovery (then cleared on failure).
    discovered: ArcSwapOption<Uri>,
    /// Did the most recent fetch succeed?
    last_ok: AtomicBool,
    ever_ok: AtomicBool,
    /// Flips to true at the first successful fetch (readiness latch).
    ready: tokio::sync::watch::Sender<bool>,
    state: Mutex<FetchState>,
    /// Single-flight: one entry per fetch generation; waiters share its outcome.
    flights: moka::future::Cache<u64, bool>,
    /// The newest generation whose fetch has finished (guards against a
    /// flight entry moka evicted being run a second time).
    done_generation: AtomicU64,
    /// The background refresh: started by the first holder, stopped with
    /// the last (a reload that keeps this issuer hands it over without a gap).
    refresher: Mutex<Refresher>,
}

#[derive(Default)]
struct Refresher {
    holders: usize,
    task: Option<tokio::task::AbortHandle>,
}

impl IssuerKeys {
    pub(crate) fn new(
        settings: IssuerSettings,
        client: Arc<IdpClient>,
        counters: Arc<Counters>,
        tuning: Tuning,
    ) -> Self {
        IssuerKeys {
            settings,
            client,
            counters,
            tuning,
            current: ArcSwapOption::empty(),
            discovered: ArcSwapOption::empty(),
            last_ok: AtomicBool::new(false),
            ever_ok: AtomicBool::new(false),
            ready: tokio::sync::watch::Sender::new(false),
            state: Mutex::new(FetchState {
                last_started: None,
                generation: 0,
            }),
            flights: moka::future::Cache::builder().max_capacity(4).build(),
            done_generation: AtomicU64::new(0),
            refresher: Mutex::new(Refresher::default()),
        }
    }

    /// Registers a holder of the background refresh; the first one starts it
    /// (fetching at once). Needs a tokio runtime. Pair with [`Self::release_refresh`].
    pub(crate) fn hold_refresh(self: &Arc<Self>) {
        let mut r = self.refresher.lock().unwrap_or_else(|p| p.into_inner());
        r.holders += 1;
        if r.task.is_none() {
            r.task = Some(tokio::spawn(Arc::clone(self).run_refresh()).abort_handle());
        }
    }

    /// Drops a holder; the last one stops the background refresh.
    pub(crate) fn release_refresh(&self) {
        let mut r = self.refresher.lock().unwrap_or_else(|p| p.into_inner());
        r.holders = r.holders.saturating_sub(1);
        if r.holders == 0 {
            if let Some(task) = r.task.take() {
                task.abort();
            }
        }
    }

    /// The current key set, lock-free.
    pub(crate) fn current(&self) -> Option<Arc<KeySet>> {
        self.current.load_full()
    }

    /// Is `set` the current key set? Asked on every cached-token hit, so
    /// it neither clones nor upgrades (two shared reference counts fewer
    /// to bounce between cores): the `Weak` keeps `set`'s allocation, so
    /// its address cannot belong to another set while we compare.
    pub(crate) fn is_current(&self, set: &Weak<KeySet>) -> bool {
        self.current
            .load()
            .as_ref()
            .is_some_and(|current| std::ptr::eq(Arc::as_ptr(current), set.as_ptr()))
    }

    pub(crate) fn last_fetch_ok(&self) -> bool {
        self.last_ok.load(Ordering::Acquire)
    }

    pub(crate) fn ever_fetched(&self) -> bool {
        self.ever_ok.load(Ordering::Acquire)
    }

    /// Resolves once this issuer's keys were fetched successfully.
    pub(crate) async fn wait_fetched(&self) {
        let mut ready = self.ready.subscribe();
        // The sender lives as long as `self`, so this cannot fail.
        let _ = ready.wait_for(|ready| *ready).await;
    }

    /// When a client may usefully retry after an `Unavailable`.
    pub(crate) fn retry_after(&self) -> Duration {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let wait = match state.last_started {
            Some(at) => self
                .tuning
                .min_refetch_interval
                .saturating_sub(at.elapsed()),
            None => Duration::ZERO,
        };
        // Whole seconds, at least one.
        Duration::from_secs(wait.as_secs_f64().ceil().max(1.0) as u64)
    }

    /// Refetch because a kid was not found: starts a fetch unless one started
    /// within `min_refetch_interval`; joins the in-flight (or just finished)
    /// fetch otherwise. Returns whether the fetch this call waited on succeeded.
    pub(crate) async fn refetch_for_unknown_kid(self: &Arc<Self>) -> bool {
        let generation = {
            let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
            let recent = state
                .last_started
                .is_some_and(|at| at.elapsed() < self.tuning.min_refetch_interval);
            if !recent {
                state.generation += 1;
                state.last_started = Some(Instant::now());
            }
            state.generation
        };
        if generation == 0 {
            return false;
        }
        self.join_flight(generation).await
    }

    /// Fetch now (background refresh, initial fetch): always starts a new generation.
    pub(crate) async fn refresh(self: &Arc<Self>) -> bool {
        let generation = {
            let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
            state.generation += 1;
            state.last_started = Some(Instant::now());
            state.generation
        };
        self.join_flight(generation).await
    }

    async fn join_flight(self: &Arc<Self>, generation: u64) -> bool {
        if self.done_generation.load(Ordering::Acquire) >= generation {
            return self.last_fetch_ok();
        }
        let this = Arc::clone(self);
        // The fetch runs in its own task so a cancelled waiter cannot abort it
        // for the others; moka makes every waiter of this generation share it.
        self.flights
            .get_with(generation, async move {
                let task = tokio::spawn(async move { this.fetch_and_store(generation).await });
                task.await.unwrap_or(false)
            })
            .await
    }

    async fn fetch_and_store(&self, generation: u64) -> bool {
        if self.done_generation.load(Ordering::Acquire) >= generation {
            return self.last_fetch_ok();
        }
        let issuer = self.settings.issuer.as_str();
        let ok = match self.fetch().await {
            Ok(set) => {
                tracing::debug!(issuer, keys = set.keys.len(), "JWKS fetched");
                let unchanged = self
                    .current
                    .load()
                    .as_ref()
                    .is_some_and(|current| current.digest == set.digest);
                if !unchanged {
                    self.current.store(Some(Arc::new(set)));
                }
                self.last_ok.store(true, Ordering::Release);
                self.ever_ok.store(true, Ordering::Release);
                self.ready
                    .send_if_modified(|ready| !std::mem::replace(ready, true));
                self.counters.jwks_fetch_ok.fetch_add(1, Ordering::Relaxed);
                true
            }
            Err(err) => {
                tracing::warn!(issuer, error = %err, "JWKS fetch failed; keeping the last good keys");
                self.last_ok.store(false, Ordering::Release);
                self.counters
                    .jwks_fetch_error
                    .fetch_add(1, Ordering::Relaxed);
                false
            }
        };
        self.done_generation.fetch_max(generation, Ordering::AcqRel);
        ok
    }

    async fn fetch(&self) -> Result<KeySet, KeySetError> {
        let uri = match (&self.settings.jwks_uri, self.discovered.load_full()) {
            (Some(uri), _) => uri.clone(),
            (None, Some(uri)) => (*uri).clone(),
            (None, None) => {
                let uri = self.discover().await?;
                self.discovered.store(Some(Arc::new(uri.clone())));
                uri
            }
        };
        let result = match self.client.get(&uri).await {
            Ok(body) => parse_jwks(&self.settings.issuer, &body),
            Err(e) => Err(KeySetError::Fetch(e)),
        };
        if result.is_err() && self.settings.jwks_uri.is_none() {
            // The discovered location may have moved: look again next time.
            self.discovered.store(None);
        }
        result
    }

    async fn discover(&self) -> Result<Uri, KeySetError> {
        let base = self.settings.issuer.trim_end_matches('/');
        let uri: Uri = format!("{base}/.well-known/openid-configuration")
            .parse()
            .map_err(|_| KeySetError::DiscoveryDocument("issuer is not a URL"))?;
        let body = self
            .client
            .get(&uri)
            .await
            .map_err(KeySetError::Discovery)?;
        let doc: Value = serde_json::from_slice(&body)
            .map_err(|_| KeySetError::DiscoveryDocument("not JSON"))?;
        if doc.get("issuer").and_then(Value::as_str) != Some(self.settings.issuer.as_str()) {
            return Err(KeySetError::DiscoveryDocument(
                "its issuer differs from the configured one",
            ));
        }
        let jwks_uri = doc
            .get("jwks_uri")
            .and_then(Value::as_str)
            .ok_or(KeySetError::DiscoveryDocument("no jwks_uri"))?;
        let jwks_uri: Uri = jwks_uri
            .parse()
            .map_err(|_| KeySetError::DiscoveryDocument("jwks_uri is not a URL"))?;
        match jwks_uri.scheme_str() {
            Some("https") | Some("http") => Ok(jwks_uri),
            _ => Err(KeySetError::DiscoveryDocument("jwks_uri is not http(s)")),
        }
    }

    /// Keeps the key set fresh: retries with backoff until the first success,
    /// then refreshes every `jwks_refresh` (retrying failures with backoff).
    pub(crate) async fn run_refresh(self: Arc<Self>) {
        let mut backoff = self.tuning.initial_backoff;
        loop {
            let ok = self.refresh().await;
            let wait = if ok {
                backoff = self.tuning.initial_backoff;
                self.settings.jwks_refresh
            } else {
                let wait = backoff;
                backoff = (backoff * 2).min(self.tuning.max_backoff);
                if self.ever_fetched() {
                    wait.min(self.settings.jwks_refresh)
                } else {
                    wait
                }
            };
            tokio::time::sleep(wait).await;
        }
    }
}

/// All issuers' keys, looked up by exact `iss`.
pub(crate) struct KeySets {
    pub(crate) issuers: Vec<Arc<IssuerKeys>>,
}

impl KeySets {
    pub(crate) fn issuer(&self, iss: &str) -> Option<&Arc<IssuerKeys>> {
        self.issuers.iter().find(|i| i.settings.issuer == iss)
    }

    pub(crate) fn all_fetched(&self) -> bool {
        self.issuers.iter().all(|i| i.ever_fetched())
    }
}
