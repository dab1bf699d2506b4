//! Durable state: tasks, runners, API keys and the event log, in SQLite via sqlx.
//!
//! Reads go through a small connection pool; hot-path writes go through the single batching
//! [`Writer`] (group commit), and rare administrative writes (keys, enrolments) go straight to the
//! pool and rely on SQLite's busy timeout. The store knows nothing about HTTP, WebSockets or
//! which runner is connected: callers pass ids and it enforces only the conditions written in
//! its SQL (status, runner, attempt).

pub mod model;
pub mod webhooks;
pub mod writer;

use std::str::FromStr;
use std::time::Duration;

use serde_json::Value;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::Row;

use crate::events::EventBus;
pub use model::*;
pub use writer::{CancelOutcome, Outcome, WriteOp, Writer};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("migration error: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("unsupported database URL {0:?}: use sqlite://PATH")]
    UnsupportedUrl(String),
    #[error("the store writer has stopped")]
    WriterGone,
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
}

/// Handle to the database. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    pool: SqlitePool,
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

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/sqlite");

impl Store {
    /// Opens (creating if missing) the database at `url`, applies migrations and starts the
    /// writer, which publishes committed events on `bus`.
    ///
    /// SQLite runs in WAL mode with `synchronous=NORMAL`: a commit survives a crash of the
    /// process (kill -9) but the last commits before an OS crash or power loss may be lost.
    /// Set `DAP_SQLITE_SYNCHRONOUS=FULL` to trade throughput for power-loss durability.
    pub async fn open(url: &str, bus: EventBus) -> Result<Self, StoreError> {
        let pool_opts = Self::connect_options(url)?;
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .min_connections(1)
            .connect_with(pool_opts.clone())
            .await?;
        MIGRATOR.run(&pool).await?;
        let outbox = Outbox::default();
        let writer = Writer::spawn(
            pool_opts.get_filename(),
            synchronous_full(),
            bus,
            outbox.clone(),
        )?;
        let store = Self {
            pool,
            writer,
            outbox,
        };
        store.refresh_subscriptions().await?;
        Ok(store)
    }

    /// Applies migrations only (the `migrate` subcommand).
    pub async fn migrate(url: &str) -> Result<(), StoreError> {
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(Self::connect_options(url)?)
            .await?;
        MIGRATOR.run(&pool).await?;
        pool.close().await;
        Ok(())
    }

    fn connect_options(url: &str) -> Result<SqliteConnectOptions, StoreError> {
        if !url.starts_with("sqlite:") {
            return Err(StoreError::UnsupportedUrl(url.to_owned()));
        }
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

    pub fn writer(&self) -> &Writer {
        &self.writer
    }

    pub fn outbox(&self) -> &Outbox {
        &self.outbox
    }

    /// The connection pool, for the store's submodules (webhooks).
    fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    pub async fn write(&self, op: WriteOp) -> Result<Outcome, StoreError> {
        self.writer.submit(op).await
    }

    /// Tasks a runner was holding when the previous process stopped: `(task_id, runner_id,
    /// attempt)` for every `assigned`/`running` task. At start-up the dispatcher gives each
    /// runner its grace period to reconnect and resume them.
    pub async fn in_flight_tasks(&self) -> Result<Vec<(String, String, u32)>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, runner_id, attempt FROM tasks WHERE status IN ('assigned', 'running') \
             AND runner_id IS NOT NULL ORDER BY id",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get::<i64, _>(2)? as u32)))
            .collect()
    }

