//! The PostgreSQL backend's own parts: connection options and the writer task, which owns one
//! sqlx connection (a pool of one, so a lost connection is re-opened for the next batch) and
//! group-commits like SQLite's writer thread. What it writes is in `writer.rs`, shared with
//! SQLite; reads go through the sqlx pool in `mod.rs`.
//!
//! One writer task per process, one transaction at a time: that is what makes event ids (taken
//! from an identity column at insert time) increase in commit order. It does not coordinate
//! with other servers on the same database; that needs more (ARCHITECTURE.md, multi-node).
//! No TLS: sqlx is built without a TLS backend, so `sslmode=require` fails and `prefer` (the
//! default) connects in plain TCP (or over a Unix socket: `postgres:///db?host=/run/postgresql`).

use std::str::FromStr;

use sqlx::postgres::{PgConnectOptions, PgPool};
use tokio::sync::mpsc;

use super::sql::{bind_pg, numbered, Arg, DbRow};
use super::writer::{commit_batch, fill, Pending, WriteConn, WriteTx, Writer, MAX_BATCH};
use super::{Outbox, StoreError};
use crate::events::EventBus;

/// Options for `postgres://` and `postgresql://` URLs (user, password, host, port, database and
/// the usual query parameters).
pub(super) fn connect_options(url: &str) -> Result<PgConnectOptions, StoreError> {
    Ok(PgConnectOptions::from_str(url)?.application_name("dap-server"))
}

/// Starts the writer task on the current tokio runtime. It ends when every handle is dropped.
pub(super) fn spawn_writer(pool: PgPool, bus: EventBus, outbox: Outbox) -> Writer {
    let (tx, rx) = Writer::channel();
    tokio::spawn(run(PgConn(pool), rx, bus, outbox));
    Writer::new(tx, std::sync::Arc::new(()))
}

async fn run(mut conn: PgConn, mut rx: mpsc::Receiver<Pending>, bus: EventBus, outbox: Outbox) {
    let mut batch: Vec<Pending> = Vec::with_capacity(MAX_BATCH);
    while let Some(first) = rx.recv().await {
        batch.push(first);
        fill(&mut rx, &mut batch);
        commit_batch(&mut conn, &mut batch, &bus, &outbox).await;
    }
    conn.0.close().await;
}

/// The writer's pool (one connection).
struct PgConn(PgPool);

impl WriteConn for PgConn {
    type Tx<'c> = PgTx;

    async fn begin(&mut self) -> Result<PgTx, StoreError> {
        Ok(PgTx(self.0.begin().await?))
    }
}

/// Dropped without commit, sqlx rolls it back before the connection is used again.
struct PgTx(sqlx::Transaction<'static, sqlx::Postgres>);

impl WriteTx for PgTx {
    async fn execute(&mut self, sql: &'static str, args: &[Arg<'_>]) -> Result<u64, StoreError> {
        let sql = numbered(sql);
        let done = bind_pg(sqlx::query(&sql), args)
            .execute(&mut *self.0)
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
            .fetch_optional(&mut *self.0)
            .await?;
        row.map(|r| read(&r)).transpose()
    }

    async fn commit(self) -> Result<(), StoreError> {
        Ok(self.0.commit().await?)
    }
}
