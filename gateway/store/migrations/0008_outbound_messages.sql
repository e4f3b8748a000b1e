-- Outbound texts: a client's Idempotency-Key makes a retried request return the
-- first one's message instead of sending twice; the provider's id arrives after
-- the send, so until then the message carries a local placeholder id.
ALTER TABLE messages
    ADD COLUMN idempotency_key text CHECK (length(idempotency_key) BETWEEN 1 AND 200),
    ADD COLUMN sent_by bigint,
    ADD FOREIGN KEY (account_id, sent_by) REFERENCES users (account_id, id) ON DELETE SET NULL (sent_by);
CREATE UNIQUE INDEX messages_idempotency ON messages (account_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
