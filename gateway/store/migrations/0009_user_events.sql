-- What each user's real-time stream (GET /v1/events) delivers, in order. Rows
-- are written in the same transaction as the text or notification they
-- announce, so an event exists exactly when its cause was committed; a client
-- reconnecting with Last-Event-ID reads what it missed from here.
CREATE TABLE user_events (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    account_id  bigint NOT NULL,
    user_id     bigint NOT NULL,
    kind        text NOT NULL CHECK (kind IN ('text', 'notification')),
    payload     jsonb NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    FOREIGN KEY (account_id, user_id) REFERENCES users (account_id, id) ON DELETE CASCADE
);
CREATE INDEX user_events_stream ON user_events (user_id, id);

CREATE FUNCTION user_events_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('gateway_events', NEW.user_id::text);
    RETURN NULL;
END $$;
CREATE TRIGGER user_events_notify AFTER INSERT ON user_events
    FOR EACH ROW EXECUTE FUNCTION user_events_notify();
