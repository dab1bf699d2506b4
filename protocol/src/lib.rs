//! The DAP wire protocol: typed messages that `dap-server` and `dap-runner` exchange over the
//! runner WebSocket, plus the operation codes and failure codes both sides agree on.
//!
//! This crate does no I/O and knows nothing of tokio, axum, sqlx or polars: it is plain data with
//! serde derives, so both binaries (and tests) share one definition of every message.
//! Messages are JSON text frames tagged by a `type` field (`{"type":"progress",...}`).

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Version of the message set below. The runner sends it in its [`Hello`]; the server closes the
/// socket with [`close_code::UNSUPPORTED_PROTOCOL`] when it cannot speak it.
pub const PROTOCOL_VERSION: u32 = 1;

/// Path of the runner socket on the server.
pub const CONNECT_PATH: &str = "/api/v1/runners/connect";
/// Path where a runner exchanges its enrolment credential for a short-lived socket JWT.
pub const TOKEN_PATH: &str = "/api/v1/runners/token";

/// Operation codes a task may carry.
pub mod op {
    /// Diagnostic no-op: completes at once with `{ "noop": true }`. For benchmarks and health
    /// checks; it reads no data and is not one of the analysis operations.
    pub const NOOP: u16 = 1;
    /// 100 — fetch raw data: schema, row count and a preview page of a dataset.
    pub const FETCH: u16 = 100;
    /// 200 — filter data.
    pub const FILTER: u16 = 200;
    /// 300 — ML model analysis.
    pub const MODEL: u16 = 300;
    /// 400 — export report.
    pub const EXPORT: u16 = 400;

    /// Every operation code the platform defines (a runner may support a subset).
    pub const ALL: [u16; 5] = [NOOP, FETCH, FILTER, MODEL, EXPORT];

    /// True for a code the platform defines.
    pub fn is_known(code: u16) -> bool {
        ALL.contains(&code)
    }

    /// Human name of an operation, for logs and UIs.
    pub fn name(code: u16) -> &'static str {
        match code {
            NOOP => "noop",
            FETCH => "fetch",
            FILTER => "filter",
            MODEL => "model",
            EXPORT => "export",
            _ => "unknown",
        }
    }
}

/// Failure codes a runner reports in [`Failed`]. Strings on the wire so that a newer runner's
/// code still reaches an older server intact.
pub mod failure {
    /// The runner does not implement this operation code.
    pub const UNSUPPORTED_OPERATION: &str = "unsupported_operation";
    /// `params.dataset` names no dataset the runner's owner declared.
    pub const UNKNOWN_DATASET: &str = "unknown_dataset";
    /// A parameter is missing or malformed; the message names the field.
    pub const INVALID_PARAMS: &str = "invalid_params";
    /// The params tried to name a file path (absolute, `..`, URL) instead of a dataset.
    pub const PATH_NOT_ALLOWED: &str = "path_not_allowed";
    /// The dataset could not be read or parsed.
    pub const DATA_ERROR: &str = "data_error";
    /// `params.input` names a task whose output this runner does not hold.
    pub const INPUT_NOT_AVAILABLE: &str = "input_not_available";
    /// The task was cancelled before it finished.
    pub const CANCELLED: &str = "cancelled";
    /// Anything else (a bug); the message says what.
    pub const INTERNAL: &str = "internal";
}

/// WebSocket close codes the server uses (4000–4999 are application codes).
pub mod close_code {
    /// Protocol violation: a frame that is not a valid message.
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// Policy violation: the runner sent messages faster than the server's rate limit.
    pub const POLICY: u16 = 1008;
    /// Message larger than the server accepts.
    pub const TOO_BIG: u16 = 1009;
    /// Server shutting down; reconnect later (possibly to another node).
    pub const GOING_AWAY: u16 = 1001;
    /// This cluster node lost its database; reconnect (to another node). 1012 is the
    /// registered "Service Restart" code.
    pub const UNAVAILABLE: u16 = 1012;
    /// The runner's credential was revoked; do not reconnect with it.
    pub const REVOKED: u16 = 4001;
    /// The runner's protocol version is not supported.
    pub const UNSUPPORTED_PROTOCOL: u16 = 4002;
    /// The first message was not a `hello`.
    pub const EXPECTED_HELLO: u16 = 4003;
    /// Another connection with the same credential replaced this one.
    pub const REPLACED: u16 = 4004;
    /// Nothing at all (not even a pong) arrived for the server's idle timeout.
    pub const IDLE_TIMEOUT: u16 = 4005;
}

/// File format of a declared dataset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DatasetFormat {
    Csv,
    Parquet,
    /// Newline-delimited JSON.
    Ndjson,
}

/// One column of a dataset's schema.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ColumnInfo {
    pub name: String,
    /// Data type as the runner's engine names it (e.g. `i64`, `f64`, `str`, `bool`, `date`).
    pub dtype: String,
}

/// A dataset a runner's owner declared, as advertised to the server. Never carries the path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatasetInfo {
    pub name: String,
    pub format: DatasetFormat,
    pub columns: Vec<ColumnInfo>,
    /// Row count when it was cheap to learn at start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub row_count: Option<u64>,
}

/// A task a runner is still working on, listed in its [`Hello`] after a reconnect.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunningTask {
    pub task_id: String,
    pub attempt: u32,
}

