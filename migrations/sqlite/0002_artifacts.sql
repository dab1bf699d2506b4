-- Files a runner uploaded for a task (full outputs, reports). The bytes live in the blob store;
-- this row is the link, size and checksum. One row per (task, name): a newer attempt's upload
-- replaces an older one.
CREATE TABLE artifacts (
    task_id      TEXT NOT NULL REFERENCES tasks (id),
    name         TEXT NOT NULL,
    attempt      INTEGER NOT NULL,
    size         INTEGER NOT NULL,
    sha256       TEXT NOT NULL,               -- lowercase hex
    content_type TEXT NOT NULL,
    blob_key     TEXT NOT NULL,
    created_at   INTEGER NOT NULL,
    PRIMARY KEY (task_id, name)
);
