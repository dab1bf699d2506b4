//! Artifacts: a task's large outputs, shipped to the server over HTTP rather than inline in the
//! `completed` message.
//!
//! An operation writes its files into the task's [`Scratch`] directory and returns them as
//! [`LocalArtifact`]s; the executor hands each to the [`Uploader`], which hashes the file
//! (SHA-256, one pass on a blocking thread), then streams it to
//! `PUT {server}/api/v1/tasks/{id}/artifacts/{name}?attempt={n}` with the runner's socket JWT and
//! the hash in `x-dap-sha256`. Transient failures (connection errors, timeouts, 408/429/5xx) are
//! retried with backoff; a 401 refreshes the JWT once; the server's refusals (409
//! `stale_attempt`, 413, 422 `checksum_mismatch`, other 4xx) become typed [`UploadError`]s.
//!
//! This module does not decide what becomes an artifact (operations do), nor what a failure
//! means for the task (the executor does). It uses plain HTTP with its own JWT, so it does not
//! need the WebSocket (although the server only accepts uploads for attempts it currently
//! counts as held by a connected runner). It never logs the runner credential or the JWT, and
//! its error messages carry neither local paths nor tokens, so they can be sent to the server.

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use dap_protocol::{failure, TaskError};
use reqwest::header::{CONTENT_LENGTH, CONTENT_TYPE};
use reqwest::StatusCode;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::connection::{error_chain, Backoff, Endpoints};

/// Failure code of a task whose artifact could not be uploaded.
pub const UPLOAD_FAILED: &str = "artifact_upload_failed";
/// Header carrying the body's SHA-256 (lowercase hex).
pub const SHA256_HEADER: &str = "x-dap-sha256";
/// Read size for hashing and streaming.
const CHUNK: usize = 64 * 1024;
/// Timeout for connecting, and for the token exchange as a whole.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// An upload that makes no progress for this long is abandoned (and retried).
const READ_TIMEOUT: Duration = Duration::from_secs(60);
/// Refresh the JWT this long before the server says it expires.
const JWT_MARGIN: Duration = Duration::from_secs(60);
/// Assumed JWT lifetime when the server does not say.
const DEFAULT_JWT_TTL: Duration = Duration::from_secs(15 * 60);

/// True for names the server accepts: `[A-Za-z0-9._-]{1,100}`, not starting with '.'.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 100
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

/// A file an operation produced, to be uploaded before the task reports `completed`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalArtifact {
    /// Name on the server (see [`valid_name`]).
    pub name: String,
    /// Where the file is, inside the task's [`Scratch`] directory.
    pub path: PathBuf,
    /// MIME type sent with the upload, e.g. `text/csv`.
    pub content_type: String,
}

/// What the server stored; listed under `artifacts` in the task's result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Uploaded {
    pub name: String,
    pub size: u64,
    pub sha256: String,
    pub content_type: String,
}

/// A task attempt's private scratch directory,
/// `{temp}/dap-runner-{pid}/{task}-{attempt}/`: created when an operation first asks for a
/// file in it, removed with everything in it when dropped (after the upload, on failure, or
/// when the operation panics).
#[derive(Debug)]
pub struct Scratch {
    dir: PathBuf,
}

impl Scratch {
    /// The directory for `task_id` / `attempt` under the system temp directory.
    pub fn for_task(task_id: &str, attempt: u32) -> Self {
        // Task ids are UUIDs; anything else is defused rather than trusted in a path.
        let safe: String = task_id
            .chars()
            .take(100)
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        Self::at(
            std::env::temp_dir()
                .join(format!("dap-runner-{}", std::process::id()))
                .join(format!("{safe}-{attempt}")),
        )
    }

    /// A scratch directory at `dir` (tests).
    pub fn at(dir: PathBuf) -> Self {
        Self { dir }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where to write the artifact `name`; creates the directory. The error names no path.
    pub fn path_for(&self, name: &str) -> Result<PathBuf, TaskError> {
        if !valid_name(name) {
            return Err(TaskError::new(
                failure::INTERNAL,
                format!("invalid artifact name {name:?}"),
            ));
        }
        std::fs::create_dir_all(&self.dir).map_err(|e| {
            TaskError::new(
                failure::INTERNAL,
                format!("cannot create the runner's scratch directory: {e}"),
            )
        })?;
        Ok(self.dir.join(name))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        match std::fs::remove_dir_all(&self.dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(dir = %self.dir.display(), "cannot remove scratch directory: {e}")
            }
        }
    }
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    use fmt::Write as _;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// Size and SHA-256 (lowercase hex) of a file, in one pass. Blocking.
pub fn sha256_file(path: &Path) -> std::io::Result<(u64, String)> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut size = 0u64;
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    Ok((size, hex(&hasher.finalize())))
}

