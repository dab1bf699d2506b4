-- DAP schema v1 (PostgreSQL dialect), the same tables as migrations/sqlite/0001_init.sql.
-- Timestamps are Unix epoch milliseconds (BIGINT); JSON is kept as TEXT so the API returns
-- exactly the bytes the server wrote (JSONB would reorder keys and respace). Every integer is
-- BIGINT (SQLite's INTEGER is 64-bit). Ids and names the API orders by are COLLATE "C" so
-- ORDER BY is byte order, as in SQLite, whatever the database's locale.
-- Applied migrations are never edited: change the schema with a new numbered file, in both
-- dialects.

CREATE TABLE api_keys (
    id           TEXT COLLATE "C" PRIMARY KEY, -- public part of the key, "dap_<id>_<secret>"
    name         TEXT NOT NULL,
    scope        TEXT NOT NULL CHECK (scope IN ('read', 'write', 'admin')),
    hash         TEXT NOT NULL,                -- argon2id PHC string of the whole key
    created_at   BIGINT NOT NULL,
    last_used_at BIGINT,
    revoked_at   BIGINT
);

CREATE TABLE runners (
    id           TEXT COLLATE "C" PRIMARY KEY,
    name         TEXT NOT NULL,
    hash         TEXT NOT NULL,                -- argon2id PHC string of the enrolment credential
    created_at   BIGINT NOT NULL,
    revoked_at   BIGINT,
    last_seen_at BIGINT,
    hello        TEXT                          -- JSON of the last greeting (slots, operations, datasets)
);

CREATE TABLE tasks (
    id               TEXT COLLATE "C" PRIMARY KEY,
    operation_code   BIGINT NOT NULL,
    params           TEXT NOT NULL,            -- JSON
    status           TEXT NOT NULL CHECK (status IN ('queued', 'assigned', 'running', 'completed', 'failed', 'cancelled')),
    target_runner_id TEXT,                     -- set when the creator pinned the task to a runner
    runner_id        TEXT COLLATE "C",         -- runner of the current attempt
    attempt          BIGINT NOT NULL DEFAULT 0,
    progress         BIGINT NOT NULL DEFAULT 0 CHECK (progress BETWEEN 0 AND 100),
    stage            TEXT,
    message          TEXT,
    result_data      TEXT,                     -- JSON, set when completed
    error_code       TEXT,
    error_message    TEXT,
    created_at       BIGINT NOT NULL,
    assigned_at      BIGINT,
    started_at       BIGINT,
    finished_at      BIGINT,
    updated_at       BIGINT NOT NULL
);
CREATE INDEX tasks_by_status ON tasks (status, id);
CREATE INDEX tasks_by_runner ON tasks (runner_id, id);

-- Append-only log of task and runner events; its id is the SSE event id. Identity values are
-- taken when a row is inserted, not when it commits: ids increase in commit order only because
-- one writer per database commits one transaction at a time (see ARCHITECTURE.md).
CREATE TABLE events (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind        TEXT NOT NULL,
    task_id     TEXT COLLATE "C",
    runner_id   TEXT,
    data        TEXT NOT NULL,                 -- JSON payload as sent on the SSE feed
    created_at  BIGINT NOT NULL
);
CREATE INDEX events_by_task ON events (task_id, id);
