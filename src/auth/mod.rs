//! Token verification: (token) -> Principal | AuthError, and the scope check.
//! No inbound HTTP types here; the proxy hands over the bare token string.
//!
//! Code map: `jwt` (form, header, signature), `claims` (the claims: read
//! without a map, checked, kept as text), `jwks` (key sets per
//! issuer: fetch, cache, single-flight refetch, readiness), `introspect`
//! (RFC 7662 for opaque tokens), `fetch` (the HTTP(S) client for the IdP),
//! `token_cache` (SHA-256(token) -> claims), `metrics` (counters).

mod claims;
mod fetch;
#[doc(hidden)]
pub mod fuzzing;
mod introspect;
mod jwks;
mod jwt;
mod metrics;
mod token_cache;

#[cfg(test)]
mod tests;

use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use crate::route::Requirement;

pub use claims::Claims;
pub use fetch::ClientSetupError;
pub use metrics::AuthMetrics;

use fetch::IdpClient;
use introspect::Introspector;
use jwks::{IssuerKeys, KeySet, KeySets, Lookup, Tuning};
use metrics::Counters;
use token_cache::{now_unix, Cached, TokenCache};
pub use token_cache::{token_hash, TokenHash};

pub use jsonwebtoken::Algorithm;

/// One trusted issuer, validated by the config layer.
#[derive(Debug, Clone, PartialEq)]
pub struct IssuerSettings {
    /// Must equal the token's `iss` exactly.
    pub issuer: String,
    /// The token's `aud` must contain at least one.
    pub audiences: Vec<String>,
    /// `None`: found by OIDC discovery at `{issuer}/.well-known/openid-configuration`.
    pub jwks_uri: Option<http::Uri>,
    /// Allow-list; never empty, never HMAC.
    pub algorithms: Vec<Algorithm>,
    pub require_at_jwt: bool,
    pub jwks_refresh: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuthMethod {
    ClientSecretBasic,
    ClientSecretPost,
}

/// RFC 7662 introspection, validated by the config layer.
#[derive(Clone, PartialEq)]
pub struct IntrospectionSettings {
    pub endpoint: http::Uri,
    pub client_id: String,
    pub client_secret: String,
    pub auth_method: ClientAuthMethod,
    pub issuer: Option<String>,
    pub audiences: Option<Vec<String>>,
    pub cache_ttl: Duration,
}

impl std::fmt::Debug for IntrospectionSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IntrospectionSettings")
            .field("endpoint", &self.endpoint)
            .field("client_id", &self.client_id)
            .field("client_secret", &"<redacted>")
            .field("auth_method", &self.auth_method)
            .field("issuer", &self.issuer)
            .field("audiences", &self.audiences)
            .field("cache_ttl", &self.cache_ttl)
            .finish()
    }
}

/// Everything the verifier needs.
#[derive(Debug, Clone, PartialEq)]
pub struct AuthSettings {
    pub issuers: Vec<IssuerSettings>,
    pub introspection: Option<IntrospectionSettings>,
    /// Clock skew allowed on exp/nbf/iat.
    pub leeway: Duration,
    /// One discovery / JWKS / introspection request.
    pub idp_timeout: Duration,
    /// Extra roots for https:// issuers and introspection.
    pub ca_file: Option<PathBuf>,
}

/// Who the token says the caller is; cached per token, never a decision.
#[derive(Debug, Clone)]
pub struct Principal {
    /// `iss`: for a JWT, the issuer whose key verified it.
    pub issuer: Option<Box<str>>,
    pub subject: Option<Box<str>>,
    pub scopes: Box<[Box<str>]>,
    /// All claims, for identity headers.
    pub claims: Claims,
    /// Unix seconds.
    pub expires_at: u64,
    /// The identity headers made from these claims, made on first use and
    /// kept with the cached principal (see `proxy::headers::IdentityHeaders`).
    pub identity_headers: IdentityHeaderValues,
}

/// Identity-header values, and which identity-header configuration made them.
pub type IdentityHeaderValues =
    std::sync::OnceLock<(u64, Box<[(http::HeaderName, http::HeaderValue)]>)>;

