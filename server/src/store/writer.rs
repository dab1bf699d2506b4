//! The single writer: every hot-path mutation (task lifecycle, progress, runner state) goes
//! through one dedicated thread that owns one SQLite connection and commits whatever is waiting
//! as one transaction (group commit). Callers get their answer only after that commit, and the
//! events a batch produced are published on the [`EventBus`] in commit order, after the commit.
//!
//! Why a thread with rusqlite rather than an async sqlx connection: sqlx runs each SQLite
//! statement on its own worker thread and hands results back through channels, which costs two
//! context switches per statement; a task's lifecycle needs several statements, and at 10k
//! tasks/s on two cores those hand-offs, not SQLite, were the bottleneck. Here statements are
//! prepared once and stepped synchronously. Reads and migrations stay on sqlx.
//!
//! It does not decide *what* to write (the dispatcher and the HTTP layer do) and it never
//! publishes an event whose transaction did not commit.

use std::path::Path;
use std::time::Duration;

use dap_protocol::TaskError;
use rusqlite::{params, Connection, OptionalExtension, Transaction};
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};

use super::model::{now_ms, Event, NewTask, Subscription, TaskStatus};
use super::Outbox;
use super::StoreError;
use crate::events::EventBus;

/// Most operations folded into one transaction. Large enough to amortise the commit, small
/// enough that one batch never holds the write lock for long.
const MAX_BATCH: usize = 1024;

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
    /// Puts an attempt back in the queue. With `max_attempts` (the server default; the task's
    /// own `max_attempts` wins when set), an attempt that was the last one allowed fails the
    /// task with error code `fail_code` instead.
    Requeue {
        task_id: String,
        runner_id: String,
        attempt: u32,
        reason: &'static str,
        max_attempts: Option<u32>,
        fail_code: &'static str,
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
    /// A requeue found the task on its last allowed attempt and failed it (with its `fail_code`).
    Lost,
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

type Reply = oneshot::Sender<Result<Outcome, StoreError>>;

struct Pending {
    op: WriteOp,
    reply: Reply,
}

/// Cheap handle to the writer thread.
#[derive(Clone)]
pub struct Writer {
    tx: mpsc::Sender<Pending>,
    /// The checkpointer thread stops when the last handle is gone.
    _alive: std::sync::Arc<()>,
}

/// How often WAL frames are copied back into the database file, off the commit path.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(250);

impl Writer {
    /// Opens the database file at `path` and starts the writer thread. The thread ends when
    /// every handle is dropped.
    pub fn spawn(
        path: &Path,
        synchronous_full: bool,
        bus: EventBus,
        outbox: Outbox,
    ) -> Result<Self, StoreError> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(Duration::from_secs(10))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(
            None,
            "synchronous",
            if synchronous_full { "FULL" } else { "NORMAL" },
        )?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        // Checkpoints run on their own connection (below), so a commit never stalls while
        // thousands of WAL frames are copied into the main file.
        conn.pragma_update(None, "wal_autocheckpoint", 0)?;
        conn.set_prepared_statement_cache_capacity(64);
        let checkpointer = Connection::open(path)?;
        checkpointer.busy_timeout(Duration::from_secs(1))?;
        let (tx, rx) = mpsc::channel(16_384);
        let alive = std::sync::Arc::new(());
        let weak = std::sync::Arc::downgrade(&alive);
        let spawn_err = |e| StoreError::Corrupt(format!("cannot start store thread: {e}"));
        std::thread::Builder::new()
            .name("dap-store-writer".into())
            .spawn(move || run(conn, rx, bus, outbox))
            .map_err(spawn_err)?;
        std::thread::Builder::new()
            .name("dap-store-ckpt".into())
            .spawn(move || {
                while weak.upgrade().is_some() {
                    std::thread::sleep(CHECKPOINT_EVERY);
                    // PASSIVE never blocks the writer; what it cannot copy now it copies next time.
                    let r =
                        checkpointer.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()));
                    if let Err(e) = r {
                        tracing::warn!(error = %e, "WAL checkpoint failed");
                    }
                }
            })
            .map_err(spawn_err)?;
        Ok(Self { tx, _alive: alive })
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

