//! Durable state: tasks, runners, API keys and the event log, in SQLite or PostgreSQL via sqlx.
//!
//! Reads go through a small connection pool; hot-path writes go through the single batching
//! [`Writer`] (group commit), and rare administrative writes (keys, enrolments) go straight to the
//! pool. Both backends run the same SQL, written once with SQLite's `?` placeholders and
//! renumbered for PostgreSQL (`sql.rs`); what is backend-specific (connection options, how the
//! writer runs) lives in `sqlite.rs` and `postgres.rs`. The store knows nothing about HTTP,
//! WebSockets or which runner is connected: callers pass ids and it enforces only the conditions
//! written in its SQL (status, runner, attempt).

/// Runs the same sqlx code on whichever pool the store has. In `$body`, `$pool` is that pool and
/// `$sql` a function turning statement text with `?` placeholders into the backend's dialect
/// (`sql("… WHERE id = ?")` is `… WHERE id = $1` on PostgreSQL).
macro_rules! on_pool {
    ($db:expr, |$pool:ident, $sql:ident| $body:expr) => {
        match $db {
            $crate::store::Db::Sqlite($pool) => {
                let $sql: fn(&str) -> std::borrow::Cow<'_, str> = $crate::store::sql::as_is;
                $body
            }
            $crate::store::Db::Postgres($pool) => {
                let $sql: fn(&str) -> std::borrow::Cow<'_, str> = $crate::store::sql::pg;
                $body
            }
        }
    };
}

mod cluster;
pub mod model;
mod postgres;
mod sql;
mod sqlite;
pub mod webhooks;
pub mod writer;

use serde_json::Value;
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::sqlite::{SqlitePool, SqlitePoolOptions};

use crate::events::EventBus;
pub use cluster::Presence;
pub use model::*;
pub use postgres::EVENTS_CHANNEL;
use sql::DbRow;
pub use writer::{CancelOutcome, Outcome, Unseen, WriteOp, Writer};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("migration error: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// Carries the URL's scheme only: the rest may hold a password.
    #[error("unsupported database URL scheme {0:?}: use sqlite://PATH or postgres://USER@HOST/DB")]
    UnsupportedUrl(String),
    #[error("the store writer has stopped")]
    WriterGone,
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error(
        "cluster mode needs a PostgreSQL database (postgres://…); SQLite serves one server only"
    )]
    ClusterNeedsPostgres,
}

impl StoreError {
    /// Whether the connection to the database failed (which fails any operation alike), as
    /// opposed to one statement being refused.
    pub(crate) fn is_connection_failure(&self) -> bool {
        matches!(
            self,
            Self::Database(
                sqlx::Error::Io(_)
                    | sqlx::Error::Tls(_)
                    | sqlx::Error::Protocol(_)
                    | sqlx::Error::PoolTimedOut
                    | sqlx::Error::PoolClosed
                    | sqlx::Error::WorkerCrashed
            )
        )
    }
}

/// Which database a store (or a URL) is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    /// `sqlite:…` → SQLite, `postgres://…` / `postgresql://…` → PostgreSQL.
    pub fn of_url(url: &str) -> Result<Self, StoreError> {
        if url.starts_with("sqlite:") {
            Ok(Self::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Self::Postgres)
        } else {
            let scheme = url.split_once(':').map_or("", |(s, _)| s);
            Err(StoreError::UnsupportedUrl(scheme.to_owned()))
        }
    }
}

/// Where the writer's committed events go.
#[derive(Clone)]
pub enum EventRoute {
    /// One server on the database: the writer publishes each batch's events on this bus after
    /// its commit.
    Local(EventBus),
    /// One of several servers on one PostgreSQL database (`--cluster`): the writer serialises
    /// its transactions with every other server's (advisory lock), announces committed events
    /// with NOTIFY and publishes nothing; the `cluster` feed reads them back from the log.
    Cluster,
}

/// The read pool of one backend.
#[derive(Clone)]
pub(crate) enum Db {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// Handle to the database. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    db: Db,
    writer: Writer,
    outbox: Outbox,
}

/// The writer's view of webhook subscriptions (so it can write outbox rows in the same
/// transaction as their events) and the doorbell it rings when it wrote some.
#[derive(Clone, Default)]
pub struct Outbox {
    subs: std::sync::Arc<std::sync::RwLock<std::sync::Arc<Vec<Subscription>>>>,
    ready: std::sync::Arc<tokio::sync::Notify>,
}

