//! A real DAP stack for the operation benchmarks: the `dap-server` and `dap-runner` binaries
//! started as child processes on loopback (SQLite in a temp data dir, the runner holding the
//! benchmark datasets), plus the REST/SSE client calls the benchmarks time.
//!
//! Both children are killed and reaped when the [`Stack`] is dropped, also while unwinding from
//! a panic, and the temp dir is removed (kept with `DAP_BENCH_KEEP=1`). It measures nothing
//! itself and does not build the binaries: they are taken from a directory (by default the one
//! `dap-bench` itself runs from, i.e. the same cargo target profile).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{json, Value};

/// The dataset name the runner serves each benchmark file under.
pub type DatasetDecl<'a> = (&'a str, &'a Path);

/// A started child process; killed (SIGKILL) and reaped on drop.
pub struct ChildGuard {
    name: &'static str,
    child: Child,
}

impl ChildGuard {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Fails when the process has already exited (with its status), e.g. a server that could
    /// not bind or a runner that refused its datasets.
    fn check_alive(&mut self, log: &Path) -> Result<(), String> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(format!(
                "{} exited early ({status}); see {}",
                self.name,
                log.display()
            )),
            Err(e) => Err(format!("{}: {e}", self.name)),
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Peak resident set size of a live process in bytes (`VmHWM` in `/proc/<pid>/status`).
pub fn peak_rss_bytes(pid: u32) -> Result<u64, String> {
    status_bytes(pid, "VmHWM")
}

/// Current resident set size of a live process in bytes (`VmRSS` in `/proc/<pid>/status`).
pub fn rss_bytes(pid: u32) -> Result<u64, String> {
    status_bytes(pid, "VmRSS")
}

fn status_bytes(pid: u32, field: &str) -> Result<u64, String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("reading /proc/{pid}/status: {e}"))?;
    parse_status_kb(&status, field).ok_or_else(|| format!("no {field} in /proc/{pid}/status"))
}

/// A `Field:  123 kB` line of `/proc/<pid>/status`, in bytes.
fn parse_status_kb(status: &str, field: &str) -> Option<u64> {
    let line = status
        .lines()
        .find(|l| l.strip_prefix(field).is_some_and(|r| r.starts_with(':')))?;
    let mut parts = line[field.len() + 1..].split_whitespace();
    let value: u64 = parts.next()?.parse().ok()?;
    match parts.next() {
        Some("kB") => Some(value * 1024),
        _ => None,
    }
}

/// A temp directory, removed on drop unless `DAP_BENCH_KEEP` is set.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::env::var_os("DAP_BENCH_KEEP").is_none() {
            let _ = std::fs::remove_dir_all(&self.0);
        } else {
            eprintln!("kept {}", self.0.display());
        }
    }
}

/// The running server and runner, and a client with an admin API key.
pub struct Stack {
    pub base: String,
    pub key: String,
    pub http: reqwest::Client,
    // Field order is drop order: the runner goes first, then the server, then the directory.
    runner: ChildGuard,
    _server: ServerProcess,
    _dir: TempDir,
}

/// The terminal state of a task and when the client learnt it.
pub struct Finished {
    pub status: String,
    pub elapsed: Duration,
    pub event: Value,
}

/// The directory holding `dap-bench` itself (where cargo put `dap-server` and `dap-runner` too).
pub fn default_bin_dir() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from("."))
}

