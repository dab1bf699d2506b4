//! Helpers for unit tests only: a temporary directory removed on drop (no extra crate needed).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new() -> Self {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let path = std::env::temp_dir().join(format!(
            "dap-runner-test-{}-{n}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(&path).expect("create temp dir");
        Self { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Write `body` to `name` inside the directory; returns the file's path.
    pub fn write(&self, name: &str, body: &str) -> PathBuf {
        let p = self.path.join(name);
        std::fs::write(&p, body).expect("write temp file");
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// A catalog declaring one CSV file under `name` (the shape most operation tests need).
pub fn csv_catalog(name: &str, path: &Path) -> crate::catalog::Catalog {
    crate::catalog::Catalog::open(&[crate::DatasetSpec {
        name: name.into(),
        path: path.to_owned(),
        format: crate::DatasetFormat::Csv,
        csv: Default::default(),
    }])
    .expect("declare the test CSV")
}

/// One request a [`MockHttp`] received.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    /// Path and query, as sent.
    pub target: String,
    /// Header names lowercased.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

type Handler = dyn Fn(&Recorded) -> (u16, serde_json::Value) + Send + Sync;

/// A tiny HTTP/1.1 server for tests: one request per connection (bodies by Content-Length),
/// answered with JSON by a handler, every request recorded.
pub struct MockHttp {
    pub addr: std::net::SocketAddr,
    requests: std::sync::Arc<std::sync::Mutex<Vec<Recorded>>>,
    task: tokio::task::JoinHandle<()>,
}

impl MockHttp {
    pub async fn start(
        handler: impl Fn(&Recorded) -> (u16, serde_json::Value) + Send + Sync + 'static,
    ) -> Self {
        use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let handler: std::sync::Arc<Handler> = std::sync::Arc::new(handler);
        let log = std::sync::Arc::clone(&requests);
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let handler = std::sync::Arc::clone(&handler);
                let log = std::sync::Arc::clone(&log);
                tokio::spawn(async move {
                    let mut reader = BufReader::new(stream);
                    let mut line = String::new();
                    if reader.read_line(&mut line).await.unwrap_or(0) == 0 {
                        return;
                    }
                    let mut parts = line.split_whitespace();
                    let method = parts.next().unwrap_or_default().to_owned();
                    let target = parts.next().unwrap_or_default().to_owned();
                    let mut headers = Vec::new();
                    loop {
                        let mut h = String::new();
                        if reader.read_line(&mut h).await.unwrap_or(0) == 0 {
                            return;
                        }
                        let h = h.trim_end();
                        if h.is_empty() {
                            break;
                        }
                        if let Some((n, v)) = h.split_once(':') {
                            headers.push((n.trim().to_ascii_lowercase(), v.trim().to_owned()));
                        }
                    }
                    let len = headers
                        .iter()
                        .find(|(n, _)| n == "content-length")
                        .and_then(|(_, v)| v.parse::<usize>().ok())
                        .unwrap_or(0);
                    let mut body = vec![0u8; len];
                    if reader.read_exact(&mut body).await.is_err() {
                        return;
                    }
                    let req = Recorded {
                        method,
                        target,
                        headers,
                        body,
                    };
                    let (status, answer) = handler(&req);
                    log.lock().unwrap().push(req);
                    let answer = answer.to_string();
                    let response = format!(
                        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\n\
                         content-length: {}\r\nconnection: close\r\n\r\n{answer}",
                        answer.len()
                    );
                    let mut stream = reader.into_inner();
                    let _ = stream.write_all(response.as_bytes()).await;
                    let _ = stream.shutdown().await;
                });
            }
        });
        Self {
            addr,
            requests,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().unwrap().clone()
    }

    /// Requests other than the token exchange.
    pub fn uploads(&self) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| r.target != dap_protocol::TOKEN_PATH)
            .collect()
    }
}

impl Drop for MockHttp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A handler for the token exchange: hands out `jwt-1`, `jwt-2`, … ; `None` for other requests.
pub fn token_answer(
    req: &Recorded,
    counter: &std::sync::atomic::AtomicU64,
) -> Option<(u16, serde_json::Value)> {
    (req.target == dap_protocol::TOKEN_PATH).then(|| {
        let n = counter.fetch_add(1, Ordering::Relaxed) + 1;
        (
            200,
            serde_json::json!({"token": format!("jwt-{n}"), "expires_in": 900}),
        )
    })
}

/// The 201 answer a server gives for an upload, computed from what was received.
pub fn stored_answer(req: &Recorded) -> (u16, serde_json::Value) {
    use sha2::Digest;
    let sha = crate::artifacts::hex(&sha2::Sha256::digest(&req.body));
    (
        201,
        serde_json::json!({"size": req.body.len(), "sha256": sha}),
    )
}

/// An error answer in the server's shape.
pub fn error_answer(status: u16, code: &str) -> (u16, serde_json::Value) {
    (
        status,
        serde_json::json!({"error": {"code": code, "message": format!("{code} (test)")}}),
    )
}
