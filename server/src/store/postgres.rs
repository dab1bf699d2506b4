//! The PostgreSQL backend's own parts: connection options and the writer task, which owns one
//! sqlx connection (a pool of one, so a lost connection is re-opened for the next batch) and
//! group-commits like SQLite's writer thread. What it writes is in `writer.rs`, shared with
//! SQLite; reads go through the sqlx pool in `mod.rs`.
//!
//! One writer task per process, one transaction at a time: that is what makes event ids (taken
//! from an identity column at insert time) increase in commit order. With several servers on
//! the database (`--cluster`) every writer transaction first takes one transaction-scoped
//! advisory lock ([`EVENT_ORDER_LOCK`]), so the writers of all servers commit one at a time and
//! ids stay in commit order across them; before committing, a transaction that appended events
//! sends `NOTIFY dap_events '<last id>'` (delivered at commit). A clustered writer publishes
//! nothing on the bus: the `cluster` feed reads committed events back from the log. It also
//! reads the enabled webhook subscriptions in every transaction, after the lock, since another
//! server may have changed them.
//! No TLS: sqlx is built without a TLS backend, so `sslmode=require` fails and `prefer` (the
//! default) connects in plain TCP (or over a Unix socket: `postgres:///db?host=/run/postgresql`).

use std::str::FromStr;

use sqlx::postgres::{PgConnectOptions, PgPool};
use tokio::sync::mpsc;

use super::model::NewTask;
use super::sql::{bind_pg, numbered, Arg, DbRow};
use super::webhooks::subscription;
use super::writer::{
    commit_batch, fill, initial_state, NewEvent, Pending, WriteConn, WriteTx, Writer, MAX_BATCH,
};
use super::{Outbox, StoreError};
use crate::events::EventBus;

/// The advisory lock every clustered writer transaction holds from its start to its commit
/// (`pg_advisory_xact_lock`): the writers of all servers on the database commit one at a time,
/// so event ids (taken at insert) increase in commit order. Taken first, before any row lock,
/// so two writers can never deadlock on it. ("dap_evts" in ASCII.) A node's presence upsert
/// for a runner that just connected takes it too (`store/cluster.rs`), which orders that
/// upsert against a requeue conditional on the runner's absence.
pub const EVENT_ORDER_LOCK: i64 = 0x6461_705f_6576_7473;

/// The NOTIFY channel a clustered writer announces committed events on; the payload is the id
/// of the last event of the transaction.
pub const EVENTS_CHANNEL: &str = "dap_events";

/// Options for `postgres://` and `postgresql://` URLs (user, password, host, port, database and
/// the usual query parameters).
pub(super) fn connect_options(url: &str) -> Result<PgConnectOptions, StoreError> {
    Ok(PgConnectOptions::from_str(url)?.application_name("dap-server"))
}

/// Starts the writer task on the current tokio runtime. It ends when every handle is dropped.
/// With a `bus` it publishes committed events there (one server on the database); without one
/// it is a clustered writer (advisory lock, NOTIFY, nothing published).
pub(super) fn spawn_writer(pool: PgPool, bus: Option<EventBus>, outbox: Outbox) -> Writer {
    let (tx, rx) = Writer::channel();
    let conn = PgConn {
        pool,
        cluster: bus.is_none(),
        outbox: outbox.clone(),
    };
    tokio::spawn(run(conn, rx, bus, outbox));
    Writer::new(tx, None, std::sync::Arc::new(()))
}

async fn run(
    mut conn: PgConn,
    mut rx: mpsc::Receiver<Pending>,
    bus: Option<EventBus>,
    outbox: Outbox,
) {
    let mut batch: Vec<Pending> = Vec::with_capacity(MAX_BATCH);
    while let Some(first) = rx.recv().await {
        batch.push(first);
        fill(&mut rx, &mut batch);
        commit_batch(&mut conn, &mut batch, bus.as_ref(), &outbox).await;
    }
    conn.pool.close().await;
}

