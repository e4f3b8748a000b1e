-- Issue 13: every text batch fires two webhook triggers (messages, and
-- notifications when R8 raises any), and each asks webhooks_wanted() first.
-- As a SQL function with a sublink, Postgres cannot inline it, so it parsed
-- and planned it again in every transaction: about a fifth of the backend's
-- CPU for a one-text statement. In PL/pgSQL its plan is prepared once per
-- session. Same answer, same volatility.
CREATE OR REPLACE FUNCTION webhooks_wanted() RETURNS boolean LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN EXISTS (SELECT 1 FROM webhook_endpoints WHERE enabled);
END
$$;