impl Outbox {
    pub fn subscriptions(&self) -> std::sync::Arc<Vec<Subscription>> {
        self.subs.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
    pub fn set_subscriptions(&self, subs: Vec<Subscription>) {
        *self.subs.write().unwrap_or_else(|e| e.into_inner()) = std::sync::Arc::new(subs);
    }
    /// Wakes the delivery worker.
    pub fn notify(&self) {
        self.ready.notify_one();
    }
    /// Resolves when deliveries may be waiting.
    pub async fn notified(&self) {
        self.ready.notified().await
    }
}

static SQLITE_MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/sqlite");
static POSTGRES_MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/postgres");

/// Read connections of a PostgreSQL store (the writer has its own).
const PG_READ_CONNECTIONS: u32 = 8;

impl Store {
    /// Opens the database at `url` (a SQLite file is created if missing), applies migrations
    /// and starts the writer, which publishes committed events on `bus`. On PostgreSQL the
    /// writer is a task of the current tokio runtime.
    ///
    /// SQLite runs in WAL mode with `synchronous=NORMAL`: a commit survives a crash of the
    /// process (kill -9) but the last commits before an OS crash or power loss may be lost.
    /// Set `DAP_SQLITE_SYNCHRONOUS=FULL` to trade throughput for power-loss durability.
    /// PostgreSQL's durability is the server's own (`synchronous_commit`, `fsync`).
    pub async fn open(url: &str, bus: EventBus) -> Result<Self, StoreError> {
        Self::open_with(url, EventRoute::Local(bus)).await
    }

    /// [`open`](Self::open) with the writer's events routed by `route`; [`EventRoute::Cluster`]
    /// is refused on SQLite.
    pub async fn open_with(url: &str, route: EventRoute) -> Result<Self, StoreError> {
        let outbox = Outbox::default();
        let backend = Backend::of_url(url)?;
        let bus = match route {
            EventRoute::Local(bus) => Some(bus),
            EventRoute::Cluster if backend == Backend::Postgres => None,
            EventRoute::Cluster => return Err(StoreError::ClusterNeedsPostgres),
        };
        let (db, writer) = match backend {
            Backend::Sqlite => {
                let bus = bus.unwrap_or_default();
                let opts = sqlite::connect_options(url)?;
                let pool = SqlitePoolOptions::new()
                    .max_connections(4)
                    .min_connections(1)
                    .connect_with(opts.clone())
                    .await?;
                SQLITE_MIGRATOR.run(&pool).await?;
                let writer = sqlite::spawn_writer(
                    opts.get_filename(),
                    sqlite::synchronous_full(),
                    bus,
                    outbox.clone(),
                )?;
                (Db::Sqlite(pool), writer)
            }
            Backend::Postgres => {
                let opts = postgres::connect_options(url)?;
                let pool = PgPoolOptions::new()
                    .max_connections(PG_READ_CONNECTIONS)
                    .connect_with(opts.clone())
                    .await?;
                POSTGRES_MIGRATOR.run(&pool).await?;
                let writer_pool = PgPoolOptions::new()
                    .max_connections(1)
                    .connect_with(opts)
                    .await?;
                let writer = postgres::spawn_writer(writer_pool, bus, outbox.clone());
                (Db::Postgres(pool), writer)
            }
        };
        let store = Self { db, writer, outbox };
        store.refresh_subscriptions().await?;
        Ok(store)
    }

    /// Applies migrations only (the `migrate` subcommand). Running it again changes nothing.
    pub async fn migrate(url: &str) -> Result<(), StoreError> {
        match Backend::of_url(url)? {
            Backend::Sqlite => {
                let pool = SqlitePoolOptions::new()
                    .max_connections(1)
                    .connect_with(sqlite::connect_options(url)?)
                    .await?;
                SQLITE_MIGRATOR.run(&pool).await?;
                pool.close().await;
            }
            Backend::Postgres => {
                let pool = PgPoolOptions::new()
                    .max_connections(1)
                    .connect_with(postgres::connect_options(url)?)
                    .await?;
                POSTGRES_MIGRATOR.run(&pool).await?;
                pool.close().await;
            }
        }
        Ok(())
    }

    pub fn backend(&self) -> Backend {
        match self.db {
            Db::Sqlite(_) => Backend::Sqlite,
            Db::Postgres(_) => Backend::Postgres,
        }
    }

