-- Event webhooks to the CRM (issue 16, item 1), signed per Standard Webhooks.
--
-- A delivery is queued in the same transaction as the fact it reports, by
-- statement-level triggers on the tables that hold the facts, so every write
-- path (the outbox, the text group commit, the API) queues it and a crash
-- loses nothing. One delivery per (endpoint, event): a replayed fact queues
-- nothing twice. The gateway's sender claims due deliveries with SKIP LOCKED,
-- so several gateways share the queue.
CREATE TABLE webhook_endpoints (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    account_id   bigint NOT NULL REFERENCES accounts ON DELETE CASCADE,
    url          text NOT NULL CHECK (length(url) BETWEEN 1 AND 2000),
    event_types  text[] NOT NULL DEFAULT '{}',  -- empty: every type
    secret       text NOT NULL,  -- whsec_<base64>: shown once, at creation
    enabled      boolean NOT NULL DEFAULT true,
    created_at   timestamptz NOT NULL DEFAULT now(),
    UNIQUE (account_id, id)
);
CREATE INDEX webhook_endpoints_account ON webhook_endpoints (account_id) WHERE enabled;

CREATE TABLE webhook_deliveries (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    account_id       bigint NOT NULL,
    endpoint_id      bigint NOT NULL,
    event_id         text NOT NULL,  -- the webhook-id header: stable across retries and endpoints
    event_type       text NOT NULL,
    payload          jsonb NOT NULL,  -- {"type", "timestamp", "data"}
    status           text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts         integer NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    last_status      integer,
    last_error       text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    delivered_at     timestamptz,
    UNIQUE (endpoint_id, event_id),
    FOREIGN KEY (account_id, endpoint_id) REFERENCES webhook_endpoints (account_id, id) ON DELETE CASCADE
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at) WHERE status = 'pending';
CREATE INDEX webhook_deliveries_endpoint ON webhook_deliveries (endpoint_id, id DESC);

-- Fan ``events`` (a JSON array of {account_id, id, type, at, data}) out to the
-- enabled endpoints of their accounts that take their type.
CREATE FUNCTION webhook_fanout(events jsonb) RETURNS void LANGUAGE sql AS $$
    INSERT INTO webhook_deliveries (account_id, endpoint_id, event_id, event_type, payload)
    SELECT e.account_id, e.id, ev.id, ev.type, jsonb_build_object('type', ev.type, 'timestamp', ev.at, 'data', ev.data)
      FROM jsonb_to_recordset(events) AS ev(account_id bigint, id text, type text, at timestamptz, data jsonb)
      JOIN webhook_endpoints e
        ON e.account_id = ev.account_id AND e.enabled
       AND (e.event_types = '{}' OR ev.type = ANY (e.event_types))
     ORDER BY e.id, ev.id
    ON CONFLICT (endpoint_id, event_id) DO NOTHING
$$;

-- Whether any endpoint is enabled at all. Each trigger asks first, before
-- it reads its rows: a gateway whose CRMs take no webhooks pays one index
-- probe per statement; the fan-out's join picks the accounts that listen.
CREATE FUNCTION webhooks_wanted() RETURNS boolean LANGUAGE sql STABLE AS $$
    SELECT EXISTS (SELECT 1 FROM webhook_endpoints WHERE enabled)
$$;

CREATE FUNCTION webhook_call_ended() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF webhooks_wanted() THEN
        PERFORM webhook_fanout(jsonb_agg(jsonb_build_object(
            'account_id', r.account_id, 'id', 'call.ended_' || r.id, 'type', 'call.ended', 'at', r.ended_at,
            'data', jsonb_build_object(
                'call_id', r.id, 'sip_call_id', r.sip_call_id, 'number_id', r.number_id,
                'direction', r.direction, 'caller', r.caller_e164, 'callee', r.callee_e164,
                'disposition', r.disposition, 'answered_by', r.answered_by, 'targets_tried', r.targets_tried,
                'invited_at', r.invited_at, 'answered_at', r.answered_at, 'ended_at', r.ended_at,
                'steps', r.steps))))
          FROM new_rows r;
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER webhook_call_ended AFTER INSERT ON call_records
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION webhook_call_ended();

CREATE FUNCTION webhook_text_received() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF webhooks_wanted() THEN
        PERFORM webhook_fanout(jsonb_agg(jsonb_build_object(
            'account_id', r.account_id, 'id', 'text.received_' || r.id, 'type', 'text.received',
            'at', r.created_at,
            'data', jsonb_build_object(
                'message_id', r.id, 'number_id', r.number_id, 'from', r.from_e164, 'to', r.to_e164,
                'body', r.body, 'media', r.media, 'segments', r.segments, 'user_id', r.user_id,
                'created_at', r.created_at))))
          FROM new_rows r WHERE r.direction = 'inbound'
        HAVING count(*) > 0;
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER webhook_text_received AFTER INSERT ON messages
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION webhook_text_received();

CREATE FUNCTION webhook_text_status() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF webhooks_wanted() THEN
        PERFORM webhook_fanout(jsonb_agg(jsonb_build_object(
            'account_id', n.account_id, 'id', 'text.status_' || n.id || '_' || n.status, 'type', 'text.status',
            'at', n.updated_at,
            'data', jsonb_build_object(
                'message_id', n.id, 'number_id', n.number_id, 'direction', n.direction, 'to', n.to_e164,
                'status', n.status, 'previous_status', o.status, 'error_code', n.error_code))))
          FROM new_rows n JOIN old_rows o ON o.id = n.id
         WHERE n.status IS DISTINCT FROM o.status
        HAVING count(*) > 0;
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER webhook_text_status AFTER UPDATE ON messages
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION webhook_text_status();

-- R8: one event per notification raised; a lead made from one is announced
-- once per lead, however many users' notifications it settled.
CREATE FUNCTION webhook_notification_created() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF webhooks_wanted() THEN
        PERFORM webhook_fanout(jsonb_agg(jsonb_build_object(
            'account_id', r.account_id, 'id', 'notification.created_' || r.id, 'type', 'notification.created',
            'at', r.created_at,
            'data', jsonb_build_object(
                'notification_id', r.id, 'user_id', r.user_id, 'number_id', r.number_id, 'channel', r.channel,
                'caller', r.caller_e164, 'source', r.source, 'tag', r.tag, 'call_id', r.call_record_id,
                'message_id', r.message_id, 'created_at', r.created_at))))
          FROM new_rows r;
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER webhook_notification_created AFTER INSERT ON notifications
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION webhook_notification_created();

CREATE FUNCTION webhook_lead_from_notification() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF webhooks_wanted() THEN
        PERFORM webhook_fanout(jsonb_agg(jsonb_build_object(
            'account_id', n.account_id, 'id', 'lead.created_from_notification_' || n.lead_id,
            'type', 'lead.created_from_notification', 'at', n.closed_at,
            'data', jsonb_build_object(
                'lead_id', n.lead_id, 'notification_id', n.id, 'number_id', n.number_id, 'channel', n.channel,
                'caller', n.caller_e164, 'source', n.source, 'tag', n.tag, 'settled_by', n.closed_by))))
          FROM new_rows n JOIN old_rows o ON o.id = n.id
         WHERE n.action = 'new_lead' AND n.lead_id IS NOT NULL AND o.action IS DISTINCT FROM 'new_lead'
        HAVING count(*) > 0;
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER webhook_lead_from_notification AFTER UPDATE ON notifications
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION webhook_lead_from_notification();
