-- Per-number and account-wide analytics (issue 16, item 2).
--
-- Days: call records roll up, as they are inserted, into one row per number
-- and UTC day and one per account and day (number_id 0), so a year of a busy
-- account is 365 rows whatever its call count. A statement-level trigger
-- aggregates each INSERT's new rows once (the outbox writes a batch per
-- statement), so the cost is per batch, not per call. Time to answer is kept
-- as a histogram of whole seconds (index i = i seconds, the last = 120 s or
-- more), which adds up across days and numbers and gives p50/p90 to the second.
--
-- Hours: read from the records themselves (at most 31 days), through the
-- covering indexes below: an index-only range scan of the period. Captured
-- leads are read the same way, by day or hour; texts through a BRIN index.
CREATE TABLE call_stats_daily (
    account_id   bigint NOT NULL REFERENCES accounts ON DELETE CASCADE,
    number_id    bigint NOT NULL,  -- 0: the whole account; -1: records without a number
    day          timestamptz NOT NULL,
    offered      integer NOT NULL,
    answered     integer NOT NULL,
    missed       integer NOT NULL,
    over_limit   integer NOT NULL,
    abandoned    integer NOT NULL,
    failed       integer NOT NULL,
    outbound     integer NOT NULL,
    talk_s       double precision NOT NULL,
    answer_hist  integer[] NOT NULL CHECK (cardinality(answer_hist) = 121),
    PRIMARY KEY (account_id, number_id, day)
);

-- The histogram of ``secs`` (whole seconds, counted ``ns`` times each).
CREATE FUNCTION answer_histogram(secs integer[], ns bigint[]) RETURNS integer[]
LANGUAGE sql IMMUTABLE AS $$
    SELECT array_agg(coalesce(x.n, 0)::integer ORDER BY b)
      FROM generate_series(0, 120) AS b LEFT JOIN unnest(secs, ns) AS x(s, n) ON x.s = b
$$;

CREATE FUNCTION histogram_sum(a integer[], b integer[]) RETURNS integer[]
LANGUAGE sql IMMUTABLE AS $$
    SELECT array_agg(x + y ORDER BY i) FROM unnest(a, b) WITH ORDINALITY AS t(x, y, i)
$$;

-- The upsert of the days that the call records in ``source`` add to: each
-- record counts for its number and for its account (number 0). Text, so the
-- trigger can run it over its transition table and this migration over the
-- records written before it.
CREATE FUNCTION call_stats_upsert_sql(source text) RETURNS text LANGUAGE sql IMMUTABLE AS $fn$
SELECT format($q$
    INSERT INTO call_stats_daily AS s (account_id, number_id, day, offered, answered, missed, over_limit,
                                       abandoned, failed, outbound, talk_s, answer_hist)
    SELECT account_id, number_id, day,
           coalesce(sum(n) FILTER (WHERE direction = 'inbound'), 0),
           coalesce(sum(n) FILTER (WHERE direction = 'inbound' AND disposition = 'answered'), 0),
           coalesce(sum(n) FILTER (WHERE direction = 'inbound' AND disposition IN ('no_answer', 'rejected')), 0),
           coalesce(sum(n) FILTER (WHERE direction = 'inbound' AND disposition = 'busy_limit'), 0),
           coalesce(sum(n) FILTER (WHERE direction = 'inbound' AND disposition = 'canceled'), 0),
           coalesce(sum(n) FILTER (WHERE direction = 'inbound' AND disposition = 'failed'), 0),
           coalesce(sum(n) FILTER (WHERE direction = 'outbound'), 0),
           coalesce(sum(talk), 0),
           answer_histogram(array_agg(sec) FILTER (WHERE sec IS NOT NULL),
                            array_agg(n) FILTER (WHERE sec IS NOT NULL))
      FROM (SELECT c.account_id, scope.id, c.day, c.direction, c.disposition, c.sec, count(*), sum(c.talk)
              FROM (SELECT r.account_id, coalesce(r.number_id, -1),
                           date_bin('1 day', r.invited_at, '2000-01-01 00:00:00+00'), r.direction, r.disposition,
                           CASE WHEN r.direction = 'inbound' AND r.answered_at IS NOT NULL
                                THEN least(round(date_part('epoch', r.answered_at - r.invited_at)), 120)::integer
                           END,
                           date_part('epoch', r.ended_at - r.answered_at)
                      FROM %I r) AS c(account_id, number_id, day, direction, disposition, sec, talk)
             CROSS JOIN LATERAL (VALUES (c.number_id), (0::bigint)) AS scope(id)
             GROUP BY 1, 2, 3, 4, 5, 6) AS g(account_id, number_id, day, direction, disposition, sec, n, talk)
     GROUP BY account_id, number_id, day
     ORDER BY account_id, number_id, day  -- one lock order for every writer
    ON CONFLICT (account_id, number_id, day) DO UPDATE SET
        offered = s.offered + excluded.offered,
        answered = s.answered + excluded.answered,
        missed = s.missed + excluded.missed,
        over_limit = s.over_limit + excluded.over_limit,
        abandoned = s.abandoned + excluded.abandoned,
        failed = s.failed + excluded.failed,
        outbound = s.outbound + excluded.outbound,
        talk_s = s.talk_s + excluded.talk_s,
        answer_hist = histogram_sum(s.answer_hist, excluded.answer_hist)
$q$, source)
$fn$;

CREATE FUNCTION call_stats_add() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE call_stats_upsert_sql('new_rows');
    RETURN NULL;
END
$$;

CREATE TRIGGER call_stats AFTER INSERT ON call_records
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION call_stats_add();

-- The records written before this migration.
DO $$ BEGIN EXECUTE call_stats_upsert_sql('call_records'); END $$;

CREATE INDEX call_records_number_time ON call_records (account_id, number_id, invited_at)
    INCLUDE (direction, disposition, answered_at, ended_at);
CREATE INDEX call_records_account_time ON call_records (account_id, invited_at)
    INCLUDE (direction, disposition, answered_at, ended_at);
-- Texts by time: a BRIN index, not a btree. Texts arrive in time order, so a
-- block range summary finds a period's pages; it adds no index entry per
-- text, where two btrees on (account, time) cost the inbound text path about
-- a quarter of its throughput (benchmarks/sms_webhook.py, same run A/B).
-- The planner ANDs it with the account's own index.
CREATE INDEX messages_created_brin ON messages USING brin (created_at) WITH (autosummarize = on);
-- Unknown callers turned into leads (R8's "new lead" action), by when it happened.
CREATE INDEX notifications_new_leads ON notifications (account_id, closed_at)
    INCLUDE (number_id, lead_id, source, tag) WHERE action = 'new_lead';