    pub fn writer(&self) -> &Writer {
        &self.writer
    }

    pub fn outbox(&self) -> &Outbox {
        &self.outbox
    }

    pub async fn write(&self, op: WriteOp) -> Result<Outcome, StoreError> {
        self.writer.submit(op).await
    }

    /// Tasks a runner was holding when the previous process stopped: `(task_id, runner_id,
    /// attempt)` for every `assigned`/`running` task. At start-up the dispatcher gives each
    /// runner its grace period to reconnect and resume them.
    pub async fn in_flight_tasks(&self) -> Result<Vec<(String, String, u32)>, StoreError> {
        on_pool!(&self.db, |pool, _sql| {
            let rows = sqlx::query(
                "SELECT id, runner_id, attempt FROM tasks WHERE status IN ('assigned', 'running') \
                 AND runner_id IS NOT NULL ORDER BY id",
            )
            .fetch_all(pool)
            .await?;
            rows.iter()
                .map(|r| Ok((r.text(0)?, r.text(1)?, r.int(2)? as u32)))
                .collect()
        })
    }

    /// In-flight attempts that have a timeout: `(task_id, attempt, assigned_at ms, timeout_s)`.
    /// At start-up the dispatcher re-arms their timers with the time they have left.
    pub async fn timed_in_flight(&self) -> Result<Vec<(String, u32, i64, u32)>, StoreError> {
        on_pool!(&self.db, |pool, _sql| {
            let rows = sqlx::query(
                "SELECT id, attempt, COALESCE(assigned_at, updated_at), timeout_s FROM tasks \
                 WHERE status IN ('assigned', 'running') AND timeout_s IS NOT NULL ORDER BY id",
            )
            .fetch_all(pool)
            .await?;
            rows.iter()
                .map(|r| Ok((r.text(0)?, r.int(1)? as u32, r.int(2)?, r.int(3)? as u32)))
                .collect()
        })
    }

    // ---- tasks ----

    pub async fn get_task(&self, id: &str) -> Result<Option<Task>, StoreError> {
        on_pool!(&self.db, |pool, sql| {
            let row = sqlx::query(&sql(&format!(
                "SELECT {TASK_COLUMNS} FROM tasks WHERE id = ?"
            )))
            .bind(id)
            .fetch_optional(pool)
            .await?;
            row.map(|r| task_from_row(&r)).transpose()
        })
    }

    /// Tasks matching `filter`, newest first, and the total count of matches.
    pub async fn list_tasks(&self, filter: &TaskFilter) -> Result<(Vec<Task>, u64), StoreError> {
        let mut cond = String::from(" WHERE 1=1");
        if filter.status.is_some() {
            cond.push_str(" AND status = ?");
        }
        if filter.runner_id.is_some() {
            cond.push_str(" AND runner_id = ?");
        }
        let list =
            format!("SELECT {TASK_COLUMNS} FROM tasks{cond} ORDER BY id DESC LIMIT ? OFFSET ?");
        let count = format!("SELECT COUNT(*) FROM tasks{cond}");
        on_pool!(&self.db, |pool, sql| {
            let (list, count) = (sql(&list), sql(&count));
            let mut q = sqlx::query(&list);
            let mut cq = sqlx::query_scalar::<_, i64>(&count);
            if let Some(s) = filter.status {
                q = q.bind(s.as_str());
                cq = cq.bind(s.as_str());
            }
            if let Some(r) = &filter.runner_id {
                q = q.bind(r);
                cq = cq.bind(r);
            }
            let rows = q
                .bind(filter.limit as i64)
                .bind(filter.offset as i64)
                .fetch_all(pool)
                .await?;
            let total = cq.fetch_one(pool).await?;
            let tasks = rows.iter().map(task_from_row).collect::<Result<_, _>>()?;
            Ok((tasks, total as u64))
        })
    }

    /// Number of tasks in each status (statuses with none are absent). One pass over the
    /// `tasks_by_status` index; the metrics endpoint calls it once per scrape.
    pub async fn count_tasks_by_status(&self) -> Result<Vec<(String, i64)>, StoreError> {
        on_pool!(&self.db, |pool, _sql| {
            Ok(
                sqlx::query_as("SELECT status, COUNT(*) FROM tasks GROUP BY status")
                    .fetch_all(pool)
                    .await?,
            )
        })
    }

