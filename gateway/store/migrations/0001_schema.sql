-- Entities of DESIGN §1. Invariants the database can hold live here:
-- composite (account_id, id) foreign keys keep every reference inside one
-- account, so a cross-account row cannot exist even if a query forgets a scope.

CREATE DOMAIN e164 AS text CHECK (VALUE ~ '^\+[1-9][0-9]{6,14}$');

CREATE TABLE accounts (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name        text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    plan        text NOT NULL DEFAULT 'standard' CHECK (plan IN ('standard', 'enterprise')),
    -- R9: usage over a package's included quantities is recorded, or blocked.
    over_quota  text NOT NULL DEFAULT 'record' CHECK (over_quota IN ('record', 'block')),
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE offices (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    account_id  bigint NOT NULL REFERENCES accounts ON DELETE CASCADE,
    name        text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    created_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (account_id, id),
    UNIQUE (account_id, name)
);

CREATE TABLE users (
    id                 bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    account_id         bigint NOT NULL REFERENCES accounts ON DELETE CASCADE,
    email              text NOT NULL CHECK (length(email) BETWEEN 3 AND 254 AND email LIKE '%_@_%'),
    name               text NOT NULL DEFAULT '' CHECK (length(name) <= 200),
    role               text NOT NULL CHECK (role IN ('owner', 'admin', 'agent')),
    package            text NOT NULL DEFAULT 'none' CHECK (package IN ('none', 'standard', 'upgraded')),
    sender_number_id   bigint,  -- R10 "Sender ID to Display"; FK added below numbers
    -- SIP URI of the user's phone, or an E.164 reached through the outbound trunk.
    call_destination   text CHECK (call_destination ~ '^(sips?:.+|\+[1-9][0-9]{6,14})$'),
    -- R9 allowances of the user's package; NULL: no allowance set, so never over quota.
    included_minutes   integer CHECK (included_minutes >= 0),
    included_segments  integer CHECK (included_segments >= 0),
    created_at         timestamptz NOT NULL DEFAULT now(),
    UNIQUE (account_id, id)
);
CREATE UNIQUE INDEX users_email_per_account ON users (account_id, lower(email));
-- R13 speaks of "the account owner": one per account.
CREATE UNIQUE INDEX users_one_owner_per_account ON users (account_id) WHERE role = 'owner';

CREATE TABLE user_offices (
    account_id  bigint NOT NULL,
    user_id     bigint NOT NULL,
    office_id   bigint NOT NULL,
    PRIMARY KEY (user_id, office_id),
    FOREIGN KEY (account_id, user_id) REFERENCES users (account_id, id) ON DELETE CASCADE,
    FOREIGN KEY (account_id, office_id) REFERENCES offices (account_id, id) ON DELETE CASCADE
);
CREATE INDEX user_offices_office ON user_offices (office_id);

CREATE TABLE numbers (
    id                       bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    account_id               bigint NOT NULL REFERENCES accounts ON DELETE CASCADE,
    e164                     e164 NOT NULL UNIQUE,
    kind                     text NOT NULL CHECK (kind IN ('company', 'office', 'personal')),
    owner_user_id            bigint,
    office_id                bigint,
    description              text NOT NULL DEFAULT '' CHECK (length(description) <= 200),
    -- R4 unknown-caller route; its users are in number_route_targets.
    unknown_route            text NOT NULL DEFAULT 'user'
                             CHECK (unknown_route IN ('user', 'ring_all', 'round_robin', 'sequential')),
    unknown_step_timeout_s   integer NOT NULL DEFAULT 20 CHECK (unknown_step_timeout_s BETWEEN 1 AND 300),
    source                   text CHECK (length(source) BETWEEN 1 AND 200),
    tag                      text CHECK (length(tag) BETWEEN 1 AND 200),
    -- R7: the provider's concurrent inbound call limit, 50 unless configured.
    max_concurrent_calls     integer NOT NULL DEFAULT 50 CHECK (max_concurrent_calls BETWEEN 1 AND 10000),
    provider                 text NOT NULL DEFAULT 'twilio' CHECK (provider IN ('twilio', 'telnyx', 'sip')),
    created_at               timestamptz NOT NULL DEFAULT now(),
    UNIQUE (account_id, id),
    -- Deleting a user or office that still holds a number is refused: release it first.
    FOREIGN KEY (account_id, owner_user_id) REFERENCES users (account_id, id),
    FOREIGN KEY (account_id, office_id) REFERENCES offices (account_id, id),
    CONSTRAINT numbers_kind_shape CHECK (
        CASE kind
            WHEN 'personal' THEN owner_user_id IS NOT NULL AND office_id IS NULL
            WHEN 'office'   THEN owner_user_id IS NULL AND office_id IS NOT NULL
            ELSE owner_user_id IS NULL  -- company: account-wide, optionally assigned to a group
        END
    )
);
-- DESIGN §1: at most one personal number per user.
CREATE UNIQUE INDEX numbers_one_personal_per_user ON numbers (owner_user_id) WHERE kind = 'personal';
-- R13: one company number per group/office.
CREATE UNIQUE INDEX numbers_one_company_per_office ON numbers (office_id) WHERE kind = 'company';

ALTER TABLE users
    ADD FOREIGN KEY (account_id, sender_number_id) REFERENCES numbers (account_id, id)
    ON DELETE SET NULL (sender_number_id);

-- DESIGN §1: a personal number requires its owner's `upgraded` package.
CREATE FUNCTION numbers_personal_requires_upgraded() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.kind = 'personal' AND NOT EXISTS (
        SELECT 1 FROM users WHERE id = NEW.owner_user_id AND package = 'upgraded'
    ) THEN
        RAISE EXCEPTION 'a personal number requires its owner to have the upgraded package'
            USING ERRCODE = 'check_violation', CONSTRAINT = 'numbers_personal_requires_upgraded';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER numbers_personal_requires_upgraded
    BEFORE INSERT OR UPDATE OF kind, owner_user_id ON numbers
    FOR EACH ROW EXECUTE FUNCTION numbers_personal_requires_upgraded();

-- The users an unknown-caller route rings, in hunt order (R4).
CREATE TABLE number_route_targets (
    account_id  bigint NOT NULL,
    number_id   bigint NOT NULL,
    position    smallint NOT NULL CHECK (position >= 0),
    user_id     bigint NOT NULL,
    PRIMARY KEY (number_id, position),
    UNIQUE (number_id, user_id),
    FOREIGN KEY (account_id, number_id) REFERENCES numbers (account_id, id) ON DELETE CASCADE,
    FOREIGN KEY (account_id, user_id) REFERENCES users (account_id, id) ON DELETE CASCADE
);
CREATE INDEX number_route_targets_user ON number_route_targets (user_id);

CREATE TABLE leads (
    -- BY DEFAULT: bulk imports reserve ids with nextval() and COPY them explicitly.
    id                bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    account_id        bigint NOT NULL REFERENCES accounts ON DELETE CASCADE,
    name              text NOT NULL DEFAULT '' CHECK (length(name) <= 200),
    -- A lead keeps exactly one primary agent and exactly one source (R8).
    primary_agent_id  bigint NOT NULL,
    source            text NOT NULL CHECK (length(source) BETWEEN 1 AND 200),
    created_at        timestamptz NOT NULL DEFAULT now(),
    UNIQUE (account_id, id),
    FOREIGN KEY (account_id, primary_agent_id) REFERENCES users (account_id, id)
);
CREATE INDEX leads_primary_agent ON leads (primary_agent_id);

CREATE TABLE lead_phones (
    account_id  bigint NOT NULL,
    lead_id     bigint NOT NULL,
    e164        e164 NOT NULL,
    label       text NOT NULL DEFAULT '' CHECK (length(label) <= 50),
    PRIMARY KEY (lead_id, e164),
    FOREIGN KEY (account_id, lead_id) REFERENCES leads (account_id, id) ON DELETE CASCADE
);
-- Routing looks a caller up per account (R1-R3): duplicates across leads are allowed.
CREATE INDEX lead_phones_lookup ON lead_phones (account_id, e164);

CREATE TABLE lead_tags (
    account_id  bigint NOT NULL,
    lead_id     bigint NOT NULL,
    tag         text NOT NULL CHECK (length(tag) BETWEEN 1 AND 200),
    PRIMARY KEY (lead_id, tag),
    FOREIGN KEY (account_id, lead_id) REFERENCES leads (account_id, id) ON DELETE CASCADE
);

CREATE TABLE messages (
    id                    bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    account_id            bigint NOT NULL REFERENCES accounts ON DELETE CASCADE,
    number_id             bigint,
    direction             text NOT NULL CHECK (direction IN ('inbound', 'outbound')),
    provider              text NOT NULL CHECK (provider IN ('twilio', 'telnyx', 'sip')),
    provider_message_id   text NOT NULL CHECK (length(provider_message_id) BETWEEN 1 AND 200),
    from_e164             e164 NOT NULL,
    to_e164               e164 NOT NULL,
    body                  text NOT NULL DEFAULT '',
    media                 jsonb NOT NULL DEFAULT '[]',
    segments              integer NOT NULL DEFAULT 1 CHECK (segments >= 0),
    user_id               bigint,
    status                text NOT NULL
                          CHECK (status IN ('received', 'undelivered_no_target', 'queued', 'sending',
                                            'sent', 'delivered', 'undelivered', 'failed')),
    error_code            text,
    created_at            timestamptz NOT NULL DEFAULT now(),
    updated_at            timestamptz NOT NULL DEFAULT now(),
    UNIQUE (account_id, id),
    -- DESIGN §5: the atomic dedupe claim for redelivered webhooks.
    UNIQUE (provider, provider_message_id),
    FOREIGN KEY (account_id, number_id) REFERENCES numbers (account_id, id) ON DELETE SET NULL (number_id),
    FOREIGN KEY (account_id, user_id) REFERENCES users (account_id, id) ON DELETE SET NULL (user_id)
);

CREATE TABLE call_records (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    account_id      bigint NOT NULL REFERENCES accounts ON DELETE CASCADE,
    number_id       bigint,
    sip_call_id     text NOT NULL CHECK (length(sip_call_id) BETWEEN 1 AND 500),
    direction       text NOT NULL CHECK (direction IN ('inbound', 'outbound')),
    caller_e164     text NOT NULL,
    callee_e164     text NOT NULL,
    targets_tried   bigint[] NOT NULL DEFAULT '{}',
    answered_by     bigint,
    invited_at      timestamptz NOT NULL,
    answered_at     timestamptz,
    ended_at        timestamptz NOT NULL,
    disposition     text NOT NULL
                    CHECK (disposition IN ('answered', 'busy_limit', 'no_answer', 'canceled', 'rejected', 'failed')),
    UNIQUE (account_id, id),
    -- Replays (outbox, retries) write a call once.
    UNIQUE (sip_call_id, direction),
    CHECK (answered_at IS NULL OR (answered_at >= invited_at AND ended_at >= answered_at)),
    FOREIGN KEY (account_id, number_id) REFERENCES numbers (account_id, id) ON DELETE SET NULL (number_id),
    FOREIGN KEY (account_id, answered_by) REFERENCES users (account_id, id) ON DELETE SET NULL (answered_by)
);

CREATE TABLE timeline_events (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    account_id       bigint NOT NULL,
    lead_id          bigint NOT NULL,
    number_id        bigint,
    channel          text NOT NULL CHECK (channel IN ('call', 'text')),
    direction        text NOT NULL CHECK (direction IN ('inbound', 'outbound')),
    agent_id         bigint,
    -- Why this lead got the record: existing_lead, duplicate_same_agent, ... (R1-R6).
    reason           text NOT NULL CHECK (length(reason) BETWEEN 1 AND 64),
    disposition      text,
    duration_s       integer CHECK (duration_s >= 0),
    message_id       bigint,
    call_record_id   bigint,
    occurred_at      timestamptz NOT NULL DEFAULT now(),
    ended_at         timestamptz,
    idempotency_key  text UNIQUE,
    FOREIGN KEY (account_id, lead_id) REFERENCES leads (account_id, id) ON DELETE CASCADE,
    FOREIGN KEY (account_id, number_id) REFERENCES numbers (account_id, id) ON DELETE SET NULL (number_id),
    FOREIGN KEY (account_id, agent_id) REFERENCES users (account_id, id) ON DELETE SET NULL (agent_id),
    FOREIGN KEY (account_id, message_id) REFERENCES messages (account_id, id) ON DELETE SET NULL (message_id),
    FOREIGN KEY (account_id, call_record_id) REFERENCES call_records (account_id, id)
        ON DELETE SET NULL (call_record_id)
);
CREATE INDEX timeline_events_lead ON timeline_events (lead_id, occurred_at DESC);

CREATE TABLE notifications (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    account_id       bigint NOT NULL,
    user_id          bigint NOT NULL,
    number_id        bigint,
    kind             text NOT NULL DEFAULT 'unknown_caller' CHECK (kind IN ('unknown_caller')),
    channel          text NOT NULL CHECK (channel IN ('call', 'text')),
    -- The call or text that raised it: one notification per event and routed user.
    event_key        text NOT NULL CHECK (length(event_key) BETWEEN 1 AND 300),
    caller_e164      e164 NOT NULL,
    -- Copied from the number when raised, so later edits of the number do not rewrite history (R8).
    source           text,
    tag              text,
    state            text NOT NULL DEFAULT 'open' CHECK (state IN ('open', 'closed')),
    action           text CHECK (action IN ('new_lead', 'associate')),
    lead_id          bigint,
    call_record_id   bigint,
    message_id       bigint,
    created_at       timestamptz NOT NULL DEFAULT now(),
    closed_at        timestamptz,
    closed_by        bigint,
    CHECK ((state = 'open') = (closed_at IS NULL)),
    FOREIGN KEY (account_id, user_id) REFERENCES users (account_id, id) ON DELETE CASCADE,
    FOREIGN KEY (account_id, number_id) REFERENCES numbers (account_id, id) ON DELETE SET NULL (number_id),
    FOREIGN KEY (account_id, lead_id) REFERENCES leads (account_id, id) ON DELETE SET NULL (lead_id),
    FOREIGN KEY (account_id, closed_by) REFERENCES users (account_id, id) ON DELETE SET NULL (closed_by),
    FOREIGN KEY (account_id, call_record_id) REFERENCES call_records (account_id, id)
        ON DELETE SET NULL (call_record_id),
    FOREIGN KEY (account_id, message_id) REFERENCES messages (account_id, id) ON DELETE SET NULL (message_id)
);
CREATE INDEX notifications_user_state ON notifications (user_id, state, created_at DESC);
CREATE UNIQUE INDEX notifications_once_per_event_and_user ON notifications (event_key, user_id);

-- R9: usage is charged to users, never to numbers; the number is kept only as provenance.
CREATE TABLE usage_ledger (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    account_id       bigint NOT NULL,
    user_id          bigint NOT NULL,
    period           date NOT NULL CHECK (extract(day FROM period) = 1),
    kind             text NOT NULL CHECK (kind IN ('call_minutes', 'text_segments')),
    quantity         integer NOT NULL CHECK (quantity >= 0),
    over_quota       boolean NOT NULL DEFAULT false,
    number_id        bigint,
    call_record_id   bigint,
    message_id       bigint,
    idempotency_key  text NOT NULL UNIQUE,
    created_at       timestamptz NOT NULL DEFAULT now(),
    CHECK ((call_record_id IS NULL) <> (message_id IS NULL)),
    -- Billing history outlives a user only if the user is deactivated, not deleted.
    FOREIGN KEY (account_id, user_id) REFERENCES users (account_id, id),
    FOREIGN KEY (account_id, number_id) REFERENCES numbers (account_id, id) ON DELETE SET NULL (number_id),
    FOREIGN KEY (account_id, call_record_id) REFERENCES call_records (account_id, id),
    FOREIGN KEY (account_id, message_id) REFERENCES messages (account_id, id)
);
CREATE INDEX usage_ledger_user_period ON usage_ledger (user_id, period);

-- R13: 2700 cents a month per purchased number, charged to the account.
CREATE TABLE charges (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    account_id    bigint NOT NULL REFERENCES accounts ON DELETE CASCADE,
    number_id     bigint,
    e164          e164 NOT NULL,
    kind          text NOT NULL DEFAULT 'number_monthly' CHECK (kind IN ('number_monthly')),
    amount_cents  integer NOT NULL CHECK (amount_cents >= 0),
    currency      text NOT NULL DEFAULT 'USD' CHECK (currency ~ '^[A-Z]{3}$'),
    started_at    timestamptz NOT NULL DEFAULT now(),
    ended_at      timestamptz,
    CHECK (ended_at IS NULL OR ended_at >= started_at),
    FOREIGN KEY (account_id, number_id) REFERENCES numbers (account_id, id) ON DELETE SET NULL (number_id)
);
-- One running charge per number.
CREATE UNIQUE INDEX charges_one_open_per_number ON charges (number_id) WHERE ended_at IS NULL;