impl Principal {
    /// A copy that shares no allocation with `self`, its identity-header
    /// values left to be made again on first use: what one thread keeps
    /// for a token it reuses, so that its requests count references only
    /// in memory no other core writes.
    pub(crate) fn unshared(&self) -> Principal {
        Principal {
            issuer: self.issuer.clone(),
            subject: self.subject.clone(),
            scopes: self.scopes.clone(),
            claims: self.claims.clone(),
            expires_at: self.expires_at,
            identity_headers: IdentityHeaderValues::new(),
        }
    }

    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes.iter().any(|s| &**s == scope)
    }
}

/// Why a token was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// -> 401 invalid_token; the description is safe to show a client.
    #[error("invalid token: {0}")]
    InvalidToken(&'static str),
    /// -> 503 temporarily_unavailable with Retry-After.
    #[error("token verification temporarily unavailable: {reason}")]
    Unavailable {
        reason: &'static str,
        retry_after: Duration,
    },
}

/// Building a [`Verifier`] failed.
#[derive(Debug, thiserror::Error)]
pub enum VerifierSetupError {
    #[error(transparent)]
    Client(#[from] ClientSetupError),
    #[error("issuer {issuer}: {message}")]
    Issuer {
        issuer: String,
        message: &'static str,
    },
}

/// Verifies tokens against the configured issuers and introspection endpoint.
pub struct Verifier {
    settings: AuthSettings,
    client: Arc<IdpClient>,
    key_sets: KeySets,
    introspector: Option<Introspector>,
    cache: Arc<TokenCache>,
    counters: Arc<Counters>,
}

/// Keeps a verifier's issuers refreshing in the background while it lives
/// ([`Verifier::start_background`]). An issuer shared with another verifier
/// (reused by a reload) keeps refreshing while any holder lives.
pub struct Background {
    issuers: Vec<Arc<IssuerKeys>>,
}

impl Drop for Background {
    fn drop(&mut self) {
        for issuer in &self.issuers {
            issuer.release_refresh();
        }
    }
}

/// The verified-token cache's memory budget (estimated bytes of claims):
/// about 20,000 typical access tokens.
const TOKEN_CACHE_BYTES: u64 = 16 * 1024 * 1024;

impl Verifier {
    pub fn new(settings: AuthSettings) -> Result<Arc<Self>, VerifierSetupError> {
        Self::with_tuning(settings, Tuning::default(), None)
    }

    /// A verifier for `settings` that takes over what `previous` (the one a
    /// reload replaces) already knows: each issuer whose settings did not
    /// change keeps its key set, refresh schedule and readiness (no refetch);
    /// the verified-token cache survives when introspection and leeway did
    /// not change (cached JWTs of a changed or removed issuer are verified
    /// again, since their key set is no longer current); counters continue.
    /// Issuers are reused only when the IdP client (`ca_file`, `idp_timeout`)
    /// is unchanged.
    pub fn new_reusing(
        settings: AuthSettings,
        previous: Option<&Verifier>,
    ) -> Result<Arc<Self>, VerifierSetupError> {
        Self::with_tuning(settings, Tuning::default(), previous)
    }