fn run(mut conn: Connection, mut rx: mpsc::Receiver<Pending>, bus: EventBus, outbox: Outbox) {
    let mut batch: Vec<Pending> = Vec::with_capacity(MAX_BATCH);
    while let Some(first) = rx.blocking_recv() {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        let ops: Vec<&WriteOp> = batch.iter().map(|p| &p.op).collect();
        let subs = outbox.subscriptions();
        match apply_batch(&mut conn, &ops, &subs) {
            Ok((outcomes, events)) => {
                if events.iter().any(|e| subs.iter().any(|s| s.wants(&e.kind))) {
                    outbox.notify();
                }
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
                    let r = apply_batch(&mut conn, &[&p.op], &subs).map(|(mut o, events)| {
                        outbox.notify();
                        bus.publish_all(events);
                        o.remove(0)
                    });
                    let _ = p.reply.send(r);
                }
            }
        }
    }
}

fn apply_batch(
    conn: &mut Connection,
    ops: &[&WriteOp],
    subs: &[Subscription],
) -> Result<(Vec<Outcome>, Vec<Event>), StoreError> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let mut outcomes = Vec::with_capacity(ops.len());
    let mut events = Vec::new();
    for op in ops {
        outcomes.push(apply(&tx, op, &mut events)?);
    }
    // The outbox rows commit with the events they report (a crash cannot lose a delivery).
    if !subs.is_empty() {
        let now = now_ms();
        let mut insert = tx.prepare_cached(
            "INSERT OR IGNORE INTO webhook_deliveries (webhook_id, event_id, event_type, task_id, \
             status, attempts, next_attempt_at, created_at, updated_at) \
             VALUES (?1, ?2, ?3, ?4, 'pending', 0, ?5, ?5, ?5)",
        )?;
        for e in &events {
            for sub in subs.iter().filter(|s| s.wants(&e.kind)) {
                insert.execute(params![sub.webhook_id, e.id, e.kind, e.task_id, now])?;
            }
        }
    }
    tx.commit()?;
    Ok((outcomes, events))
}

