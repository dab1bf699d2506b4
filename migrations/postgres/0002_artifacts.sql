-- Files a runner uploaded for a task (full outputs, reports). The bytes live in the blob store;
-- this row is the link, size and checksum. One row per (task, name): a newer attempt's upload
-- replaces an older one. (PostgreSQL twin of migrations/sqlite/0002_artifacts.sql.)
CREATE TABLE artifacts (
    task_id      TEXT COLLATE "C" NOT NULL REFERENCES tasks (id),
    name         TEXT COLLATE "C" NOT NULL,
    attempt      BIGINT NOT NULL,
    size         BIGINT NOT NULL,
    sha256       TEXT NOT NULL,                -- lowercase hex
    content_type TEXT NOT NULL,
    blob_key     TEXT NOT NULL,
    created_at   BIGINT NOT NULL,
    PRIMARY KEY (task_id, name)
);
