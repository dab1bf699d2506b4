-- Per-task limits and retries (issue 7). NULL means "the server's default".
-- (PostgreSQL twin of migrations/sqlite/0004_task_limits.sql.)
--   timeout_s:    an attempt running longer than this (from its assignment) is cancelled on the
--                 runner and requeued, or failed with error code 'timeout' on its last attempt.
--   max_attempts: how many attempts the task may use (lost runners and timeouts count).
--   retried_from: the task this one is a manual retry of (POST /api/v1/tasks/{id}/retry).
ALTER TABLE tasks ADD COLUMN timeout_s BIGINT CHECK (timeout_s BETWEEN 1 AND 604800);
ALTER TABLE tasks ADD COLUMN max_attempts BIGINT CHECK (max_attempts BETWEEN 1 AND 10);
ALTER TABLE tasks ADD COLUMN retried_from TEXT;