/// Why an upload failed for good.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    /// 409 `stale_attempt`: this runner no longer holds the attempt; its results are refused.
    #[error("the server no longer counts this attempt as running on this runner")]
    StaleAttempt,
    /// 413: over the server's size limit.
    #[error("the server refused it as too large: {0}")]
    TooLarge(String),
    /// 422 `checksum_mismatch`: the server received other bytes than were hashed.
    #[error("the server received different bytes than were sent (checksum mismatch)")]
    ChecksumMismatch,
    /// 401 twice (once more after a fresh JWT), or the credential itself was refused.
    #[error("the server refused the runner's credentials (401)")]
    Unauthorized,
    /// Any other refusal.
    #[error("the server refused it ({status} {code}): {message}")]
    Rejected {
        status: u16,
        code: String,
        message: String,
    },
    /// Transient failures every time.
    #[error("giving up after {attempts} attempts: {last}")]
    Unreachable { attempts: u32, last: String },
    /// The local file could not be read.
    #[error("reading the local file failed: {0}")]
    Io(String),
    #[error("invalid artifact name {0:?}")]
    InvalidName(String),
}

impl UploadError {
    /// The task failure this becomes (code [`UPLOAD_FAILED`]).
    pub fn to_task_error(&self, name: &str) -> TaskError {
        TaskError::new(
            UPLOAD_FAILED,
            format!("uploading artifact `{name}` failed: {self}"),
        )
    }
}

/// How often and how patiently transient failures are retried.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Tries in all (at least 1).
    pub attempts: u32,
    /// Backoff between tries: full jitter, doubling from `base` up to `cap`.
    pub base: Duration,
    pub cap: Duration,
}

impl Default for RetryPolicy {
    /// Six tries over roughly 10–25 s: enough to ride out a server restart.
    fn default() -> Self {
        Self {
            attempts: 6,
            base: Duration::from_millis(500),
            cap: Duration::from_secs(10),
        }
    }
}

struct Jwt {
    token: String,
    good_until: Instant,
}

/// Uploads artifacts to one server with the runner's credential. Shared by all tasks.
pub struct Uploader {
    http: reqwest::Client,
    /// `http://host:port[/prefix]`, no trailing slash.
    base: String,
    token_url: String,
    /// The enrolment credential. Secret.
    credential: String,
    jwt: tokio::sync::Mutex<Option<Jwt>>,
    retry: RetryPolicy,
}

// Hand-written so that neither the credential nor the JWT can reach a log through `{:?}`.
impl fmt::Debug for Uploader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Uploader")
            .field("base", &self.base)
            .field("credential", &"<redacted>")
            .field("retry", &self.retry)
            .finish_non_exhaustive()
    }
}

/// One try's outcome.
enum Try {
    Done(Uploaded),
    /// Transient; worth another try after a pause.
    Again(String),
    /// 401 on the upload: the JWT may have expired.
    Reauth,
    Fail(UploadError),
}

#[derive(Deserialize)]
struct TokenAnswer {
    token: String,
    #[serde(default)]
    expires_in: Option<u64>,
}

#[derive(Deserialize)]
struct Stored {
    size: u64,
    sha256: String,
}

impl Uploader {
    /// An uploader for the server at `server` (`http://host:port[/prefix]`).
    pub fn new(server: &str, credential: &str) -> Result<Self, String> {
        Self::with_trust(server, credential, &crate::tls::Trust::default())
    }

