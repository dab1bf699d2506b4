-- The event log without AUTOINCREMENT. AUTOINCREMENT made every event insert also update the
-- `sqlite_sequence` table (one more b-tree written per event, three events per task). Ids stay
-- increasing without it: SQLite gives a new row max(id) + 1, and events are never deleted, so
-- an id is never reused. Existing events keep their ids (SSE `Last-Event-ID` resumes as before).
CREATE TABLE events_new (
    id          INTEGER PRIMARY KEY,
    kind        TEXT NOT NULL,
    task_id     TEXT,
    runner_id   TEXT,
    data        TEXT NOT NULL,               -- JSON payload as sent on the SSE feed
    created_at  INTEGER NOT NULL
);
INSERT INTO events_new (id, kind, task_id, runner_id, data, created_at)
    SELECT id, kind, task_id, runner_id, data, created_at FROM events ORDER BY id;
DROP TABLE events;
ALTER TABLE events_new RENAME TO events;
CREATE INDEX events_by_task ON events (task_id, id);
