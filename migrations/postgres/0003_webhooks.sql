-- Notification hooks: subscriptions and a durable outbox of deliveries. A delivery row is
-- written in the same transaction as the event it reports, so a crash between commit and send
-- loses nothing. (PostgreSQL twin of migrations/sqlite/0003_webhooks.sql; `enabled` stays an
-- integer 0/1 so both dialects share their SQL.)
CREATE TABLE webhooks (
    id              TEXT COLLATE "C" PRIMARY KEY,
    url             TEXT NOT NULL,
    events          TEXT NOT NULL,             -- JSON array of event types, or ["*"]
    secret          TEXT NOT NULL,             -- whsec_<base64>; needed to sign, so kept as is
    enabled         BIGINT NOT NULL DEFAULT 1 CHECK (enabled IN (0, 1)),
    disabled_reason TEXT,
    created_at      BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL
);

CREATE TABLE webhook_deliveries (
    id               BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    webhook_id       TEXT COLLATE "C" NOT NULL,
    event_id         BIGINT NOT NULL,
    event_type       TEXT NOT NULL,
    task_id          TEXT,
    payload          TEXT,                     -- JSON body, fixed at the first attempt
    status           TEXT NOT NULL CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts         BIGINT NOT NULL DEFAULT 0,
    next_attempt_at  BIGINT,
    last_status_code BIGINT,
    last_error       TEXT,
    last_latency_ms  BIGINT,
    created_at       BIGINT NOT NULL,
    updated_at       BIGINT NOT NULL,
    delivered_at     BIGINT,
    UNIQUE (webhook_id, event_id)
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (status, next_attempt_at);
CREATE INDEX webhook_deliveries_by_hook ON webhook_deliveries (webhook_id, id);

CREATE TABLE webhook_attempts (
    delivery_id  BIGINT NOT NULL,
    attempt      BIGINT NOT NULL,
    at           BIGINT NOT NULL,
    status_code  BIGINT,
    latency_ms   BIGINT NOT NULL,
    error        TEXT,
    PRIMARY KEY (delivery_id, attempt)
);
