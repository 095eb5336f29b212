//! Counters the verifier keeps for `/metrics`; the admin module renders a snapshot.

use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) jwks_fetch_ok: AtomicU64,
    pub(crate) jwks_fetch_error: AtomicU64,
    pub(crate) key_hits: AtomicU64,
    pub(crate) key_misses: AtomicU64,
    pub(crate) token_cache_hits: AtomicU64,
    pub(crate) token_cache_misses: AtomicU64,
    pub(crate) introspection_ok: AtomicU64,
    pub(crate) introspection_error: AtomicU64,
}

/// A read-only snapshot of the verifier's counters (monotonic since start).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AuthMetrics {
    /// JWKS (or discovery + JWKS) fetches that produced a key set.
    pub jwks_fetch_ok: u64,
    /// JWKS fetches that failed (unreachable, timeout, garbage, too large).
    pub jwks_fetch_error: u64,
    /// Key lookups of JWTs that missed the token cache: the key was in the
    /// issuer's cached set (hit) or was not (miss: a refetch was considered).
    pub key_hits: u64,
    pub key_misses: u64,
    /// Verified-token cache (JWT and introspection) hits and misses.
    pub token_cache_hits: u64,
    pub token_cache_misses: u64,
    /// Introspection requests answered with an RFC 7662 document / failed.
    pub introspection_ok: u64,
    pub introspection_error: u64,
}

impl Counters {
    pub(crate) fn snapshot(&self) -> AuthMetrics {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        AuthMetrics {
            jwks_fetch_ok: get(&self.jwks_fetch_ok),
            jwks_fetch_error: get(&self.jwks_fetch_error),
            key_hits: get(&self.key_hits),
            key_misses: get(&self.key_misses),
            token_cache_hits: get(&self.token_cache_hits),
            token_cache_misses: get(&self.token_cache_misses),
            introspection_ok: get(&self.introspection_ok),
            introspection_error: get(&self.introspection_error),
        }
    }
}
