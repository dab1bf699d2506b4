//! The SQLite backend's own parts: connection options (WAL, `synchronous`), the writer thread
//! that owns one rusqlite connection, and the WAL checkpointer thread. What the writer writes is
//! in `writer.rs`, shared with PostgreSQL; reads go through the sqlx pool in `mod.rs`.
//!
//! Why a thread with rusqlite rather than an async sqlx connection: sqlx runs each SQLite
//! statement on its own worker thread and hands results back through channels, which costs two
//! context switches per statement; a task's lifecycle needs several statements, and at 10k
//! tasks/s on two cores those hand-offs, not SQLite, were the bottleneck. Here statements are
//! prepared once and stepped synchronously. The writer's code is `async` because PostgreSQL's is;
//! on this thread every one of its futures completes the first time it is polled (nothing in it
//! waits), so the thread polls each batch once ([`run_ready`]) instead of running an executor.
//!
//! While the writer is idle, a submitter commits its operation itself, on its own thread
//! ([`Inline`]): the connection sits behind a mutex that the writer's thread and such a
//! submitter take in turn. That saves an idle create two thread wake-ups (to the writer and
//! back). Under load operations queue and the thread commits them in groups.

use std::future::Future;
use std::path::Path;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, TryLockError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use rusqlite::{params_from_iter, Connection};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous};
use tokio::sync::mpsc;

use super::sql::{Arg, DbRow};
use super::writer::{
    commit_batch, fill, Inline, NewEvent, Pending, WriteConn, WriteTx, Writer, MAX_BATCH,
};
use super::{Outbox, StoreError};
use crate::events::EventBus;

/// How often WAL frames are copied back into the database file, off the commit path.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(250);

/// `DAP_SQLITE_SYNCHRONOUS=FULL` asks for power-loss durability (see `Store::open`).
pub(super) fn synchronous_full() -> bool {
    std::env::var("DAP_SQLITE_SYNCHRONOUS").is_ok_and(|v| v.eq_ignore_ascii_case("full"))
}

/// Options of the read pool (and the file the writer opens).
pub(super) fn connect_options(url: &str) -> Result<SqliteConnectOptions, StoreError> {
    let sync = if synchronous_full() {
        SqliteSynchronous::Full
    } else {
        SqliteSynchronous::Normal
    };
    Ok(SqliteConnectOptions::from_str(url)?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(sync)
        .busy_timeout(Duration::from_secs(10))
        .foreign_keys(true))
}

/// Opens the database file at `path` and starts the writer thread and the checkpointer. Both
/// end when every handle is dropped.
pub(super) fn spawn_writer(
    path: &Path,
    synchronous_full: bool,
    bus: EventBus,
    outbox: Outbox,
) -> Result<Writer, StoreError> {
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
    let (tx, rx) = Writer::channel();
    let shared = Arc::new(Shared {
        conn: Mutex::new(SqliteConn(conn)),
        queued: AtomicUsize::new(0),
        light: AtomicBool::new(true),
        bus,
        outbox,
    });
    let on_thread = shared.clone();
    let alive = std::sync::Arc::new(());
    let weak = std::sync::Arc::downgrade(&alive);
    let spawn_err = |e| StoreError::Corrupt(format!("cannot start store thread: {e}"));
    std::thread::Builder::new()
        .name("dap-store-writer".into())
        .spawn(move || run(&on_thread, rx))
        .map_err(spawn_err)?;
    std::thread::Builder::new()
        .name("dap-store-ckpt".into())
        .spawn(move || {
            while weak.upgrade().is_some() {
                std::thread::sleep(CHECKPOINT_EVERY);
                // PASSIVE never blocks the writer; what it cannot copy now it copies next time.
                let r = checkpointer.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()));
                if let Err(e) = r {
                    tracing::warn!(error = %e, "WAL checkpoint failed");
                }
            }
        })
        .map_err(spawn_err)?;
    Ok(Writer::new(tx, Some(shared), alive))
}

