//! Webhook subscriptions and the delivery outbox (tables `webhooks`, `webhook_deliveries`,
//! `webhook_attempts`). Outbox rows are *created* by the writer in the transaction of their
//! event; this module claims them for a delivery worker and records what each attempt did.
//! No HTTP here.
//!
//! A worker *claims* due deliveries before it sends them (`claimed_by` = a token of that claim,
//! `claimed_until` = when it lapses), so that with several servers on one PostgreSQL database
//! each delivery is sent by one of them; an attempt is recorded only under the claim it was
//! made under. A server that dies holding a claim loses it when it lapses, and whoever claims
//! next sends the delivery.

use serde_json::Value;

use super::model::{now_ms, Subscription};
use super::sql::DbRow;
use super::{Backend, Store, StoreError};

#[derive(Debug, Clone, PartialEq)]
pub struct Webhook {
    pub id: String,
    pub url: String,
    pub events: Vec<String>,
    pub secret: String,
    pub enabled: bool,
    pub disabled_reason: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    pub id: i64,
    pub webhook_id: String,
    pub event_id: i64,
    pub event_type: String,
    pub task_id: Option<String>,
    pub payload: Option<String>,
    pub status: String,
    pub attempts: u32,
    pub next_attempt_at: Option<i64>,
    pub last_status_code: Option<u16>,
    pub last_error: Option<String>,
    pub last_latency_ms: Option<i64>,
    pub created_at: i64,
    pub delivered_at: Option<i64>,
    /// The token of the claim this delivery is held under (None while unclaimed).
    pub claimed_by: Option<String>,
    /// When that claim lapses (epoch ms).
    pub claimed_until: Option<i64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Attempt {
    pub attempt: u32,
    pub at: i64,
    pub status_code: Option<u16>,
    pub latency_ms: i64,
    pub error: Option<String>,
}

/// What to do with a delivery after an attempt.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum AttemptOutcome {
    Delivered,
    RetryAt(i64),
    /// No more attempts (exhausted, or the receiver said 410 Gone).
    Failed,
}

const HOOK_COLUMNS: &str =
    "id, url, events, secret, enabled, disabled_reason, created_at, updated_at";
const DELIVERY_COLUMNS: &str =
    "d.id, d.webhook_id, d.event_id, d.event_type, d.task_id, d.payload, \
     d.status, d.attempts, d.next_attempt_at, d.last_status_code, d.last_error, d.last_latency_ms, \
     d.created_at, d.delivered_at, d.claimed_by, d.claimed_until";

/// A webhook from the row's columns `first..first + 8` (in `HOOK_COLUMNS` order).
fn hook_from_row(r: &impl DbRow, first: usize) -> Result<Webhook, StoreError> {
    let events = r.text(first + 2)?;
    Ok(Webhook {
        id: r.text(first)?,
        url: r.text(first + 1)?,
        events: serde_json::from_str(&events).map_err(|e| StoreError::Corrupt(e.to_string()))?,
        secret: r.text(first + 3)?,
        enabled: r.int(first + 4)? != 0,
        disabled_reason: r.opt_text(first + 5)?,
        created_at: r.int(first + 6)?,
        updated_at: r.int(first + 7)?,
    })
}

/// The writer's view of an enabled webhook: its id and its `events` column (a JSON array).
pub(super) fn subscription(webhook_id: String, events: &str) -> Result<Subscription, StoreError> {
    Ok(Subscription {
        webhook_id,
        events: serde_json::from_str(events).map_err(|e| StoreError::Corrupt(e.to_string()))?,
    })
}

fn delivery_from_row(r: &impl DbRow) -> Result<Delivery, StoreError> {
    Ok(Delivery {
        id: r.int(0)?,
        webhook_id: r.text(1)?,
        event_id: r.int(2)?,
        event_type: r.text(3)?,
        task_id: r.opt_text(4)?,
        payload: r.opt_text(5)?,
        status: r.text(6)?,
        attempts: r.int(7)? as u32,
        next_attempt_at: r.opt_int(8)?,
        last_status_code: r.opt_int(9)?.map(|c| c as u16),
        last_error: r.opt_text(10)?,
        last_latency_ms: r.opt_int(11)?,
        created_at: r.int(12)?,
        delivered_at: r.opt_int(13)?,
        claimed_by: r.opt_text(14)?,
        claimed_until: r.opt_int(15)?,
    })
}