    /// Like [`Self::new`], trusting `trust`'s extra CA certificates for an `https://` server.
    pub fn with_trust(
        server: &str,
        credential: &str,
        trust: &crate::tls::Trust,
    ) -> Result<Self, String> {
        let endpoints = Endpoints::from_server(server)?;
        let http = trust.http_client(
            reqwest::Client::builder()
                .connect_timeout(CONNECT_TIMEOUT)
                .read_timeout(READ_TIMEOUT)
                .user_agent(concat!("dap-runner/", env!("CARGO_PKG_VERSION"))),
        )?;
        Ok(Self {
            http,
            base: endpoints.base_url,
            token_url: endpoints.token_url,
            credential: credential.to_owned(),
            jwt: tokio::sync::Mutex::new(None),
            retry: RetryPolicy::default(),
        })
    }

    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    fn url(&self, task_id: &str, name: &str, attempt: u32) -> Result<reqwest::Url, UploadError> {
        let mut url = reqwest::Url::parse(&self.base).map_err(|e| UploadError::Rejected {
            status: 0,
            code: "bad_url".into(),
            message: e.to_string(),
        })?;
        url.path_segments_mut()
            .map_err(|()| UploadError::Rejected {
                status: 0,
                code: "bad_url".into(),
                message: "the server URL cannot have a path".into(),
            })?
            .pop_if_empty()
            .extend(["api", "v1", "tasks", task_id, "artifacts", name]);
        url.query_pairs_mut()
            .append_pair("attempt", &attempt.to_string());
        Ok(url)
    }

