//! The verified-token cache: SHA-256(token) -> claims (`Principal`), never a
//! decision, never the raw token, and never served past the token's `exp`
//! (per-entry expiry plus a check on read).

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};

use super::jwks::KeySet;
use super::Principal;

/// Cache key: the SHA-256 of the token.
pub(crate) type TokenHash = [u8; 32];

pub(crate) fn token_hash(token: &str) -> TokenHash {
    Sha256::digest(token.as_bytes()).into()
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

pub(crate) struct TokenCache {
    inner: moka::future::Cache<TokenHash, Cached>,
}

/// Roughly how many bytes an entry holds: the claims' keys and string
/// values plus fixed overhead. The cache is bounded by this weight, not by
/// an entry count, so tokens with large claim sets cannot blow the memory
/// budget.
fn weight(_key: &TokenHash, value: &Cached) -> u32 {
    fn json_bytes(v: &serde_json::Value) -> usize {
        use serde_json::Value;
        match v {
            Value::String(s) => s.len() + 24,
            Value::Array(items) => 24 + items.iter().map(json_bytes).sum::<usize>(),
            Value::Object(map) => {
                48 + map
                    .iter()
                    .map(|(k, v)| k.len() + 48 + json_bytes(v))
                    .sum::<usize>()
            }
            _ => 16,
        }
    }
    let claims = value.principal.as_ref().map_or(0, |p| {
        p.claims
            .iter()
            .map(|(k, v)| k.len() + 48 + json_bytes(v))
            .sum::<usize>()
            + p.scopes.iter().map(|s| s.len() + 16).sum::<usize>()
    });
    u32::try_from(256 + claims).unwrap_or(u32::MAX)
}

impl TokenCache {
    /// A cache holding at most about `max_bytes` of entries.
    pub(crate) fn new(max_bytes: u64) -> Self {
        TokenCache {
            inner: moka::future::Cache::builder()
                .max_capacity(max_bytes)
                .weigher(weight)
                .expire_after(UntilExpiry)
                .build(),
        }
    }

    pub(crate) async fn get(&self, key: &TokenHash) -> Option<Cached> {
        let hit = self.inner.get(key).await?;
        // moka's expiry is coarse; never serve an entry past its deadline.
        if hit.until > now_unix() {
            Some(hit)
        } else {
            self.inner.invalidate(key).await;
            None
        }
    }

    pub(crate) async fn insert(&self, key: TokenHash, value: Cached) {
        if value.until > now_unix() {
            self.inner.insert(key, value).await;
        }
    }

    pub(crate) async fn invalidate(&self, key: &TokenHash) {
        self.inner.invalidate(key).await;
    }

    /// Single-flight read-through: concurrent callers with one key share `init`.
    /// Errors are handed to every waiter and not cached.
    pub(crate) async fn get_or_try_insert<E, F>(
        &self,
        key: TokenHash,
        init: F,
    ) -> Result<Cached, Arc<E>>
    where
        E: Send + Sync + 'static,
        F: std::future::Future<Output = Result<Cached, E>>,
    {
        if let Some(hit) = self.get(&key).await {
            return Ok(hit);
        }
        self.inner.try_get_with(key, init).await
    }
}
