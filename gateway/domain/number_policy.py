"""Who may manage, buy and use numbers for what (DESIGN §1, R12-R14).

Each function returns None when the action is allowed, else the reason, which
the HTTP layer turns into a 403 or 409 problem document.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from gateway.domain.index import Number, Role

Plan = Literal["standard", "enterprise"]

NUMBER_MONTHLY_CENTS = 2700  # R13: "$27/month/company number"


def may_edit_number_settings(role: Role) -> str | None:
    """R12: "The Company Number settings are managed by the Team Owner/Admin"."""
    return None if role in ("owner", "admin") else "only an owner or admin edits number settings"


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why an action is refused, and of which kind: ``forbidden`` (the caller's
    role or plan, 403), ``conflict`` (the account's state, 409), ``invalid``
    (the request itself, 422)."""

    kind: Literal["forbidden", "conflict", "invalid"]
    reason: str


def may_buy_number(
    role: Role, plan: Plan, kind: str, office_id: int | None, account_numbers: Iterable[Number]
) -> Refusal | None:
    """R13: "The Company Owner (no other roles at this point in time) can buy";
    "This feature is only available for the Enterprise package"; "Only one
    Company Number can be assigned to each group"; "An unlimited amount of
    Company Numbers may be purchased"."""
    if role != "owner":
        return Refusal("forbidden", "only the account owner buys numbers")
    if plan != "enterprise":
        return Refusal("forbidden", "buying numbers needs the Enterprise plan")
    if kind == "office" and office_id is None:
        return Refusal("invalid", "an office number needs an office")
    if kind == "company" and office_id is not None:
        for number in account_numbers:
            if number.kind == "company" and number.office_id == office_id:
                return Refusal("conflict", f"office {office_id} already has a company number ({number.e164})")
    return None


def may_use_for_text_codes(number: Number) -> str | None:
    """R14: "Can the Company Number be used for Text Codes via the Campaigns page?
    Or with Postcards? No." Personal numbers can; shared numbers cannot."""
    if number.kind == "personal":
        return None
    return (
        f"a {number.kind} number cannot be used for text codes or postcards; "
        "use a personal number (upgraded package)"
    )