impl Store {
    pub async fn create_webhook(&self, h: &Webhook) -> Result<(), StoreError> {
        on_pool!(&self.db, |pool, sql| {
            sqlx::query(&sql(
                "INSERT INTO webhooks (id, url, events, secret, enabled, created_at, updated_at) \
                 VALUES (?, ?, ?, ?, ?, ?, ?)",
            ))
            .bind(&h.id)
            .bind(&h.url)
            .bind(serde_json::to_string(&h.events).unwrap_or_else(|_| "[]".into()))
            .bind(&h.secret)
            .bind(h.enabled as i64)
            .bind(h.created_at)
            .bind(h.updated_at)
            .execute(pool)
            .await?;
        });
        self.refresh_subscriptions().await
    }

    pub async fn list_webhooks(&self) -> Result<Vec<Webhook>, StoreError> {
        on_pool!(&self.db, |pool, _sql| {
            let rows = sqlx::query(&format!(
                "SELECT {HOOK_COLUMNS} FROM webhooks ORDER BY created_at, id"
            ))
            .fetch_all(pool)
            .await?;
            rows.iter().map(|r| hook_from_row(r, 0)).collect()
        })
    }

    pub async fn get_webhook(&self, id: &str) -> Result<Option<Webhook>, StoreError> {
        on_pool!(&self.db, |pool, sql| {
            let row = sqlx::query(&sql(&format!(
                "SELECT {HOOK_COLUMNS} FROM webhooks WHERE id = ?"
            )))
            .bind(id)
            .fetch_optional(pool)
            .await?;
            row.map(|r| hook_from_row(&r, 0)).transpose()
        })
    }

    /// Replaces a subscription's editable fields. False if there is no such webhook.
    pub async fn update_webhook(&self, h: &Webhook) -> Result<bool, StoreError> {
        let n = on_pool!(&self.db, |pool, sql| {
            sqlx::query(&sql(
                "UPDATE webhooks SET url = ?, events = ?, enabled = ?, disabled_reason = ?, \
                 updated_at = ? WHERE id = ?",
            ))
            .bind(&h.url)
            .bind(serde_json::to_string(&h.events).unwrap_or_else(|_| "[]".into()))
            .bind(h.enabled as i64)
            .bind(&h.disabled_reason)
            .bind(now_ms())
            .bind(&h.id)
            .execute(pool)
            .await?
            .rows_affected()
        });
        self.refresh_subscriptions().await?;
        Ok(n == 1)
    }

    pub async fn delete_webhook(&self, id: &str) -> Result<bool, StoreError> {
        let n = on_pool!(&self.db, |pool, sql| {
            let mut tx = pool.begin().await?;
            let n = sqlx::query(&sql("DELETE FROM webhooks WHERE id = ?"))
                .bind(id)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            sqlx::query(&sql(
                "UPDATE webhook_deliveries SET status = 'failed', last_error = 'webhook deleted', \
                 next_attempt_at = NULL WHERE webhook_id = ? AND status = 'pending'",
            ))
            .bind(id)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            n
        });
        self.refresh_subscriptions().await?;
        Ok(n == 1)
    }

    /// Reloads the enabled subscriptions into the writer's view.
    pub async fn refresh_subscriptions(&self) -> Result<(), StoreError> {
        let subs = self
            .list_webhooks()
            .await?
            .into_iter()
            .filter(|h| h.enabled)
            .map(|h| Subscription {
                webhook_id: h.id,
                events: h.events,
            })
            .collect();
        self.outbox().set_subscriptions(subs);
        Ok(())
    }