    /// Queued tasks in creation order (to rebuild the dispatcher's queue at start-up).
    pub async fn queued_tasks(&self) -> Result<Vec<Task>, StoreError> {
        on_pool!(&self.db, |pool, _sql| {
            let rows = sqlx::query(&format!(
                "SELECT {TASK_COLUMNS} FROM tasks WHERE status = 'queued' ORDER BY id"
            ))
            .fetch_all(pool)
            .await?;
            rows.iter().map(task_from_row).collect()
        })
    }

    // ---- events ----

    /// Up to `limit` events with id > `after`, oldest first, optionally for one task.
    pub async fn events_after(
        &self,
        after: i64,
        task_id: Option<&str>,
        limit: u32,
    ) -> Result<Vec<Event>, StoreError> {
        on_pool!(&self.db, |pool, sql| {
            let rows = match task_id {
                Some(t) => {
                    sqlx::query(&sql(
                        "SELECT id, kind, task_id, data FROM events WHERE task_id = ? AND id > ? \
                         ORDER BY id LIMIT ?",
                    ))
                    .bind(t)
                    .bind(after)
                    .bind(limit as i64)
                    .fetch_all(pool)
                    .await?
                }
                None => sqlx::query(&sql(
                    "SELECT id, kind, task_id, data FROM events WHERE id > ? ORDER BY id LIMIT ?",
                ))
                .bind(after)
                .bind(limit as i64)
                .fetch_all(pool)
                .await?,
            };
            rows.iter()
                .map(|r| {
                    Ok(Event {
                        id: r.int(0)?,
                        kind: r.text(1)?,
                        task_id: r.opt_text(2)?,
                        json: r.text(3)?,
                    })
                })
                .collect()
        })
    }

    /// Id of the newest event (0 when the log is empty).
    pub async fn last_event_id(&self) -> Result<i64, StoreError> {
        on_pool!(&self.db, |pool, _sql| {
            let id: Option<i64> = sqlx::query_scalar("SELECT MAX(id) FROM events")
                .fetch_one(pool)
                .await?;
            Ok(id.unwrap_or(0))
        })
    }

    /// Cheap liveness probe of the database.
    pub async fn ping(&self) -> Result<(), StoreError> {
        on_pool!(&self.db, |pool, _sql| {
            sqlx::query("SELECT 1").execute(pool).await?;
            Ok(())
        })
    }

    // ---- runners ----

    pub async fn create_runner(&self, id: &str, name: &str, hash: &str) -> Result<(), StoreError> {
        on_pool!(&self.db, |pool, sql| {
            sqlx::query(&sql(
                "INSERT INTO runners (id, name, hash, created_at) VALUES (?, ?, ?, ?)",
            ))
            .bind(id)
            .bind(name)
            .bind(hash)
            .bind(now_ms())
            .execute(pool)
            .await?;
            Ok(())
        })
    }

    pub async fn get_runner(&self, id: &str) -> Result<Option<Runner>, StoreError> {
        on_pool!(&self.db, |pool, sql| {
            let row = sqlx::query(&sql(&format!(
                "SELECT {RUNNER_COLUMNS} FROM runners WHERE id = ?"
            )))
            .bind(id)
            .fetch_optional(pool)
            .await?;
            row.map(|r| runner_from_row(&r)).transpose()
        })
    }

    /// Every runner that is not revoked, oldest enrolment first.
    pub async fn list_runners(&self) -> Result<Vec<Runner>, StoreError> {
        on_pool!(&self.db, |pool, _sql| {
            let rows = sqlx::query(&format!(
                "SELECT {RUNNER_COLUMNS} FROM runners WHERE revoked_at IS NULL ORDER BY created_at, id"
            ))
            .fetch_all(pool)
            .await?;
            rows.iter().map(runner_from_row).collect()
        })
    }

    /// Marks a runner revoked. False when there is no such (unrevoked) runner.
    pub async fn revoke_runner(&self, id: &str) -> Result<bool, StoreError> {
        self.revoke("runners", id).await
    }

    /// Sets `revoked_at` on row `id` of `table` (`runners` or `api_keys`) unless already set.
    async fn revoke(&self, table: &'static str, id: &str) -> Result<bool, StoreError> {
        let statement =
            format!("UPDATE {table} SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL");
        on_pool!(&self.db, |pool, sql| {
            let n = sqlx::query(&sql(&statement))
                .bind(now_ms())
                .bind(id)
                .execute(pool)
                .await?
                .rows_affected();
            Ok(n == 1)
        })
    }

