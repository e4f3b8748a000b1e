"""Phone numbers at the edges: anything a carrier or client sends -> E.164.

The routing core sees E.164 strings only; adapters call :func:`to_e164` on
every number they receive. Numbers are checked for a possible length, not for
being assigned: carriers and tests use fictional ranges (555-01xx).
"""

from __future__ import annotations

from functools import lru_cache

import phonenumbers
from phonenumbers import NumberParseException, PhoneNumberFormat

DEFAULT_REGION = "US"


def to_e164(raw: str, default_region: str = DEFAULT_REGION) -> str | None:
    """``"+1 (555) 010-0000"``, ``"5550100000"``, ``"tel:+15550100000"`` ->
    ``"+15550100000"``; None for anything that is not a possible number
    (``"anonymous"``, ``"12"``). A number seen lately costs a dict lookup;
    a new one about 20 microseconds (phonenumbers)."""
    if not raw or len(raw) > 64:
        return None
    return _parsed(raw, default_region)


# Every text and call parses two numbers, and the same ones come back: our own
# numbers always, a lead's phone for the whole conversation. Bounded, so a
# stranger's stream of random numbers costs memory once, not for ever.
@lru_cache(maxsize=16_384)
def _parsed(raw: str, default_region: str) -> str | None:
    try:
        parsed = phonenumbers.parse(raw, default_region)
    except NumberParseException:
        return None
    if not phonenumbers.is_possible_number(parsed):
        return None
    return str(phonenumbers.format_number(parsed, PhoneNumberFormat.E164))