    /// Claims up to `limit` pending deliveries of enabled webhooks that are due by `now` and not
    /// held under a live claim, oldest first, until `now + lease_ms`; returns them with their
    /// webhook. Each gets one fresh claim token (in `claimed_by`), so two calls, from this
    /// server or another on the same database, never return the same delivery while its claim
    /// lasts. On PostgreSQL rows another transaction is claiming are skipped (`SKIP LOCKED`),
    /// not waited for; SQLite runs one write at a time anyway.
    pub async fn claim_due_deliveries(
        &self,
        now: i64,
        lease_ms: i64,
        limit: u32,
    ) -> Result<Vec<(Delivery, Webhook)>, StoreError> {
        let token = uuid::Uuid::now_v7().to_string();
        let skip_locked = match self.backend() {
            Backend::Sqlite => "",
            Backend::Postgres => " FOR UPDATE OF d SKIP LOCKED",
        };
        // A materialised CTE runs once. (`id IN (SELECT … LIMIT n FOR UPDATE SKIP LOCKED)`
        // may be rescanned by PostgreSQL's plan, skip the rows this UPDATE already changed and
        // claim more than `n`.)
        let claim = format!(
            "WITH due AS MATERIALIZED (SELECT d.id FROM webhook_deliveries d \
             JOIN webhooks w ON w.id = d.webhook_id \
             WHERE d.status = 'pending' AND d.next_attempt_at <= ?3 AND w.enabled = 1 \
             AND (d.claimed_until IS NULL OR d.claimed_until <= ?3) \
             ORDER BY d.next_attempt_at, d.id LIMIT ?4{skip_locked}) \
             UPDATE webhook_deliveries SET claimed_by = ?1, claimed_until = ?2 \
             WHERE id IN (SELECT id FROM due)"
        );
        let claimed = format!(
            "SELECT {DELIVERY_COLUMNS}, w.id, w.url, w.events, w.secret, w.enabled, w.disabled_reason, \
             w.created_at, w.updated_at FROM webhook_deliveries d JOIN webhooks w ON w.id = d.webhook_id \
             WHERE d.claimed_by = ? ORDER BY d.next_attempt_at, d.id"
        );
        on_pool!(&self.db, |pool, sql| {
            let n = sqlx::query(&sql(&claim))
                .bind(&token)
                .bind(now + lease_ms)
                .bind(now)
                .bind(limit as i64)
                .execute(pool)
                .await?
                .rows_affected();
            if n == 0 {
                return Ok(Vec::new());
            }
            let rows = sqlx::query(&sql(&claimed))
                .bind(&token)
                .fetch_all(pool)
                .await?;
            rows.iter()
                .map(|r| Ok((delivery_from_row(r)?, hook_from_row(r, 16)?)))
                .collect()
        })
    }

    /// Ends every claim (a server that is alone on its database, at start: claims left by its
    /// previous process would otherwise hold their deliveries back until they lapse).
    pub async fn release_delivery_claims(&self) -> Result<u64, StoreError> {
        Ok(on_pool!(&self.db, |pool, _sql| {
            sqlx::query(
                "UPDATE webhook_deliveries SET claimed_by = NULL, claimed_until = NULL \
                 WHERE claimed_by IS NOT NULL",
            )
            .execute(pool)
            .await?
            .rows_affected()
        }))
    }

    /// When the worker next has something to claim: the earliest time a pending delivery of an
    /// enabled webhook is due and not held under a claim, if there is one.
    pub async fn next_delivery_due(&self) -> Result<Option<i64>, StoreError> {
        on_pool!(&self.db, |pool, _sql| {
            Ok(sqlx::query_scalar(
                "SELECT MIN(CASE WHEN d.claimed_until > d.next_attempt_at THEN d.claimed_until \
                 ELSE d.next_attempt_at END) FROM webhook_deliveries d \
                 JOIN webhooks w ON w.id = d.webhook_id WHERE d.status = 'pending' AND w.enabled = 1",
            )
            .fetch_one(pool)
            .await?)
        })
    }

    /// The stored JSON payload of an event.
    pub async fn event_data(&self, event_id: i64) -> Result<Option<Value>, StoreError> {
        let s: Option<String> = on_pool!(&self.db, |pool, sql| {
            sqlx::query_scalar(&sql("SELECT data FROM events WHERE id = ?"))
                .bind(event_id)
                .fetch_optional(pool)
                .await?
        });
        s.map(|s| serde_json::from_str(&s).map_err(|e| StoreError::Corrupt(e.to_string())))
            .transpose()
    }

    /// Fixes a delivery's body at its first attempt (later attempts resend the same bytes).
    pub async fn set_delivery_payload(&self, id: i64, payload: &str) -> Result<(), StoreError> {
        on_pool!(&self.db, |pool, sql| {
            sqlx::query(&sql(
                "UPDATE webhook_deliveries SET payload = ? WHERE id = ? AND payload IS NULL",
            ))
            .bind(payload)
            .bind(id)
            .execute(pool)
            .await?;
        });
        Ok(())
    }