    // ---- API keys ----

    pub async fn create_api_key(
        &self,
        id: &str,
        name: &str,
        scope: Scope,
        hash: &str,
    ) -> Result<(), StoreError> {
        on_pool!(&self.db, |pool, sql| {
            sqlx::query(&sql(
                "INSERT INTO api_keys (id, name, scope, hash, created_at) VALUES (?, ?, ?, ?, ?)",
            ))
            .bind(id)
            .bind(name)
            .bind(scope.as_str())
            .bind(hash)
            .bind(now_ms())
            .execute(pool)
            .await?;
            Ok(())
        })
    }

    pub async fn get_api_key(&self, id: &str) -> Result<Option<ApiKey>, StoreError> {
        on_pool!(&self.db, |pool, sql| {
            let row = sqlx::query(&sql(&format!(
                "SELECT {KEY_COLUMNS} FROM api_keys WHERE id = ?"
            )))
            .bind(id)
            .fetch_optional(pool)
            .await?;
            row.map(|r| key_from_row(&r)).transpose()
        })
    }

    pub async fn list_api_keys(&self) -> Result<Vec<ApiKey>, StoreError> {
        on_pool!(&self.db, |pool, _sql| {
            let rows = sqlx::query(&format!(
                "SELECT {KEY_COLUMNS} FROM api_keys ORDER BY created_at, id"
            ))
            .fetch_all(pool)
            .await?;
            rows.iter().map(key_from_row).collect()
        })
    }

    pub async fn revoke_api_key(&self, id: &str) -> Result<bool, StoreError> {
        self.revoke("api_keys", id).await
    }

    // ---- artifacts ----

    /// Records an uploaded artifact if `runner_id` still holds the task at `artifact.attempt`
    /// (the fence). Returns whether it was recorded and the blob key it replaced, if any, so
    /// the caller can delete those bytes.
    pub async fn record_artifact(
        &self,
        a: &Artifact,
        runner_id: &str,
    ) -> Result<(bool, Option<String>), StoreError> {
        // SQLite runs one write transaction at a time, so the task cannot change between the
        // fence check and the insert; PostgreSQL needs the task's row locked for that (the
        // writer's UPDATE then waits for this transaction, or this one re-checks after it).
        let lock = match self.backend() {
            Backend::Sqlite => "",
            Backend::Postgres => " FOR SHARE",
        };
        let insert = format!(
            "INSERT INTO artifacts (task_id, name, attempt, size, sha256, content_type, blob_key, created_at) \
             SELECT ?, ?, ?, ?, ?, ?, ?, ? FROM tasks \
             WHERE id = ? AND runner_id = ? AND attempt = ? AND status IN ('assigned', 'running'){lock} \
             ON CONFLICT (task_id, name) DO UPDATE SET attempt = excluded.attempt, size = excluded.size, \
             sha256 = excluded.sha256, content_type = excluded.content_type, blob_key = excluded.blob_key, \
             created_at = excluded.created_at"
        );
        on_pool!(&self.db, |pool, sql| {
            let mut tx = pool.begin().await?;
            let previous: Option<String> = sqlx::query_scalar(&sql(
                "SELECT blob_key FROM artifacts WHERE task_id = ? AND name = ?",
            ))
            .bind(&a.task_id)
            .bind(&a.name)
            .fetch_optional(&mut *tx)
            .await?;
            let n = sqlx::query(&sql(&insert))
                .bind(&a.task_id)
                .bind(&a.name)
                .bind(a.attempt as i64)
                .bind(a.size as i64)
                .bind(&a.sha256)
                .bind(&a.content_type)
                .bind(&a.blob_key)
                .bind(a.created_at)
                .bind(&a.task_id)
                .bind(runner_id)
                .bind(a.attempt as i64)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            tx.commit().await?;
            let replaced = previous.filter(|p| n == 1 && *p != a.blob_key);
            Ok((n == 1, replaced))
        })
    }

    pub async fn get_artifact(
        &self,
        task_id: &str,
        name: &str,
    ) -> Result<Option<Artifact>, StoreError> {
        on_pool!(&self.db, |pool, sql| {
            let row = sqlx::query(&sql(&format!(
                "SELECT {ARTIFACT_COLUMNS} FROM artifacts WHERE task_id = ? AND name = ?"
            )))
            .bind(task_id)
            .bind(name)
            .fetch_optional(pool)
            .await?;
            row.map(|r| artifact_from_row(&r)).transpose()
        })
    }

