-- Webhook delivery claims: a worker claims due deliveries before sending them, so that with
-- several server nodes (`--cluster`, PostgreSQL) each delivery is sent by one node. SQLite
-- serves one server, but the columns exist here too so that both dialects share the outbox
-- SQL. `claimed_by` is the claim's token, `claimed_until` (epoch ms) when the claim lapses;
-- both NULL while unclaimed.
ALTER TABLE webhook_deliveries ADD COLUMN claimed_by TEXT;
ALTER TABLE webhook_deliveries ADD COLUMN claimed_until INTEGER;