/// Appends an event to the log (inside the batch's transaction) and to `events`.
fn append_event(
    tx: &Transaction<'_>,
    events: &mut Vec<Event>,
    kind: &'static str,
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
    tx.prepare_cached(
        "INSERT INTO events (kind, task_id, runner_id, data, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![kind, task_id, runner_id, json, at])?;
    events.push(Event {
        id: tx.last_insert_rowid(),
        kind: kind.to_owned(),
        task_id: task_id.map(str::to_owned),
        json,
    });
    Ok(())
}

fn apply(
    tx: &Transaction<'_>,
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
            tx.prepare_cached(
                "INSERT INTO tasks (id, operation_code, params, status, target_runner_id, runner_id, attempt, \
                 progress, created_at, assigned_at, updated_at, timeout_s, max_attempts, retried_from) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 0, ?8, ?9, ?8, ?10, ?11, ?12)",
            )?
            .execute(params![
                t.id,
                t.operation_code,
                t.params_json,
                status.as_str(),
                t.target_runner_id,
                t.assign_to,
                attempt,
                now,
                assigned_at,
                t.timeout_s,
                t.max_attempts,
                t.retried_from,
            ])?;
            let mut data = json!({
                "task_id": t.id, "status": "queued", "operation_code": t.operation_code,
                "target_runner_id": t.target_runner_id, "progress": 0,
            });
            if let Some(from) = &t.retried_from {
                data["retried_from"] = Value::from(from.as_str());
            }
            append_event(tx, events, "task.created", Some(&t.id), None, data)?;
            if let Some(runner) = &t.assign_to {
                let data = json!({
                    "task_id": t.id, "status": "assigned", "operation_code": t.operation_code,
                    "runner_id": runner, "attempt": attempt, "progress": 0,
                });
                append_event(tx, events, "task.assigned", Some(&t.id), Some(runner), data)?;
            }
            Ok(Outcome::Done)
        }
        WriteOp::Assign {
            task_id,
            runner_id,
            attempt,
        } => {
            let code: Option<i64> = tx
                .prepare_cached(
                    "UPDATE tasks SET status = 'assigned', runner_id = ?1, attempt = ?2, progress = 0, \
                     stage = NULL, message = NULL, assigned_at = ?3, started_at = NULL, updated_at = ?3 \
                     WHERE id = ?4 AND status = 'queued' AND attempt = ?5 RETURNING operation_code",
                )?
                .query_row(
                    params![runner_id, attempt, now, task_id, *attempt as i64 - 1],
                    |r| r.get(0),
                )
                .optional()?;
            let Some(code) = code else {
                return Ok(Outcome::Applied(false));
            };
            let data = json!({
                "task_id": task_id, "status": "assigned", "operation_code": code,
                "runner_id": runner_id, "attempt": attempt, "progress": 0,
            });
            append_event(
                tx,
                events,
                "task.assigned",
                Some(task_id),
                Some(runner_id),
                data,
            )?;
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
            let row: Option<(i64, Option<String>, Option<String>)> = tx
                .prepare_cached(
                    "UPDATE tasks SET status = 'running', progress = ?1, stage = COALESCE(?2, stage), \
                     message = COALESCE(?3, message), started_at = COALESCE(started_at, ?4), updated_at = ?4 \
                     WHERE id = ?5 AND runner_id = ?6 AND attempt = ?7 AND status IN ('assigned', 'running') \
                     AND progress <= ?1 RETURNING operation_code, stage, message",
                )?
                .query_row(
                    params![percent, stage, message, now, task_id, runner_id, attempt],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .optional()?;
            let Some((code, stage, message)) = row else {
                return Ok(Outcome::Applied(false));
            };
            let data = json!({
                "task_id": task_id, "status": "running", "operation_code": code,
                "runner_id": runner_id, "attempt": attempt, "progress": percent,
                "stage": stage, "message": message,
            });
            append_event(
                tx,
                events,
                "task.progress",
                Some(task_id),
                Some(runner_id),
                data,
            )?;
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
            let row: Option<(i64, i64, Option<String>, Option<String>)> = tx
                .prepare_cached(
                    "UPDATE tasks SET status = ?1, progress = CASE WHEN ?2 THEN 100 ELSE progress END, \
                     result_data = ?3, error_code = ?4, error_message = ?5, finished_at = ?6, \
                     started_at = COALESCE(started_at, ?6), updated_at = ?6 \
                     WHERE id = ?7 AND runner_id = ?8 AND attempt = ?9 AND status IN ('assigned', 'running') \
                     RETURNING operation_code, progress, stage, message",
                )?
                .query_row(
                    params![
                        status.as_str(),
                        status == TaskStatus::Completed,
                        result_json,
                        err.map(|e| e.code.as_str()),
                        err.map(|e| e.message.as_str()),
                        now,
                        task_id,
                        runner_id,
                        attempt
                    ],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
                )
                .optional()?;
            let Some((code, progress, stage, message)) = row else {
                return Ok(Outcome::Applied(false));
            };
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
            append_event(tx, events, kind, Some(task_id), Some(runner_id), data)?;
            Ok(Outcome::Applied(true))
        }
        WriteOp::Cancel { task_id } => {
            let row: Option<(String, Option<String>, i64, i64, i64)> = tx
                .prepare_cached(
                    "SELECT status, runner_id, attempt, operation_code, progress FROM tasks WHERE id = ?1",
                )?
                .query_row(params![task_id], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
                })
                .optional()?;
            let Some((status, runner_id, attempt, code, progress)) = row else {
                return Ok(Outcome::Cancel(CancelOutcome::NotFound));
            };
            let status = TaskStatus::parse(&status)
                .ok_or_else(|| StoreError::Corrupt(format!("task status {status:?}")))?;
            if status.is_terminal() {
                return Ok(Outcome::Cancel(CancelOutcome::AlreadyFinished(status)));
            }
            tx.prepare_cached(
                "UPDATE tasks SET status = 'cancelled', error_code = 'cancelled', \
                 error_message = 'cancelled by request', finished_at = ?1, updated_at = ?1 WHERE id = ?2",
            )?
            .execute(params![now, task_id])?;
            let data = json!({
                "task_id": task_id, "status": "cancelled", "operation_code": code,
                "runner_id": runner_id, "attempt": attempt, "progress": progress,
            });
            append_event(
                tx,
                events,
                "task.cancelled",
                Some(task_id),
                runner_id.as_deref(),
                data,
            )?;
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
            max_attempts,
            fail_code,
        } => {
            let max_attempts = match max_attempts {
                Some(default) => {
                    let own: Option<Option<i64>> = tx
                        .prepare_cached("SELECT max_attempts FROM tasks WHERE id = ?1")?
                        .query_row(params![task_id], |r| r.get(0))
                        .optional()?;
                    Some(own.flatten().map_or(*default, |v| v as u32))
                }
                None => None,
            };
            if max_attempts.is_some_and(|max| *attempt >= max) {
                let message = if *fail_code == "timeout" {
                    format!("attempt {attempt} of {attempt} exceeded the task's timeout_s")
                } else {
                    format!("runner lost the task on attempt {attempt} of {attempt} ({reason})")
                };
                let row: Option<(i64, i64)> = tx
                    .prepare_cached(
                        "UPDATE tasks SET status = 'failed', error_code = ?6, error_message = ?1, \
                         finished_at = ?2, updated_at = ?2 \
                         WHERE id = ?3 AND runner_id = ?4 AND attempt = ?5 AND status IN ('assigned', 'running') \
                         RETURNING operation_code, progress",
                    )?
                    .query_row(
                        params![message, now, task_id, runner_id, attempt, fail_code],
                        |r| Ok((r.get(0)?, r.get(1)?)),
                    )
                    .optional()?;
                let Some((code, progress)) = row else {
                    return Ok(Outcome::Applied(false));
                };
                let data = json!({
                    "task_id": task_id, "status": "failed", "operation_code": code,
                    "runner_id": runner_id, "attempt": attempt, "progress": progress,
                    "error": { "code": fail_code, "message": message },
                });
                append_event(
                    tx,
                    events,
                    "task.failed",
                    Some(task_id),
                    Some(runner_id),
                    data,
                )?;
                return Ok(Outcome::Lost);
            }
            let code: Option<i64> = tx
                .prepare_cached(
                    "UPDATE tasks SET status = 'queued', runner_id = NULL, progress = 0, stage = NULL, \
                     message = NULL, updated_at = ?1 \
                     WHERE id = ?2 AND runner_id = ?3 AND attempt = ?4 AND status IN ('assigned', 'running') \
                     RETURNING operation_code",
                )?
                .query_row(params![now, task_id, runner_id, attempt], |r| r.get(0))
                .optional()?;
            let Some(code) = code else {
                return Ok(Outcome::Applied(false));
            };
            let data = json!({
                "task_id": task_id, "status": "queued", "operation_code": code,
                "attempt": attempt, "progress": 0, "reason": reason,
            });
            append_event(tx, events, "task.requeued", Some(task_id), None, data)?;
            Ok(Outcome::Applied(true))
        }
        WriteOp::RunnerState {
            runner_id,
            kind,
            data,
            hello,
        } => {
            tx.prepare_cached(
                "UPDATE runners SET last_seen_at = ?1, hello = COALESCE(?2, hello) WHERE id = ?3",
            )?
            .execute(params![now, hello, runner_id])?;
            append_event(tx, events, kind, None, Some(runner_id), data.clone())?;
            Ok(Outcome::Done)
        }
    }
}
