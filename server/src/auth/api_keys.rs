//! Verifying `Authorization: Bearer dap_…` API keys, with a cache so that the argon2id check
//! (tens of milliseconds by design) runs once per key, not per request.
//!
//! The cache is keyed by a SHA-256 of the presented key and holds the key's id, its scope and
//! the stored hash that verified it. An entry older than its TTL is re-checked against the
//! key's row: a revoked or deleted key is refused, and a changed scope applies, so a
//! revocation made by any process (the CLI, another node) takes effect within the TTL. The
//! argon2 check is not repeated while the stored hash is the one it passed against (the
//! same key against the same hash gives the same answer); it was, every 30 s per key, a
//! ~70 ms stall of a request. It does not decide what a scope may do (`http::extract`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use super::secrets::{self, API_KEY_PREFIX};
use super::AuthError;
use crate::store::{ApiKey, Scope, Store};

pub const CACHE_TTL: Duration = Duration::from_secs(30);
const CACHE_MAX: usize = 10_000;

/// Who is calling the REST API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub key_id: String,
    pub scope: Scope,
}

/// A presented key that passed the argon2 check.
struct Verified {
    principal: Principal,
    /// The stored hash it passed against.
    hash: String,
    /// When its row was last read.
    checked: Instant,
}

/// SHA-256 of a presented key → what it verified as.
type KeyCache = HashMap<[u8; 32], Verified>;

#[derive(Clone)]
pub struct ApiKeyVerifier {
    store: Store,
    ttl: Duration,
    cache: Arc<Mutex<KeyCache>>,
    argon2_checks: Arc<AtomicU64>,
}

impl ApiKeyVerifier {
    pub fn new(store: Store) -> Self {
        Self::with_ttl(store, CACHE_TTL)
    }

    /// A verifier whose cached keys are re-checked against their rows after `ttl`.
    pub fn with_ttl(store: Store, ttl: Duration) -> Self {
        Self {
            store,
            ttl,
            cache: Arc::default(),
            argon2_checks: Arc::default(),
        }
    }

    pub async fn verify(&self, presented: &str) -> Result<Principal, AuthError> {
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        let known = match self.cached(&digest) {
            Cached::Fresh(p) => return Ok(p),
            Cached::Stale(hash) => Some(hash),
            Cached::Unknown => None,
        };
        let id = secrets::parse_id(presented, API_KEY_PREFIX).ok_or(AuthError::Invalid)?;
        let Some(key) = self.store.get_api_key(id).await? else {
            self.forget(&digest);
            return Err(AuthError::Invalid);
        };
        if known.as_deref() != Some(key.hash.as_str()) {
            self.argon2_checks.fetch_add(1, Ordering::Relaxed);
            if !secrets::verify(presented.to_owned(), key.hash.clone()).await {
                self.forget(&digest);
                return Err(AuthError::Invalid);
            }
        }
        if key.revoked_at.is_some() {
            self.forget(&digest);
            return Err(AuthError::Revoked);
        }
        Ok(self.remember(digest, key))
    }

    /// How many presented keys went through the argon2 check so far.
    pub fn argon2_checks(&self) -> u64 {
        self.argon2_checks.load(Ordering::Relaxed)
    }

    fn cached(&self, digest: &[u8; 32]) -> Cached {
        let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        match cache.get(digest) {
            Some(v) if v.checked.elapsed() < self.ttl => Cached::Fresh(v.principal.clone()),
            Some(v) => Cached::Stale(v.hash.clone()),
            None => Cached::Unknown,
        }
    }

    fn remember(&self, digest: [u8; 32], key: ApiKey) -> Principal {
        let principal = Principal {
            key_id: key.id,
            scope: key.scope,
        };
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= CACHE_MAX && !cache.contains_key(&digest) {
            cache.clear();
        }
        let v = Verified {
            principal: principal.clone(),
            hash: key.hash,
            checked: Instant::now(),
        };
        cache.insert(digest, v);
        principal
    }

    fn forget(&self, digest: &[u8; 32]) {
        self.cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(digest);
    }
}

enum Cached {
    /// Checked against its row within the TTL.
    Fresh(Principal),
    /// Verified against this stored hash, but its row is due for a new look.
    Stale(String),
    Unknown,
}

/// Creates a key and returns `(id, full key)`. The full key is shown once and never stored.
pub async fn create_api_key(
    store: &Store,
    name: &str,
    scope: Scope,
) -> Result<(String, String), AuthError> {
    let id = secrets::random_key_id();
    let key = format!("{API_KEY_PREFIX}{id}_{}", secrets::random_secret());
    let hash = secrets::hash(key.clone()).await;
    store.create_api_key(&id, name, scope, &hash).await?;
    Ok((id, key))
}
