//! The store's part of multi-node operation (`--cluster`, PostgreSQL only): the listener
//! connection for `dap_events`, the runner presence table (which node each runner is on) and
//! the reads a node needs to take over work of another node (a runner's in-flight tasks, queued
//! tasks by id, in-flight tasks whose runner has no fresh presence anywhere).
//!
//! It decides nothing: which tasks to requeue or resume is the dispatcher's call, and writes
//! to tasks still go through the writer (conditional, so nodes racing for one task are fine).
//!
//! Presence rows are stamped with the database's clock (`seen_at`, [`pg_now_ms`]) and judged
//! fresh or stale against that same clock, never a node's.

use sqlx::postgres::{PgListener, PgPoolOptions};

use super::model::Task;
use super::postgres::EVENT_ORDER_LOCK;
use super::sql::{pg_now_ms, DbRow};
use super::{task_from_row, Db, Store, StoreError, TASK_COLUMNS};

/// What a node last said about a runner connected to it (or within its grace period there).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Presence {
    pub runner_id: String,
    pub node_id: String,
    pub slots: u32,
    pub running: u32,
    pub draining: bool,
    /// False while the runner is within its grace period on that node (socket gone).
    pub connected: bool,
}

impl Store {
    fn pg(&self) -> Result<&sqlx::PgPool, StoreError> {
        match &self.db {
            Db::Postgres(p) => Ok(p),
            Db::Sqlite(_) => Err(StoreError::ClusterNeedsPostgres),
        }
    }

    /// A listener on its own connection (not one of the read pool's), subscribed to
    /// [`super::EVENTS_CHANNEL`]. It reconnects by itself; after a reconnect the caller must
    /// catch up from the log (notifications sent meanwhile are lost).
    pub async fn event_listener(&self) -> Result<PgListener, StoreError> {
        let opts = self.pg()?.connect_options();
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .connect_with((*opts).clone())
            .await?;
        let mut l = PgListener::connect_with(&pool).await?;
        l.listen(super::EVENTS_CHANNEL).await?;
        Ok(l)
    }