    pub async fn list_artifacts(&self, task_id: &str) -> Result<Vec<Artifact>, StoreError> {
        on_pool!(&self.db, |pool, sql| {
            let rows = sqlx::query(&sql(&format!(
                "SELECT {ARTIFACT_COLUMNS} FROM artifacts WHERE task_id = ? ORDER BY name"
            )))
            .bind(task_id)
            .fetch_all(pool)
            .await?;
            rows.iter().map(artifact_from_row).collect()
        })
    }

    /// Closes the read pool. The writer stops when the last handle is dropped.
    pub async fn close(&self) {
        on_pool!(&self.db, |pool, _sql| pool.close().await)
    }
}

const TASK_COLUMNS: &str =
    "id, operation_code, params, status, target_runner_id, runner_id, attempt, \
     progress, stage, message, result_data, error_code, error_message, created_at, assigned_at, \
     started_at, finished_at, updated_at, timeout_s, max_attempts, retried_from";
const ARTIFACT_COLUMNS: &str =
    "task_id, name, attempt, size, sha256, content_type, blob_key, created_at";
const RUNNER_COLUMNS: &str = "id, name, hash, created_at, revoked_at, last_seen_at, hello";
const KEY_COLUMNS: &str = "id, name, scope, hash, created_at, last_used_at, revoked_at";

fn artifact_from_row(r: &impl DbRow) -> Result<Artifact, StoreError> {
    Ok(Artifact {
        task_id: r.text(0)?,
        name: r.text(1)?,
        attempt: r.int(2)? as u32,
        size: r.int(3)? as u64,
        sha256: r.text(4)?,
        content_type: r.text(5)?,
        blob_key: r.text(6)?,
        created_at: r.int(7)?,
    })
}

fn json_column(row: &impl DbRow, idx: usize) -> Result<Option<Value>, StoreError> {
    row.opt_text(idx)?
        .map(|s| serde_json::from_str(&s).map_err(|e| StoreError::Corrupt(e.to_string())))
        .transpose()
}

fn task_from_row(r: &impl DbRow) -> Result<Task, StoreError> {
    let status = r.text(3)?;
    Ok(Task {
        id: r.text(0)?,
        operation_code: r.int(1)? as u16,
        params: json_column(r, 2)?.unwrap_or(Value::Null),
        status: TaskStatus::parse(&status)
            .ok_or_else(|| StoreError::Corrupt(format!("task status {status:?}")))?,
        target_runner_id: r.opt_text(4)?,
        runner_id: r.opt_text(5)?,
        attempt: r.int(6)? as u32,
        progress: r.int(7)?.clamp(0, 100) as u8,
        stage: r.opt_text(8)?,
        message: r.opt_text(9)?,
        result_data: json_column(r, 10)?,
        error_code: r.opt_text(11)?,
        error_message: r.opt_text(12)?,
        created_at: r.int(13)?,
        assigned_at: r.opt_int(14)?,
        started_at: r.opt_int(15)?,
        finished_at: r.opt_int(16)?,
        updated_at: r.int(17)?,
        timeout_s: r.opt_int(18)?.map(|v| v as u32),
        max_attempts: r.opt_int(19)?.map(|v| v as u32),
        retried_from: r.opt_text(20)?,
    })
}

fn runner_from_row(r: &impl DbRow) -> Result<Runner, StoreError> {
    Ok(Runner {
        id: r.text(0)?,
        name: r.text(1)?,
        hash: r.text(2)?,
        created_at: r.int(3)?,
        revoked_at: r.opt_int(4)?,
        last_seen_at: r.opt_int(5)?,
        hello: json_column(r, 6)?,
    })
}

fn key_from_row(r: &impl DbRow) -> Result<ApiKey, StoreError> {
    let scope = r.text(2)?;
    Ok(ApiKey {
        id: r.text(0)?,
        name: r.text(1)?,
        scope: Scope::parse(&scope)
            .ok_or_else(|| StoreError::Corrupt(format!("key scope {scope:?}")))?,
        hash: r.text(3)?,
        created_at: r.int(4)?,
        last_used_at: r.opt_int(5)?,
        revoked_at: r.opt_int(6)?,
    })
}
