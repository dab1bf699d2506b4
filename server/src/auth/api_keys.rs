//! Verifying `Authorization: Bearer dap_…` API keys, with a short-lived cache so that the
//! argon2id check (tens of milliseconds by design) runs once per key per TTL, not per request.
//!
//! The cache is keyed by a SHA-256 of the presented key, holds only the key id and scope, and
//! is cleared on revocation through the API; a revocation made by another process (the CLI)
//! takes effect within [`CACHE_TTL`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use super::secrets::{self, API_KEY_PREFIX};
use super::AuthError;
use crate::store::{Scope, Store};

pub const CACHE_TTL: Duration = Duration::from_secs(30);
const CACHE_MAX: usize = 10_000;

/// Who is calling the REST API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub key_id: String,
    pub scope: Scope,
}

/// SHA-256 of a presented key → who it is and when that was verified.
type KeyCache = HashMap<[u8; 32], (Principal, Instant)>;

#[derive(Clone)]
pub struct ApiKeyVerifier {
    store: Store,
    cache: Arc<Mutex<KeyCache>>,
}

impl ApiKeyVerifier {
    pub fn new(store: Store) -> Self {
        Self {
            store,
            cache: Arc::default(),
        }
    }

    pub async fn verify(&self, presented: &str) -> Result<Principal, AuthError> {
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        if let Some(p) = self.cached(&digest) {
            return Ok(p);
        }
        let id = secrets::parse_id(presented, API_KEY_PREFIX).ok_or(AuthError::Invalid)?;
        let key = self
            .store
            .get_api_key(id)
            .await?
            .ok_or(AuthError::Invalid)?;
        if !secrets::verify(presented.to_owned(), key.hash.clone()).await {
            return Err(AuthError::Invalid);
        }
        if key.revoked_at.is_some() {
            return Err(AuthError::Revoked);
        }
        let p = Principal {
            key_id: key.id,
            scope: key.scope,
        };
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= CACHE_MAX {
            cache.clear();
        }
        cache.insert(digest, (p.clone(), Instant::now()));
        Ok(p)
    }

    fn cached(&self, digest: &[u8; 32]) -> Option<Principal> {
        let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        match cache.get(digest) {
            Some((p, at)) if at.elapsed() < CACHE_TTL => Some(p.clone()),
            _ => None,
        }
    }

    /// Forgets every cached key (after a revocation).
    pub fn clear_cache(&self) {
        self.cache.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }
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
