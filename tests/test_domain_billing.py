"""R9 usage arithmetic and E.164 normalisation at the edges (issue 3)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.domain.billing import (
    GSM7_BASIC,
    billable_minutes,
    billing_period,
    over_quota,
    quota_allows,
    text_segments,
)
from gateway.domain.phone import to_e164

T0 = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("seconds", "minutes"),
    [(0, 0), (0.4, 1), (1, 1), (59.999, 1), (60, 1), (60.001, 2), (61, 2), (3600, 60), (3600.5, 61)],
)
def test_r9_minutes_round_up_per_started_minute(seconds: float, minutes: int) -> None:
    assert billable_minutes(T0, T0 + timedelta(seconds=seconds)) == minutes


def test_r9_unanswered_call_costs_nothing() -> None:
    assert billable_minutes(None, T0) == 0


@given(st.integers(1, 10_000_000))
def test_r9_minutes_cover_the_call_and_no_more(ms: int) -> None:
    minutes = billable_minutes(T0, T0 + timedelta(milliseconds=ms))
    assert (minutes - 1) * 60_000 < ms <= minutes * 60_000


@pytest.mark.parametrize(
    ("body", "segments"),
    [
        ("", 1),
        ("a" * 160, 1),
        ("a" * 161, 2),
        ("a" * 306, 2),
        ("a" * 307, 3),
        ("€" * 80, 1),  # extension characters count two septets
        ("€" * 81, 2),
        ("é" * 160, 1),  # é is in the GSM-7 basic set
        ("ç" * 70, 1),  # ç is not: UCS-2
        ("ç" * 71, 2),
        ("a" * 159 + "ç", 3),  # one UCS-2 character makes the whole text UCS-2: 160 units / 67
        ("😀" * 35, 1),  # outside the BMP: two units each
        ("😀" * 36, 2),
    ],
)
def test_segments(body: str, segments: int) -> None:
    assert text_segments(body) == segments


@given(st.text(alphabet=sorted(GSM7_BASIC), max_size=1000))
def test_gsm_segments_property(body: str) -> None:
    n = text_segments(body)
    assert n == 1 if len(body) <= 160 else (n - 1) * 153 < len(body) <= n * 153


def test_billing_period_is_the_utc_month() -> None:
    late = datetime(2026, 11, 30, 23, 30, tzinfo=timezone(timedelta(hours=-5)))  # Dec 1 in UTC
    assert billing_period(late) == date(2026, 12, 1)
    assert billing_period(T0) == date(2026, 11, 1)


def test_over_quota() -> None:
    assert not over_quota(used=90, included=100, quantity=10)
    assert over_quota(used=95, included=100, quantity=10)
    assert not over_quota(used=10**9, included=None, quantity=1)  # no allowance set


def test_r9_block_mode_refuses_only_what_would_exceed() -> None:
    assert quota_allows("record", used=100, included=100, quantity=5)  # recorded, not blocked
    assert quota_allows("block", used=95, included=100, quantity=5)
    assert not quota_allows("block", used=96, included=100, quantity=5)
    assert quota_allows("block", used=10**6, included=None, quantity=5)


@pytest.mark.parametrize(
    ("raw", "e164"),
    [
        ("+1 (555) 010-0000", "+15550100000"),
        ("5550100000", "+15550100000"),
        ("tel:+15550100000", "+15550100000"),
        ("+442071234567", "+442071234567"),
        ("anonymous", None),
        ("12", None),
        ("", None),
        ("+" + "9" * 100, None),
    ],
)
def test_to_e164(raw: str, e164: str | None) -> None:
    assert to_e164(raw) == e164
