-- R7 across several gateways (issue 14): the cluster-wide count of inbound
-- calls in progress per number, and the leases that let a dead gateway's
-- slots come back.
--
-- UNLOGGED: both tables describe calls in progress, which do not survive a
-- Postgres crash either; a crash empties them and every live gateway puts
-- its own calls back (reconciliation), so nothing here is worth a WAL flush
-- per call.

CREATE UNLOGGED TABLE gateway_instances (
    id           text PRIMARY KEY CHECK (length(id) BETWEEN 1 AND 100),
    sip_address  text NOT NULL,
    started_at   timestamptz NOT NULL DEFAULT now(),
    lease_until  timestamptz NOT NULL
);

CREATE UNLOGGED TABLE call_slots (
    instance_id  text NOT NULL,
    slot_id      bigint NOT NULL,
    number_id    bigint NOT NULL,
    sip_call_id  text NOT NULL,
    taken_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (instance_id, slot_id)
);
CREATE INDEX call_slots_number ON call_slots (number_id);

-- Admit a batch of calls in one statement: for each (number, slot) in number
-- order, under a transaction-level advisory lock on the number (so two
-- gateways admitting to one number take turns, and batches that touch several
-- numbers lock them in the same order and cannot deadlock), count the slots
-- held and take one when fewer than the limit are. Returns the slot ids
-- admitted, or NULL when the caller's lease has expired: a gateway that other
-- gateways may already have reclaimed must not admit on the cluster counter.
CREATE FUNCTION take_call_slots(
    p_instance text, p_numbers bigint[], p_slots bigint[], p_limits int[], p_call_ids text[]
) RETURNS bigint[] LANGUAGE plpgsql AS $$
DECLARE
    r record;
    held int;
    admitted bigint[] := '{}';
BEGIN
    IF NOT EXISTS (SELECT 1 FROM gateway_instances WHERE id = p_instance AND lease_until > now()) THEN
        RETURN NULL;
    END IF;
    FOR r IN
        SELECT * FROM unnest(p_numbers, p_slots, p_limits, p_call_ids) AS t(number_id, slot_id, lim, call_id)
        ORDER BY number_id, slot_id
    LOOP
        PERFORM pg_advisory_xact_lock(1668047219, (r.number_id % 2147483647)::int);
        SELECT count(*) INTO held FROM call_slots WHERE number_id = r.number_id;
        IF held < r.lim THEN
            INSERT INTO call_slots (instance_id, slot_id, number_id, sip_call_id)
            VALUES (p_instance, r.slot_id, r.number_id, r.call_id);
            admitted := admitted || r.slot_id;
        END IF;
    END LOOP;
    RETURN admitted;
END
$$;
