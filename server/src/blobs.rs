//! The blob store: where artifact bytes live. [`FsBlobStore`] keeps them in a directory (by
//! default `<data-dir>/blobs`); its three operations (streamed put with size cap and SHA-256,
//! open for reading, delete) are the whole interface an S3-compatible store would implement.
//!
//! It knows nothing of tasks, HTTP or the database: callers pass a key and bytes.

use std::path::{Path, PathBuf};

use axum::body::Bytes;
use futures_util::{Stream, StreamExt};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("upload is larger than {0} bytes")]
    TooLarge(u64),
    #[error("upload interrupted: {0}")]
    Body(String),
    #[error("blob I/O: {0}")]
    Io(#[from] std::io::Error),
}

/// What a completed put stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub size: u64,
    /// Lowercase hex SHA-256 of the bytes.
    pub sha256: String,
}

#[derive(Debug, Clone)]
pub struct FsBlobStore {
    root: PathBuf,
}

impl FsBlobStore {
    pub fn new(root: impl Into<PathBuf>) -> std::io::Result<Self> {
        let root = root.into();
        std::fs::create_dir_all(root.join("tmp"))?;
        Ok(Self { root })
    }

    /// Keys are built by the caller from validated parts (`a/b/c`, no `..`); this maps them
    /// under the root.
    fn path(&self, key: &str) -> PathBuf {
        self.root.join("objects").join(key)
    }

    /// Streams `body` to `key`, refusing more than `max` bytes. The bytes become visible under
    /// `key` only when complete (written to a temporary file, synced, then renamed).
    pub async fn put<S, E>(&self, key: &str, mut body: S, max: u64) -> Result<Stored, BlobError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let tmp = self
            .root
            .join("tmp")
            .join(format!("{}.part", uuid::Uuid::new_v4()));
        let result = async {
            let mut file = tokio::fs::File::create(&tmp).await?;
            let mut hasher = Sha256::new();
            let mut size: u64 = 0;
            while let Some(chunk) = body.next().await {
                let chunk = chunk.map_err(|e| BlobError::Body(e.to_string()))?;
                size += chunk.len() as u64;
                if size > max {
                    return Err(BlobError::TooLarge(max));
                }
                hasher.update(&chunk);
                file.write_all(&chunk).await?;
            }
            file.sync_all().await?;
            let sha256 = hasher
                .finalize()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>();
            Ok(Stored { size, sha256 })
        }
        .await;
        match result {
            Ok(stored) => {
                let dest = self.path(key);
                if let Some(parent) = dest.parent() {
                    tokio::fs::create_dir_all(parent).await?;
                }
                tokio::fs::rename(&tmp, &dest).await?;
                Ok(stored)
            }
            Err(e) => {
                let _ = tokio::fs::remove_file(&tmp).await;
                Err(e)
            }
        }
    }

    /// Opens `key` for reading.
    pub async fn open(&self, key: &str) -> std::io::Result<tokio::fs::File> {
        tokio::fs::File::open(self.path(key)).await
    }

    pub async fn delete(&self, key: &str) -> std::io::Result<()> {
        match tokio::fs::remove_file(self.path(key)).await {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
}