    pub(crate) fn with_tuning(
        settings: AuthSettings,
        tuning: Tuning,
        previous: Option<&Verifier>,
    ) -> Result<Arc<Self>, VerifierSetupError> {
        for (i, issuer) in settings.issuers.iter().enumerate() {
            let fail = |message| VerifierSetupError::Issuer {
                issuer: issuer.issuer.clone(),
                message,
            };
            if issuer.audiences.is_empty() {
                return Err(fail("no audiences"));
            }
            if issuer.algorithms.is_empty() {
                return Err(fail("empty algorithm list"));
            }
            if issuer
                .algorithms
                .iter()
                .any(|a| matches!(a, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512))
            {
                return Err(fail("HMAC algorithms are never accepted for a JWKS issuer"));
            }
            if settings.issuers[..i]
                .iter()
                .any(|o| o.issuer == issuer.issuer)
            {
                return Err(fail("configured twice"));
            }
        }
        let same_client = previous.filter(|p| {
            p.settings.ca_file == settings.ca_file && p.settings.idp_timeout == settings.idp_timeout
        });
        let client = match same_client {
            Some(p) => Arc::clone(&p.client),
            None => Arc::new(IdpClient::new(
                settings.ca_file.as_deref(),
                settings.idp_timeout,
            )?),
        };
        let counters = previous.map_or_else(
            || Arc::new(Counters::default()),
            |p| Arc::clone(&p.counters),
        );
        let issuers = settings
            .issuers
            .iter()
            .map(|s| {
                let kept = same_client.and_then(|p| {
                    p.key_sets
                        .issuers
                        .iter()
                        .find(|old| old.settings == *s)
                        .cloned()
                });
                kept.unwrap_or_else(|| {
                    Arc::new(IssuerKeys::new(
                        s.clone(),
                        Arc::clone(&client),
                        Arc::clone(&counters),
                        tuning,
                    ))
                })
            })
            .collect();
        let cache = previous
            .filter(|p| {
                p.settings.introspection == settings.introspection
                    && p.settings.leeway == settings.leeway
            })
            .map_or_else(
                || {
                    Arc::new(TokenCache::new(
                        TOKEN_CACHE_BYTES,
                        settings.introspection.is_some(),
                    ))
                },
                |p| Arc::clone(&p.cache),
            );
        let introspector = settings
            .introspection
            .clone()
            .map(|s| Introspector::new(s, Arc::clone(&client), Arc::clone(&counters)));
        Ok(Arc::new(Verifier {
            key_sets: KeySets { issuers },
            introspector,
            cache,
            counters,
            client,
            settings,
        }))
    }

    /// Keeps every issuer's key set fresh until `shutdown` resolves: fetches
    /// at once, retries with backoff (at most 5 s) until the first success,
    /// then refreshes every `jwks_refresh`.
    pub async fn run_background(self: Arc<Self>, shutdown: impl Future<Output = ()>) {
        let background = self.start_background();
        shutdown.await;
        drop(background);
    }

    /// Starts the background refresh of every issuer not already refreshing
    /// (one kept from a previous verifier keeps its schedule: no refetch);
    /// it runs while the returned guard (or another holder) lives. Needs a
    /// tokio runtime.
    pub fn start_background(&self) -> Background {
        for issuer in &self.key_sets.issuers {
            issuer.hold_refresh();
        }
        Background {
            issuers: self.key_sets.issuers.clone(),
        }
    }

    /// Every issuer's keys were fetched successfully at least once.
    pub fn is_ready(&self) -> bool {
        self.key_sets.all_fetched()
    }

    /// Resolves once [`Verifier::is_ready`] holds (needs `run_background`
    /// running, or tokens arriving, to make progress).
    pub async fn wait_ready(&self) {
        for issuer in &self.key_sets.issuers {
            issuer.wait_fetched().await;
        }
    }

    /// A snapshot of the counters, for `/metrics`.
    pub fn metrics(&self) -> AuthMetrics {
        self.counters.snapshot()
    }

    /// Verifies a bearer token: a JWT locally, anything else by
    /// introspection (when configured).
    ///
    /// A cached JWT is answered by a small future; everything else (a
    /// signature check, a key fetch, introspection) runs in a boxed one, so
    /// the common case neither allocates nor carries the large states.
    pub async fn verify(&self, token: &str) -> Result<Arc<Principal>, AuthError> {
        match self.cached_jwt(token.as_bytes()) {
            Ok(principal) => Ok(principal),
            Err(hash) => self.verify_uncached(token, hash).await,
        }
    }

    /// The principal of a JWT verified before, if it is cached and the key
    /// set that verified it is still its issuer's current one; `token` is
    /// its bytes as sent. A token only gets into this cache once it passed
    /// every check, so the caller may ask before checking the token's
    /// syntax (the proxy does). `Err`: not cached, with its
    /// [`token_hash`], for [`Verifier::verify_uncached`].
    pub fn cached_jwt(&self, token: &[u8]) -> Result<Arc<Principal>, TokenHash> {
        let principal = self
            .cache
            .get_jwt(token, |principal, with| self.still_current(principal, with))?;
        self.counters
            .token_cache_hits
            .fetch_add(1, Ordering::Relaxed);
        Ok(principal)
    }

