//! The single writer: every hot-path mutation (task lifecycle, progress, runner state) goes
//! through one writer per process that owns one database connection and commits whatever is
//! waiting as one transaction (group commit). Callers get their answer only after that commit,
//! and the events a batch produced are published on the [`EventBus`] in commit order, after the
//! commit.
//!
//! This file holds what both backends share: the operations, their SQL (written once, in
//! SQLite's `?N` placeholders; PostgreSQL gets `$N`), the group-commit loop and what each
//! operation writes. A backend only supplies a connection that can begin a transaction, run a
//! statement and read one row ([`WriteConn`], [`WriteTx`]): SQLite's is a dedicated thread with
//! a rusqlite connection (`sqlite.rs`), PostgreSQL's a tokio task with one sqlx connection
//! (`postgres.rs`).
//!
//! Event ids increase in commit order because there is one writer and it commits one
//! transaction at a time: PostgreSQL takes identity values at insert, not at commit. Several
//! servers on one database (`--cluster`) keep that order because each of their writers takes
//! one advisory lock at the start of every transaction (see `postgres.rs`); such a writer
//! publishes nothing itself but announces the batch's last event id (NOTIFY) and every node's
//! `cluster` feed publishes from the log.
//!
//! It does not decide *what* to write (the dispatcher and the HTTP layer do) and it never
//! publishes an event whose transaction did not commit.

use dap_protocol::TaskError;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

use super::model::{now_ms, Event, NewTask, TaskStatus};
use super::sql::{pg_now_ms, Arg, DbRow};
use super::Outbox;
use super::StoreError;
use crate::events::EventBus;

/// Most operations folded into one transaction. Large enough to amortise the commit, small
/// enough that one batch never holds the write lock for long.
pub(super) const MAX_BATCH: usize = 1024;

/// A mutation the writer applies. Conditional updates say in their `WHERE` what must still be
/// true (status, runner, attempt), so a stale request changes nothing and reports `false`.
#[derive(Debug)]
pub enum WriteOp {
    CreateTask(NewTask),
    /// Several creates in one transaction: all are stored, or none.
    CreateTasks(Vec<NewTask>),
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
    /// task with error code `fail_code` instead. With `unseen` (cluster mode only: PostgreSQL)
    /// either happens only if the runner is still absent when the statement runs.
    Requeue {
        task_id: String,
        runner_id: String,
        attempt: u32,
        reason: &'static str,
        max_attempts: Option<u32>,
        fail_code: &'static str,
        unseen: Option<Unseen>,
    },
    RunnerState {
        runner_id: String,
        kind: &'static str,
        data: Value,
        hello: Option<String>,
    },
}

