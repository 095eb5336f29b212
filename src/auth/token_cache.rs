//! The verified-token cache: SHA-256(token) -> claims (`Principal`), never a
//! decision, never the raw token, and never served past the token's `exp`
//! (per-entry expiry plus a check on read).
//!
//! In front of the shared moka cache of verified JWTs, each thread keeps a
//! few of the entries it last hit ([`Front`]). A moka read writes to state
//! every worker shares (the entry's access time, the read log, the
//! frequency sketch), and on two cores those cache lines travel between
//! the workers on every request: 470 ns a hit with two threads reading one
//! token, against 170 ns with one. A token hit twice in a thread gets a copy
//! of its principal of that thread's own ([`Principal::unshared`]), so a hit
//! in the front, and the identity headers cloned from it, touch only memory
//! that thread writes.
//!
//! A verified JWT goes into the shared cache at once while the cache has
//! room; once it is full, only on its second verification in a while
//! ([`Doorkeeper`], TinyLFU's "doorkeeper"). A full cache facing a stream
//! of tokens each seen once would otherwise take each one in and push one
//! out (moka's admission may turn it away, but only after it was
//! inserted), paying for the insert, the eviction and the hash table's
//! clean-up of removed entries, about a sixth of a cold request's CPU
//! (bench/RESULTS.md), for entries never read. A token in use is cached from its
//! second request on; the first costs one more signature check, once.
//!
//! The front is found by the token's bytes, not by its hash: an entry keeps
//! a copy of the token it was hit with and answers only a token equal to it
//! (compared in constant time), so a front hit costs no SHA-256 (0.4 to
//! 0.7 µs for a 643-byte RS256 token on the bench machines, a few percent
//! of a whole proxied request). The shared cache still holds only hashes; the raw tokens a
//! front keeps (at most [`FRONT_SLOTS`] per thread, none longer than
//! [`FRONT_MAX_TOKEN`]) never leave the process, like the request buffers
//! they were read from.

use std::cell::RefCell;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
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
    /// Which cache a thread's [`Front`] holds entries of: unique for the
    /// process's life, where an address could be reused.
    id: u64,
    jwt: moka::sync::Cache<TokenHash, Cached>,
    /// From what weighted size the JWT cache counts as full (90% of its budget).
    jwt_full_at: u64,
    doorkeeper: Doorkeeper,
    opaque: moka::future::Cache<TokenHash, Cached>,
}

/// Which JWTs were verified once lately: one fingerprint per slot,
/// direct-mapped by the token hash, overwritten by the next token that
/// maps there. A token whose fingerprint is still in its slot when it is
/// verified again was seen before. Lossy both ways and only a hint: a
/// token it forgets is verified once more, and a fingerprint that matches
/// by chance (64 bits) only lets a verified token into the cache early.
struct Doorkeeper {
    slots: Box<[AtomicU64]>,
}

/// 16,384 slots (128 KiB): a token is remembered until one of the tokens
/// verified after it takes its slot, on average 16,384 of them.
const DOORKEEPER_SLOTS: usize = 1 << 14;