/// First message on every runner connection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    pub protocol_version: u32,
    /// Runner's display name (informational; identity comes from the JWT).
    pub name: String,
    /// Runner software version.
    pub version: String,
    /// How many tasks it runs at once (≥ 1).
    pub slots: u32,
    /// Operation codes it implements.
    pub operations: Vec<u16>,
    #[serde(default)]
    pub datasets: Vec<DatasetInfo>,
    #[serde(default)]
    pub running: Vec<RunningTask>,
}

/// Progress of one attempt of a task. `percent` is 0–100; the server drops regressions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    pub task_id: String,
    pub attempt: u32,
    pub percent: u8,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Successful end of an attempt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Completed {
    pub task_id: String,
    pub attempt: u32,
    pub result_data: Value,
}

/// A typed failure: a code from [`failure`] and a human message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskError {
    pub code: String,
    pub message: String,
}

impl TaskError {
    pub fn new(code: &str, message: impl Into<String>) -> Self {
        Self {
            code: code.to_owned(),
            message: message.into(),
        }
    }
}

/// Failed (or cancelled) end of an attempt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Failed {
    pub task_id: String,
    pub attempt: u32,
    pub error: TaskError,
}

/// The runner gives an attempt back unfinished (it is stopping): the server requeues the task
/// at once instead of waiting out the runner's grace period. Like a result it is acknowledged
/// with [`ServerMessage::Ack`], and it fences the attempt: nothing more of it is accepted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HandBack {
    pub task_id: String,
    pub attempt: u32,
    /// Why, for logs and the task's event history (e.g. "runner stopping").
    pub reason: String,
}

/// Runner → server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum RunnerMessage {
    Hello(Hello),
    Progress(Progress),
    Completed(Completed),
    Failed(Failed),
    /// The runner is stopping: assign it nothing more. It finishes (or hands back) what it
    /// holds, then closes the socket. Sent again after a reconnect while still draining.
    Draining,
    HandBack(HandBack),
}

/// A task pushed to a runner.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Assignment {
    pub task_id: String,
    pub attempt: u32,
    pub operation_code: u16,
    pub params: Value,
}

/// Server → runner.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage {
    /// Answer to [`Hello`]: the identity the server knows the runner by.
    Welcome {
        runner_id: String,
        /// The server pings at this interval; a runner that hears nothing for three intervals
        /// should assume the link is dead and reconnect.
        heartbeat_interval_ms: u64,
    },
    /// Run this task now.
    Assign(Assignment),
    /// Stop this task; answer with a `failed` message whose code is `cancelled`.
    Cancel { task_id: String, attempt: u32 },
    /// The server is done with this attempt's `completed`/`failed`/`hand_back`: it is committed, or was
    /// refused for good (a superseded attempt, a duplicate). The runner may forget it (and
    /// delete it from its on-disk outbox); until then it resends it after every reconnect.
    Ack { task_id: String, attempt: u32 },
}

impl RunnerMessage {
    pub fn to_json(&self) -> String {
        // Serialising these plain structs cannot fail (no non-string map keys, no custom Serialize).
        serde_json::to_string(self).expect("runner message serialises")
    }
}

impl ServerMessage {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("server message serialises")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_tagged_json() {
        let m = RunnerMessage::Progress(Progress {
            task_id: "t".into(),
            attempt: 1,
            percent: 40,
            stage: Some("reading".into()),
            message: None,
        });
        let s = m.to_json();
        assert!(s.starts_with(r#"{"type":"progress""#), "{s}");
        assert_eq!(serde_json::from_str::<RunnerMessage>(&s).unwrap(), m);

        let a = ServerMessage::Assign(Assignment {
            task_id: "t".into(),
            attempt: 2,
            operation_code: op::FETCH,
            params: serde_json::json!({"dataset": "sales"}),
        });
        let back: ServerMessage = serde_json::from_str(&a.to_json()).unwrap();
        assert_eq!(back, a);
    }

    #[test]
    fn draining_and_hand_back_are_tagged_json() {
        assert_eq!(RunnerMessage::Draining.to_json(), r#"{"type":"draining"}"#);
        let h = RunnerMessage::HandBack(HandBack {
            task_id: "t".into(),
            attempt: 3,
            reason: "runner stopping".into(),
        });
        let s = h.to_json();
        assert!(s.starts_with(r#"{"type":"hand_back""#), "{s}");
        assert_eq!(serde_json::from_str::<RunnerMessage>(&s).unwrap(), h);
    }

    #[test]
    fn unknown_message_type_is_an_error() {
        assert!(serde_json::from_str::<RunnerMessage>(r#"{"type":"bogus"}"#).is_err());
        assert!(serde_json::from_str::<RunnerMessage>(r#"{"type":"progress"}"#).is_err());
    }

    #[test]
    fn hello_defaults_optional_lists() {
        let h: RunnerMessage = serde_json::from_str(
            r#"{"type":"hello","protocol_version":1,"name":"r","version":"0","slots":1,"operations":[100]}"#,
        )
        .unwrap();
        match h {
            RunnerMessage::Hello(h) => {
                assert!(h.datasets.is_empty() && h.running.is_empty());
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn operation_codes() {
        assert!(op::is_known(100) && op::is_known(400) && op::is_known(op::NOOP));
        assert!(!op::is_known(150) && !op::is_known(0));
        assert_eq!(op::name(300), "model");
    }
}