/// Cluster mode: the absence a [`WriteOp::Requeue`] is conditional on, checked in the requeue's
/// own UPDATE: no row in `runner_presence` for the task's runner refreshed within the last
/// `for_ms` milliseconds by the database's clock, not counting the rows of `except_node`.
/// A node that takes a runner over records its presence under the writers' advisory lock before
/// reading what the runner holds, so a requeue either commits before that (and the node sees
/// the task requeued) or finds the runner present and changes nothing.
#[derive(Debug, Clone)]
pub struct Unseen {
    pub for_ms: i64,
    /// The node asking, when its own row does not count (its grace period for the runner);
    /// `None`: every node's row counts (the sweeper).
    pub except_node: Option<String>,
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

/// An operation waiting for the writer, with where to send its outcome.
pub(super) struct Pending {
    op: WriteOp,
    reply: Reply,
}

/// A writer that can commit an operation on the submitting thread itself while it is idle
/// (SQLite's): no hand-off to the writer's thread and back, which on a small VM costs two
/// thread wake-ups, about a fifth of an idle create's dispatch latency. Under load operations
/// queue up and the writer's own thread commits them in groups, as before.
pub(super) trait Inline: Send + Sync {
    /// Commits `p` (alone, in its own transaction) here and now if it is short and the writer
    /// is idle: nothing queued for it, nothing being committed; `None` then. Otherwise gives
    /// `p` back, to be queued.
    fn try_commit(&self, p: Pending) -> Option<Pending>;
    /// `p` is about to be queued: until the writer's thread has committed it, [`Self::try_commit`]
    /// refuses, so nothing submitted later overtakes it.
    fn queuing(&self);
}

impl Pending {
    /// Its statements take well under a millisecond (every operation but a large batch
    /// create), so it may be committed inline on a tokio worker.
    pub(super) fn is_short(&self) -> bool {
        !matches!(&self.op, WriteOp::CreateTasks(ts) if ts.len() > 16)
    }
}

/// Cheap handle to the writer.
#[derive(Clone)]
pub struct Writer {
    tx: mpsc::Sender<Pending>,
    inline: Option<std::sync::Arc<dyn Inline>>,
    /// Helper threads of the backend (SQLite's checkpointer) stop when the last handle is gone.
    _alive: std::sync::Arc<()>,
}

impl Writer {
    /// A handle on a writer that takes its work from the receiving end of `tx` (and commits
    /// through `inline` when that can); `alive` is dropped with the last handle.
    pub(super) fn new(
        tx: mpsc::Sender<Pending>,
        inline: Option<std::sync::Arc<dyn Inline>>,
        alive: std::sync::Arc<()>,
    ) -> Self {
        Self {
            tx,
            inline,
            _alive: alive,
        }
    }