    /// [`Verifier::verify`] for a token [`Verifier::cached_jwt`] did not
    /// know: a JWT by its signature, anything else by introspection.
    pub async fn verify_uncached(
        &self,
        token: &str,
        hash: TokenHash,
    ) -> Result<Arc<Principal>, AuthError> {
        if !jwt::looks_like_jwt(token) {
            return match &self.introspector {
                Some(introspector) => Box::pin(introspector.verify(&self.cache, token)).await,
                None => Err(AuthError::InvalidToken("not a JWT")),
            };
        }
        self.counters
            .token_cache_misses
            .fetch_add(1, Ordering::Relaxed);
        Box::pin(self.verify_jwt_uncached(token, hash)).await
    }

    /// A JWT not in the cache: keys, signature, claims, then cached.
    async fn verify_jwt_uncached(
        &self,
        token: &str,
        hash: TokenHash,
    ) -> Result<Arc<Principal>, AuthError> {
        let parsed = jwt::parse(token)?;
        let claims = parsed.claims()?;
        let issuer = self
            .key_sets
            .issuer(claims.issuer()?)
            .ok_or(AuthError::InvalidToken("unknown issuer"))?;
        parsed.check_header_for(&issuer.settings)?;

        let kid = parsed.kid.as_deref();
        let find = |set: &KeySet| match set.find(kid, parsed.alg, parsed.alg_name) {
            Lookup::Found(_) => Ok(true),
            Lookup::Missing => Ok(false),
            Lookup::Unusable => Err(AuthError::InvalidToken("algorithm does not fit the key")),
            Lookup::Ambiguous => Err(AuthError::InvalidToken("kid required")),
        };
        // The hot path: the current set holds the key. Otherwise one
        // (rate-limited, shared) refetch, then decide.
        let set = match issuer.current() {
            Some(set) if find(&set)? => {
                self.counters.key_hits.fetch_add(1, Ordering::Relaxed);
                set
            }
            _ => {
                self.counters.key_misses.fetch_add(1, Ordering::Relaxed);
                issuer.refetch_for_unknown_kid().await;
                match issuer.current() {
                    Some(set) if find(&set)? => set,
                    _ if issuer.last_fetch_ok() => {
                        return Err(AuthError::InvalidToken("unknown key"))
                    }
                    _ => {
                        return Err(AuthError::Unavailable {
                            reason: "issuer keys unavailable",
                            retry_after: issuer.retry_after(),
                        })
                    }
                }
            }
        };
        let Lookup::Found(key) = set.find(kid, parsed.alg, parsed.alg_name) else {
            return Err(AuthError::InvalidToken("unknown key"));
        };
        parsed.verify_signature(key)?;
        let leeway = self.settings.leeway.as_secs();
        let checked = claims.check(&issuer.settings, leeway, now_unix())?;
        drop(claims);
        let principal = Arc::new(parsed.into_principal(checked));
        self.cache.insert_jwt(
            hash,
            Cached {
                principal: Some(Arc::clone(&principal)),
                rejection: "",
                until: principal.expires_at,
                verified_with: Some(Arc::downgrade(&set)),
            },
        );
        Ok(principal)
    }

    /// Is the key set a cached JWT was verified with still its issuer's current one?
    fn still_current(&self, principal: &Principal, with: &Weak<KeySet>) -> bool {
        principal
            .issuer
            .as_deref()
            .and_then(|iss| self.key_sets.issuer(iss))
            .is_some_and(|issuer| issuer.is_current(with))
    }
}

/// The scope check, run on every request against the route's requirement.
pub fn authorize(requirement: &Requirement, principal: &Principal) -> bool {
    match requirement {
        Requirement::Public | Requirement::AnyToken => true,
        Requirement::AllScopes(s) => s.iter().all(|s| principal.has_scope(s)),
        Requirement::AnyScopes(s) => s.iter().any(|s| principal.has_scope(s)),
    }
}
