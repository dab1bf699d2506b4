//! The single writer: every hot-path mutation (task lifecycle, progress, runner state) goes
//! through one task that owns one SQLite connection and commits whatever is waiting as one
//! transaction (group commit). Callers get their answer only after that commit, and the events
//! a batch produced are published on the [`EventBus`] in commit order, after the commit.
//!
//! It does not decide *what* to write (the dispatcher and the HTTP layer do) and it never
//! publishes an event whose transaction did not commit.

use dap_protocol::TaskError;
use serde_json::{json, Value};
use sqlx::{Row, SqliteConnection};
use tokio::sync::{mpsc, oneshot};

use super::model::{now_ms, Event, NewTask, TaskStatus};
use super::StoreError;
use crate::events::EventBus;

/// Most operations folded into one transaction. Large enough to amortise the commit, small
/// enough that one batch never holds the write lock for long.
const MAX_BATCH: usize = 512;

/// A mutation the writer applies. Conditional updates say in their `WHERE` what must still be
/// true (status, runner, attempt), so a stale request changes nothing and reports `false`.
#[derive(Debug)]
pub enum WriteOp {
    CreateTask(NewTask),
    Assign {
        task_id: String,
        runner_id: String,
        attempt: u32,
    },
    Progress {
        task_id: String,
        runner_id: String,
        attempt: u32,
        percent: u8,
        stage: Option<String>,
        message: Option<String>,
    },
    Finish {
        task_id: String,
        runner_id: String,
        attempt: u32,
        result: Result<Value, TaskError>,
    },
    Cancel {
        task_id: String,
    },
    Requeue {
        task_id: String,
        runner_id: String,
        attempt: u32,
        reason: &'static str,
    },
    RunnerState {
        runner_id: String,
        kind: &'static str,
        data: Value,
        hello: Option<String>,
    },
}

/// What an applied [`WriteOp`] reports.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Unconditional write done.
    Done,
    /// Conditional write: did its condition hold (and so did it change anything)?
    Applied(bool),
    /// Result of a cancel request.
    Cancel(CancelOutcome),
}

#[derive(Debug, Clone, PartialEq)]
pub enum CancelOutcome {
    NotFound,
    /// Already finished; the status it finished with.
    AlreadyFinished(TaskStatus),
    /// Cancelled now. `runner` is the runner and attempt that may still be running it.
    Cancelled {
        previous: TaskStatus,
        runner: Option<(String, u32)>,
    },
}

struct Pending {
    op: WriteOp,
    reply: oneshot::Sender<Result<Outcome, StoreError>>,
}

/// Cheap handle to the writer task.
#[derive(Clone)]
pub struct Writer {
    tx: mpsc::Sender<Pending>,
}

impl Writer {
    /// Starts the writer task on `conn`. It ends when every handle is dropped.
    pub fn spawn(conn: SqliteConnection, bus: EventBus) -> Self {
        let (tx, rx) = mpsc::channel(8192);
        tokio::spawn(run(conn, rx, bus));
        Self { tx }
    }

    /// Applies `op` and waits for its commit.
    pub async fn submit(&self, op: WriteOp) -> Result<Outcome, StoreError> {
        let rx = self.enqueue(op).await?;
        rx.await.map_err(|_| StoreError::WriterGone)?
    }

    /// Queues `op` behind everything queued before it and returns without waiting for the
    /// commit; the receiver yields the outcome once committed (dropping it is fine).
    pub async fn enqueue(
        &self,
        op: WriteOp,
    ) -> Result<oneshot::Receiver<Result<Outcome, StoreError>>, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Pending { op, reply })
            .await
            .map_err(|_| StoreError::WriterGone)?;
        Ok(rx)
    }
}

