-- R4 round-robin: one cursor per number, shared by every gateway process, so
-- the rotation is fair across restarts and replicas.
CREATE TABLE round_robin_cursors (
    number_id  bigint PRIMARY KEY REFERENCES numbers ON DELETE CASCADE,
    turns      bigint NOT NULL DEFAULT 0
);

-- API keys: `gk_<prefix>_<secret>`. Only a SHA-256 digest of the whole key is
-- stored; the prefix finds the row, the digest is compared in constant time.
CREATE TABLE api_keys (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    account_id    bigint NOT NULL,
    user_id       bigint NOT NULL,
    prefix        text NOT NULL UNIQUE CHECK (prefix ~ '^[A-Za-z0-9]{8,32}$'),
    digest        bytea NOT NULL CHECK (length(digest) = 32),
    label         text NOT NULL DEFAULT '' CHECK (length(label) <= 100),
    created_at    timestamptz NOT NULL DEFAULT now(),
    last_used_at  timestamptz,
    revoked_at    timestamptz,
    FOREIGN KEY (account_id, user_id) REFERENCES users (account_id, id) ON DELETE CASCADE
);
CREATE INDEX api_keys_user ON api_keys (user_id);
