"""R9 usage: what a call or text costs the user who handled or sent it.

Usage is charged to users, never to numbers (DESIGN §1 R9; seed: "Usage
(call minutes or text messages) is still pulled from an individual user's
associated call/text package"). Segment rules follow DESIGN §5.
"""

from __future__ import annotations

from datetime import UTC, date, datetime

# GSM 03.38 basic character set (the escape character itself excluded) and
# the extension table, whose characters take two septets each.
GSM7_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
GSM7_EXTENSION = frozenset("\f^{}\\[~]|€")

GSM7_SINGLE, GSM7_PART = 160, 153
UCS2_SINGLE, UCS2_PART = 70, 67


def billable_minutes(answered_at: datetime | None, ended_at: datetime) -> int:
    """R9: minutes from answer to hang-up, rounded up per started minute.
    An unanswered call costs nothing; 0.4 s costs 1; 60.0 s costs 1; 60.001 s costs 2.
    Whole milliseconds, so clock noise below 1 ms never bills an extra minute."""
    if answered_at is None or ended_at <= answered_at:
        return 0
    elapsed_ms = (ended_at - answered_at) // _ONE_MS
    return -(-elapsed_ms // 60_000) if elapsed_ms > 0 else 1


def text_segments(body: str) -> int:
    """Segments a text takes (DESIGN §5): GSM-7 160 chars, 153 per part when split,
    extension characters counting 2; any other character makes the whole text
    UCS-2: 70, 67 per part, characters outside the BMP counting 2. An empty body
    (media only) is one segment."""
    septets = 0
    for char in body:
        if char in GSM7_BASIC:
            septets += 1
        elif char in GSM7_EXTENSION:
            septets += 2
        else:
            units = sum(2 if ord(c) > 0xFFFF else 1 for c in body)
            return 1 if units <= UCS2_SINGLE else -(-units // UCS2_PART)
    return 1 if septets <= GSM7_SINGLE else -(-septets // GSM7_PART)


def billing_period(at: datetime) -> date:
    """The billing period containing ``at``: the first day of its month, in UTC."""
    utc = at.astimezone(UTC)
    return date(utc.year, utc.month, 1)


def allowance(included: int | None, addon: int) -> int | None:
    """R9 with added-on packages (issue 15, item 6): the package's allowance
    plus the user's add-ons; no allowance (None) stays unlimited."""
    return None if included is None else included + addon


def over_quota(used: int, included: int | None, quantity: int) -> bool:
    """Does adding ``quantity`` to ``used`` exceed the package's allowance?
    No allowance set (None) is never exceeded. The one definition of R9's
    over-quota rule: usage rows are not flagged when charged; reports and the
    send check ask this (issue 17, item 2)."""
    return included is not None and used + quantity > included


def quota_allows(mode: str, used: int, included: int | None, quantity: int) -> bool:
    """R9: usage beyond the allowance is recorded, not refused, unless the
    account's ``over_quota`` mode is ``block``. Outbound sends ask this first;
    inbound calls and texts are never refused for quota (nothing may be lost)."""
    return mode != "block" or not over_quota(used, included, quantity)


_ONE_MS = datetime(2000, 1, 1, 0, 0, 0, 1000) - datetime(2000, 1, 1)