/// The writer's pool (one connection).
struct PgConn {
    pool: PgPool,
    /// One of several servers on the database: serialise on [`EVENT_ORDER_LOCK`] and NOTIFY.
    cluster: bool,
    /// Where a clustered writer puts the subscriptions it reads at `begin`.
    outbox: Outbox,
}

impl WriteConn for PgConn {
    type Tx<'c> = PgTx;

    async fn begin(&mut self) -> Result<PgTx, StoreError> {
        let mut tx = self.pool.begin().await?;
        if self.cluster {
            sqlx::query("SELECT pg_advisory_xact_lock($1)")
                .bind(EVENT_ORDER_LOCK)
                .execute(&mut *tx)
                .await?;
            // Webhooks are created and changed through any node, and each node's writer
            // writes the outbox rows of its own events: read the subscriptions here, after the
            // lock, so this transaction sees every change committed before it. (One small
            // query per batch; a single server keeps the cache its own changes refresh.)
            let rows = sqlx::query("SELECT id, events FROM webhooks WHERE enabled = 1")
                .fetch_all(&mut *tx)
                .await?;
            let subs = rows
                .iter()
                .map(|r| subscription(r.text(0)?, &r.text(1)?))
                .collect::<Result<Vec<_>, StoreError>>()?;
            self.outbox.set_subscriptions(subs);
        }
        Ok(PgTx {
            tx,
            cluster: self.cluster,
        })
    }
}

/// Dropped without commit, sqlx rolls it back before the connection is used again.
struct PgTx {
    tx: sqlx::Transaction<'static, sqlx::Postgres>,
    cluster: bool,
}

