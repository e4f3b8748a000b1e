-- Bulk imports set `SET LOCAL gateway.bulk = 'on'`: the row triggers stay quiet
-- and the importer sends one {"t":"reload"} at the end, so the index reloads
-- once instead of digesting (and row-locking for) every imported phone.

CREATE OR REPLACE FUNCTION index_notify_lead_phone() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    agent bigint;
    created double precision;
BEGIN
    IF current_setting('gateway.bulk', true) = 'on' THEN
        RETURN NULL;
    END IF;
    IF TG_OP IN ('DELETE', 'UPDATE') THEN
        PERFORM pg_notify('gateway_index', json_build_object(
            't', 'lp-', 'a', OLD.account_id, 'p', OLD.e164, 'l', OLD.lead_id)::text);
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        SELECT primary_agent_id, extract(epoch FROM created_at)::double precision
          INTO agent, created
          FROM leads WHERE id = NEW.lead_id FOR SHARE;
        PERFORM pg_notify('gateway_index', json_build_object(
            't', 'lp+', 'a', NEW.account_id, 'p', NEW.e164, 'l', NEW.lead_id,
            'g', agent, 'c', created)::text);
    END IF;
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION index_notify_lead() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    phones text[];
BEGIN
    IF current_setting('gateway.bulk', true) = 'on' THEN
        RETURN NULL;
    END IF;
    SELECT array_agg(e164 ORDER BY e164) INTO phones FROM lead_phones WHERE lead_id = NEW.id;
    IF phones IS NOT NULL THEN
        PERFORM pg_notify('gateway_index', json_build_object(
            't', 'lead', 'a', NEW.account_id, 'l', NEW.id, 'g', NEW.primary_agent_id,
            'c', extract(epoch FROM NEW.created_at)::double precision, 'p', phones)::text);
    END IF;
    RETURN NULL;
END $$;
