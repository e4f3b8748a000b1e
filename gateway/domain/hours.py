"""Business hours per number (issue 15, item 10; R16 in code comments): a
weekly schedule in the number's time zone, with holidays as dated closures.
Pure: the clock is an argument.

Outside its hours a number's calls take its after-hours route instead of the
unknown-caller route or the lead's agent: a list of users rung at once, a
forward target, or a text back. Texts are not affected (a text waits for
whoever reads it; nobody has to pick up).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from zoneinfo import ZoneInfo

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


@dataclass(frozen=True, slots=True)
class BusinessHours:
    time_zone: str  # an IANA name, e.g. "America/New_York"
    # Per weekday (Monday first): opening periods as (start, end) minutes after
    # local midnight, end exclusive; 24 * 60 closes at midnight.
    weekly: tuple[tuple[tuple[int, int], ...], ...]
    closed_dates: tuple[str, ...] = ()  # local dates, "YYYY-MM-DD": holidays


def is_open(hours: BusinessHours | None, at: datetime) -> bool:
    """Is the number open at ``at`` (timezone-aware)? No schedule: always."""
    if hours is None:
        return True
    local = at.astimezone(_zone(hours.time_zone))
    if local.date().isoformat() in hours.closed_dates:
        return False
    minute = local.hour * 60 + local.minute
    return any(start <= minute < end for start, end in hours.weekly[local.weekday()])


def parse_hours(data: dict[str, object]) -> BusinessHours:
    """The stored (and API) form: {"time_zone": ..., "weekly": {"mon":
    [["09:00", "17:00"]], ...}, "holidays": ["2026-12-25"]}. Raises
    ValueError (naming the part) for anything else."""
    zone = data.get("time_zone")
    if not isinstance(zone, str):
        raise ValueError("time_zone")
    _zone(zone)
    weekly_in = data.get("weekly", {})
    if not isinstance(weekly_in, dict) or set(weekly_in) - set(DAYS):
        raise ValueError("weekly")
    weekly = tuple(tuple(_period(p) for p in weekly_in.get(day, [])) for day in DAYS)
    holidays = data.get("holidays", [])
    if not isinstance(holidays, list) or not all(isinstance(d, str) for d in holidays):
        raise ValueError("holidays")
    for day in holidays:
        datetime.strptime(day, "%Y-%m-%d")
    return BusinessHours(zone, weekly, tuple(sorted(set(holidays))))


def format_hours(hours: BusinessHours | None) -> dict[str, object] | None:
    """:func:`parse_hours`' input form, for the API and storage."""
    if hours is None:
        return None
    return {
        "time_zone": hours.time_zone,
        "weekly": {
            day: [[_clock(start), _clock(end)] for start, end in periods]
            for day, periods in zip(DAYS, hours.weekly, strict=True)
            if periods
        },
        "holidays": list(hours.closed_dates),
    }


def _clock(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


def _period(period: object) -> tuple[int, int]:
    if not (isinstance(period, list | tuple) and len(period) == 2):
        raise ValueError("weekly")
    start, end = (_minutes(p) for p in period)
    if not start < end:
        raise ValueError("weekly")
    return start, end


def _minutes(clock: object) -> int:
    if not isinstance(clock, str) or len(clock) != 5 or clock[2] != ":":
        raise ValueError("weekly")
    hours, minutes = int(clock[:2]), int(clock[3:])
    if not (0 <= hours <= 24 and 0 <= minutes < 60) or (hours == 24 and minutes):
        raise ValueError("weekly")
    return hours * 60 + minutes


@lru_cache(maxsize=512)
def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (KeyError, ValueError) as exc:  # ZoneInfoNotFoundError is a KeyError
        raise ValueError("time_zone") from exc