    /// The queue between handles and the writer. Bounded: when the writer falls behind,
    /// submitters wait instead of piling up memory.
    pub(super) fn channel() -> (mpsc::Sender<Pending>, mpsc::Receiver<Pending>) {
        mpsc::channel(16_384)
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
        let mut p = Pending { op, reply };
        if let Some(inline) = &self.inline {
            match inline.try_commit(p) {
                None => return Ok(rx),
                Some(back) => p = back,
            }
            inline.queuing();
        }
        self.tx.send(p).await.map_err(|_| StoreError::WriterGone)?;
        Ok(rx)
    }
}

/// A backend's write connection: begins the transactions the writer fills.
pub(super) trait WriteConn {
    type Tx<'c>: WriteTx
    where
        Self: 'c;
    async fn begin(&mut self) -> Result<Self::Tx<'_>, StoreError>;
}

/// An open transaction of a backend. Dropping it without [`commit`](Self::commit) rolls back.
/// `sql` is in SQLite's dialect (`?N` placeholders); a backend translates what it must.
pub(super) trait WriteTx {
    /// Runs a statement; the number of rows it changed.
    async fn execute(&mut self, sql: &'static str, args: &[Arg<'_>]) -> Result<u64, StoreError>;
    /// Runs a statement and reads its first row, if any, with `read`.
    async fn query_row<T>(
        &mut self,
        sql: &'static str,
        args: &[Arg<'_>],
        read: impl FnOnce(&dyn DbRow) -> Result<T, StoreError>,
    ) -> Result<Option<T>, StoreError>;
    /// Inserts new tasks (created at `now`; queued, or assigned when the dispatcher reserved a
    /// slot). By default one statement per task, which costs SQLite nothing; PostgreSQL inserts
    /// them in one statement (one round trip for a batch create).
    async fn insert_tasks(&mut self, tasks: &[&NewTask], now: i64) -> Result<(), StoreError> {
        for t in tasks {
            let (status, attempt, assigned_at) = initial_state(t, now);
            self.execute(
                "INSERT INTO tasks (id, operation_code, params, status, target_runner_id, runner_id, \
                 attempt, progress, created_at, assigned_at, updated_at, timeout_s, max_attempts, \
                 retried_from) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 0, ?8, ?9, ?8, ?10, ?11, ?12)",
                &[
                    (&t.id).into(),
                    t.operation_code.into(),
                    (&t.params_json).into(),
                    status.as_str().into(),
                    (&t.target_runner_id).into(),
                    (&t.assign_to).into(),
                    attempt.into(),
                    now.into(),
                    assigned_at.into(),
                    t.timeout_s.into(),
                    t.max_attempts.into(),
                    (&t.retried_from).into(),
                ],
            )
            .await?;
        }
        Ok(())
    }
    /// Appends `events` to the log, in order, and returns their ids (increasing). SQLite
    /// inserts them one by one (no round trips to save); PostgreSQL in one statement.
    async fn insert_events(&mut self, events: &[NewEvent]) -> Result<Vec<i64>, StoreError>;
    /// Runs `update`, an UPDATE of the one `tasks` row whose id is `task_id` (plus conditions),
    /// and when it changed that row reads its `columns` (as they are after the update) with
    /// `read`. `None` when the conditions did not hold. (SQLite's RETURNING buffers rows in a
    /// temporary b-tree, which costs more than reading the row again; PostgreSQL's saves a
    /// round trip.)
    async fn update_task<T>(
        &mut self,
        update: &'static str,
        columns: &'static str,
        task_id: &str,
        args: &[Arg<'_>],
        read: impl FnOnce(&dyn DbRow) -> Result<T, StoreError>,
    ) -> Result<Option<T>, StoreError>;
    /// Called before the commit of a transaction that appended events, with the last one's id.
    /// A clustered PostgreSQL writer tells the other servers (NOTIFY, delivered at commit); by
    /// default nothing happens.
    async fn announce(&mut self, _last_event_id: i64) -> Result<(), StoreError> {
        Ok(())
    }
    async fn commit(self) -> Result<(), StoreError>;
}

/// Moves whatever else is already waiting into `batch`, up to [`MAX_BATCH`].
pub(super) fn fill(rx: &mut mpsc::Receiver<Pending>, batch: &mut Vec<Pending>) {
    while batch.len() < MAX_BATCH {
        match rx.try_recv() {
            Ok(p) => batch.push(p),
            Err(_) => break,
        }
    }
}

/// Commits `batch` as one transaction, then publishes its events on `bus` (when there is one:
/// a clustered writer has none, its events reach the bus from the log) and answers every waiter
/// (after the commit, in that order). Leaves `batch` empty.
pub(super) async fn commit_batch<C: WriteConn>(
    conn: &mut C,
    batch: &mut Vec<Pending>,
    bus: Option<&EventBus>,
    outbox: &Outbox,
) {
    let ops: Vec<&WriteOp> = batch.iter().map(|p| &p.op).collect();
    match apply_batch(conn, &ops, outbox).await {
        Ok((outcomes, events, deliveries)) => {
            if deliveries {
                outbox.notify();
            }
            if let Some(bus) = bus {
                bus.publish_all(events);
            }
            for (p, o) in batch.drain(..).zip(outcomes) {
                let _ = p.reply.send(Ok(o));
            }
        }
        Err(e) if e.is_connection_failure() => {
            // The database is unreachable, not one op at fault: each op would fail alike, and
            // one by one each would wait out the connection timeout. Fail them all now; the
            // next batch opens a new connection.
            tracing::warn!(error = %e, size = batch.len(), "batch failed: database unreachable");
            let cause = e.to_string();
            for p in batch.drain(..) {
                let err = std::io::Error::other(cause.clone());
                let _ = p
                    .reply
                    .send(Err(StoreError::Database(sqlx::Error::Io(err))));
            }
        }
        Err(e) => {
            // One op failed (or the commit did): the batch was rolled back. Apply each op in
            // its own transaction so one bad request does not fail its neighbours.
            tracing::warn!(error = %e, size = batch.len(), "batch failed; retrying one by one");
            for p in batch.drain(..) {
                let r = match apply_batch(conn, &[&p.op], outbox).await {
                    Ok((mut o, events, _)) => {
                        outbox.notify();
                        if let Some(bus) = bus {
                            bus.publish_all(events);
                        }
                        Ok(o.remove(0))
                    }
                    Err(e) => Err(e),
                };
                let _ = p.reply.send(r);
            }
        }
    }
}

/// Applies `ops` in one transaction; also returns whether it wrote webhook deliveries.
async fn apply_batch<C: WriteConn>(
    conn: &mut C,
    ops: &[&WriteOp],
    outbox: &Outbox,
) -> Result<(Vec<Outcome>, Vec<Event>, bool), StoreError> {
    let mut tx = conn.begin().await?;
    // Read after `begin`: a clustered writer reloads the subscriptions there, in this
    // transaction, so a webhook created through another node applies to this batch too.
    let subs = outbox.subscriptions();
    let mut deliveries = false;
    let mut outcomes = Vec::with_capacity(ops.len());
    let mut appended = Vec::new();
    for op in ops {
        outcomes.push(apply(&mut tx, op, &mut appended).await?);
    }
    let ids = tx.insert_events(&appended).await?;
    if ids.len() != appended.len() {
        return Err(StoreError::Corrupt(format!(
            "{} events written, {} ids returned",
            appended.len(),
            ids.len()
        )));
    }
    let events: Vec<Event> = appended
        .into_iter()
        .zip(ids)
        .map(|(e, id)| Event {
            id,
            kind: e.kind.to_owned(),
            task_id: e.task_id,
            json: e.json,
        })
        .collect();
    // The outbox rows commit with the events they report (a crash cannot lose a delivery).
    if !subs.is_empty() {
        let now = now_ms();
        for e in &events {
            for sub in subs.iter().filter(|s| s.wants(&e.kind)) {
                deliveries = true;
                tx.execute(
                    "INSERT INTO webhook_deliveries (webhook_id, event_id, event_type, task_id, \
                     status, attempts, next_attempt_at, created_at, updated_at) \
                     VALUES (?1, ?2, ?3, ?4, 'pending', 0, ?5, ?5, ?5) \
                     ON CONFLICT (webhook_id, event_id) DO NOTHING",
                    &[
                        (&sub.webhook_id).into(),
                        e.id.into(),
                        e.kind.as_str().into(),
                        (&e.task_id).into(),
                        now.into(),
                    ],
                )
                .await?;
            }
        }
    }
    if let Some(last) = events.last() {
        tx.announce(last.id).await?;
    }
    tx.commit().await?;
    Ok((outcomes, events, deliveries))
}

/// An event an op appended; written to the log at the end of its batch
/// ([`WriteTx::insert_events`]), in the order the ops appended them.
pub(super) struct NewEvent {
    pub kind: &'static str,
    pub task_id: Option<String>,
    pub runner_id: Option<String>,
    pub json: String,
    pub at: i64,
}

/// Appends an event with a free-form payload (runner states) to the batch's `events` (the log
/// gets it before the batch commits); `type` and `at` are added to `data`.
fn append_event(
    events: &mut Vec<NewEvent>,
    kind: &'static str,
    task_id: Option<&str>,
    runner_id: Option<&str>,
    mut data: Value,
) {
    let at = now_ms();
    if let Some(obj) = data.as_object_mut() {
        obj.insert("type".into(), Value::from(kind));
        obj.insert("at".into(), Value::from(at));
    }
    events.push(NewEvent {
        kind,
        task_id: task_id.map(str::to_owned),
        runner_id: runner_id.map(str::to_owned),
        json: data.to_string(),
        at,
    });
}

/// The payload of a task event, serialised straight to its JSON text (the hot path writes
/// three per task; building a `serde_json::Value` map first cost twice as much). A field that
/// is `None` is left out; `Some(None)` is written as `null`. `type` and `at` are set by
/// [`append_task_event`].
#[derive(serde::Serialize)]
struct TaskPayload<'a> {
    task_id: &'a str,
    status: &'a str,
    operation_code: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    target_runner_id: Option<Option<&'a str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    runner_id: Option<Option<&'a str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    attempt: Option<i64>,
    progress: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    stage: Option<Option<&'a str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<Option<&'a str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<ErrorPayload<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    retried_from: Option<&'a str>,
    #[serde(rename = "type")]
    kind: &'static str,
    at: i64,
}

#[derive(serde::Serialize)]
struct ErrorPayload<'a> {
    code: &'a str,
    message: &'a str,
}