/// The writer's connection and what its commits need, shared by its thread and the submitters
/// that commit inline ([`Inline`]): whoever holds `conn` commits.
struct Shared {
    conn: Mutex<SqliteConn>,
    /// Operations queued for the thread and not yet committed by it. Inline commits wait for
    /// zero, so an operation never overtakes one submitted before it.
    queued: AtomicUsize,
    /// The thread's last group was a single operation: load is light. Under load inline
    /// commits would cost a transaction per operation (and a tokio worker per commit) where
    /// the thread commits dozens in one, so they stop until the groups shrink to one again.
    light: AtomicBool,
    bus: EventBus,
    outbox: Outbox,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, SqliteConn> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Inline for Shared {
    fn try_commit(&self, p: Pending) -> Option<Pending> {
        if !p.is_short()
            || !self.light.load(Ordering::Relaxed)
            || self.queued.load(Ordering::SeqCst) != 0
        {
            return Some(p);
        }
        let mut conn = match self.conn.try_lock() {
            Ok(c) => c,
            Err(TryLockError::Poisoned(e)) => e.into_inner(),
            Err(TryLockError::WouldBlock) => return Some(p),
        };
        // Again under the lock: the thread may have taken an operation since the first look.
        if self.queued.load(Ordering::SeqCst) != 0 {
            return Some(p);
        }
        // A transaction of about 0.1 ms on the submitter's thread (a tokio worker).
        let mut batch = vec![p];
        run_ready(commit_batch(
            &mut *conn,
            &mut batch,
            Some(&self.bus),
            &self.outbox,
        ));
        None
    }

    fn queuing(&self) {
        self.queued.fetch_add(1, Ordering::SeqCst);
    }
}

fn run(shared: &Shared, mut rx: mpsc::Receiver<Pending>) {
    let mut batch: Vec<Pending> = Vec::with_capacity(MAX_BATCH);
    while let Some(first) = rx.blocking_recv() {
        let mut conn = shared.lock();
        batch.push(first);
        fill(&mut rx, &mut batch);
        let n = batch.len();
        run_ready(commit_batch(
            &mut *conn,
            &mut batch,
            Some(&shared.bus),
            &shared.outbox,
        ));
        shared.queued.fetch_sub(n, Ordering::SeqCst);
        shared.light.store(n == 1, Ordering::Relaxed);
    }
}

/// Completes a future that never waits by polling it once.
fn run_ready<F: Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(out) => out,
        // Only a code change that makes the SQLite writer await real I/O gets here.
        Poll::Pending => unreachable!("the SQLite writer awaited something"),
    }
}

struct SqliteConn(Connection);

impl WriteConn for SqliteConn {
    type Tx<'c> = SqliteTx<'c>;

    async fn begin(&mut self) -> Result<SqliteTx<'_>, StoreError> {
        let tx = self
            .0
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        Ok(SqliteTx(tx))
    }
}

struct SqliteTx<'c>(rusqlite::Transaction<'c>);

impl WriteTx for SqliteTx<'_> {
    async fn execute(&mut self, sql: &'static str, args: &[Arg<'_>]) -> Result<u64, StoreError> {
        let n = self
            .0
            .prepare_cached(sql)?
            .execute(params_from_iter(args))?;
        Ok(n as u64)
    }

    async fn query_row<T>(
        &mut self,
        sql: &'static str,
        args: &[Arg<'_>],
        read: impl FnOnce(&dyn DbRow) -> Result<T, StoreError>,
    ) -> Result<Option<T>, StoreError> {
        let mut stmt = self.0.prepare_cached(sql)?;
        let mut rows = stmt.query(params_from_iter(args))?;
        match rows.next()? {
            Some(row) => Ok(Some(read(row)?)),
            None => Ok(None),
        }
    }

    async fn insert_events(&mut self, events: &[NewEvent]) -> Result<Vec<i64>, StoreError> {
        let mut stmt = self.0.prepare_cached(
            "INSERT INTO events (kind, task_id, runner_id, data, created_at) \
             VALUES (?1, ?2, ?3, ?4, ?5)",
        )?;
        let mut ids = Vec::with_capacity(events.len());
        for e in events {
            stmt.execute(rusqlite::params![
                e.kind,
                e.task_id,
                e.runner_id,
                e.json,
                e.at
            ])?;
            ids.push(self.0.last_insert_rowid());
        }
        Ok(ids)
    }

    async fn update_task<T>(
        &mut self,
        update: &'static str,
        columns: &'static str,
        task_id: &str,
        args: &[Arg<'_>],
        read: impl FnOnce(&dyn DbRow) -> Result<T, StoreError>,
    ) -> Result<Option<T>, StoreError> {
        if self.execute(update, args).await? == 0 {
            return Ok(None);
        }
        let select = format!("SELECT {columns} FROM tasks WHERE id = ?1");
        let mut stmt = self.0.prepare_cached(&select)?;
        let mut rows = stmt.query([task_id])?;
        match rows.next()? {
            Some(row) => Ok(Some(read(row)?)),
            None => Err(StoreError::Corrupt(format!(
                "task {task_id} vanished mid-update"
            ))),
        }
    }

    async fn commit(self) -> Result<(), StoreError> {
        Ok(self.0.commit()?)
    }
}
