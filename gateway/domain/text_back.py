"""Missed-call text-back and opt-out (issue 15, item 11; R17 in code
comments). Pure: the clock is an argument.

An unanswered caller (known or unknown) gets the number's missed-call text,
unless it is quiet hours in the number's time zone (its business hours'
zone, else UTC), they had one from this number within the period, or they
opted out. Opting out and back in follow the carriers' keywords (CTIA):
STOP, STOPALL, UNSUBSCRIBE, CANCEL, END, QUIT; START, UNSTOP, YES.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal
from zoneinfo import ZoneInfo

from gateway.domain.index import Number

MISSED = frozenset(("no_answer", "canceled", "rejected"))  # busy_limit has its own overflow rule (R15)
OPT_OUT = frozenset(("STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT"))
OPT_IN = frozenset(("START", "UNSTOP", "YES"))


def opt_keyword(body: str) -> Literal["out", "in"] | None:
    """A text that is exactly a carrier keyword (any case, surrounding
    blanks and punctuation ignored) opts its sender out or back in."""
    word = body.strip().strip(".!").upper()
    if word in OPT_OUT:
        return "out"
    if word in OPT_IN:
        return "in"
    return None


def wants_missed_call_text(number: Number, caller: str | None, disposition: str) -> bool:
    """The number texts missed callers, and this one can be texted."""
    return (
        bool(number.missed_call_text)
        and caller is not None
        and caller.startswith("+")
        and disposition in MISSED
    )


def in_quiet_hours(number: Number, at: datetime) -> bool:
    """Between ``missed_call_quiet_from`` and ``_to`` (a window that may wrap
    midnight) in the number's time zone."""
    zone = ZoneInfo(number.hours.time_zone) if number.hours is not None else ZoneInfo("UTC")
    local = at.astimezone(zone)
    now = local.hour * 60 + local.minute
    start, end = _minutes(number.missed_call_quiet_from), _minutes(number.missed_call_quiet_to)
    if start == end:
        return False
    return start <= now < end if start < end else now >= start or now < end


def _minutes(clock: str) -> int:
    return int(clock[:2]) * 60 + int(clock[3:])
