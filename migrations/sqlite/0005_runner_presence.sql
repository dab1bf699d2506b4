-- Multi-node presence (`--cluster`) exists on PostgreSQL only: SQLite serves one server.
-- This file keeps the two dialects' migration numbers aligned and changes nothing.
SELECT 1;
