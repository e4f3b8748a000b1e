-- Idempotency keys belong to the user who sent them, not the whole account: a
-- colleague reusing a key got another user's message back and their own text
-- was silently not sent. The fingerprint of the first request lets a reuse
-- with a different request be refused (422) instead of answered as a replay.
ALTER TABLE messages ADD COLUMN idempotency_fingerprint bytea;
DROP INDEX messages_idempotency;
CREATE UNIQUE INDEX messages_idempotency ON messages (account_id, sent_by, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
