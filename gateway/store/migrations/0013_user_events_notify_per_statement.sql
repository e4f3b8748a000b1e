-- One notification per user per statement, not per row: a batch of texts
-- (issue 13) inserts hundreds of events in one statement, and the listener
-- only needs to know whose stream has news. Postgres folds identical
-- notifications of a transaction anyway; this saves the per-row trigger call.
DROP TRIGGER user_events_notify ON user_events;
DROP FUNCTION user_events_notify();
CREATE FUNCTION user_events_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('gateway_events', user_id::text) FROM (SELECT DISTINCT user_id FROM inserted) AS users;
    RETURN NULL;
END $$;
CREATE TRIGGER user_events_notify AFTER INSERT ON user_events
    REFERENCING NEW TABLE AS inserted
    FOR EACH STATEMENT EXECUTE FUNCTION user_events_notify();