async fn run(mut conn: SqliteConnection, mut rx: mpsc::Receiver<Pending>, bus: EventBus) {
    let mut batch: Vec<Pending> = Vec::with_capacity(MAX_BATCH);
    while let Some(first) = rx.recv().await {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        let mut events = Vec::new();
        match apply_batch(&mut conn, &batch, &mut events).await {
            Ok(outcomes) => {
                bus.publish_all(events);
                for (p, o) in batch.drain(..).zip(outcomes) {
                    let _ = p.reply.send(Ok(o));
                }
            }
            Err(e) => {
                // One op failed (or the commit did): the batch was rolled back. Apply each op in
                // its own transaction so one bad request does not fail its neighbours.
                tracing::warn!(error = %e, size = batch.len(), "batch failed; retrying one by one");
                for p in batch.drain(..) {
                    let mut events = Vec::new();
                    let r = apply_batch(&mut conn, std::slice::from_ref(&p), &mut events).await;
                    if r.is_ok() {
                        bus.publish_all(events);
                    }
                    let _ = p.reply.send(r.map(|mut v| v.remove(0)));
                }
            }
        }
    }
}

async fn apply_batch(
    conn: &mut SqliteConnection,
    batch: &[Pending],
    events: &mut Vec<Event>,
) -> Result<Vec<Outcome>, StoreError> {
    use sqlx::Connection;
    let mut tx = conn.begin().await?;
    let mut outcomes = Vec::with_capacity(batch.len());
    for p in batch {
        outcomes.push(apply(&mut tx, &p.op, events).await?);
    }
    tx.commit().await?;
    Ok(outcomes)
}

/// Appends an event to the log and to `events` (published after commit).
async fn append_event(
    conn: &mut SqliteConnection,
    events: &mut Vec<Event>,
    kind: &str,
    task_id: Option<&str>,
    runner_id: Option<&str>,
    mut data: Value,
) -> Result<(), StoreError> {
    let at = now_ms();
    if let Some(obj) = data.as_object_mut() {
        obj.insert("type".into(), Value::from(kind));
        obj.insert("at".into(), Value::from(at));
    }
    let json = data.to_string();
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO events (kind, task_id, runner_id, data, created_at) VALUES (?, ?, ?, ?, ?) RETURNING id",
    )
    .bind(kind)
    .bind(task_id)
    .bind(runner_id)
    .bind(&json)
    .bind(at)
    .fetch_one(&mut *conn)
    .await?;
    events.push(Event {
        id,
        kind: kind.to_owned(),
        task_id: task_id.map(str::to_owned),
        json,
    });
    Ok(())
}