impl<'a> TaskPayload<'a> {
    /// The fields every task event has; the rest start out absent.
    fn new(task_id: &'a str, status: &'a str, operation_code: i64, progress: i64) -> Self {
        TaskPayload {
            task_id,
            status,
            operation_code,
            target_runner_id: None,
            runner_id: None,
            attempt: None,
            progress,
            stage: None,
            message: None,
            error: None,
            reason: None,
            retried_from: None,
            kind: "",
            at: 0,
        }
    }

    /// With the runner and attempt that the event is about.
    fn by(mut self, runner_id: Option<&'a str>, attempt: i64) -> Self {
        self.runner_id = Some(runner_id);
        self.attempt = Some(attempt);
        self
    }
}

/// Appends a task event (`kind`, about `p.task_id`, naming `runner_id`) to the batch.
fn append_task_event(
    events: &mut Vec<NewEvent>,
    kind: &'static str,
    runner_id: Option<&str>,
    mut p: TaskPayload<'_>,
) {
    p.kind = kind;
    p.at = now_ms();
    events.push(NewEvent {
        kind,
        task_id: Some(p.task_id.to_owned()),
        runner_id: runner_id.map(str::to_owned),
        json: serde_json::to_string(&p).expect("a task payload always serialises"),
        at: p.at,
    });
}

