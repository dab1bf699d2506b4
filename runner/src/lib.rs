//! `dap-runner` as a library: the configuration a runner needs and [`run`], which declares the
//! datasets, dials out to `dap-server`, executes pushed tasks and keeps reconnecting until told to
//! stop or refused for good.
//!
//! This crate root only wires the pieces together; it does not parse the command line (see
//! [`config`]), open sockets (see [`connection`]) or touch data (see [`catalog`] and
//! [`operations`]). It installs no global state — no tracing subscriber, no signal handler — so
//! tests can start a runner in-process and stop it through the `shutdown` future.

pub mod artifacts;
pub mod catalog;
pub mod config;
pub mod connection;
pub mod csv_dialect;
pub mod csv_fixups;
pub mod executor;
pub mod operations;
pub mod outbox;
pub mod outputs;
pub mod progress;
pub mod stopping;
pub mod terminal;
pub mod tls;

#[cfg(test)]
mod test_support;

use std::fmt;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

pub use dap_protocol::DatasetFormat;

use crate::artifacts::Uploader;
use crate::catalog::{Catalog, CatalogError};
use crate::executor::Executor;
use crate::outbox::Outbox;
use crate::outputs::OutputStore;

/// Most tasks one runner may run at once. A guard against typos (`--slots 10000`), not a tuning knob.
pub const MAX_SLOTS: u32 = 256;

/// Everything a runner needs to start. Built by [`config::load`] from CLI, environment and TOML,
/// or directly by tests.
#[derive(Clone)]
pub struct RunnerConfig {
    /// Base URL of the server, `http://host:port` (an optional path prefix is kept).
    pub server: String,
    /// The runner's enrolment credential. Secret: never logged, redacted from `Debug`.
    pub token: String,
    /// Display name sent in the greeting.
    pub name: String,
    /// How many tasks run at once (1..=[`MAX_SLOTS`]).
    pub slots: u32,
    /// Files this runner may read, by the name tasks use for them.
    pub datasets: Vec<DatasetSpec>,
    /// Draw an indicatif bar per running task (only sensible when stderr is a terminal).
    pub show_progress_bars: bool,
    /// Where kept state lives; `None` means [`default_state_dir`].
    pub state_dir: Option<PathBuf>,
    /// Byte budget of kept task outputs (0 keeps none).
    pub keep_outputs_bytes: u64,
    /// Extra CA certificates (PEM) to trust for an `https://` server, e.g. a self-signed one.
    pub ca_cert: Option<PathBuf>,
    /// What happens to running tasks when the runner is asked to stop.
    pub on_stop: StopMode,
    /// With [`StopMode::Finish`]: the longest the runner waits for its tasks before handing
    /// back the rest.
    pub drain_timeout: std::time::Duration,
    /// Ceiling of the reconnect backoff (exponential from 250 ms, full jitter).
    pub reconnect_max_delay: std::time::Duration,
}

/// What a stopping runner does with the tasks it is running. Either way it first tells the
/// server it is `draining` (no new tasks), and a second stop request hands back at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StopMode {
    /// Finish them (up to the drain timeout), deliver their results, then exit.
    #[default]
    Finish,
    /// Stop them now and hand them back; the server requeues them for another runner at once.
    HandBack,
}

/// Default of [`RunnerConfig::drain_timeout`].
pub const DEFAULT_DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(300);

// Hand-written so that the token can never reach a log line through `{:?}`.
impl fmt::Debug for RunnerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RunnerConfig")
            .field("server", &self.server)
            .field("token", &"<redacted>")
            .field("name", &self.name)
            .field("slots", &self.slots)
            .field("datasets", &self.datasets)
            .field("show_progress_bars", &self.show_progress_bars)
            .field("state_dir", &self.state_dir)
            .field("keep_outputs_bytes", &self.keep_outputs_bytes)
            .field("ca_cert", &self.ca_cert)
            .field("on_stop", &self.on_stop)
            .field("drain_timeout", &self.drain_timeout)
            .field("reconnect_max_delay", &self.reconnect_max_delay)
            .finish()
    }
}

/// One dataset the owner declared: the name tasks use, the local file, and how to read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatasetSpec {
    pub name: String,
    pub path: PathBuf,
    pub format: DatasetFormat,
    /// Separator and decimal mark of a CSV file (default: sniffed separator, decimal point).
    pub csv: csv_dialect::CsvDialect,
}

