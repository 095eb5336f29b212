//! The verified-token cache: SHA-256(token) -> claims (`Principal`), never a
//! decision, never the raw token, and never served past the token's `exp`
//! (per-entry expiry plus a check on read).

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};

use super::jwks::KeySet;
use super::Principal;

/// Cache key: the SHA-256 of the token.
pub type TokenHash = [u8; 32];

/// The cache key of a token's bytes.
pub fn token_hash(token: &[u8]) -> TokenHash {
    Sha256::digest(token).into()
}

pub(crate) fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A cached verification result.
#[derive(Clone)]
pub(crate) struct Cached {
    /// `None`: the token is known inactive (introspection only).
    pub(crate) principal: Option<Arc<Principal>>,
    /// Why, when `principal` is `None`.
    pub(crate) rejection: &'static str,
    /// Unix seconds after which this entry must not be served.
    pub(crate) until: u64,
    /// JWT only: the key set that verified it. When the issuer's current set
    /// is another one (refresh, rotation), the token is verified again, so a
    /// key the issuer dropped stops verifying cached tokens too.
    pub(crate) verified_with: Option<std::sync::Weak<KeySet>>,
}

struct UntilExpiry;

impl moka::Expiry<TokenHash, Cached> for UntilExpiry {
    fn expire_after_create(
        &self,
        _key: &TokenHash,
        value: &Cached,
        _created_at: Instant,
    ) -> Option<Duration> {
        Some(Duration::from_secs(value.until.saturating_sub(now_unix())))
    }
}

/// Verified JWTs and introspection answers, in two caches: a JWT hit is
/// looked up synchronously (moka's `sync` cache: the request future then
/// carries no lookup state, and hyper keeps that future per connection),
/// while introspection needs the `future` cache's single-flight loader.
pub(crate) struct TokenCache {
    jwt: moka::sync::Cache<TokenHash, Cached>,
    opaque: moka::future::Cache<TokenHash, Cached>,
}

/// The fixed part of a principal's identity-header values: two (name,
/// value) pairs, their slice and the values' allocations.
const IDENTITY_VALUES: usize = 256;

/// Roughly how many bytes an entry holds: the claims' text, the strings
/// made from it, plus fixed overhead. The cache is bounded by this weight, not by
/// an entry count, so tokens with large claim sets cannot blow the memory
/// budget.
fn weight(_key: &TokenHash, value: &Cached) -> u32 {
    let claims = value.principal.as_ref().map_or(0, |p| {
        p.claims.as_json().len()
            + p.issuer.as_ref().map_or(0, |s| s.len())
            + p.scopes.iter().map(|s| s.len() + 16).sum::<usize>()
            // The identity-header values made on first use and kept on
            // the principal: with the default headers, the subject and
            // the joined scopes, each in an allocation of its own.
            + IDENTITY_VALUES
            + p.subject.as_ref().map_or(0, |s| s.len())
            + p.scopes.iter().map(|s| s.len() + 1).sum::<usize>()
    });
    u32::try_from(256 + claims).unwrap_or(u32::MAX)
}

impl TokenCache {
    /// Caches holding at most about `max_bytes` of entries together: all of
    /// it for JWTs, or half each when tokens are also introspected.
    pub(crate) fn new(max_bytes: u64, introspection: bool) -> Self {
        let (jwt_bytes, opaque_bytes) = if introspection {
            (max_bytes / 2, max_bytes / 2)
        } else {
            (max_bytes, 0)
        };
        TokenCache {
            jwt: moka::sync::Cache::builder()
                .max_capacity(jwt_bytes)
                .weigher(weight)
                .expire_after(UntilExpiry)
                .build(),
            opaque: moka::future::Cache::builder()
                .max_capacity(opaque_bytes)
                .weigher(weight)
                .expire_after(UntilExpiry)
                .build(),
        }
    }

