//! Command-line and environment configuration of `dap-server` (clap; every flag has a `DAP_*`
//! environment variable). Parsing only: nothing here opens files or sockets.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "dap-server",
    version,
    about = "DAP coordinator: REST API, runner sockets, live feed"
)]
pub struct Cli {
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(flatten)]
    pub serve: ServeArgs,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Clone, Args)]
pub struct StoreArgs {
    /// Database URL. Defaults to `sqlite://<data-dir>/dap.db` (created if missing).
    #[arg(long, env = "DAP_DATABASE", global = true)]
    pub database: Option<String>,
    /// Directory for the database (by default), the signing key and blobs.
    #[arg(
        long,
        env = "DAP_DATA_DIR",
        default_value = "./dap-data",
        global = true
    )]
    pub data_dir: PathBuf,
}

impl StoreArgs {
    pub fn database_url(&self) -> String {
        match &self.database {
            Some(u) => u.clone(),
            None => format!("sqlite://{}", self.data_dir.join("dap.db").display()),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(
        long,
        env = "DAP_LISTEN",
        default_value = "127.0.0.1:8080",
        global = true
    )]
    pub listen: SocketAddr,
    /// Interval of WebSocket pings to runners; three missed ones drop the link.
    #[arg(long, env = "DAP_HEARTBEAT_MS", default_value_t = 3000, global = true)]
    pub heartbeat_ms: u64,
    /// How long a runner whose connection dropped keeps its tasks: if it reconnects in time
    /// it resumes them, otherwise they are requeued.
    #[arg(
        long,
        env = "DAP_RUNNER_GRACE_MS",
        default_value_t = 30_000,
        global = true
    )]
    pub runner_grace_ms: u64,
    /// A task whose runner is lost this many times fails with `runner_lost`.
    #[arg(long, env = "DAP_MAX_ATTEMPTS", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100), global = true)]
    pub max_attempts: u32,
    /// Largest artifact a runner may upload, in bytes.
    #[arg(long, env = "DAP_MAX_ARTIFACT_BYTES", default_value_t = 1 << 30, global = true)]
    pub max_artifact_bytes: u64,
    /// Allow webhook targets on loopback/private/link-local networks (development and tests only).
    #[arg(long, env = "DAP_WEBHOOK_ALLOW_PRIVATE", global = true)]
    pub webhook_allow_private: bool,
    /// Multiplies webhook retry delays (tests); 1.0 in production.
    #[arg(
        long,
        env = "DAP_WEBHOOK_RETRY_SCALE",
        default_value_t = 1.0,
        hide = true,
        global = true
    )]
    pub webhook_retry_scale: f64,
    /// Browser origins allowed to call the API and the SSE feed (comma-separated); none by default.
    #[arg(
        long = "cors-origin",
        env = "DAP_CORS_ORIGINS",
        value_delimiter = ',',
        global = true
    )]
    pub cors_origins: Vec<String>,
    /// Largest message a runner may send, in bytes; a larger one closes its socket with 1009.
    #[arg(long, env = "DAP_RUNNER_MAX_MESSAGE_BYTES", default_value_t = 1 << 20, value_parser = clap::value_parser!(u64).range(1024..=(64 << 20)), global = true)]
    pub runner_max_message_bytes: u64,
    /// Sustained messages per second a runner connection may send (0 = unlimited); above it
    /// (once the burst is spent) the socket is closed with 1008.
    #[arg(long, env = "DAP_RUNNER_RATE", default_value_t = 100, global = true)]
    pub runner_rate: u32,
    /// Messages a runner connection may send at once above the sustained rate.
    #[arg(long, env = "DAP_RUNNER_BURST", default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..), global = true)]
    pub runner_burst: u32,
    /// Concurrent sockets per runner credential (0 = unlimited); one more is refused with 429
    /// `too_many_connections` before the upgrade.
    #[arg(
        long,
        env = "DAP_RUNNER_MAX_CONNECTIONS",
        default_value_t = 2,
        global = true
    )]
    pub runner_max_connections: usize,
    /// Seconds a runner connection may send nothing at all (not even a pong) before it is
    /// closed with 4005.
    #[arg(long, env = "DAP_RUNNER_IDLE_TIMEOUT_S", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=86_400), global = true)]
    pub runner_idle_timeout_s: u64,
    /// Concurrent SSE streams one ticket may open (0 = unlimited); one more is refused with
    /// 429 `too_many_connections`.
    #[arg(
        long,
        env = "DAP_SSE_MAX_PER_TICKET",
        default_value_t = 4,
        global = true
    )]
    pub sse_max_per_ticket: usize,
    /// Log format.
    #[arg(
        long,
        env = "DAP_LOG_FORMAT",
        value_enum,
        default_value = "text",
        global = true
    )]
    pub log_format: LogFormat,
    /// Bearer token Prometheus must send to read `/metrics`; without one `/metrics` is open
    /// (it exposes counts only, like `/healthz`).
    #[arg(long, env = "DAP_METRICS_TOKEN", hide_env_values = true, global = true)]
    pub metrics_token: Option<Secret>,
    /// Run as one node of several sharing one PostgreSQL database (multi-node): events, queued
    /// tasks and runner presence are shared through the database. Refused on SQLite. All nodes
    /// need the same signing key (`<data-dir>/jwt-hs256.key`) and, for artifacts, the same blob
    /// directory: give them one shared data directory.
    #[arg(long, env = "DAP_CLUSTER", global = true)]
    pub cluster: bool,
    /// TLS certificate chain (PEM) to serve HTTPS and `wss://` directly; needs `--tls-key`.
    #[arg(long, env = "DAP_TLS_CERT", requires = "tls_key", global = true)]
    pub tls_cert: Option<PathBuf>,
    /// Private key (PEM: PKCS#8, PKCS#1 or SEC1) for `--tls-cert`.
    #[arg(long, env = "DAP_TLS_KEY", requires = "tls_cert", global = true)]
    pub tls_key: Option<PathBuf>,
}