/// Why a runner stopped (other than being asked to).
#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    /// Bad configuration: a missing or malformed setting. Exit code 2.
    #[error("configuration: {0}")]
    Config(String),
    /// A declared dataset cannot be served. Exit code 2.
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    /// The server answered 401 to the credential: it is wrong or revoked. Exit code 3.
    #[error("the server refused the runner token (401): it is invalid or has been revoked")]
    Unauthorized,
    /// The server closed the socket with 4001: this runner was revoked. Exit code 3.
    #[error("the server revoked this runner (close code 4001); not reconnecting")]
    Revoked,
    /// Another process connected with the same credential and the server replaced us. Exit code 3.
    #[error(
        "another runner connected with the same token and replaced this one (close code 4004); \
         not reconnecting so the two do not keep evicting each other"
    )]
    Replaced,
    /// The server does not speak our protocol version. Exit code 1.
    #[error("the server does not support protocol version {0} (close code 4002); upgrade dap-runner or dap-server")]
    UnsupportedProtocol(u32),
    /// Something in the runner itself failed (e.g. a background thread panicked). Exit code 1.
    #[error("internal: {0}")]
    Internal(String),
}

impl RunnerError {
    /// Process exit code for this error: 2 for configuration, 3 for a refused credential (so a
    /// supervisor can be told not to restart), 1 for everything else.
    pub fn exit_code(&self) -> i32 {
        match self {
            RunnerError::Config(_) | RunnerError::Catalog(_) => 2,
            RunnerError::Unauthorized | RunnerError::Revoked | RunnerError::Replaced => 3,
            RunnerError::UnsupportedProtocol(_) | RunnerError::Internal(_) => 1,
        }
    }
}

/// The format's name as users write it in `--dataset name=path:format`.
pub fn format_name(format: DatasetFormat) -> &'static str {
    match format {
        DatasetFormat::Csv => "csv",
        DatasetFormat::Parquet => "parquet",
        DatasetFormat::Ndjson => "ndjson",
    }
}

/// Where the runner keeps state when `--state-dir` is not given: `$XDG_STATE_HOME/dap-runner`,
/// else `~/.local/state/dap-runner`, else a directory in the temp dir.
pub fn default_state_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("XDG_STATE_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(d).join("dap-runner");
    }
    if let Some(h) = std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        return PathBuf::from(h).join(".local/state/dap-runner");
    }
    std::env::temp_dir().join("dap-runner-state")
}

/// The per-runner subdirectory of the state dir: the runner id from a `dapr_<id>_<secret>`
/// credential (never the secret), so several runners can share one state dir.
fn state_key(token: &str) -> String {
    token
        .strip_prefix("dapr_")
        .and_then(|rest| rest.split_once('_'))
        .map(|(id, _)| id)
        .filter(|id| crate::outputs::valid_task_id(id))
        .unwrap_or("default")
        .to_owned()
}

/// Run a runner until it has stopped after `shutdown` completed (returns `Ok`) or the server
/// refuses it for good. Stopping follows [`RunnerConfig::on_stop`]; see [`run_until`].
pub async fn run(
    config: RunnerConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), RunnerError> {
    run_until(config, shutdown, std::future::pending()).await
}