/// A new task's status, attempt and `assigned_at`: assigned (attempt 1) when the dispatcher
/// reserved a slot for it, queued otherwise.
pub(super) fn initial_state(t: &NewTask, now: i64) -> (TaskStatus, u32, Option<i64>) {
    match &t.assign_to {
        Some(_) => (TaskStatus::Assigned, 1, Some(now)),
        None => (TaskStatus::Queued, 0, None),
    }
}

/// Inserts new tasks and appends their events (each task's in turn): all or none.
async fn create_tasks(
    tx: &mut impl WriteTx,
    ts: &[&NewTask],
    now: i64,
    events: &mut Vec<NewEvent>,
) -> Result<(), StoreError> {
    tx.insert_tasks(ts, now).await?;
    for t in ts {
        append_created(t, events);
    }
    Ok(())
}

/// Appends a new task's events: `task.created`, and `task.assigned` when it was placed.
fn append_created(t: &NewTask, events: &mut Vec<NewEvent>) {
    let code = i64::from(t.operation_code);
    let mut created = TaskPayload::new(&t.id, "queued", code, 0);
    created.target_runner_id = Some(t.target_runner_id.as_deref());
    created.retried_from = t.retried_from.as_deref();
    append_task_event(events, "task.created", None, created);
    if let Some(runner) = &t.assign_to {
        let p = TaskPayload::new(&t.id, "assigned", code, 0).by(Some(runner), 1);
        append_task_event(events, "task.assigned", Some(runner), p);
    }
}

/// The statement of a requeue: `plain`, or with `unseen` its `guarded` form (`plain` plus
/// [`unseen_sql!`]), whose two extra parameters this appends to `args`.
fn guarded<'a>(
    args: &mut Vec<Arg<'a>>,
    unseen: &'a Option<Unseen>,
    plain: &'static str,
    guarded: &'static str,
) -> &'static str {
    match unseen {
        Some(u) => {
            args.extend([Arg::from(u.for_ms), Arg::from(u.except_node.as_deref())]);
            guarded
        }
        None => plain,
    }
}

/// Fails an attempt that was the task's last (`WriteOp::Requeue`); ?1..?6.
macro_rules! lose_sql {
    () => {
        "UPDATE tasks SET status = 'failed', error_code = ?6, error_message = ?1, \
         finished_at = ?2, updated_at = ?2 \
         WHERE id = ?3 AND runner_id = ?4 AND attempt = ?5 AND status IN ('assigned', 'running')"
    };
}

