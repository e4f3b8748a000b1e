-- Missed-call text-back (issue 15, item 11): an unanswered caller gets a text
-- from the number, outside quiet hours, at most once per caller per period,
-- never after they texted STOP.
ALTER TABLE numbers
    ADD COLUMN missed_call_text       text CHECK (length(missed_call_text) BETWEEN 1 AND 640),
    ADD COLUMN missed_call_quiet_from text NOT NULL DEFAULT '21:00' CHECK (missed_call_quiet_from ~ '^[0-2][0-9]:[0-5][0-9]$'),
    ADD COLUMN missed_call_quiet_to   text NOT NULL DEFAULT '08:00' CHECK (missed_call_quiet_to ~ '^[0-2][0-9]:[0-5][0-9]$'),
    ADD COLUMN missed_call_every_s    integer NOT NULL DEFAULT 86400
                                      CHECK (missed_call_every_s BETWEEN 60 AND 2592000);

-- Who texted STOP (and not START since), per account: they get no automated text.
CREATE TABLE text_opt_outs (
    account_id bigint NOT NULL REFERENCES accounts ON DELETE CASCADE,
    e164       e164 NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (account_id, e164)
);

-- The last missed-call text per number and caller: the claim that makes it one per period.
CREATE TABLE missed_call_texts (
    number_id bigint NOT NULL REFERENCES numbers ON DELETE CASCADE,
    caller    e164 NOT NULL,
    sent_at   timestamptz NOT NULL,
    PRIMARY KEY (number_id, caller)
);