impl Doorkeeper {
    fn new() -> Self {
        Doorkeeper {
            slots: (0..DOORKEEPER_SLOTS).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// Was this token seen lately? Remembers it either way.
    fn seen_before(&self, key: &TokenHash) -> bool {
        let word = |at: usize| {
            let mut bytes = [0u8; 8];
            bytes.copy_from_slice(&key[at..at + 8]);
            u64::from_le_bytes(bytes)
        };
        // Slots start at 0, which no fingerprint is.
        let fingerprint = word(8) | 1;
        let slot = &self.slots[word(0) as usize % DOORKEEPER_SLOTS];
        if slot.load(Ordering::Relaxed) == fingerprint {
            return true;
        }
        slot.store(fingerprint, Ordering::Relaxed);
        false
    }
}

/// How many verified JWTs a thread keeps in its [`Front`]: enough for the
/// tokens a busy client set reuses, small enough that what it keeps alive
/// beyond the shared cache's budget stays small (at most this many
/// principals per thread, each one a moka entry when it was put there).
const FRONT_SLOTS: usize = 1 << FRONT_SLOT_BITS;
const FRONT_SLOT_BITS: u32 = 6;

/// The longest token a front keeps a copy of (longer ones are served from
/// the shared cache): at most 256 KiB of tokens per thread.
const FRONT_MAX_TOKEN: usize = 4096;

/// One thread's copy of a few shared-cache hits, direct-mapped by the
/// token's last bytes ([`Front::slot`]). An entry is served under the same
/// checks as a shared one (its deadline, its key set still current), only
/// for the very token it was hit with, and only for the cache it came from.
struct Front {
    owner: u64,
    /// Mixed into the slot choice: random per thread and cache, so which
    /// tokens share a slot cannot be chosen from outside.
    seed: u64,
    slots: [Option<FrontEntry>; FRONT_SLOTS],
}

struct FrontEntry {
    /// The token as sent, compared in full before the entry answers.
    token: Box<[u8]>,
    /// Its shared-cache key, to drop the shared entry with this one.
    hash: TokenHash,
    /// The shared cache's principal when the entry is made, this thread's
    /// own copy from its first hit on (`own`): a token seen once per
    /// thread costs no copy.
    principal: Arc<Principal>,
    own: bool,
    until: u64,
    verified_with: Weak<KeySet>,
}

thread_local! {
    static FRONT: RefCell<Front> = const {
        RefCell::new(Front {
            owner: 0,
            seed: 0,
            slots: [const { None }; FRONT_SLOTS],
        })
    };
}

impl Front {
    fn for_cache(owner: u64) -> Front {
        Front {
            owner,
            seed: std::hash::RandomState::new().hash_one(owner),
            slots: [const { None }; FRONT_SLOTS],
        }
    }

    /// A token's slot, from its last 8 bytes and its length: for a JWT
    /// that is the signature's end, where tokens of one issuer differ
    /// (their headers are alike). Tokens that share a slot only take turns
    /// in it; what a slot answers is decided by comparing the whole token.
    fn slot(&self, token: &[u8]) -> usize {
        let mut tail = [0u8; 8];
        let n = token.len().min(8);
        tail[..n].copy_from_slice(&token[token.len() - n..]);
        let mixed = (u64::from_le_bytes(tail) ^ token.len() as u64 ^ self.seed)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15);
        // The product's top bits depend on every bit of the input.
        (mixed >> (64 - FRONT_SLOT_BITS)) as usize
    }
}

/// Equal tokens, compared in time that does not depend on where they differ.
fn same_token(kept: &[u8], token: &[u8]) -> bool {
    aws_lc_rs::constant_time::verify_slices_are_equal(kept, token).is_ok()
}

/// Cache ids start at 1: a thread's front that never held anything has owner 0.
static NEXT_CACHE_ID: AtomicU64 = AtomicU64::new(1);

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
            id: NEXT_CACHE_ID.fetch_add(1, Ordering::Relaxed),
            jwt: moka::sync::Cache::builder()
                .max_capacity(jwt_bytes)
                .weigher(weight)
                .expire_after(UntilExpiry)
                .build(),
            // 90%: moka evicts in batches, so a full cache hovers below
            // its capacity.
            jwt_full_at: jwt_bytes / 10 * 9,
            doorkeeper: Doorkeeper::new(),
            opaque: moka::future::Cache::builder()
                .max_capacity(opaque_bytes)
                .weigher(weight)
                .expire_after(UntilExpiry)
                .build(),
        }
    }

    /// A verified JWT's principal, from this thread's front or the shared
    /// cache, unless its entry is past its deadline or `current` says the
    /// key set that verified it is no longer its issuer's (the entry is
    /// then dropped from both). `Err`: not cached, with the key its
    /// verification is to be cached under ([`token_hash`] of `token`),
    /// computed only when the front did not know the token.
    pub(crate) fn get_jwt(
        &self,
        token: &[u8],
        current: impl Fn(&Principal, &Weak<KeySet>) -> bool,
    ) -> Result<Arc<Principal>, TokenHash> {
        let now = now_unix();
        FRONT.with_borrow_mut(|front| {
            if front.owner != self.id {
                *front = Front::for_cache(self.id);
            }
            let slot = front.slot(token);
            let slot = &mut front.slots[slot];
            let mut known_hash = None;
            if let Some(entry) = slot.as_mut().filter(|e| same_token(&e.token, token)) {
                if entry.until > now && current(&entry.principal, &entry.verified_with) {
                    if !entry.own {
                        entry.principal = Arc::new(entry.principal.unshared());
                        entry.own = true;
                    }
                    return Ok(Arc::clone(&entry.principal));
                }
                // Stale here; the shared cache may hold a newer verification.
                known_hash = Some(entry.hash);
                *slot = None;
            }
            let hash = known_hash.unwrap_or_else(|| token_hash(token));
            let Some(hit) = self.jwt.get(&hash) else {
                return Err(hash);
            };
            // moka's expiry is coarse; never serve an entry past its deadline.
            if let (true, Some(principal), Some(with)) =
                (hit.until > now, hit.principal, hit.verified_with)
            {
                if current(&principal, &with) {
                    if token.len() <= FRONT_MAX_TOKEN {
                        *slot = Some(FrontEntry {
                            token: token.into(),
                            hash,
                            principal: Arc::clone(&principal),
                            own: false,
                            until: hit.until,
                            verified_with: with,
                        });
                    }
                    return Ok(principal);
                }
            }
            self.jwt.invalidate(&hash);
            Err(hash)
        })
    }

    /// Caches a verified JWT: at once while the cache has room, on its
    /// second verification once it is full (see the module's notes).
    pub(crate) fn insert_jwt(&self, key: TokenHash, value: Cached) {
        let full = self.jwt.weighted_size() >= self.jwt_full_at;
        // The doorkeeper learns every token, so that one first seen while
        // the cache had room is let in on its next verification.
        let seen = self.doorkeeper.seen_before(&key);
        if value.until > now_unix() && (seen || !full) {
            self.jwt.insert(key, value);
        }
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
            verified_with: Some(Weak::new()),
        }
    }

    fn any_key_set(_: &Principal, _: &Weak<KeySet>) -> bool {
        true
    }

    fn token(i: usize) -> Vec<u8> {
        format!("token-{i}").into_bytes()
    }

    fn key(i: usize) -> TokenHash {
        token_hash(&token(i))
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
        // Twice: the second answer comes from this thread's front.
        assert!(cache.get_jwt(&token(1), any_key_set).is_ok());
        assert!(cache.get_jwt(&token(1), any_key_set).is_ok());
        // Deadlines are whole seconds: 1 s from now is past within 2 s.
        std::thread::sleep(Duration::from_millis(2100));
        assert!(cache.get_jwt(&token(1), any_key_set).is_err());
        assert!(cache.get_jwt(&token(2), any_key_set).is_ok());
    }

    /// A thread's front serves an entry under the shared cache's checks:
    /// once its key set is no longer current it is gone from both, and a
    /// front never answers for another cache.
    #[test]
    fn the_front_answers_only_what_the_shared_cache_would() {
        let cache = TokenCache::new(1 << 20, false);
        cache.insert_jwt(key(1), entry(1));
        let first = cache.get_jwt(&token(1), any_key_set).expect("shared hit");
        let again = cache.get_jwt(&token(1), any_key_set).expect("front hit");
        assert!(!Arc::ptr_eq(&first, &again), "this thread's own copy");
        assert_eq!(first.subject, again.subject);
        let third = cache.get_jwt(&token(1), any_key_set).expect("front hit");
        assert!(Arc::ptr_eq(&again, &third), "copied once");
        assert!(cache.get_jwt(&token(1), |_, _| false).is_err());
        assert!(
            cache.get_jwt(&token(1), any_key_set).is_err(),
            "a stale entry is dropped from the shared cache too"
        );

        cache.insert_jwt(key(2), entry(2));
        assert!(cache.get_jwt(&token(2), any_key_set).is_ok());
        let other = TokenCache::new(1 << 20, false);
        assert!(
            other.get_jwt(&token(2), any_key_set).is_err(),
            "another cache's entry"
        );
        // Asking another cache empties the thread's front: each cache then
        // answers its own entry again, from its shared part.
        other.insert_jwt(key(2), entry(2));
        assert!(other.get_jwt(&token(2), any_key_set).is_ok());
        assert!(cache.get_jwt(&token(2), any_key_set).is_ok());
    }

    /// Once the cache is full, a token gets in on its second verification,
    /// not its first: a stream of tokens seen once leaves it as it was.
    #[test]
    fn a_full_cache_takes_a_token_on_its_second_verification() {
        let cache = TokenCache::new(64 * 1024, false);
        let mut i = 0;
        while cache.jwt.weighted_size() < cache.jwt_full_at {
            cache.insert_jwt(key(i), entry(i));
            cache.jwt.run_pending_tasks();
            i += 1;
            assert!(i < 10_000, "the cache never fills");
        }
        let filled = i;
        assert!(
            cache.get_jwt(&token(0), any_key_set).is_ok(),
            "taken at once while it had room"
        );

        let newcomer = filled + 1;
        cache.insert_jwt(key(newcomer), entry(newcomer));
        cache.jwt.run_pending_tasks();
        assert!(
            cache.get_jwt(&token(newcomer), any_key_set).is_err(),
            "first verification"
        );
        cache.insert_jwt(key(newcomer), entry(newcomer));
        cache.jwt.run_pending_tasks();
        assert!(
            cache.get_jwt(&token(newcomer), any_key_set).is_ok(),
            "second verification"
        );

        for once in newcomer + 1..newcomer + 500 {
            cache.insert_jwt(key(once), entry(once));
        }
        cache.jwt.run_pending_tasks();
        let taken = (newcomer + 1..newcomer + 500)
            .filter(|&once| cache.jwt.contains_key(&key(once)))
            .count();
        assert_eq!(taken, 0, "tokens seen once stay out");
        assert!(cache.get_jwt(&token(newcomer), any_key_set).is_ok());
    }

    /// A front entry answers only the very token it was hit with: a token
    /// that lands in its slot (same length, same last bytes) but differs
    /// anywhere else is a miss, answered with its own hash, and leaves the
    /// entry in place.
    #[test]
    fn the_front_answers_only_the_token_it_was_hit_with() {
        let cache = TokenCache::new(1 << 20, false);
        let kept = b"header.payload-A-signature-end".to_vec();
        let forged = b"header.payload-B-signature-end".to_vec();
        cache.insert_jwt(token_hash(&kept), entry(1));
        cache.get_jwt(&kept, any_key_set).expect("shared hit");
        let own = cache.get_jwt(&kept, any_key_set).expect("front hit");

        let miss = cache
            .get_jwt(&forged, any_key_set)
            .expect_err("another token");
        assert_eq!(miss, token_hash(&forged));
        let miss = cache.get_jwt(&kept[..kept.len() - 1], any_key_set);
        assert_eq!(
            miss.expect_err("a prefix"),
            token_hash(&kept[..kept.len() - 1])
        );

        let again = cache
            .get_jwt(&kept, any_key_set)
            .expect("still in the front");
        assert!(Arc::ptr_eq(&own, &again));
    }

    /// A front entry that is no longer current gives way to a newer
    /// verification of the same token in the shared cache (another thread
    /// verified it again, say after a key rotation); it does not drop it.
    #[test]
    fn a_stale_front_entry_defers_to_a_newer_shared_one() {
        let cache = TokenCache::new(1 << 20, false);
        cache.insert_jwt(key(1), entry(1));
        cache.get_jwt(&token(1), any_key_set).expect("shared hit");
        cache.get_jwt(&token(1), any_key_set).expect("front hit");

        let mut newer = entry(1);
        if let Some(principal) = newer.principal.as_mut() {
            Arc::get_mut(principal).expect("unshared").subject = Some("again".into());
        }
        cache.jwt.insert(key(1), newer);
        let only_newer = |p: &Principal, _: &Weak<KeySet>| p.subject.as_deref() == Some("again");
        let served = cache
            .get_jwt(&token(1), only_newer)
            .expect("the newer entry");
        assert_eq!(served.subject.as_deref(), Some("again"));
        assert!(cache.jwt.contains_key(&key(1)), "kept in the shared cache");
        let again = cache.get_jwt(&token(1), only_newer).expect("front hit");
        assert_eq!(again.subject.as_deref(), Some("again"));
    }

    /// A token longer than a front keeps is still served, from the shared cache.
    #[test]
    fn a_long_token_is_served_from_the_shared_cache() {
        let cache = TokenCache::new(1 << 20, false);
        let long = vec![b'x'; FRONT_MAX_TOKEN + 1];
        cache.insert_jwt(token_hash(&long), entry(1));
        let first = cache.get_jwt(&long, any_key_set).expect("shared hit");
        let second = cache.get_jwt(&long, any_key_set).expect("shared hit");
        assert!(Arc::ptr_eq(&first, &second), "the shared entry, not a copy");
    }
}
