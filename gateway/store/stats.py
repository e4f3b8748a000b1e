"""Per-number and account-wide analytics (issue 16, item 2): what the calls
and texts of a period came to, by hour or day (UTC).

Calls by day come from ``call_stats_daily``, which a trigger keeps as call
records are inserted (migration 0022): a year is 365 rows, for one number or
the whole account. Calls by hour (at most 31 days), texts and captured leads
are read from their own rows through covering indexes: an index-only range
scan of the period. Figures for 10 million call records are in
``benchmarks/number_stats.py``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

from gateway.domain import stats as hist
from gateway.store import Conn

Bucket = Literal["hour", "day"]
STEP = {"hour": timedelta(hours=1), "day": timedelta(days=1)}
_ORIGIN = "'2000-01-01 00:00:00+00'"  # date_bin's origin: buckets start on the UTC hour or midnight


@dataclass(slots=True)
class Figures:
    """One bucket's (or the period's) figures. Calls are inbound unless named."""

    offered: int = 0
    answered: int = 0
    missed: int = 0  # nobody answered (no answer, or nobody to ring)
    over_limit: int = 0  # R7: refused at the number's limit
    abandoned: int = 0  # the caller hung up while it rang
    failed: int = 0
    outbound: int = 0
    talk_s: float = 0.0  # answered calls of both directions
    answer_hist: list[int] = field(default_factory=lambda: [0] * hist.ANSWER_BINS)
    texts_in: int = 0
    texts_out: int = 0
    leads_captured: int = 0  # unknown callers turned into leads (R8 "new lead")

    def add(self, other: Figures) -> None:
        for name in ("offered", "answered", "missed", "over_limit", "abandoned", "failed", "outbound"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.talk_s += other.talk_s
        hist.add(self.answer_hist, other.answer_hist)
        self.texts_in += other.texts_in
        self.texts_out += other.texts_out
        self.leads_captured += other.leads_captured


@dataclass(slots=True)
class Stats:
    buckets: dict[datetime, Figures] = field(default_factory=dict)
    # (source, tag) as the number had them when the caller was captured, and leads
    by_source_tag: list[tuple[str | None, str | None, int]] = field(default_factory=list)

    def totals(self) -> Figures:
        total = Figures()
        for figures in self.buckets.values():
            total.add(figures)
        return total


async def stats(
    conn: Conn, account_id: int, number_id: int | None, start: datetime, end: datetime, bucket: Bucket
) -> Stats:
    """Figures for ``[start, end)`` of one number (``number_id``) or the whole
    account (None), by ``bucket`` (by day, ``start`` and ``end`` must be UTC
    midnights). Four statements: calls (by day: a read of at most 366 rollup
    rows; by hour: an index-only scan of the period's records), texts and
    captured leads (index-only scans of the period)."""
    result = Stats()

    def at(key: datetime) -> Figures:
        return result.buckets.setdefault(key, Figures())

    scope = "account_id = $1 AND " + ("number_id = $2" if number_id is not None else "$2::bigint IS NULL")
    args = (account_id, number_id, start, end, STEP[bucket])
    if bucket == "day":
        rows = await conn.fetch(_DAYS, account_id, number_id or 0, start, end)
        for row in rows:
            f = at(row["day"])
            f.offered, f.answered, f.missed = row["offered"], row["answered"], row["missed"]
            f.over_limit, f.abandoned, f.failed = row["over_limit"], row["abandoned"], row["failed"]
            f.outbound, f.talk_s, f.answer_hist = row["outbound"], row["talk_s"], list(row["answer_hist"])
    else:
        for row in await conn.fetch(_HOURS.format(scope=scope), *args):
            _count_calls(at(row["bucket"]), row)
    for row in await conn.fetch(_TEXTS.format(scope=scope), *args):
        f = at(row["bucket"])
        f.texts_in, f.texts_out = row["texts_in"], row["texts_out"]
    for row in await conn.fetch(_LEADS.format(scope=scope), *args):
        if row["bucket"] is not None:
            at(row["bucket"]).leads_captured = row["leads"]
        else:
            result.by_source_tag.append((row["source"], row["tag"], row["leads"]))
    return result


def _count_calls(f: Figures, row: Any) -> None:
    n, direction, disposition = row["calls"], row["direction"], row["disposition"]
    f.talk_s += row["talk_s"] or 0.0
    if direction == "outbound":
        f.outbound += n
        return
    f.offered += n
    if disposition == "answered":
        f.answered += n
    elif disposition in ("no_answer", "rejected"):
        f.missed += n
    elif disposition == "busy_limit":
        f.over_limit += n
    elif disposition == "canceled":
        f.abandoned += n
    else:
        f.failed += n
    if row["sec"] is not None:
        f.answer_hist[row["sec"]] += n


_DAYS = """
SELECT day, offered, answered, missed, over_limit, abandoned, failed, outbound, talk_s, answer_hist
  FROM call_stats_daily WHERE account_id = $1 AND number_id = $2 AND day >= $3 AND day < $4
"""

# $1 account, $2 number (or NULL: the whole account), [$3, $4) the period, $5 the bucket's length.
_HOURS = f"""
SELECT date_bin($5, invited_at, {_ORIGIN}) AS bucket, direction, disposition,
       CASE WHEN direction = 'inbound' AND answered_at IS NOT NULL
            THEN least(round(date_part('epoch', answered_at - invited_at)), 120)::int END AS sec,
       count(*) AS calls, sum(date_part('epoch', ended_at - answered_at)) AS talk_s
  FROM call_records
 WHERE {{scope}} AND invited_at >= $3 AND invited_at < $4
 GROUP BY 1, 2, 3, 4
"""

_TEXTS = f"""
SELECT date_bin($5, created_at, {_ORIGIN}) AS bucket,
       count(*) FILTER (WHERE direction = 'inbound') AS texts_in,
       count(*) FILTER (WHERE direction = 'outbound') AS texts_out
  FROM messages
 WHERE {{scope}} AND created_at >= $3 AND created_at < $4
 GROUP BY 1
"""

# A caller notified to several users becomes one lead: leads are counted once.
_LEADS = f"""
SELECT bucket, source, tag, count(DISTINCT lead_id) AS leads
  FROM (SELECT date_bin($5, closed_at, {_ORIGIN}), source, tag, lead_id
          FROM notifications
         WHERE {{scope}} AND action = 'new_lead' AND lead_id IS NOT NULL
           AND closed_at >= $3 AND closed_at < $4) AS n(bucket, source, tag, lead_id)
 GROUP BY GROUPING SETS ((bucket), (source, tag))
"""
