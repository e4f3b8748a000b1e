-- The in-memory routing index (DESIGN §2) follows these tables through
-- NOTIFY on channel `gateway_index`. NOTIFY is delivered at commit, in commit
-- order, so the listener sees changes exactly as they became visible.
--
-- Lead phones carry their full routing state (the hot, high-volume path needs
-- no round trip). Numbers and users carry only their id: they change rarely,
-- and the listener re-reads the committed row, which is always current.

CREATE FUNCTION index_notify_lead_phone() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    agent bigint;
    created double precision;
BEGIN
    IF TG_OP IN ('DELETE', 'UPDATE') THEN
        PERFORM pg_notify('gateway_index', json_build_object(
            't', 'lp-', 'a', OLD.account_id, 'p', OLD.e164, 'l', OLD.lead_id)::text);
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        -- FOR SHARE waits for a concurrent change of the lead's agent and then
        -- reads the committed value, so this event can never carry a stale agent
        -- that would arrive after the lead's own update event.
        SELECT primary_agent_id, extract(epoch FROM created_at)::double precision
          INTO agent, created
          FROM leads WHERE id = NEW.lead_id FOR SHARE;
        PERFORM pg_notify('gateway_index', json_build_object(
            't', 'lp+', 'a', NEW.account_id, 'p', NEW.e164, 'l', NEW.lead_id,
            'g', agent, 'c', created)::text);
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER lead_phones_index_notify
    AFTER INSERT OR DELETE OR UPDATE OF account_id, lead_id, e164 ON lead_phones
    FOR EACH ROW EXECUTE FUNCTION index_notify_lead_phone();

CREATE FUNCTION index_notify_lead() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    phones text[];
BEGIN
    SELECT array_agg(e164 ORDER BY e164) INTO phones FROM lead_phones WHERE lead_id = NEW.id;
    IF phones IS NOT NULL THEN
        PERFORM pg_notify('gateway_index', json_build_object(
            't', 'lead', 'a', NEW.account_id, 'l', NEW.id, 'g', NEW.primary_agent_id,
            'c', extract(epoch FROM NEW.created_at)::double precision, 'p', phones)::text);
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER leads_index_notify
    AFTER UPDATE OF primary_agent_id, created_at ON leads
    FOR EACH ROW
    WHEN (OLD.primary_agent_id IS DISTINCT FROM NEW.primary_agent_id
          OR OLD.created_at IS DISTINCT FROM NEW.created_at)
    EXECUTE FUNCTION index_notify_lead();

CREATE FUNCTION index_notify_number() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_TABLE_NAME = 'numbers' THEN
        PERFORM pg_notify('gateway_index', json_build_object(
            't', 'number', 'id', COALESCE(NEW.id, OLD.id))::text);
    ELSE
        PERFORM pg_notify('gateway_index', json_build_object(
            't', 'number', 'id', COALESCE(NEW.number_id, OLD.number_id))::text);
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER numbers_index_notify
    AFTER INSERT OR UPDATE OR DELETE ON numbers
    FOR EACH ROW EXECUTE FUNCTION index_notify_number();
CREATE TRIGGER number_route_targets_index_notify
    AFTER INSERT OR UPDATE OR DELETE ON number_route_targets
    FOR EACH ROW EXECUTE FUNCTION index_notify_number();

CREATE FUNCTION index_notify_user() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_TABLE_NAME = 'users' THEN
        PERFORM pg_notify('gateway_index', json_build_object(
            't', 'user', 'id', COALESCE(NEW.id, OLD.id))::text);
    ELSE
        PERFORM pg_notify('gateway_index', json_build_object(
            't', 'user', 'id', COALESCE(NEW.user_id, OLD.user_id))::text);
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER users_index_notify
    AFTER INSERT OR UPDATE OR DELETE ON users
    FOR EACH ROW EXECUTE FUNCTION index_notify_user();
CREATE TRIGGER user_offices_index_notify
    AFTER INSERT OR UPDATE OR DELETE ON user_offices
    FOR EACH ROW EXECUTE FUNCTION index_notify_user();