    /// Upload one artifact of `task_id` / `attempt`. Cancel-safe: dropping the future abandons
    /// the upload (the server discards a partial body).
    pub async fn upload(
        &self,
        task_id: &str,
        attempt: u32,
        artifact: &LocalArtifact,
    ) -> Result<Uploaded, UploadError> {
        if !valid_name(&artifact.name) {
            return Err(UploadError::InvalidName(artifact.name.clone()));
        }
        let path = artifact.path.clone();
        let (size, sha256) = tokio::task::spawn_blocking(move || sha256_file(&path))
            .await
            .map_err(|e| UploadError::Io(format!("hashing thread failed: {e}")))?
            .map_err(|e| UploadError::Io(e.to_string()))?;
        let url = self.url(task_id, &artifact.name, attempt)?;
        let mut backoff = Backoff::new(self.retry.base, self.retry.cap);
        let mut reauthed = false;
        let mut failures = 0u32;
        loop {
            match self.try_once(&url, artifact, size, &sha256).await {
                Try::Done(u) => {
                    tracing::info!(%task_id, attempt, artifact = %u.name, size = u.size, "artifact uploaded");
                    return Ok(u);
                }
                Try::Fail(e) => return Err(e),
                Try::Reauth if !reauthed => {
                    reauthed = true;
                    tracing::debug!(%task_id, "upload refused with 401; fetching a fresh token");
                    *self.jwt.lock().await = None;
                }
                Try::Reauth => return Err(UploadError::Unauthorized),
                Try::Again(why) => {
                    failures += 1;
                    if failures >= self.retry.attempts.max(1) {
                        return Err(UploadError::Unreachable {
                            attempts: failures,
                            last: why,
                        });
                    }
                    let delay = backoff.next_delay(&mut rand::thread_rng());
                    tracing::warn!(
                        %task_id,
                        artifact = %artifact.name,
                        failures,
                        "upload failed ({why}); retrying in {:.1}s",
                        delay.as_secs_f64()
                    );
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    async fn try_once(
        &self,
        url: &reqwest::Url,
        artifact: &LocalArtifact,
        size: u64,
        sha256: &str,
    ) -> Try {
        let jwt = match self.jwt().await {
            Ok(jwt) => jwt,
            Err(t) => return t,
        };
        let file = match tokio::fs::File::open(&artifact.path).await {
            Ok(f) => f,
            Err(e) => return Try::Fail(UploadError::Io(e.to_string())),
        };
        let body =
            reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::with_capacity(file, CHUNK));
        let sent = self
            .http
            .put(url.clone())
            .bearer_auth(&jwt)
            .header(SHA256_HEADER, sha256)
            .header(CONTENT_TYPE, &artifact.content_type)
            // Known up front: lets the server refuse an oversized file before reading it.
            .header(CONTENT_LENGTH, size)
            .body(body)
            .send()
            .await;
        let response = match sent {
            Ok(r) => r,
            Err(e) => return Try::Again(error_chain(&e.without_url())),
        };
        let status = response.status();
        if status.is_success() {
            return match response.json::<Stored>().await {
                Ok(s) if s.size == size && s.sha256 == sha256 => Try::Done(Uploaded {
                    name: artifact.name.clone(),
                    size,
                    sha256: sha256.to_owned(),
                    content_type: artifact.content_type.clone(),
                }),
                Ok(s) => Try::Fail(UploadError::Rejected {
                    status: status.as_u16(),
                    code: "unexpected_answer".into(),
                    message: format!(
                        "the server stored {} bytes with SHA-256 {}, not {size} bytes with {sha256}",
                        s.size, s.sha256
                    ),
                }),
                Err(e) => Try::Again(format!("unreadable answer: {}", e.without_url())),
            };
        }
        let (code, message) = error_of(response).await;
        match status {
            StatusCode::UNAUTHORIZED => Try::Reauth,
            StatusCode::CONFLICT if code == "stale_attempt" => Try::Fail(UploadError::StaleAttempt),
            StatusCode::PAYLOAD_TOO_LARGE => Try::Fail(UploadError::TooLarge(message)),
            StatusCode::UNPROCESSABLE_ENTITY if code == "checksum_mismatch" => {
                Try::Fail(UploadError::ChecksumMismatch)
            }
            StatusCode::REQUEST_TIMEOUT | StatusCode::TOO_MANY_REQUESTS => {
                Try::Again(format!("{status}"))
            }
            s if s.is_server_error() => Try::Again(format!("{status}")),
            _ => Try::Fail(UploadError::Rejected {
                status: status.as_u16(),
                code,
                message,
            }),
        }
    }

    /// A JWT good for a while yet, fetching one if needed. Fetches are serialised.
    async fn jwt(&self) -> Result<String, Try> {
        let mut cached = self.jwt.lock().await;
        if let Some(j) = cached.as_ref() {
            if Instant::now() < j.good_until {
                return Ok(j.token.clone());
            }
        }
        let sent = self
            .http
            .post(&self.token_url)
            .bearer_auth(&self.credential)
            .timeout(CONNECT_TIMEOUT)
            .send()
            .await;
        let response = match sent {
            Ok(r) => r,
            Err(e) => {
                return Err(Try::Again(format!(
                    "token exchange: {}",
                    error_chain(&e.without_url())
                )))
            }
        };
        let status = response.status();
        if status == StatusCode::UNAUTHORIZED {
            return Err(Try::Fail(UploadError::Unauthorized));
        }
        if !status.is_success() {
            return Err(Try::Again(format!("token exchange: {status}")));
        }
        let answer: TokenAnswer = response.json().await.map_err(|e| {
            Try::Again(format!(
                "token exchange: unreadable answer: {}",
                e.without_url()
            ))
        })?;
        let ttl = answer
            .expires_in
            .map_or(DEFAULT_JWT_TTL, Duration::from_secs);
        let usable = if ttl > JWT_MARGIN * 2 {
            ttl - JWT_MARGIN
        } else {
            ttl / 2
        };
        let token = answer.token.clone();
        *cached = Some(Jwt {
            token: answer.token,
            good_until: Instant::now() + usable,
        });
        Ok(token)
    }
}

/// `(code, message)` of an error answer `{"error": {"code", "message"}}`, or of its status.
async fn error_of(response: reqwest::Response) -> (String, String) {
    let status = response.status();
    let body: serde_json::Value = response.json().await.unwrap_or_default();
    let text = |k: &str| body["error"][k].as_str().map(str::to_owned);
    (
        text("code").unwrap_or_else(|| status.as_u16().to_string()),
        text("message").unwrap_or_else(|| status.to_string()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{
        error_answer, stored_answer, token_answer, MockHttp, Recorded, TempDir,
    };
    use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

    const CREDENTIAL: &str = "dapr_secret_credential";

    fn fast() -> RetryPolicy {
        RetryPolicy {
            attempts: 4,
            base: Duration::from_millis(1),
            cap: Duration::from_millis(5),
        }
    }

    /// A mock server that exchanges tokens and answers uploads with `upload(request, n)`, `n`
    /// counting uploads from 1.
    async fn server(
        upload: impl Fn(&Recorded, usize) -> (u16, serde_json::Value) + Send + Sync + 'static,
    ) -> MockHttp {
        let tokens = AtomicU64::new(0);
        let uploads = AtomicUsize::new(0);
        MockHttp::start(move |req| {
            token_answer(req, &tokens)
                .unwrap_or_else(|| upload(req, uploads.fetch_add(1, Ordering::Relaxed) + 1))
        })
        .await
    }

    fn artifact(dir: &TempDir, bytes: &[u8]) -> LocalArtifact {
        let path = dir.path().join("output.csv");
        std::fs::write(&path, bytes).unwrap();
        LocalArtifact {
            name: "output.csv".into(),
            path,
            content_type: "text/csv".into(),
        }
    }

    fn uploader(srv: &MockHttp) -> Uploader {
        Uploader::new(&srv.url(), CREDENTIAL)
            .unwrap()
            .with_retry(fast())
    }

    fn data(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 % 251) as u8).collect()
    }

    #[test]
    fn sha256_of_files() {
        let dir = TempDir::new();
        let p = dir.write("abc", "abc");
        assert_eq!(
            sha256_file(&p).unwrap(),
            (
                3,
                "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad".into()
            )
        );
        let p = dir.write("empty", "");
        assert_eq!(
            sha256_file(&p).unwrap().1,
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        // Several chunks, the last one partial.
        let bytes = data(3 * CHUNK + 123);
        let p = dir.path().join("big");
        std::fs::write(&p, &bytes).unwrap();
        assert_eq!(
            sha256_file(&p).unwrap(),
            (bytes.len() as u64, hex(&Sha256::digest(&bytes)))
        );
        assert!(sha256_file(&dir.path().join("missing")).is_err());
    }

    #[test]
    fn names_and_scratch_directories() {
        for ok in ["output.csv", "a", "A-b_c.1", &"x".repeat(100)] {
            assert!(valid_name(ok), "{ok}");
        }
        for bad in ["", ".hidden", "a/b", "../x", "a b", "é", &"x".repeat(101)] {
            assert!(!valid_name(bad), "{bad}");
        }
        let s = Scratch::for_task("../../etc/x", 2);
        assert!(s.dir().starts_with(std::env::temp_dir()));
        assert_eq!(s.dir().file_name().unwrap(), "______etc_x-2");
        assert!(s.path_for("../x").is_err());

        let dir = TempDir::new();
        let s = Scratch::at(dir.path().join("task-1"));
        assert!(!s.dir().exists(), "created lazily");
        let p = s.path_for("output.csv").unwrap();
        std::fs::write(&p, "x").unwrap();
        let kept = s.dir().to_owned();
        drop(s);
        assert!(!kept.exists(), "removed on drop");
    }

    #[tokio::test]
    async fn streams_the_file_with_its_checksum_and_token() {
        let srv = server(|req, _| stored_answer(req)).await;
        let dir = TempDir::new();
        let bytes = data(5 * CHUNK + 17);
        let a = artifact(&dir, &bytes);
        let up = uploader(&srv);
        let u = up.upload("task-1", 3, &a).await.unwrap();
        let sha = hex(&Sha256::digest(&bytes));
        assert_eq!(
            u,
            Uploaded {
                name: "output.csv".into(),
                size: bytes.len() as u64,
                sha256: sha.clone(),
                content_type: "text/csv".into(),
            }
        );
        let puts = srv.uploads();
        assert_eq!(puts.len(), 1);
        let put = &puts[0];
        assert_eq!(put.method, "PUT");
        assert_eq!(
            put.target,
            "/api/v1/tasks/task-1/artifacts/output.csv?attempt=3"
        );
        assert_eq!(put.header("authorization"), Some("Bearer jwt-1"));
        assert_eq!(put.header(SHA256_HEADER), Some(sha.as_str()));
        assert_eq!(put.header("content-type"), Some("text/csv"));
        let len = bytes.len().to_string();
        assert_eq!(put.header("content-length"), Some(len.as_str()));
        assert!(put.body == bytes, "body differs");
        // The token exchange used the credential; the JWT is reused for the next upload.
        let token_req = &srv.requests()[0];
        assert_eq!(
            token_req.header("authorization"),
            Some(format!("Bearer {CREDENTIAL}").as_str())
        );
        up.upload("task-1", 3, &a).await.unwrap();
        assert_eq!(srv.requests().len(), 3, "one token exchange, two uploads");
        // Neither secret shows in Debug.
        let dbg = format!("{up:?}");
        assert!(!dbg.contains(CREDENTIAL) && !dbg.contains("jwt-1"), "{dbg}");
    }

    #[tokio::test]
    async fn a_401_fetches_a_fresh_token_once() {
        // The first JWT is refused (as if expired), the second accepted.
        let srv = server(|req, _| {
            if req.header("authorization") == Some("Bearer jwt-1") {
                error_answer(401, "unauthorized")
            } else {
                stored_answer(req)
            }
        })
        .await;
        let dir = TempDir::new();
        let a = artifact(&dir, b"a,b\n1,2\n");
        uploader(&srv).upload("t", 1, &a).await.unwrap();
        let auths: Vec<String> = srv
            .uploads()
            .iter()
            .map(|r| r.header("authorization").unwrap().to_owned())
            .collect();
        assert_eq!(auths, ["Bearer jwt-1", "Bearer jwt-2"]);

        // Refused with a fresh token too: give up after one refresh.
        let srv = server(|_, _| error_answer(401, "unauthorized")).await;
        let e = uploader(&srv).upload("t", 1, &a).await.unwrap_err();
        assert!(matches!(e, UploadError::Unauthorized), "{e:?}");
        assert_eq!(srv.uploads().len(), 2);

        // The credential itself refused at the token exchange: no upload at all.
        let srv = MockHttp::start(|_| error_answer(401, "invalid_token")).await;
        let e = uploader(&srv).upload("t", 1, &a).await.unwrap_err();
        assert!(matches!(e, UploadError::Unauthorized), "{e:?}");
        assert_eq!(srv.requests().len(), 1);
    }

    #[tokio::test]
    async fn transient_failures_are_retried_then_given_up() {
        let srv = server(|req, n| {
            if n <= 2 {
                error_answer(503, "unavailable")
            } else {
                stored_answer(req)
            }
        })
        .await;
        let dir = TempDir::new();
        let bytes = data(1000);
        let a = artifact(&dir, &bytes);
        let u = uploader(&srv).upload("t", 1, &a).await.unwrap();
        assert_eq!(u.size, 1000);
        let puts = srv.uploads();
        assert_eq!(puts.len(), 3);
        assert!(
            puts.iter().all(|p| p.body == bytes),
            "every try sends the whole file"
        );

        let srv = server(|_, _| error_answer(500, "internal")).await;
        let e = uploader(&srv).upload("t", 1, &a).await.unwrap_err();
        assert!(
            matches!(e, UploadError::Unreachable { attempts: 4, .. }),
            "{e:?}"
        );
        assert_eq!(srv.uploads().len(), 4);

        // Nobody listening: connection errors are transient too, and name no path or token.
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let up = Uploader::new(&format!("http://127.0.0.1:{port}"), CREDENTIAL)
            .unwrap()
            .with_retry(fast());
        let e = up.upload("t", 1, &a).await.unwrap_err();
        assert!(matches!(e, UploadError::Unreachable { .. }), "{e:?}");
        let msg = e.to_task_error("output.csv").message;
        assert!(!msg.contains(CREDENTIAL), "{msg}");
        assert!(!msg.contains(dir.path().to_str().unwrap()), "{msg}");
    }

    #[tokio::test]
    async fn refusals_are_typed_and_not_retried() {
        let dir = TempDir::new();
        let a = artifact(&dir, b"x\n1\n");
        type Check = fn(&UploadError) -> bool;
        let cases: [((u16, &str), Check); 4] = [
            ((409, "stale_attempt"), |e| {
                matches!(e, UploadError::StaleAttempt)
            }),
            (
                (413, "artifact_too_large"),
                |e| matches!(e, UploadError::TooLarge(m) if m.contains("artifact_too_large")),
            ),
            ((422, "checksum_mismatch"), |e| {
                matches!(e, UploadError::ChecksumMismatch)
            }),
            (
                (400, "missing_checksum"),
                |e| matches!(e, UploadError::Rejected { status: 400, code, .. } if code == "missing_checksum"),
            ),
        ];
        for ((status, code), check) in cases {
            let srv = server(move |_, _| error_answer(status, code)).await;
            let e = uploader(&srv).upload("t", 1, &a).await.unwrap_err();
            assert!(check(&e), "{status} {code}: {e:?}");
            assert_eq!(srv.uploads().len(), 1, "{status} is not retried");
            let te = e.to_task_error("output.csv");
            assert_eq!(te.code, UPLOAD_FAILED);
            assert!(te.message.contains("output.csv"), "{}", te.message);
        }

        // A missing file or a bad name fails before any request.
        let srv = server(|req, _| stored_answer(req)).await;
        let mut gone = a.clone();
        gone.path = dir.path().join("nope.csv");
        let e = uploader(&srv).upload("t", 1, &gone).await.unwrap_err();
        assert!(matches!(e, UploadError::Io(_)), "{e:?}");
        assert!(!e.to_string().contains(dir.path().to_str().unwrap()), "{e}");
        let mut bad = a.clone();
        bad.name = "../x".into();
        let e = uploader(&srv).upload("t", 1, &bad).await.unwrap_err();
        assert!(matches!(e, UploadError::InvalidName(_)), "{e:?}");
        assert!(srv.requests().is_empty());
    }
}