impl WriteTx for PgTx {
    async fn execute(&mut self, sql: &'static str, args: &[Arg<'_>]) -> Result<u64, StoreError> {
        let sql = numbered(sql);
        let done = bind_pg(sqlx::query(&sql), args)
            .execute(&mut *self.tx)
            .await?;
        Ok(done.rows_affected())
    }

    async fn query_row<T>(
        &mut self,
        sql: &'static str,
        args: &[Arg<'_>],
        read: impl FnOnce(&dyn DbRow) -> Result<T, StoreError>,
    ) -> Result<Option<T>, StoreError> {
        let sql = numbered(sql);
        let row = bind_pg(sqlx::query(&sql), args)
            .fetch_optional(&mut *self.tx)
            .await?;
        row.map(|r| read(&r)).transpose()
    }

    async fn insert_tasks(&mut self, tasks: &[&NewTask], now: i64) -> Result<(), StoreError> {
        // One round trip for a batch create, however many tasks it holds (one INSERT per task
        // made a 100-task batch cost 100 round trips).
        let init: Vec<_> = tasks.iter().map(|t| initial_state(t, now)).collect();
        let ids: Vec<&str> = tasks.iter().map(|t| t.id.as_str()).collect();
        let codes: Vec<i64> = tasks.iter().map(|t| t.operation_code.into()).collect();
        let params: Vec<&str> = tasks.iter().map(|t| t.params_json.as_str()).collect();
        let status: Vec<&str> = init.iter().map(|(st, _, _)| st.as_str()).collect();
        let targets: Vec<Option<&str>> = tasks
            .iter()
            .map(|t| t.target_runner_id.as_deref())
            .collect();
        let runners: Vec<Option<&str>> = tasks.iter().map(|t| t.assign_to.as_deref()).collect();
        let attempts: Vec<i64> = init.iter().map(|(_, a, _)| (*a).into()).collect();
        let assigned: Vec<Option<i64>> = init.iter().map(|(_, _, at)| *at).collect();
        let timeouts: Vec<Option<i64>> = tasks.iter().map(|t| t.timeout_s.map(i64::from)).collect();
        let maxes: Vec<Option<i64>> = tasks
            .iter()
            .map(|t| t.max_attempts.map(i64::from))
            .collect();
        let retried: Vec<Option<&str>> = tasks.iter().map(|t| t.retried_from.as_deref()).collect();
        sqlx::query(
            "INSERT INTO tasks (id, operation_code, params, status, target_runner_id, runner_id, \
             attempt, progress, created_at, assigned_at, updated_at, timeout_s, max_attempts, \
             retried_from) \
             SELECT u.id, u.code, u.params, u.status, u.target, u.runner, u.attempt, 0, $12, \
               u.assigned_at, $12, u.timeout_s, u.max_attempts, u.retried_from \
             FROM UNNEST($1::text[], $2::bigint[], $3::text[], $4::text[], $5::text[], \
               $6::text[], $7::bigint[], $8::bigint[], $9::bigint[], $10::bigint[], $11::text[]) \
               AS u(id, code, params, status, target, runner, attempt, assigned_at, timeout_s, \
               max_attempts, retried_from)",
        )
        .bind(ids)
        .bind(codes)
        .bind(params)
        .bind(status)
        .bind(targets)
        .bind(runners)
        .bind(attempts)
        .bind(assigned)
        .bind(timeouts)
        .bind(maxes)
        .bind(retried)
        .bind(now)
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    async fn insert_events(&mut self, events: &[NewEvent]) -> Result<Vec<i64>, StoreError> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        // One round trip for the whole batch. The ids are drawn first, then given out in
        // increasing order along the array (`row_number() OVER (ORDER BY id)` joined to the
        // array's ordinality), so the log's order is the order the ops appended, whatever order
        // PostgreSQL evaluates `nextval` or returns rows in. Ids drawn inside one clustered
        // writer transaction (under the event-order lock) stay in commit order.
        let kinds: Vec<&str> = events.iter().map(|e| e.kind).collect();
        let tasks: Vec<Option<&str>> = events.iter().map(|e| e.task_id.as_deref()).collect();
        let runners: Vec<Option<&str>> = events.iter().map(|e| e.runner_id.as_deref()).collect();
        let data: Vec<&str> = events.iter().map(|e| e.json.as_str()).collect();
        let at: Vec<i64> = events.iter().map(|e| e.at).collect();
        let mut ids: Vec<i64> = sqlx::query_scalar(
            "WITH drawn AS MATERIALIZED ( \
               SELECT nextval(pg_get_serial_sequence('events', 'id')) AS id \
               FROM generate_series(1, cardinality($1::text[]))), \
             numbered AS (SELECT id, row_number() OVER (ORDER BY id) AS n FROM drawn) \
             INSERT INTO events (id, kind, task_id, runner_id, data, created_at) \
             OVERRIDING SYSTEM VALUE \
             SELECT numbered.id, u.kind, u.task_id, u.runner_id, u.data, u.created_at \
             FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::bigint[]) \
               WITH ORDINALITY AS u(kind, task_id, runner_id, data, created_at, n) \
             JOIN numbered USING (n) \
             RETURNING id",
        )
        .bind(kinds)
        .bind(tasks)
        .bind(runners)
        .bind(data)
        .bind(at)
        .fetch_all(&mut *self.tx)
        .await?;
        ids.sort_unstable();
        Ok(ids)
    }

    async fn update_task<T>(
        &mut self,
        update: &'static str,
        columns: &'static str,
        _task_id: &str,
        args: &[Arg<'_>],
        read: impl FnOnce(&dyn DbRow) -> Result<T, StoreError>,
    ) -> Result<Option<T>, StoreError> {
        let sql = format!("{} RETURNING {columns}", numbered(update));
        let row = bind_pg(sqlx::query(&sql), args)
            .fetch_optional(&mut *self.tx)
            .await?;
        row.map(|r| read(&r)).transpose()
    }

    async fn announce(&mut self, last_event_id: i64) -> Result<(), StoreError> {
        if self.cluster {
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(EVENTS_CHANNEL)
                .bind(last_event_id.to_string())
                .execute(&mut *self.tx)
                .await?;
        }
        Ok(())
    }

    async fn commit(self) -> Result<(), StoreError> {
        Ok(self.tx.commit().await?)
    }
}
