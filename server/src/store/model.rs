//! Plain data types the store reads and writes: tasks, runners, API keys and events.
//! No SQL and no HTTP here; the HTTP layer turns these into its JSON views.

use serde::Serialize;
use serde_json::Value;

/// Lifecycle of a task. Terminal states never change again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskStatus {
    Queued,
    Assigned,
    Running,
    Completed,
    Failed,
    Cancelled,
}

impl TaskStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Assigned => "assigned",
            Self::Running => "running",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "queued" => Self::Queued,
            "assigned" => Self::Assigned,
            "running" => Self::Running,
            "completed" => Self::Completed,
            "failed" => Self::Failed,
            "cancelled" => Self::Cancelled,
            _ => return None,
        })
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Completed | Self::Failed | Self::Cancelled)
    }
}

/// API key scopes, ordered: each includes the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    Read,
    Write,
    Admin,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Write => "write",
            Self::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "read" => Self::Read,
            "write" => Self::Write,
            "admin" => Self::Admin,
            _ => return None,
        })
    }
}

/// A task row.
#[derive(Debug, Clone, PartialEq)]
pub struct Task {
    pub id: String,
    pub operation_code: u16,
    pub params: Value,
    pub status: TaskStatus,
    pub target_runner_id: Option<String>,
    pub runner_id: Option<String>,
    pub attempt: u32,
    pub progress: u8,
    pub stage: Option<String>,
    pub message: Option<String>,
    pub result_data: Option<Value>,
    pub error_code: Option<String>,
    pub error_message: Option<String>,
    pub created_at: i64,
    pub assigned_at: Option<i64>,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    pub updated_at: i64,
    /// Longest an attempt may run (from its assignment), if limited.
    pub timeout_s: Option<u32>,
    /// Attempts this task may use; `None` = the server's `--max-attempts`.
    pub max_attempts: Option<u32>,
    /// The task this one is a manual retry of.
    pub retried_from: Option<String>,
}

/// What a create writes. `assign_to` is set when the dispatcher already reserved a slot.
#[derive(Debug, Clone)]
pub struct NewTask {
    pub id: String,
    pub operation_code: u16,
    /// The params object, already serialised (the HTTP layer measured it).
    pub params_json: String,
    pub target_runner_id: Option<String>,
    pub assign_to: Option<String>,
    pub timeout_s: Option<u32>,
    pub max_attempts: Option<u32>,
    pub retried_from: Option<String>,
}

/// A runner enrolment row.
#[derive(Debug, Clone, PartialEq)]
pub struct Runner {
    pub id: String,
    pub name: String,
    pub hash: String,
    pub created_at: i64,
    pub revoked_at: Option<i64>,
    pub last_seen_at: Option<i64>,
    /// The last greeting, as JSON (slots, operations, datasets).
    pub hello: Option<Value>,
}

/// An API key row (the hash never leaves the server).
#[derive(Debug, Clone, PartialEq)]
pub struct ApiKey {
    pub id: String,
    pub name: String,
    pub scope: Scope,
    pub hash: String,
    pub created_at: i64,
    pub last_used_at: Option<i64>,
    pub revoked_at: Option<i64>,
}

/// A file a runner uploaded for a task; the bytes are in the blob store under `blob_key`.
#[derive(Debug, Clone, PartialEq)]
pub struct Artifact {
    pub task_id: String,
    pub name: String,
    pub attempt: u32,
    pub size: u64,
    pub sha256: String,
    pub content_type: String,
    pub blob_key: String,
    pub created_at: i64,
}

/// An enabled webhook subscription as the writer sees it: which event types produce a
/// delivery row for it.
#[derive(Debug, Clone, PartialEq)]
pub struct Subscription {
    pub webhook_id: String,
    /// Event types, or `["*"]` for every type that webhooks can carry.
    pub events: Vec<String>,
}

/// Event types a webhook may subscribe to.
pub const WEBHOOK_EVENT_TYPES: [&str; 4] = [
    "task.completed",
    "task.failed",
    "task.cancelled",
    "runner.offline",
];

impl Subscription {
    pub fn wants(&self, kind: &str) -> bool {
        WEBHOOK_EVENT_TYPES.contains(&kind) && self.events.iter().any(|e| e == "*" || e == kind)
    }
}

/// One entry of the event log. `id` is the SSE event id; `json` is the payload sent as `data:`.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub id: i64,
    pub kind: String,
    pub task_id: Option<String>,
    pub json: String,
}

/// Filter and page for task listings.
#[derive(Debug, Clone, Default)]
pub struct TaskFilter {
    pub status: Option<TaskStatus>,
    pub runner_id: Option<String>,
    pub limit: u32,
    pub offset: u32,
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