fn run_admin(server_bin: &Path, args: &[&str]) -> Result<String, String> {
    let out = Command::new(server_bin)
        .args(args)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("running {}: {e}", server_bin.display()))?;
    if !out.status.success() {
        return Err(format!(
            "dap-server {} failed ({}): {}",
            args.first().copied().unwrap_or_default(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

pub fn free_port() -> Result<u16, String> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| format!("bind: {e}"))?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(|e| format!("local addr: {e}"))
}

/// A `dap-server` child process on a free loopback port, and a client for it.
pub struct ServerProcess {
    pub base: String,
    pub http: reqwest::Client,
    child: ChildGuard,
    log: PathBuf,
}

impl ServerProcess {
    /// Starts `server_bin serve` on `data_dir` (which the caller may have filled already) with
    /// `extra_args`, and waits until `/healthz` answers.
    pub async fn start(
        server_bin: &Path,
        data_dir: &Path,
        extra_args: &[String],
    ) -> Result<Self, String> {
        let port = free_port()?;
        let base = format!("http://127.0.0.1:{port}");
        let log = data_dir.join("server.log");
        let mut child = ChildGuard {
            name: "dap-server",
            child: Command::new(server_bin)
                .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
                .arg("--data-dir")
                .arg(data_dir)
                .args(extra_args)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log_file(&log)?)
                .spawn()
                .map_err(|e| format!("starting dap-server: {e}"))?,
        };
        let http = reqwest::Client::builder()
            .tcp_nodelay(true)
            .build()
            .map_err(|e| format!("http client: {e}"))?;
        wait_for(Duration::from_secs(20), "dap-server /healthz", || {
            let http = http.clone();
            let url = format!("{base}/healthz");
            async move {
                http.get(url)
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success())
            }
        })
        .await
        .and_then(|_| child.check_alive(&log))?;
        Ok(Self {
            base,
            http,
            child,
            log,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    /// Fails when the server has exited (pointing at its log).
    pub fn check_alive(&mut self) -> Result<(), String> {
        self.child.check_alive(&self.log)
    }
}

/// A fresh directory under the system temp dir, removed on drop (kept with `DAP_BENCH_KEEP=1`).
pub fn temp_dir(tag: &str) -> Result<TempDir, String> {
    let dir = std::env::temp_dir().join(format!("dap-bench-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| format!("temp dir {}: {e}", dir.display()))?;
    Ok(TempDir(dir))
}

impl Stack {
    /// Start a server and one 1-slot runner holding `datasets`, and wait until the runner is
    /// connected and idle.
    pub async fn start(bin_dir: &Path, datasets: &[DatasetDecl<'_>]) -> Result<Self, String> {
        let server_bin = bin_dir.join("dap-server");
        let runner_bin = bin_dir.join("dap-runner");
        for b in [&server_bin, &runner_bin] {
            if !b.is_file() {
                return Err(format!(
                    "{} not found; build it first: cargo build --release -p dap-server -p dap-runner",
                    b.display()
                ));
            }
        }
        let dir = temp_dir("stack")?;
        let data_dir = dir.0.to_string_lossy().into_owned();

        // Credentials the way an operator makes them (scripts/demo.sh does the same).
        let key = run_admin(
            &server_bin,
            &[
                "apikey",
                "create",
                "--name",
                "bench",
                "--scope",
                "admin",
                "--data-dir",
                &data_dir,
            ],
        )?;
        let runner_token = run_admin(
            &server_bin,
            &[
                "runner",
                "create",
                "--name",
                "bench-runner",
                "--data-dir",
                &data_dir,
            ],
        )?;
        let server = ServerProcess::start(&server_bin, &dir.0, &[]).await?;
        let base = server.base.clone();
        let http = server.http.clone();

        let runner_log = dir.0.join("runner.log");
        let mut cmd = Command::new(&runner_bin);
        cmd.args(["--server", &base, "--name", "bench-runner", "--slots", "1"])
            .arg("--no-progress")
            .env("DAP_RUNNER_TOKEN", &runner_token)
            .env_remove("DAP_RUNNER_CONFIG")
            .env_remove("DAP_RUNNER_DATASETS")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file(&runner_log)?);
        for (name, path) in datasets {
            cmd.arg("--dataset")
                .arg(format!("{name}={}:csv", path.display()));
        }
        let runner = ChildGuard {
            name: "dap-runner",
            child: cmd
                .spawn()
                .map_err(|e| format!("starting dap-runner: {e}"))?,
        };
        let mut stack = Stack {
            base,
            key,
            http,
            runner,
            _server: server,
            _dir: dir,
        };
        // The runner reads every dataset's schema (and counts small files) before it connects.
        let want = datasets.len();
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            if let Ok(v) = stack.get("/api/v1/runners").await {
                let ready = v["runners"].as_array().is_some_and(|rs| {
                    rs.iter().any(|r| {
                        r["state"] == "idle"
                            && r["datasets"].as_array().is_some_and(|d| d.len() == want)
                    })
                });
                if ready {
                    return Ok(stack);
                }
            }
            stack.runner.check_alive(&runner_log)?;
            if Instant::now() > deadline {
                return Err(format!(
                    "dap-runner did not connect within 300 s; see {}",
                    runner_log.display()
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn runner_pid(&self) -> u32 {
        self.runner.pid()
    }

    /// GET a JSON document; a non-2xx answer is an error carrying the body.
    pub async fn get(&self, path: &str) -> Result<Value, String> {
        let r = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.key)
            .send()
            .await
            .map_err(|e| format!("GET {path}: {e}"))?;
        json_of(r, "GET", path).await
    }

    /// Create a task, wait for its terminal event on the SSE feed and time it from just before
    /// the POST to the moment the event arrives (the result is committed by then).
    pub async fn run_task(&self, operation_code: u16, params: &Value) -> Result<Finished, String> {
        // Subscribe first so the terminal event cannot be missed.
        let events = self
            .http
            .get(format!("{}/api/v1/events", self.base))
            .bearer_auth(&self.key)
            .send()
            .await
            .map_err(|e| format!("GET /api/v1/events: {e}"))?;
        if !events.status().is_success() {
            return Err(format!("GET /api/v1/events: HTTP {}", events.status()));
        }
        let mut events = eventsource_stream::Eventsource::eventsource(events.bytes_stream());
        let t0 = Instant::now();
        let r = self
            .http
            .post(format!("{}/api/v1/tasks", self.base))
            .bearer_auth(&self.key)
            .json(&json!({ "operation_code": operation_code, "params": params }))
            .send()
            .await
            .map_err(|e| format!("POST /api/v1/tasks: {e}"))?;
        let created = json_of(r, "POST", "/api/v1/tasks").await?;
        let id = created["task_id"]
            .as_str()
            .ok_or_else(|| format!("POST /api/v1/tasks answered without task_id: {created}"))?
            .to_owned();
        while let Some(ev) = events.next().await {
            let ev = ev.map_err(|e| format!("event stream: {e}"))?;
            let Some(status) = ev.event.strip_prefix("task.") else {
                continue;
            };
            if !matches!(status, "completed" | "failed" | "cancelled") {
                continue;
            }
            let elapsed = t0.elapsed();
            let data: Value = serde_json::from_str(&ev.data).unwrap_or(Value::Null);
            if data["task_id"] == id.as_str() {
                return Ok(Finished {
                    status: status.to_owned(),
                    elapsed,
                    event: data,
                });
            }
        }
        Err(format!("event stream ended before task {id} finished"))
    }
}

async fn json_of(r: reqwest::Response, method: &str, path: &str) -> Result<Value, String> {
    let status = r.status();
    let body = r
        .text()
        .await
        .map_err(|e| format!("{method} {path}: {e}"))?;
    if !status.is_success() {
        return Err(format!("{method} {path}: HTTP {status}: {body}"));
    }
    serde_json::from_str(&body).map_err(|e| format!("{method} {path}: not JSON ({e}): {body}"))
}

fn log_file(path: &Path) -> Result<std::fs::File, String> {
    std::fs::File::create(path).map_err(|e| format!("{}: {e}", path.display()))
}

pub async fn wait_for<F, Fut>(timeout: Duration, what: &str, mut probe: F) -> Result<(), String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if probe().await {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    Err(format!("{what} not ready within {} s", timeout.as_secs()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_hwm_is_read_in_bytes() {
        let status = "Name:\tdap-runner\nVmPeak:\t  900 kB\nVmHWM:\t   51234 kB\nVmRSS:\t 100 kB\n";
        assert_eq!(parse_status_kb(status, "VmHWM"), Some(51234 * 1024));
        assert_eq!(parse_status_kb(status, "VmRSS"), Some(100 * 1024));
        assert_eq!(parse_status_kb("VmRSS:\t 100 kB\n", "VmHWM"), None);
        assert_eq!(parse_status_kb("VmHWM:\t 100 MB\n", "VmHWM"), None);
        assert_eq!(parse_status_kb("VmRSSX:\t 100 kB\n", "VmRSS"), None);
    }

    #[test]
    fn own_peak_rss_is_plausible() {
        let own = peak_rss_bytes(std::process::id()).unwrap();
        // A test binary holds at least a megabyte and (here) far less than 64 GiB.
        assert!(own > 1 << 20 && own < 64 << 30, "{own}");
    }
}