    /// The tasks among `ids` that are queued now, oldest first.
    pub async fn queued_tasks_among(&self, ids: &[String]) -> Result<Vec<Task>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let rows = sqlx::query(&format!(
            "SELECT {TASK_COLUMNS} FROM tasks WHERE status = 'queued' AND id = ANY($1) ORDER BY id"
        ))
        .bind(ids)
        .fetch_all(self.pg()?)
        .await?;
        rows.iter().map(task_from_row).collect()
    }

    /// What the store says `runner_id` holds: `(task, attempt, assigned_at, timeout_s)` of each
    /// of its `assigned`/`running` tasks. A node the runner connects to takes these over.
    pub async fn runner_in_flight(
        &self,
        runner_id: &str,
    ) -> Result<Vec<(String, u32, Option<i64>, Option<u32>)>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, attempt, assigned_at, timeout_s FROM tasks \
             WHERE runner_id = $1 AND status IN ('assigned', 'running') ORDER BY id",
        )
        .bind(runner_id)
        .fetch_all(self.pg()?)
        .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.text(0)?,
                    r.int(1)? as u32,
                    r.opt_int(2)?,
                    r.opt_int(3)?.map(|v| v as u32),
                ))
            })
            .collect()
    }

    /// Replaces what node `node_id` says about its runners with `rows` (all stamped with the
    /// database's clock): rows of runners it no longer has are deleted. The caller must not
    /// let an [`upsert_presence`](Self::upsert_presence) of this node run between taking
    /// `rows` and this commit (it would delete that newer row).
    pub async fn set_presence(&self, node_id: &str, rows: &[Presence]) -> Result<(), StoreError> {
        let pool = self.pg()?;
        let ids: Vec<&str> = rows.iter().map(|p| p.runner_id.as_str()).collect();
        let slots: Vec<i64> = rows.iter().map(|p| i64::from(p.slots)).collect();
        let running: Vec<i64> = rows.iter().map(|p| i64::from(p.running)).collect();
        let draining: Vec<bool> = rows.iter().map(|p| p.draining).collect();
        let connected: Vec<bool> = rows.iter().map(|p| p.connected).collect();
        let mut tx = pool.begin().await?;
        sqlx::query("DELETE FROM runner_presence WHERE node_id = $1 AND NOT (runner_id = ANY($2))")
            .bind(node_id)
            .bind(&ids)
            .execute(&mut *tx)
            .await?;
        if !rows.is_empty() {
            sqlx::query(concat!(
                "INSERT INTO runner_presence (runner_id, node_id, slots, running, draining, connected, seen_at) \
                 SELECT r, $1, s, n, d, c, ",
                pg_now_ms!(),
                " FROM UNNEST($2::text[], $3::bigint[], $4::bigint[], \
                 $5::boolean[], $6::boolean[]) AS u(r, s, n, d, c) \
                 ON CONFLICT (runner_id, node_id) DO UPDATE SET slots = excluded.slots, \
                 running = excluded.running, draining = excluded.draining, \
                 connected = excluded.connected, seen_at = excluded.seen_at",
            ))
            .bind(node_id)
            .bind(&ids)
            .bind(&slots)
            .bind(&running)
            .bind(&draining)
            .bind(&connected)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Records (or refreshes) one runner's presence on its node, for a runner that has just
    /// connected there. Commits under the writers' advisory lock ([`EVENT_ORDER_LOCK`]), so it
    /// is ordered against every clustered writer transaction, in particular a requeue that is
    /// conditional on the runner's absence (`WriteOp::Requeue` with `unseen`): either that
    /// requeue committed first (and a read of the runner's tasks after this returns sees it),
    /// or it runs after this commit and finds the runner present.
    pub async fn upsert_presence(&self, p: &Presence) -> Result<(), StoreError> {
        let mut tx = self.pg()?.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(EVENT_ORDER_LOCK)
            .execute(&mut *tx)
            .await?;
        sqlx::query(concat!(
            "INSERT INTO runner_presence (runner_id, node_id, slots, running, draining, connected, seen_at) \
             VALUES ($1, $2, $3, $4, $5, $6, ",
            pg_now_ms!(),
            ") ON CONFLICT (runner_id, node_id) DO UPDATE SET \
             slots = excluded.slots, running = excluded.running, draining = excluded.draining, \
             connected = excluded.connected, seen_at = excluded.seen_at",
        ))
        .bind(&p.runner_id)
        .bind(&p.node_id)
        .bind(i64::from(p.slots))
        .bind(i64::from(p.running))
        .bind(p.draining)
        .bind(p.connected)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Presence rows of `runner_id` refreshed within the last `within_ms` (database clock),
    /// connected ones first, newest first.
    pub async fn runner_presence(
        &self,
        runner_id: &str,
        within_ms: i64,
    ) -> Result<Vec<Presence>, StoreError> {
        let rows = sqlx::query(concat!(
            "SELECT runner_id, node_id, slots, running, draining, connected \
             FROM runner_presence WHERE runner_id = $1 AND seen_at > ",
            pg_now_ms!(),
            " - $2 ORDER BY connected DESC, seen_at DESC",
        ))
        .bind(runner_id)
        .bind(within_ms)
        .fetch_all(self.pg()?)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(Presence {
                    runner_id: r.text(0)?,
                    node_id: r.text(1)?,
                    slots: r.int(2)? as u32,
                    running: r.int(3)? as u32,
                    draining: sqlx::Row::try_get(r, 4)?,
                    connected: sqlx::Row::try_get(r, 5)?,
                })
            })
            .collect()
    }

    /// In-flight attempts nobody looks after: `(task, runner, attempt)` of `assigned`/`running`
    /// tasks last updated before `updated_before` (the writing node's clock, epoch ms) whose
    /// runner no node has reported within the last `unseen_for_ms` (the database's clock): its
    /// node died, or it did and the runner never came back. A read only: the requeue checks
    /// the runner's absence again in its own statement.
    pub async fn orphaned_in_flight(
        &self,
        updated_before: i64,
        unseen_for_ms: i64,
    ) -> Result<Vec<(String, String, u32)>, StoreError> {
        let rows = sqlx::query(concat!(
            "SELECT t.id, t.runner_id, t.attempt FROM tasks t \
             WHERE t.status IN ('assigned', 'running') AND t.runner_id IS NOT NULL \
             AND t.updated_at < $1 AND NOT EXISTS (SELECT 1 FROM runner_presence p \
             WHERE p.runner_id = t.runner_id AND p.seen_at >= ",
            pg_now_ms!(),
            " - $2) ORDER BY t.id LIMIT 1000",
        ))
        .bind(updated_before)
        .bind(unseen_for_ms)
        .fetch_all(self.pg()?)
        .await?;
        rows.iter()
            .map(|r| Ok((r.text(0)?, r.text(1)?, r.int(2)? as u32)))
            .collect()
    }
}
