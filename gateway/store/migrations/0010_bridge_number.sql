-- R11: an outbound call may show the account's bridge number as caller ID.
-- At most one per account, and never someone's personal number.
ALTER TABLE numbers
    ADD COLUMN bridge boolean NOT NULL DEFAULT false,
    ADD CONSTRAINT numbers_bridge_is_shared CHECK (NOT bridge OR kind <> 'personal');
CREATE UNIQUE INDEX numbers_one_bridge_per_account ON numbers (account_id) WHERE bridge;