    /// Records one attempt and moves the delivery on, ending its claim. Only under the claim
    /// `d` was handed out with (`d.claimed_by`): false, and nothing recorded, if that claim
    /// lapsed and the delivery was claimed again since (or was never claimed).
    pub async fn record_delivery_attempt(
        &self,
        d: &Delivery,
        attempt: &Attempt,
        outcome: AttemptOutcome,
    ) -> Result<bool, StoreError> {
        let (status, next, delivered) = match outcome {
            AttemptOutcome::Delivered => ("delivered", None, Some(attempt.at)),
            AttemptOutcome::RetryAt(t) => ("pending", Some(t), None),
            AttemptOutcome::Failed => ("failed", None, None),
        };
        let Some(claim) = d.claimed_by.as_deref() else {
            return Ok(false);
        };
        Ok(on_pool!(&self.db, |pool, sql| {
            let mut tx = pool.begin().await?;
            // The fence first: on PostgreSQL it also locks the row until the attempt is in.
            let n = sqlx::query(&sql(
                "UPDATE webhook_deliveries SET status = ?, attempts = ?, next_attempt_at = ?, \
                 last_status_code = ?, last_error = ?, last_latency_ms = ?, updated_at = ?, \
                 delivered_at = COALESCE(?, delivered_at), claimed_by = NULL, claimed_until = NULL \
                 WHERE id = ? AND claimed_by = ?",
            ))
            .bind(status)
            .bind(attempt.attempt as i64)
            .bind(next)
            .bind(attempt.status_code.map(|c| c as i64))
            .bind(&attempt.error)
            .bind(attempt.latency_ms)
            .bind(attempt.at)
            .bind(delivered)
            .bind(d.id)
            .bind(claim)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if n == 0 {
                tx.rollback().await?;
                false
            } else {
                sqlx::query(&sql(
                    "INSERT INTO webhook_attempts (delivery_id, attempt, at, status_code, latency_ms, error) \
                     VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (delivery_id, attempt) DO UPDATE SET \
                     at = excluded.at, status_code = excluded.status_code, \
                     latency_ms = excluded.latency_ms, error = excluded.error",
                ))
                .bind(d.id)
                .bind(attempt.attempt as i64)
                .bind(attempt.at)
                .bind(attempt.status_code.map(|c| c as i64))
                .bind(attempt.latency_ms)
                .bind(&attempt.error)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                true
            }
        }))
    }

    /// Newest deliveries of a webhook with their attempts.
    pub async fn list_deliveries(
        &self,
        webhook_id: &str,
        limit: u32,
    ) -> Result<Vec<(Delivery, Vec<Attempt>)>, StoreError> {
        let list = format!(
            "SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries d WHERE d.webhook_id = ? \
             ORDER BY d.id DESC LIMIT ?"
        );
        on_pool!(&self.db, |pool, sql| {
            let rows = sqlx::query(&sql(&list))
                .bind(webhook_id)
                .bind(limit as i64)
                .fetch_all(pool)
                .await?;
            let mut out = Vec::with_capacity(rows.len());
            for r in &rows {
                let d = delivery_from_row(r)?;
                let attempts = sqlx::query(&sql(
                    "SELECT attempt, at, status_code, latency_ms, error FROM webhook_attempts \
                     WHERE delivery_id = ? ORDER BY attempt",
                ))
                .bind(d.id)
                .fetch_all(pool)
                .await?
                .iter()
                .map(|a| {
                    Ok(Attempt {
                        attempt: a.int(0)? as u32,
                        at: a.int(1)?,
                        status_code: a.opt_int(2)?.map(|c| c as u16),
                        latency_ms: a.int(3)?,
                        error: a.opt_text(4)?,
                    })
                })
                .collect::<Result<Vec<_>, StoreError>>()?;
                out.push((d, attempts));
            }
            Ok(out)
        })
    }

    /// Puts a delivery back in the queue to be sent now. False if it does not exist.
    pub async fn redeliver(&self, webhook_id: &str, delivery_id: i64) -> Result<bool, StoreError> {
        let now = now_ms();
        let n = on_pool!(&self.db, |pool, sql| {
            sqlx::query(&sql(
                "UPDATE webhook_deliveries SET status = 'pending', next_attempt_at = ?, updated_at = ? \
                 WHERE id = ? AND webhook_id = ?",
            ))
            .bind(now)
            .bind(now)
            .bind(delivery_id)
            .bind(webhook_id)
            .execute(pool)
            .await?
            .rows_affected()
        });
        if n == 1 {
            self.outbox().notify();
        }
        Ok(n == 1)
    }
}