    /// In-flight attempts that have a timeout: `(task_id, attempt, assigned_at ms, timeout_s)`.
    /// At start-up the dispatcher re-arms their timers with the time they have left.
    pub async fn timed_in_flight(&self) -> Result<Vec<(String, u32, i64, u32)>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, attempt, COALESCE(assigned_at, updated_at), timeout_s FROM tasks \
             WHERE status IN ('assigned', 'running') AND timeout_s IS NOT NULL ORDER BY id",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get(0)?,
                    r.try_get::<i64, _>(1)? as u32,
                    r.try_get(2)?,
                    r.try_get::<i64, _>(3)? as u32,
                ))
            })
            .collect()
    }

    // ---- tasks ----

    pub async fn get_task(&self, id: &str) -> Result<Option<Task>, StoreError> {
        let row = sqlx::query(&format!("SELECT {TASK_COLUMNS} FROM tasks WHERE id = ?"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| task_from_row(&r)).transpose()
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
        let sql =
            format!("SELECT {TASK_COLUMNS} FROM tasks{cond} ORDER BY id DESC LIMIT ? OFFSET ?");
        let count_sql = format!("SELECT COUNT(*) FROM tasks{cond}");
        let mut q = sqlx::query(&sql);
        let mut cq = sqlx::query_scalar::<_, i64>(&count_sql);
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
            .fetch_all(&self.pool)
            .await?;
        let total = cq.fetch_one(&self.pool).await?;
        let tasks = rows.iter().map(task_from_row).collect::<Result<_, _>>()?;
        Ok((tasks, total as u64))
    }

    /// Number of tasks in each status (statuses with none are absent). One pass over the
    /// `tasks_by_status` index; the metrics endpoint calls it once per scrape.
    pub async fn count_tasks_by_status(&self) -> Result<Vec<(String, i64)>, StoreError> {
        Ok(
            sqlx::query_as("SELECT status, COUNT(*) FROM tasks GROUP BY status")
                .fetch_all(&self.pool)
                .await?,
        )
    }

    /// Queued tasks in creation order (to rebuild the dispatcher's queue at start-up).
    pub async fn queued_tasks(&self) -> Result<Vec<Task>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {TASK_COLUMNS} FROM tasks WHERE status = 'queued' ORDER BY id"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(task_from_row).collect()
    }

    // ---- events ----

    /// Up to `limit` events with id > `after`, oldest first, optionally for one task.
    pub async fn events_after(
        &self,
        after: i64,
        task_id: Option<&str>,
        limit: u32,
    ) -> Result<Vec<Event>, StoreError> {
        let rows = match task_id {
            Some(t) => {
                sqlx::query(
                    "SELECT id, kind, task_id, data FROM events WHERE task_id = ? AND id > ? ORDER BY id LIMIT ?",
                )
                .bind(t)
                .bind(after)
                .bind(limit as i64)
                .fetch_all(&self.pool)
                .await?
            }
            None => {
                sqlx::query(
                    "SELECT id, kind, task_id, data FROM events WHERE id > ? ORDER BY id LIMIT ?",
                )
                .bind(after)
                .bind(limit as i64)
                .fetch_all(&self.pool)
                .await?
            }
        };
        rows.iter()
            .map(|r| {
                Ok(Event {
                    id: r.try_get(0)?,
                    kind: r.try_get(1)?,
                    task_id: r.try_get(2)?,
                    json: r.try_get(3)?,
                })
            })
            .collect()
    }

    /// Id of the newest event (0 when the log is empty).
    pub async fn last_event_id(&self) -> Result<i64, StoreError> {
        let id: Option<i64> = sqlx::query_scalar("SELECT MAX(id) FROM events")
            .fetch_one(&self.pool)
            .await?;
        Ok(id.unwrap_or(0))
    }

    /// Cheap liveness probe of the database.
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    // ---- runners ----

    pub async fn create_runner(&self, id: &str, name: &str, hash: &str) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO runners (id, name, hash, created_at) VALUES (?, ?, ?, ?)")
            .bind(id)
            .bind(name)
            .bind(hash)
            .bind(now_ms())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn get_runner(&self, id: &str) -> Result<Option<Runner>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {RUNNER_COLUMNS} FROM runners WHERE id = ?"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| runner_from_row(&r)).transpose()
    }

    /// Every runner that is not revoked, oldest enrolment first.
    pub async fn list_runners(&self) -> Result<Vec<Runner>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {RUNNER_COLUMNS} FROM runners WHERE revoked_at IS NULL ORDER BY created_at, id"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(runner_from_row).collect()
    }

    /// Marks a runner revoked. False when there is no such (unrevoked) runner.
    pub async fn revoke_runner(&self, id: &str) -> Result<bool, StoreError> {
        let n =
            sqlx::query("UPDATE runners SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL")
                .bind(now_ms())
                .bind(id)
                .execute(&self.pool)
                .await?
                .rows_affected();
        Ok(n == 1)
    }

    // ---- API keys ----

    pub async fn create_api_key(
        &self,
        id: &str,
        name: &str,
        scope: Scope,
        hash: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO api_keys (id, name, scope, hash, created_at) VALUES (?, ?, ?, ?, ?)",
        )
        .bind(id)
        .bind(name)
        .bind(scope.as_str())
        .bind(hash)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn get_api_key(&self, id: &str) -> Result<Option<ApiKey>, StoreError> {
        let row = sqlx::query(&format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE id = ?"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| key_from_row(&r)).transpose()
    }

    pub async fn list_api_keys(&self) -> Result<Vec<ApiKey>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {KEY_COLUMNS} FROM api_keys ORDER BY created_at, id"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(key_from_row).collect()
    }

    pub async fn revoke_api_key(&self, id: &str) -> Result<bool, StoreError> {
        let n =
            sqlx::query("UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL")
                .bind(now_ms())
                .bind(id)
                .execute(&self.pool)
                .await?
                .rows_affected();
        Ok(n == 1)
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
        let mut tx = self.pool.begin().await?;
        let previous: Option<String> =
            sqlx::query_scalar("SELECT blob_key FROM artifacts WHERE task_id = ? AND name = ?")
                .bind(&a.task_id)
                .bind(&a.name)
                .fetch_optional(&mut *tx)
                .await?;
        let n = sqlx::query(
            "INSERT INTO artifacts (task_id, name, attempt, size, sha256, content_type, blob_key, created_at) \
             SELECT ?, ?, ?, ?, ?, ?, ?, ? FROM tasks \
             WHERE id = ? AND runner_id = ? AND attempt = ? AND status IN ('assigned', 'running') \
             ON CONFLICT (task_id, name) DO UPDATE SET attempt = excluded.attempt, size = excluded.size, \
             sha256 = excluded.sha256, content_type = excluded.content_type, blob_key = excluded.blob_key, \
             created_at = excluded.created_at",
        )
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
    }

    pub async fn get_artifact(
        &self,
        task_id: &str,
        name: &str,
    ) -> Result<Option<Artifact>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {ARTIFACT_COLUMNS} FROM artifacts WHERE task_id = ? AND name = ?"
        ))
        .bind(task_id)
        .bind(name)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| artifact_from_row(&r)).transpose()
    }

    pub async fn list_artifacts(&self, task_id: &str) -> Result<Vec<Artifact>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {ARTIFACT_COLUMNS} FROM artifacts WHERE task_id = ? ORDER BY name"
        ))
        .bind(task_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(artifact_from_row).collect()
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// `DAP_SQLITE_SYNCHRONOUS=FULL` asks for power-loss durability (see [`Store::open`]).
fn synchronous_full() -> bool {
    std::env::var("DAP_SQLITE_SYNCHRONOUS").is_ok_and(|v| v.eq_ignore_ascii_case("full"))
}

const TASK_COLUMNS: &str =
    "id, operation_code, params, status, target_runner_id, runner_id, attempt, \
     progress, stage, message, result_data, error_code, error_message, created_at, assigned_at, \
     started_at, finished_at, updated_at, timeout_s, max_attempts, retried_from";
const ARTIFACT_COLUMNS: &str =
    "task_id, name, attempt, size, sha256, content_type, blob_key, created_at";

fn artifact_from_row(r: &SqliteRow) -> Result<Artifact, StoreError> {
    Ok(Artifact {
        task_id: r.try_get(0)?,
        name: r.try_get(1)?,
        attempt: r.try_get::<i64, _>(2)? as u32,
        size: r.try_get::<i64, _>(3)? as u64,
        sha256: r.try_get(4)?,
        content_type: r.try_get(5)?,
        blob_key: r.try_get(6)?,
        created_at: r.try_get(7)?,
    })
}

const RUNNER_COLUMNS: &str = "id, name, hash, created_at, revoked_at, last_seen_at, hello";
const KEY_COLUMNS: &str = "id, name, scope, hash, created_at, last_used_at, revoked_at";

fn json_column(row: &SqliteRow, idx: usize) -> Result<Option<Value>, StoreError> {
    let s: Option<String> = row.try_get(idx)?;
    s.map(|s| serde_json::from_str(&s).map_err(|e| StoreError::Corrupt(e.to_string())))
        .transpose()
}

fn task_from_row(r: &SqliteRow) -> Result<Task, StoreError> {
    let status: String = r.try_get(3)?;
    Ok(Task {
        id: r.try_get(0)?,
        operation_code: r.try_get::<i64, _>(1)? as u16,
        params: json_column(r, 2)?.unwrap_or(Value::Null),
        status: TaskStatus::parse(&status)
            .ok_or_else(|| StoreError::Corrupt(format!("task status {status:?}")))?,
        target_runner_id: r.try_get(4)?,
        runner_id: r.try_get(5)?,
        attempt: r.try_get::<i64, _>(6)? as u32,
        progress: r.try_get::<i64, _>(7)?.clamp(0, 100) as u8,
        stage: r.try_get(8)?,
        message: r.try_get(9)?,
        result_data: json_column(r, 10)?,
        error_code: r.try_get(11)?,
        error_message: r.try_get(12)?,
        created_at: r.try_get(13)?,
        assigned_at: r.try_get(14)?,
        started_at: r.try_get(15)?,
        finished_at: r.try_get(16)?,
        updated_at: r.try_get(17)?,
        timeout_s: r.try_get::<Option<i64>, _>(18)?.map(|v| v as u32),
        max_attempts: r.try_get::<Option<i64>, _>(19)?.map(|v| v as u32),
        retried_from: r.try_get(20)?,
    })
}

fn runner_from_row(r: &SqliteRow) -> Result<Runner, StoreError> {
    Ok(Runner {
        id: r.try_get(0)?,
        name: r.try_get(1)?,
        hash: r.try_get(2)?,
        created_at: r.try_get(3)?,
        revoked_at: r.try_get(4)?,
        last_seen_at: r.try_get(5)?,
        hello: json_column(r, 6)?,
    })
}

fn key_from_row(r: &SqliteRow) -> Result<ApiKey, StoreError> {
    let scope: String = r.try_get(2)?;
    Ok(ApiKey {
        id: r.try_get(0)?,
        name: r.try_get(1)?,
        scope: Scope::parse(&scope)
            .ok_or_else(|| StoreError::Corrupt(format!("key scope {scope:?}")))?,
        hash: r.try_get(3)?,
        created_at: r.try_get(4)?,
        last_used_at: r.try_get(5)?,
        revoked_at: r.try_get(6)?,
    })
}