/// Run a runner: declares the datasets first (a missing file or unreadable schema fails here,
/// before any network traffic), then connects and reconnects forever with backoff.
///
/// When `stop` completes the runner stops taking tasks and tells the server it is draining;
/// with [`StopMode::Finish`] it finishes what runs (at most [`RunnerConfig::drain_timeout`]),
/// delivers the results and returns, with [`StopMode::HandBack`] — or once `stop_now`
/// completes — it stops what still runs and hands it back to the server for requeueing.
pub async fn run_until(
    config: RunnerConfig,
    stop: impl Future<Output = ()> + Send,
    stop_now: impl Future<Output = ()> + Send,
) -> Result<(), RunnerError> {
    config::validate(&config).map_err(|e| RunnerError::Config(e.to_string()))?;
    let trust = tls::Trust::load(config.ca_cert.as_deref()).map_err(RunnerError::Config)?;

    let specs = config.datasets.clone();
    // Reading schemas is blocking polars work; keep it off the async workers.
    let catalog = tokio::task::spawn_blocking(move || Catalog::open(&specs))
        .await
        .map_err(|e| RunnerError::Internal(format!("catalog thread failed: {e}")))??;
    let state_dir = config
        .state_dir
        .clone()
        .unwrap_or_else(default_state_dir)
        .join(state_key(&config.token));
    let keep = config.keep_outputs_bytes;
    let catalog = if keep == 0 {
        catalog
    } else {
        let outputs_dir = state_dir.join("outputs");
        let outputs = tokio::task::spawn_blocking(move || OutputStore::open(&outputs_dir, keep))
            .await
            .map_err(|e| RunnerError::Internal(format!("output store thread failed: {e}")))?
            .map_err(|e| {
                RunnerError::Config(format!(
                    "state directory {}: {e} (set --state-dir)",
                    state_dir.display()
                ))
            })?;
        if !outputs.is_empty() {
            tracing::info!(
                "{} kept task outputs ({} bytes) available as inputs",
                outputs.len(),
                outputs.bytes()
            );
        }
        catalog.with_outputs(Arc::new(outputs))
    };
    let catalog = Arc::new(catalog);
    for info in catalog.infos() {
        let rows = match info.row_count {
            Some(n) => format!(", {n} rows"),
            None => String::new(),
        };
        // A CSV read other than comma-and-point says so: a wrong sniff shows at start.
        let dialect = match catalog.resolve(&info.name).ok().and_then(|d| d.csv()) {
            Some(c) if c != csv_dialect::CsvRead::default() => format!(
                ", separator {}{}",
                csv_dialect::separator_name(c.separator),
                if c.decimal_comma {
                    ", decimal comma"
                } else {
                    ""
                }
            ),
            _ => String::new(),
        };
        tracing::info!(
            "declared dataset `{}` ({}{dialect}, {} columns{rows})",
            info.name,
            format_name(info.format),
            info.columns.len()
        );
    }

    let journal = state_dir.join("outbox");
    let outbox = Outbox::with_journal(outbox::DEFAULT_CAPACITY, &journal).map_err(|e| {
        RunnerError::Config(format!(
            "state directory {}: {e} (set --state-dir)",
            journal.display()
        ))
    })?;
    if !outbox.is_empty() {
        tracing::info!(
            count = outbox.len(),
            "results from before the restart will be sent once connected"
        );
    }
    let outbox = Arc::new(outbox);
    let uploader =
        Uploader::with_trust(&config.server, &config.token, &trust).map_err(RunnerError::Config)?;
    let executor = Executor::new(
        config.slots,
        Arc::clone(&catalog),
        Arc::clone(&outbox),
        Arc::new(uploader),
        config.show_progress_bars,
    );
    let (phase, stopping) = stopping::Stopping::channel();
    let driver = stopping::drive(
        phase,
        config.on_stop,
        config.drain_timeout,
        executor.clone(),
        stop,
        stop_now,
    );
    let result = tokio::select! {
        r = connection::run(&config, &trust, &catalog, &executor, &outbox, stopping) => r,
        never = driver => match never {},
    };
    // However the link ended, stop the tasks still running: nobody will hear their results,
    // and an in-process caller expects nothing of this runner to outlive `run`.
    executor.shut_down();
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Callers (the server's integration tests) spawn the runner on a tokio runtime, which
    /// needs its future to be `Send`. Checked at compile time; never run.
    #[allow(dead_code)]
    fn run_future_is_send(config: RunnerConfig) {
        fn assert_send<T: Send>(_: T) {}
        assert_send(run(config, std::future::pending::<()>()));
    }

    #[test]
    fn exit_codes() {
        assert_eq!(RunnerError::Config("x".into()).exit_code(), 2);
        assert_eq!(RunnerError::Unauthorized.exit_code(), 3);
        assert_eq!(RunnerError::Revoked.exit_code(), 3);
        assert_eq!(RunnerError::Internal("x".into()).exit_code(), 1);
    }

    #[tokio::test]
    async fn run_refuses_bad_config_before_connecting() {
        let config = RunnerConfig {
            server: "http://127.0.0.1:9".into(),
            token: "t".into(),
            name: "n".into(),
            slots: 0,
            datasets: vec![],
            show_progress_bars: false,
            state_dir: Some(
                std::env::temp_dir().join(format!("dap-runner-test-{}", std::process::id())),
            ),
            keep_outputs_bytes: 0,
            ca_cert: None,
            on_stop: StopMode::Finish,
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
            reconnect_max_delay: connection::BACKOFF_CAP,
        };
        let err = run(config, std::future::pending()).await.unwrap_err();
        assert!(matches!(err, RunnerError::Config(_)), "{err}");
    }

    #[tokio::test]
    async fn run_stops_when_shutdown_completes() {
        // Nothing listens on port 9: the runner is in its backoff loop when asked to stop.
        let config = RunnerConfig {
            server: "http://127.0.0.1:9".into(),
            token: "t".into(),
            name: "n".into(),
            slots: 1,
            datasets: vec![],
            show_progress_bars: false,
            state_dir: Some(
                std::env::temp_dir().join(format!("dap-runner-test-{}", std::process::id())),
            ),
            keep_outputs_bytes: 0,
            ca_cert: None,
            on_stop: StopMode::Finish,
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
            reconnect_max_delay: connection::BACKOFF_CAP,
        };
        let stop = tokio::time::sleep(std::time::Duration::from_millis(300));
        let result = tokio::time::timeout(std::time::Duration::from_secs(10), run(config, stop))
            .await
            .expect("run returned after shutdown");
        assert!(result.is_ok(), "{result:?}");
    }
}
