-- DAP schema v1 (SQLite dialect). Timestamps are Unix epoch milliseconds (INTEGER).
-- Applied migrations are never edited: change the schema with a new numbered file.

CREATE TABLE api_keys (
    id          TEXT PRIMARY KEY,           -- public part of the key, "dap_<id>_<secret>"
    name        TEXT NOT NULL,
    scope       TEXT NOT NULL CHECK (scope IN ('read', 'write', 'admin')),
    hash        TEXT NOT NULL,              -- argon2id PHC string of the whole key
    created_at  INTEGER NOT NULL,
    last_used_at INTEGER,
    revoked_at  INTEGER
);

CREATE TABLE runners (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    hash        TEXT NOT NULL,              -- argon2id PHC string of the enrolment credential
    created_at  INTEGER NOT NULL,
    revoked_at  INTEGER,
    last_seen_at INTEGER,
    hello       TEXT                        -- JSON of the last greeting (slots, operations, datasets)
);

CREATE TABLE tasks (
    id               TEXT PRIMARY KEY,
    operation_code   INTEGER NOT NULL,
    params           TEXT NOT NULL,          -- JSON
    status           TEXT NOT NULL CHECK (status IN ('queued', 'assigned', 'running', 'completed', 'failed', 'cancelled')),
    target_runner_id TEXT,                   -- set when the creator pinned the task to a runner
    runner_id        TEXT,                   -- runner of the current attempt
    attempt          INTEGER NOT NULL DEFAULT 0,
    progress         INTEGER NOT NULL DEFAULT 0 CHECK (progress BETWEEN 0 AND 100),
    stage            TEXT,
    message          TEXT,
    result_data      TEXT,                   -- JSON, set when completed
    error_code       TEXT,
    error_message    TEXT,
    created_at       INTEGER NOT NULL,
    assigned_at      INTEGER,
    started_at       INTEGER,
    finished_at      INTEGER,
    updated_at       INTEGER NOT NULL
);
CREATE INDEX tasks_by_status ON tasks (status, id);
CREATE INDEX tasks_by_runner ON tasks (runner_id, id);

-- Append-only log of task and runner events; its id is the SSE event id.
CREATE TABLE events (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    kind        TEXT NOT NULL,
    task_id     TEXT,
    runner_id   TEXT,
    data        TEXT NOT NULL,               -- JSON payload as sent on the SSE feed
    created_at  INTEGER NOT NULL
);
CREATE INDEX events_by_task ON events (task_id, id);
