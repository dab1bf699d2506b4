//! Generating, formatting, hashing and checking secrets (API keys and runner credentials).
//!
//! A presented secret carries the id of its row (`dap_<id>_<secret>` for API keys,
//! `dapr_<runner_id>_<secret>` for runner credentials) so verification is one lookup and one
//! argon2id check, never a scan. Hashing is CPU-heavy and runs on the blocking pool.

use argon2::password_hash::{
    rand_core::OsRng, PasswordHash, PasswordHasher, PasswordVerifier, SaltString,
};
use argon2::Argon2;
use base64::Engine;
use rand::RngCore;

pub const API_KEY_PREFIX: &str = "dap_";
pub const RUNNER_TOKEN_PREFIX: &str = "dapr_";

/// 32 random bytes, base64url without padding.
pub fn random_secret() -> String {
    let mut b = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut b);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

/// 8 random bytes as hex: the public id of an API key.
pub fn random_key_id() -> String {
    let mut b = [0u8; 8];
    rand::thread_rng().fill_bytes(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Splits `<prefix><id>_<secret>` into the id; `None` when the shape is wrong.
pub fn parse_id<'a>(presented: &'a str, prefix: &str) -> Option<&'a str> {
    let rest = presented.strip_prefix(prefix)?;
    let (id, secret) = rest.split_once('_')?;
    if id.is_empty() || secret.len() < 16 || id.len() > 64 {
        return None;
    }
    Some(id)
}

/// argon2id hash (PHC string) of `secret`, computed on the blocking pool.
pub async fn hash(secret: String) -> String {
    tokio::task::spawn_blocking(move || {
        let salt = SaltString::generate(&mut OsRng);
        Argon2::default()
            .hash_password(secret.as_bytes(), &salt)
            .map(|h| h.to_string())
            .expect("argon2 with default parameters hashes any input")
    })
    .await
    .expect("hashing task does not panic")
}

/// Checks `secret` against a stored PHC hash on the blocking pool.
pub async fn verify(secret: String, phc: String) -> bool {
    tokio::task::spawn_blocking(move || match PasswordHash::new(&phc) {
        Ok(parsed) => Argon2::default()
            .verify_password(secret.as_bytes(), &parsed)
            .is_ok(),
        Err(_) => false,
    })
    .await
    .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_ids() {
        let s = format!("dap_abc123_{}", random_secret());
        assert_eq!(parse_id(&s, API_KEY_PREFIX), Some("abc123"));
        assert_eq!(parse_id("dap_abc", API_KEY_PREFIX), None);
        assert_eq!(
            parse_id("dap__xxxxxxxxxxxxxxxxxxxxxxx", API_KEY_PREFIX),
            None
        );
        assert_eq!(parse_id(&s, RUNNER_TOKEN_PREFIX), None);
        // A secret may itself contain '_' (base64url); only the first one splits.
        assert_eq!(
            parse_id("dapr_r-1_aaaa_bbbbbbbbbbbbbbbbbbbb", RUNNER_TOKEN_PREFIX),
            Some("r-1")
        );
    }

    #[tokio::test]
    async fn hash_and_verify() {
        let h = hash("s3cret-value".into()).await;
        assert!(h.starts_with("$argon2id$"));
        assert!(verify("s3cret-value".into(), h.clone()).await);
        assert!(!verify("other".into(), h).await);
        assert!(!verify("x".into(), "not a hash".into()).await);
    }
}