    /// A verified JWT's entry, unless it is past its deadline.
    pub(crate) fn get_jwt(&self, key: &TokenHash) -> Option<Cached> {
        let hit = self.jwt.get(key)?;
        // moka's expiry is coarse; never serve an entry past its deadline.
        if hit.until > now_unix() {
            Some(hit)
        } else {
            self.jwt.invalidate(key);
            None
        }
    }

    pub(crate) fn insert_jwt(&self, key: TokenHash, value: Cached) {
        if value.until > now_unix() {
            self.jwt.insert(key, value);
        }
    }

    pub(crate) fn invalidate_jwt(&self, key: &TokenHash) {
        self.jwt.invalidate(key);
    }

    /// An introspection answer's entry, unless it is past its deadline.
    pub(crate) async fn get_opaque(&self, key: &TokenHash) -> Option<Cached> {
        let hit = self.opaque.get(key).await?;
        if hit.until > now_unix() {
            Some(hit)
        } else {
            self.opaque.invalidate(key).await;
            None
        }
    }

    /// Single-flight read-through for introspection answers: concurrent
    /// callers with one key share `init`. Errors are handed to every waiter
    /// and not cached.
    pub(crate) async fn get_or_try_insert_opaque<E, F>(
        &self,
        key: TokenHash,
        init: F,
    ) -> Result<Cached, Arc<E>>
    where
        E: Send + Sync + 'static,
        F: std::future::Future<Output = Result<Cached, E>>,
    {
        if let Some(hit) = self.get_opaque(&key).await {
            return Ok(hit);
        }
        self.opaque.try_get_with(key, init).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(i: usize) -> Cached {
        let mut claims = serde_json::Map::new();
        claims.insert(
            "sub".into(),
            format!("user-{i:04}-{}", "x".repeat(200)).into(),
        );
        Cached {
            principal: Some(Arc::new(Principal {
                issuer: None,
                subject: Some(format!("user-{i}").into()),
                scopes: vec!["read".into()].into(),
                claims: crate::auth::Claims::from_map(&claims),
                expires_at: now_unix() + 3600,
                identity_headers: Default::default(),
            })),
            rejection: "",
            until: now_unix() + 3600,
            verified_with: None,
        }
    }

    fn key(i: usize) -> TokenHash {
        token_hash(format!("token-{i}").as_bytes())
    }

    /// The JWT cache keeps about its byte budget, whatever is inserted;
    /// with introspection it gets half, the other half going to answers.
    #[tokio::test]
    async fn both_caches_keep_to_their_share_of_the_budget() {
        let budget = 64 * 1024;
        for (introspection, jwt_share) in [(false, budget), (true, budget / 2)] {
            let cache = TokenCache::new(budget, introspection);
            for i in 0..2000 {
                cache.insert_jwt(key(i), entry(i));
                cache.opaque.insert(key(i), entry(i)).await;
            }
            cache.jwt.run_pending_tasks();
            cache.opaque.run_pending_tasks().await;
            let (jwt, opaque) = (cache.jwt.weighted_size(), cache.opaque.weighted_size());
            assert!(
                jwt <= jwt_share,
                "JWT cache holds {jwt} of {jwt_share} bytes"
            );
            assert!(
                jwt > jwt_share / 2,
                "JWT cache holds only {jwt} of {jwt_share} bytes"
            );
            assert!(opaque <= budget - jwt_share, "answers hold {opaque} bytes");
            assert!(cache.jwt.entry_count() < 2000);
        }
    }

    #[test]
    fn an_entry_past_its_deadline_is_never_served() {
        let cache = TokenCache::new(1 << 20, false);
        let mut stale = entry(1);
        stale.until = now_unix() + 1;
        cache.insert_jwt(key(1), stale);
        cache.insert_jwt(key(2), entry(2));
        assert!(cache.get_jwt(&key(1)).is_some());
        // Deadlines are whole seconds: 1 s from now is past within 2 s.
        std::thread::sleep(Duration::from_millis(2100));
        assert!(cache.get_jwt(&key(1)).is_none());
        assert!(cache.get_jwt(&key(2)).is_some());
    }
}