/// Puts an attempt back in the queue (`WriteOp::Requeue`); ?1..?4.
macro_rules! requeue_sql {
    () => {
        "UPDATE tasks SET status = 'queued', runner_id = NULL, progress = 0, stage = NULL, \
         message = NULL, updated_at = ?1 \
         WHERE id = ?2 AND runner_id = ?3 AND attempt = ?4 AND status IN ('assigned', 'running')"
    };
}

/// The [`Unseen`] condition appended to an UPDATE of `tasks`, with its two values at
/// placeholders `?$ms` and `?$node`. PostgreSQL only (the table and the clock).
macro_rules! unseen_sql {
    ($ms:literal, $node:literal) => {
        concat!(
            " AND NOT EXISTS (SELECT 1 FROM runner_presence p WHERE p.runner_id = tasks.runner_id \
             AND p.seen_at >= ",
            pg_now_ms!(),
            " - ?",
            $ms,
            " AND p.node_id IS DISTINCT FROM ?",
            $node,
            ")"
        )
    };
}

async fn apply(
    tx: &mut impl WriteTx,
    op: &WriteOp,
    events: &mut Vec<NewEvent>,
) -> Result<Outcome, StoreError> {
    let now = now_ms();
    match op {
        WriteOp::CreateTask(t) => {
            create_tasks(tx, &[t], now, events).await?;
            Ok(Outcome::Done)
        }
        WriteOp::CreateTasks(ts) => {
            // All or none: an error here fails the op, and the batch retries it on its own.
            let ts: Vec<&NewTask> = ts.iter().collect();
            create_tasks(tx, &ts, now, events).await?;
            Ok(Outcome::Done)
        }
        WriteOp::Assign {
            task_id,
            runner_id,
            attempt,
        } => {
            let code = tx.update_task(
"UPDATE tasks SET status = 'assigned', runner_id = ?1, attempt = ?2, progress = 0, \
                     stage = NULL, message = NULL, assigned_at = ?3, started_at = NULL, updated_at = ?3 \
                     WHERE id = ?4 AND status = 'queued' AND attempt = ?5",
"operation_code",
task_id,
&[
                        runner_id.into(),
                        (*attempt).into(),
                        now.into(),
                        task_id.into(),
                        (*attempt as i64 - 1).into(),
                    ],
|r| r.int(0),
)
.await?;
            let Some(code) = code else {
                return Ok(Outcome::Applied(false));
            };
            let p = TaskPayload::new(task_id, "assigned", code, 0)
                .by(Some(runner_id), (*attempt).into());
            append_task_event(events, "task.assigned", Some(runner_id), p);
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
            let row = tx.update_task(
"UPDATE tasks SET status = 'running', progress = ?1, stage = COALESCE(?2, stage), \
                     message = COALESCE(?3, message), started_at = COALESCE(started_at, ?4), updated_at = ?4 \
                     WHERE id = ?5 AND runner_id = ?6 AND attempt = ?7 AND status IN ('assigned', 'running') \
                     AND progress <= ?1",
"operation_code, stage, message",
task_id,
&[
                        (*percent).into(),
                        stage.into(),
                        message.into(),
                        now.into(),
                        task_id.into(),
                        runner_id.into(),
                        (*attempt).into(),
                    ],
|r| Ok((r.int(0)?, r.opt_text(1)?, r.opt_text(2)?)),
)
.await?;
            let Some((code, stage, message)) = row else {
                return Ok(Outcome::Applied(false));
            };
            let mut p = TaskPayload::new(task_id, "running", code, (*percent).into())
                .by(Some(runner_id), (*attempt).into());
            p.stage = Some(stage.as_deref());
            p.message = Some(message.as_deref());
            append_task_event(events, "task.progress", Some(runner_id), p);
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
            let row = tx.update_task(
"UPDATE tasks SET status = ?1, progress = CASE WHEN ?2 THEN 100 ELSE progress END, \
                     result_data = ?3, error_code = ?4, error_message = ?5, finished_at = ?6, \
                     started_at = COALESCE(started_at, ?6), updated_at = ?6 \
                     WHERE id = ?7 AND runner_id = ?8 AND attempt = ?9 AND status IN ('assigned', 'running')",
"operation_code, progress, stage, message",
task_id,
&[
                        status.as_str().into(),
                        (status == TaskStatus::Completed).into(),
                        (&result_json).into(),
                        err.map(|e| e.code.as_str()).into(),
                        err.map(|e| e.message.as_str()).into(),
                        now.into(),
                        task_id.into(),
                        runner_id.into(),
                        (*attempt).into(),
                    ],
|r| Ok((r.int(0)?, r.int(1)?, r.opt_text(2)?, r.opt_text(3)?)),
)
.await?;
            let Some((code, progress, stage, message)) = row else {
                return Ok(Outcome::Applied(false));
            };
            let mut p = TaskPayload::new(task_id, status.as_str(), code, progress)
                .by(Some(runner_id), (*attempt).into());
            p.stage = Some(stage.as_deref());
            p.message = Some(message.as_deref());
            p.error = err.map(|e| ErrorPayload {
                code: &e.code,
                message: &e.message,
            });
            let kind = if err.is_some() {
                "task.failed"
            } else {
                "task.completed"
            };
            append_task_event(events, kind, Some(runner_id), p);
            Ok(Outcome::Applied(true))
        }
        WriteOp::Cancel { task_id } => {
            let row = tx
                .query_row(
                    "SELECT status, runner_id, attempt, operation_code, progress FROM tasks WHERE id = ?1",
                    &[task_id.into()],
                    |r| {
                        Ok((
                            r.text(0)?,
                            r.opt_text(1)?,
                            r.int(2)?,
                            r.int(3)?,
                            r.int(4)?,
                        ))
                    },
                )
                .await?;
            let Some((status, runner_id, attempt, code, progress)) = row else {
                return Ok(Outcome::Cancel(CancelOutcome::NotFound));
            };
            let status = TaskStatus::parse(&status)
                .ok_or_else(|| StoreError::Corrupt(format!("task status {status:?}")))?;
            if status.is_terminal() {
                return Ok(Outcome::Cancel(CancelOutcome::AlreadyFinished(status)));
            }
            tx.execute(
                "UPDATE tasks SET status = 'cancelled', error_code = 'cancelled', \
                 error_message = 'cancelled by request', finished_at = ?1, updated_at = ?1 WHERE id = ?2",
                &[now.into(), task_id.into()],
            )
            .await?;
            let p = TaskPayload::new(task_id, "cancelled", code, progress)
                .by(runner_id.as_deref(), attempt);
            append_task_event(events, "task.cancelled", runner_id.as_deref(), p);
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
            unseen,
        } => {
            let max_attempts = match max_attempts {
                Some(default) => {
                    let own = tx
                        .query_row(
                            "SELECT max_attempts FROM tasks WHERE id = ?1",
                            &[task_id.into()],
                            |r| r.opt_int(0),
                        )
                        .await?;
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
                let mut args: Vec<Arg<'_>> = vec![
                    message.as_str().into(),
                    now.into(),
                    task_id.into(),
                    runner_id.into(),
                    (*attempt).into(),
                    (*fail_code).into(),
                ];
                let sql = guarded(
                    &mut args,
                    unseen,
                    lose_sql!(),
                    concat!(lose_sql!(), unseen_sql!(7, 8)),
                );
                let row = tx
                    .update_task(sql, "operation_code, progress", task_id, &args, |r| {
                        Ok((r.int(0)?, r.int(1)?))
                    })
                    .await?;
                let Some((code, progress)) = row else {
                    return Ok(Outcome::Applied(false));
                };
                let mut p = TaskPayload::new(task_id, "failed", code, progress)
                    .by(Some(runner_id), (*attempt).into());
                p.error = Some(ErrorPayload {
                    code: fail_code,
                    message: &message,
                });
                append_task_event(events, "task.failed", Some(runner_id), p);
                return Ok(Outcome::Lost);
            }
            let mut args: Vec<Arg<'_>> = vec![
                now.into(),
                task_id.into(),
                runner_id.into(),
                (*attempt).into(),
            ];
            let sql = guarded(
                &mut args,
                unseen,
                requeue_sql!(),
                concat!(requeue_sql!(), unseen_sql!(5, 6)),
            );
            let code = tx
                .update_task(sql, "operation_code", task_id, &args, |r| r.int(0))
                .await?;
            let Some(code) = code else {
                return Ok(Outcome::Applied(false));
            };
            let mut p = TaskPayload::new(task_id, "queued", code, 0);
            p.attempt = Some((*attempt).into());
            p.reason = Some(reason);
            append_task_event(events, "task.requeued", None, p);
            Ok(Outcome::Applied(true))
        }
        WriteOp::RunnerState {
            runner_id,
            kind,
            data,
            hello,
        } => {
            tx.execute(
                "UPDATE runners SET last_seen_at = ?1, hello = COALESCE(?2, hello) WHERE id = ?3",
                &[now.into(), hello.into(), runner_id.into()],
            )
            .await?;
            append_event(events, kind, None, Some(runner_id), data.clone());
            Ok(Outcome::Done)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(events: &[NewEvent], i: usize) -> serde_json::Map<String, Value> {
        match serde_json::from_str(&events[i].json).expect("json") {
            Value::Object(m) => m,
            other => panic!("not an object: {other}"),
        }
    }

    fn keys(m: &serde_json::Map<String, Value>) -> Vec<&str> {
        let mut k: Vec<&str> = m.keys().map(String::as_str).collect();
        k.sort();
        k
    }

    /// The payload fields are part of the SSE and webhook contract: absent fields stay absent,
    /// present-but-unknown ones are `null`.
    #[test]
    fn task_payloads_carry_exactly_their_fields() {
        let mut ev = Vec::new();
        let mut created = TaskPayload::new("t1", "queued", 200, 0);
        created.target_runner_id = Some(None);
        append_task_event(&mut ev, "task.created", None, created);
        let m = payload(&ev, 0);
        assert_eq!(
            keys(&m),
            [
                "at",
                "operation_code",
                "progress",
                "status",
                "target_runner_id",
                "task_id",
                "type"
            ]
        );
        assert_eq!(m["target_runner_id"], Value::Null);
        assert_eq!(m["type"], "task.created");
        assert_eq!(m["operation_code"], 200);
        assert_eq!(ev[0].task_id.as_deref(), Some("t1"));
        assert_eq!(ev[0].runner_id, None);
        assert_eq!(m["at"], ev[0].at);

        let mut done = TaskPayload::new("t1", "failed", 300, 40).by(Some("r1"), 2);
        done.stage = Some(Some("fit"));
        done.message = Some(None);
        done.error = Some(ErrorPayload {
            code: "bad \"input\"",
            message: "line 1\nline 2",
        });
        append_task_event(&mut ev, "task.failed", Some("r1"), done);
        let m = payload(&ev, 1);
        assert_eq!(
            keys(&m),
            [
                "at",
                "attempt",
                "error",
                "message",
                "operation_code",
                "progress",
                "runner_id",
                "stage",
                "status",
                "task_id",
                "type"
            ]
        );
        assert_eq!(m["runner_id"], "r1");
        assert_eq!(m["attempt"], 2);
        assert_eq!(m["progress"], 40);
        assert_eq!(m["stage"], "fit");
        assert_eq!(m["message"], Value::Null);
        assert_eq!(m["error"]["code"], "bad \"input\"");
        assert_eq!(m["error"]["message"], "line 1\nline 2");
        assert_eq!(ev[1].runner_id.as_deref(), Some("r1"));

        let mut requeued = TaskPayload::new("t1", "queued", 1, 0);
        requeued.attempt = Some(1);
        requeued.reason = Some("runner_lost");
        append_task_event(&mut ev, "task.requeued", None, requeued);
        let m = payload(&ev, 2);
        assert_eq!(
            keys(&m),
            [
                "at",
                "attempt",
                "operation_code",
                "progress",
                "reason",
                "status",
                "task_id",
                "type"
            ]
        );
    }
}
