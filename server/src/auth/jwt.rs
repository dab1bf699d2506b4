//! Short-lived JWTs signed with HS256 and a server key that is generated on first start and
//! kept in the data directory (mode 0600).
//!
//! Two kinds exist and neither is accepted where the other is expected: `runner` tokens
//! (≤ 15 min) open the runner socket; `sse` tickets (≤ 60 s) open the event feed, read-only,
//! optionally for one task. `typ`, `aud`, `exp` and the algorithm are all checked.

use std::path::Path;

use jsonwebtoken::{decode, encode, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rand::RngCore;
use serde::{Deserialize, Serialize};

use super::AuthError;
use crate::store::now_ms;

/// Lifetime of a runner socket token.
pub const RUNNER_TOKEN_TTL_S: i64 = 15 * 60;
/// Lifetime of an SSE ticket (time to connect; an open stream outlives it).
pub const SSE_TICKET_TTL_S: i64 = 60;

const KEY_FILE: &str = "jwt-hs256.key";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    Runner,
    SseTicket,
    /// A signed download link for one artifact (`sub` = `<task_id>/<name>`).
    ArtifactDownload,
}

impl TokenKind {
    fn typ(self) -> &'static str {
        match self {
            Self::Runner => "runner",
            Self::SseTicket => "sse",
            Self::ArtifactDownload => "artifact",
        }
    }
    fn aud(self) -> &'static str {
        match self {
            Self::Runner => "dap:runner-socket",
            Self::SseTicket => "dap:sse",
            Self::ArtifactDownload => "dap:artifact",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    /// Runner id (runner tokens) or API key id (tickets).
    pub sub: String,
    pub typ: String,
    pub aud: String,
    pub iat: i64,
    pub exp: i64,
    /// SSE tickets may be limited to one task's events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_id: Option<String>,
    /// Random id of this token, so two issued in the same second differ (the SSE feed counts
    /// open streams per ticket by it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
}

#[derive(Clone)]
pub struct JwtKeys {
    enc: EncodingKey,
    dec: DecodingKey,
}

impl JwtKeys {
    /// Loads the signing key from `data_dir`, creating it on first start.
    pub fn load_or_create(data_dir: &Path) -> Result<Self, AuthError> {
        let path = data_dir.join(KEY_FILE);
        let secret = match std::fs::read(&path) {
            Ok(b) if b.len() >= 32 => b,
            Ok(_) | Err(_) if !path.exists() => {
                let mut b = vec![0u8; 64];
                rand::thread_rng().fill_bytes(&mut b);
                write_private(&path, &b)?;
                b
            }
            Ok(_) => {
                return Err(AuthError::KeyFile(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("{} is shorter than 32 bytes", path.display()),
                )))
            }
            Err(e) => return Err(e.into()),
        };
        Ok(Self::from_secret(&secret))
    }

    pub fn from_secret(secret: &[u8]) -> Self {
        Self {
            enc: EncodingKey::from_secret(secret),
            dec: DecodingKey::from_secret(secret),
        }
    }

    /// Signs a token of `kind` for `sub`, valid for `ttl_s` seconds from now.
    pub fn issue(&self, kind: TokenKind, sub: &str, ttl_s: i64, task_id: Option<String>) -> String {
        let iat = now_ms() / 1000;
        let claims = Claims {
            sub: sub.to_owned(),
            typ: kind.typ().to_owned(),
            aud: kind.aud().to_owned(),
            iat,
            exp: iat + ttl_s,
            task_id,
            jti: Some(format!("{:032x}", rand::random::<u128>())),
        };
        encode(&Header::new(Algorithm::HS256), &claims, &self.enc)
            .expect("HS256 signing of plain claims cannot fail")
    }

    /// Verifies signature, algorithm (HS256 only, so `alg: none` fails), expiry, audience and kind.
    pub fn verify(&self, token: &str, kind: TokenKind) -> Result<Claims, AuthError> {
        let mut v = Validation::new(Algorithm::HS256);
        v.set_audience(&[kind.aud()]);
        v.set_required_spec_claims(&["exp", "aud", "sub"]);
        v.leeway = 2;
        let data = decode::<Claims>(token, &self.dec, &v).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind;
            match e.kind() {
                ErrorKind::ExpiredSignature => AuthError::Expired,
                ErrorKind::InvalidAudience => AuthError::WrongKind,
                _ => AuthError::Invalid,
            }
        })?;
        if data.claims.typ != kind.typ() {
            return Err(AuthError::WrongKind);
        }
        Ok(data.claims)
    }
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;

    #[test]
    fn round_trip_and_kind_check() {
        let k = JwtKeys::from_secret(&[7u8; 64]);
        let t = k.issue(TokenKind::Runner, "r1", 60, None);
        assert_eq!(k.verify(&t, TokenKind::Runner).unwrap().sub, "r1");
        assert!(matches!(
            k.verify(&t, TokenKind::SseTicket),
            Err(AuthError::WrongKind)
        ));
        let s = k.issue(TokenKind::SseTicket, "key", 30, Some("t1".into()));
        assert_eq!(
            k.verify(&s, TokenKind::SseTicket)
                .unwrap()
                .task_id
                .as_deref(),
            Some("t1")
        );
        assert!(k.verify(&s, TokenKind::Runner).is_err());
    }

    #[test]
    fn expired_tampered_and_unsigned_tokens_fail() {
        let k = JwtKeys::from_secret(&[7u8; 64]);
        let old = k.issue(TokenKind::Runner, "r1", -120, None);
        assert!(matches!(
            k.verify(&old, TokenKind::Runner),
            Err(AuthError::Expired)
        ));

        let t = k.issue(TokenKind::Runner, "r1", 60, None);
        let other = JwtKeys::from_secret(&[8u8; 64]);
        assert!(other.verify(&t, TokenKind::Runner).is_err());

        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let parts: Vec<&str> = t.split('.').collect();
        let payload = String::from_utf8(b64.decode(parts[1]).unwrap()).unwrap();
        let forged = payload.replace("\"r1\"", "\"r2\"");
        let tampered = format!("{}.{}.{}", parts[0], b64.encode(forged), parts[2]);
        assert!(k.verify(&tampered, TokenKind::Runner).is_err());

        let none = format!(
            "{}.{}.",
            b64.encode(r#"{"alg":"none","typ":"JWT"}"#),
            parts[1]
        );
        assert!(k.verify(&none, TokenKind::Runner).is_err());
    }

    #[test]
    fn key_is_created_once_and_reused() {
        let dir = std::env::temp_dir().join(format!("dap-jwt-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        let a = JwtKeys::load_or_create(&dir).unwrap();
        let t = a.issue(TokenKind::Runner, "r", 60, None);
        let b = JwtKeys::load_or_create(&dir).unwrap();
        assert!(b.verify(&t, TokenKind::Runner).is_ok());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
