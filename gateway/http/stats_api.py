"""Analytics (issue 16, item 2): what a number's calls and texts came to over
a period, or the whole account's, by hour or day (UTC).

Owners and admins see every number and the account; an agent sees the
personal number that is theirs. Buckets are dense (a quiet hour is zeros),
so a chart needs no gap-filling.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import web

from gateway.domain.stats import percentile
from gateway.http.auth import principal
from gateway.http.deps import deps
from gateway.http.models import StatsQuery
from gateway.http.openapi import query
from gateway.http.responses import forbidden, not_found
from gateway.http.routes import API
from gateway.http.validation import field_error, path_id
from gateway.store import stats as stats_store
from gateway.store.index_queries import fetch_number
from gateway.store.stats import STEP

# The longest period per bucket: a month of hours, a (leap) year of days.
LONGEST = {"hour": timedelta(days=31), "day": timedelta(days=366)}
DEFAULT_PERIOD = timedelta(days=7)


@API.op(
    "GET",
    "/v1/numbers/{number_id}/stats",
    "A number's calls and texts over a period, by hour or day",
    query=StatsQuery,
    errors=(400, 403, 404, 422),
)
async def number_stats(request: web.Request) -> web.Response:
    """Four round trips: the number, then calls, texts and captured leads."""
    who, number_id = principal(request), path_id(request, "number_id")
    asked = query(request, StatsQuery)
    start, end = _period(asked)
    async with deps(request).pool.acquire() as conn:
        number = await fetch_number(conn, number_id)
        if number is None or number.account_id != who.account_id:
            return not_found("number")
        if not who.manages and number.owner_user_id != who.user_id:
            return forbidden("only an owner or admin, or the number's own user, sees its figures")
        found = await stats_store.stats(conn, who.account_id, number_id, start, end, asked.bucket)
    return web.json_response(_render(found, number_id, start, end, asked.bucket))


@API.op(
    "GET",
    "/v1/stats",
    "The whole account's calls and texts over a period, by hour or day (owner/admin)",
    query=StatsQuery,
    errors=(400, 403, 422),
)
async def account_stats(request: web.Request) -> web.Response:
    """Three round trips: calls, texts and captured leads."""
    who = principal(request)
    asked = query(request, StatsQuery)
    start, end = _period(asked)
    if not who.manages:
        return forbidden("only an owner or admin sees the account's figures")
    async with deps(request).pool.acquire() as conn:
        found = await stats_store.stats(conn, who.account_id, None, start, end, asked.bucket)
    return web.json_response(_render(found, None, start, end, asked.bucket))


def _period(asked: StatsQuery) -> tuple[datetime, datetime]:
    """The period asked for; by day, widened to whole UTC days (the rollup's unit)."""
    end = asked.end or datetime.now(UTC)
    start = asked.start or end - DEFAULT_PERIOD
    if asked.bucket == "day":
        start = start.replace(hour=0, minute=0, second=0, microsecond=0)
        midnight = end.replace(hour=0, minute=0, second=0, microsecond=0)
        end = midnight if midnight == end else midnight + STEP["day"]
    if end <= start:
        raise field_error("to", "must be later than from")
    if end - start > LONGEST[asked.bucket]:
        days = LONGEST[asked.bucket].days
        raise field_error("to", f"at most {days} days after from with bucket={asked.bucket}")
    return start, end


def _render(
    found: stats_store.Stats, number_id: int | None, start: datetime, end: datetime, bucket: str
) -> dict[str, Any]:
    step = STEP[bucket]
    first = start.replace(minute=0, second=0, microsecond=0)
    if bucket == "day":
        first = first.replace(hour=0)
    buckets = []
    at = first
    while at < end:
        buckets.append({"start": at.isoformat(), **_figures(found.buckets.get(at))})
        at += step
    return {
        "number_id": number_id,
        "from": start.isoformat(),
        "to": end.isoformat(),
        "bucket": bucket,
        "totals": _figures(found.totals()),
        "buckets": buckets,
        "leads_by_source_tag": [
            {"source": source, "tag": tag, "leads": leads} for source, tag, leads in found.by_source_tag
        ],
    }


def _figures(f: stats_store.Figures | None) -> dict[str, Any]:
    f = f or stats_store.Figures()
    return {
        "calls": {
            "offered": f.offered,
            "answered": f.answered,
            "missed": f.missed,
            "over_limit": f.over_limit,
            "abandoned": f.abandoned,
            "failed": f.failed,
            "outbound": f.outbound,
        },
        "time_to_answer_s": {"p50": _p(f, 0.5), "p90": _p(f, 0.9)},
        "talk_minutes": round(f.talk_s / 60, 1),
        "texts": {"in": f.texts_in, "out": f.texts_out},
        "leads_captured": f.leads_captured,
    }


def _p(f: stats_store.Figures, q: float) -> float | None:
    """Time to answer's ``q`` quantile, to the tenth of a second."""
    seconds = percentile(f.answer_hist, q)
    return None if seconds is None else round(seconds, 1)