/// A configured secret: parsed from the command line or environment, never shown by `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::str::FromStr for Secret {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s.trim().is_empty() {
            return Err("must not be empty".into());
        }
        Ok(Self(s.trim().to_owned()))
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// Where the TLS certificate chain and key are (both PEM).
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server (the default).
    Serve,
    /// Apply database migrations and exit.
    Migrate,
    /// Manage API keys.
    #[command(subcommand)]
    Apikey(ApikeyCommand),
    /// Manage runner enrolments.
    #[command(subcommand)]
    Runner(RunnerCommand),
}

#[derive(Debug, Subcommand)]
pub enum ApikeyCommand {
    /// Create a key and print it (alone, on stdout). It is shown only this once.
    Create {
        #[arg(long)]
        name: String,
        #[arg(long, value_parser = ["read", "write", "admin"], default_value = "write")]
        scope: String,
    },
    /// List keys (never their secrets).
    List,
    /// Revoke a key by id.
    Revoke { id: String },
}

#[derive(Debug, Subcommand)]
pub enum RunnerCommand {
    /// Enrol a runner and print its credential (alone, on stdout). Shown only this once.
    Create {
        #[arg(long)]
        name: String,
    },
    /// List runners.
    List,
    /// Revoke a runner by id.
    Revoke { id: String },
}

/// Everything `serve` needs, resolved.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub listen: SocketAddr,
    pub database_url: String,
    pub data_dir: PathBuf,
    pub heartbeat: Duration,
    pub runner_grace: Duration,
    pub max_attempts: u32,
    pub max_artifact_bytes: u64,
    pub webhooks: crate::webhooks::WebhookSettings,
    pub cors_origins: Vec<String>,
    pub limits: crate::limits::Limits,
    pub metrics_token: Option<Secret>,
    pub tls: Option<TlsFiles>,
    /// One node of several on one PostgreSQL database (`--cluster`).
    pub cluster: bool,
}

impl ServeConfig {
    pub fn from_args(store: &StoreArgs, serve: &ServeArgs) -> Self {
        Self {
            listen: serve.listen,
            database_url: store.database_url(),
            data_dir: store.data_dir.clone(),
            heartbeat: Duration::from_millis(serve.heartbeat_ms.max(100)),
            runner_grace: Duration::from_millis(serve.runner_grace_ms),
            max_attempts: serve.max_attempts,
            max_artifact_bytes: serve.max_artifact_bytes,
            webhooks: crate::webhooks::WebhookSettings {
                allow_private: serve.webhook_allow_private,
                retry_scale: serve.webhook_retry_scale.clamp(0.0, 1000.0),
            },
            cors_origins: serve.cors_origins.clone(),
            limits: crate::limits::Limits {
                runner_max_message_bytes: serve.runner_max_message_bytes as usize,
                runner_rate_per_s: serve.runner_rate,
                runner_burst: serve.runner_burst,
                runner_max_connections: serve.runner_max_connections,
                runner_idle_timeout: Duration::from_secs(serve.runner_idle_timeout_s),
                sse_max_per_ticket: serve.sse_max_per_ticket,
            },
            metrics_token: serve.metrics_token.clone(),
            tls: match (&serve.tls_cert, &serve.tls_key) {
                (Some(cert), Some(key)) => Some(TlsFiles {
                    cert: cert.clone(),
                    key: key.clone(),
                }),
                _ => None,
            },
            cluster: serve.cluster,
        }
    }

    /// A configuration for tests: port 0 on loopback, everything under `dir`.
    pub fn for_dir(dir: &std::path::Path) -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            database_url: format!("sqlite://{}", dir.join("dap.db").display()),
            data_dir: dir.to_owned(),
            heartbeat: Duration::from_millis(3000),
            runner_grace: Duration::from_secs(30),
            max_attempts: 3,
            max_artifact_bytes: 1 << 30,
            webhooks: crate::webhooks::WebhookSettings {
                allow_private: false,
                retry_scale: 1.0,
            },
            cors_origins: Vec::new(),
            limits: crate::limits::Limits::default(),
            metrics_token: None,
            tls: None,
            cluster: false,
        }
    }
}