async fn apply(
    conn: &mut SqliteConnection,
    op: &WriteOp,
    events: &mut Vec<Event>,
) -> Result<Outcome, StoreError> {
    let now = now_ms();
    match op {
        WriteOp::CreateTask(t) => {
            let (status, attempt, assigned_at) = match &t.assign_to {
                Some(_) => (TaskStatus::Assigned, 1u32, Some(now)),
                None => (TaskStatus::Queued, 0, None),
            };
            sqlx::query(
                "INSERT INTO tasks (id, operation_code, params, status, target_runner_id, runner_id, attempt, \
                 progress, created_at, assigned_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, 0, ?, ?, ?)",
            )
            .bind(&t.id)
            .bind(t.operation_code as i64)
            .bind(t.params.to_string())
            .bind(status.as_str())
            .bind(&t.target_runner_id)
            .bind(&t.assign_to)
            .bind(attempt as i64)
            .bind(now)
            .bind(assigned_at)
            .bind(now)
            .execute(&mut *conn)
            .await?;
            let data = json!({
                "task_id": t.id, "status": "queued", "operation_code": t.operation_code,
                "target_runner_id": t.target_runner_id, "progress": 0,
            });
            append_event(conn, events, "task.created", Some(&t.id), None, data).await?;
            if let Some(runner) = &t.assign_to {
                let data = json!({
                    "task_id": t.id, "status": "assigned", "operation_code": t.operation_code,
                    "runner_id": runner, "attempt": attempt, "progress": 0,
                });
                append_event(conn, events, "task.assigned", Some(&t.id), Some(runner), data)
                    .await?;
            }
            Ok(Outcome::Done)
        }
        WriteOp::Assign {
            task_id,
            runner_id,
            attempt,
        } => {
            let row = sqlx::query(
                "UPDATE tasks SET status = 'assigned', runner_id = ?, attempt = ?, progress = 0, stage = NULL, \
                 message = NULL, assigned_at = ?, started_at = NULL, updated_at = ? \
                 WHERE id = ? AND status = 'queued' AND attempt = ? RETURNING operation_code",
            )
            .bind(runner_id)
            .bind(*attempt as i64)
            .bind(now)
            .bind(now)
            .bind(task_id)
            .bind(*attempt as i64 - 1)
            .fetch_optional(&mut *conn)
            .await?;
            let Some(row) = row else {
                return Ok(Outcome::Applied(false));
            };
            let code: i64 = row.try_get(0)?;
            let data = json!({
                "task_id": task_id, "status": "assigned", "operation_code": code,
                "runner_id": runner_id, "attempt": attempt, "progress": 0,
            });
            append_event(conn, events, "task.assigned", Some(task_id), Some(runner_id), data)
                .await?;
            Ok(Outcome::Applied(true))
        }
        WriteOp::Progress {
            task_id,
            runner_id,
            attempt,
            percent,
            stage,
            message,
        } => {
            // `progress <= ?` drops regressions: progress of one attempt only moves forward.
            let row = sqlx::query(
                "UPDATE tasks SET status = 'running', progress = ?, stage = COALESCE(?, stage), \
                 message = COALESCE(?, message), started_at = COALESCE(started_at, ?), updated_at = ? \
                 WHERE id = ? AND runner_id = ? AND attempt = ? AND status IN ('assigned', 'running') \
                 AND progress <= ? RETURNING operation_code, stage, message",
            )
            .bind(*percent as i64)
            .bind(stage)
            .bind(message)
            .bind(now)
            .bind(now)
            .bind(task_id)
            .bind(runner_id)
            .bind(*attempt as i64)
            .bind(*percent as i64)
            .fetch_optional(&mut *conn)
            .await?;
            let Some(row) = row else {
                return Ok(Outcome::Applied(false));
            };
            let code: i64 = row.try_get(0)?;
            let stage: Option<String> = row.try_get(1)?;
            let message: Option<String> = row.try_get(2)?;
            let data = json!({
                "task_id": task_id, "status": "running", "operation_code": code,
                "runner_id": runner_id, "attempt": attempt, "progress": percent,
                "stage": stage, "message": message,
            });
            append_event(conn, events, "task.progress", Some(task_id), Some(runner_id), data)
                .await?;
            Ok(Outcome::Applied(true))
        }
        WriteOp::Finish {
            task_id,
            runner_id,
            attempt,
            result,
        } => {
            let (status, result_json, err) = match result {
                Ok(v) => (TaskStatus::Completed, Some(v.to_string()), None),
                Err(e) => (TaskStatus::Failed, None, Some(e)),
            };
            let row = sqlx::query(
                "UPDATE tasks SET status = ?, progress = CASE WHEN ? THEN 100 ELSE progress END, \
                 result_data = ?, error_code = ?, error_message = ?, finished_at = ?, \
                 started_at = COALESCE(started_at, ?), updated_at = ? \
                 WHERE id = ? AND runner_id = ? AND attempt = ? AND status IN ('assigned', 'running') \
                 RETURNING operation_code, progress, stage, message",
            )
            .bind(status.as_str())
            .bind(status == TaskStatus::Completed)
            .bind(result_json)
            .bind(err.map(|e| e.code.as_str()))
            .bind(err.map(|e| e.message.as_str()))
            .bind(now)
            .bind(now)
            .bind(now)
            .bind(task_id)
            .bind(runner_id)
            .bind(*attempt as i64)
            .fetch_optional(&mut *conn)
            .await?;
            let Some(row) = row else {
                return Ok(Outcome::Applied(false));
            };
            let code: i64 = row.try_get(0)?;
            let progress: i64 = row.try_get(1)?;
            let stage: Option<String> = row.try_get(2)?;
            let message: Option<String> = row.try_get(3)?;
            let mut data = json!({
                "task_id": task_id, "status": status.as_str(), "operation_code": code,
                "runner_id": runner_id, "attempt": attempt, "progress": progress,
                "stage": stage, "message": message,
            });
            if let Some(e) = err {
                data["error"] = json!({ "code": e.code, "message": e.message });
            }
            let kind = if err.is_some() {
                "task.failed"
            } else {
                "task.completed"
            };
            append_event(conn, events, kind, Some(task_id), Some(runner_id), data).await?;
            Ok(Outcome::Applied(true))
        }
        WriteOp::Cancel { task_id } => {
            let row = sqlx::query(
                "SELECT status, runner_id, attempt, operation_code, progress FROM tasks WHERE id = ?",
            )
            .bind(task_id)
            .fetch_optional(&mut *conn)
            .await?;
            let Some(row) = row else {
                return Ok(Outcome::Cancel(CancelOutcome::NotFound));
            };
            let status: String = row.try_get(0)?;
            let status = TaskStatus::parse(&status)
                .ok_or_else(|| StoreError::Corrupt(format!("task status {status:?}")))?;
            if status.is_terminal() {
                return Ok(Outcome::Cancel(CancelOutcome::AlreadyFinished(status)));
            }
            let runner_id: Option<String> = row.try_get(1)?;
            let attempt: i64 = row.try_get(2)?;
            let code: i64 = row.try_get(3)?;
            let progress: i64 = row.try_get(4)?;
            sqlx::query(
                "UPDATE tasks SET status = 'cancelled', error_code = 'cancelled', \
                 error_message = 'cancelled by request', finished_at = ?, updated_at = ? WHERE id = ?",
            )
            .bind(now)
            .bind(now)
            .bind(task_id)
            .execute(&mut *conn)
            .await?;
            let data = json!({
                "task_id": task_id, "status": "cancelled", "operation_code": code,
                "runner_id": runner_id, "attempt": attempt, "progress": progress,
            });
            append_event(
                conn,
                events,
                "task.cancelled",
                Some(task_id),
                runner_id.as_deref(),
                data,
            )
            .await?;
            let runner = match status {
                TaskStatus::Assigned | TaskStatus::Running => {
                    runner_id.map(|r| (r, attempt as u32))
                }
                _ => None,
            };
            Ok(Outcome::Cancel(CancelOutcome::Cancelled {
                previous: status,
                runner,
            }))
        }
        WriteOp::Requeue {
            task_id,
            runner_id,
            attempt,
            reason,
        } => {
            let row = sqlx::query(
                "UPDATE tasks SET status = 'queued', runner_id = NULL, progress = 0, stage = NULL, \
                 message = NULL, updated_at = ? \
                 WHERE id = ? AND runner_id = ? AND attempt = ? AND status IN ('assigned', 'running') \
                 RETURNING operation_code",
            )
            .bind(now)
            .bind(task_id)
            .bind(runner_id)
            .bind(*attempt as i64)
            .fetch_optional(&mut *conn)
            .await?;
            let Some(row) = row else {
                return Ok(Outcome::Applied(false));
            };
            let code: i64 = row.try_get(0)?;
            let data = json!({
                "task_id": task_id, "status": "queued", "operation_code": code,
                "attempt": attempt, "progress": 0, "reason": reason,
            });
            append_event(conn, events, "task.requeued", Some(task_id), None, data).await?;
            Ok(Outcome::Applied(true))
        }
        WriteOp::RunnerState {
            runner_id,
            kind,
            data,
            hello,
        } => {
            sqlx::query(
                "UPDATE runners SET last_seen_at = ?, hello = COALESCE(?, hello) WHERE id = ?",
            )
            .bind(now)
            .bind(hello)
            .bind(runner_id)
            .execute(&mut *conn)
            .await?;
            append_event(conn, events, kind, None, Some(runner_id), data.clone()).await?;
            Ok(Outcome::Done)
        }
    }
}
