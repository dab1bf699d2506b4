//! Credentials: API keys for REST clients, enrolment credentials for runners (both stored only
//! as argon2id hashes), and short-lived JWTs (runner socket tokens and SSE tickets).
//!
//! This module decides *who* a caller is; it knows no status codes (the HTTP layer maps
//! [`AuthError`] to 401/403) and never logs a secret.

pub mod api_keys;
pub mod jwt;
pub mod secrets;

pub use api_keys::{ApiKeyVerifier, Principal};
pub use jwt::{Claims, JwtKeys, TokenKind};

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("missing credentials")]
    Missing,
    #[error("invalid credentials")]
    Invalid,
    #[error("credential revoked")]
    Revoked,
    #[error("token expired")]
    Expired,
    #[error("wrong kind of token")]
    WrongKind,
    #[error("insufficient scope: {0} required")]
    Scope(&'static str),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("key file: {0}")]
    KeyFile(#[from] std::io::Error),
}
