-- Webhook delivery claims: a worker claims due deliveries before sending them, so that with
-- several server nodes (`--cluster`) each delivery is sent by one node. `claimed_by` is the
-- claim's token, `claimed_until` (epoch ms) when the claim lapses: a node that dies holding it
-- loses it then and another node sends the delivery. Both NULL while unclaimed. (PostgreSQL
-- twin of migrations/sqlite/0006_webhook_claims.sql.)
ALTER TABLE webhook_deliveries ADD COLUMN claimed_by TEXT;
ALTER TABLE webhook_deliveries ADD COLUMN claimed_until BIGINT;
