"""Who may manage, buy and use numbers for what (DESIGN §1, R12-R14).

Each function returns None when the action is allowed, else the reason, which
the HTTP layer turns into a 403 or 409 problem document.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from gateway.domain.index import Number, Role, User

Plan = Literal["standard", "enterprise"]

NUMBER_MONTHLY_CENTS = 2700  # R13: "$27/month/company number"


def may_edit_number_settings(role: Role) -> str | None:
    """R12: "The Company Number settings are managed by the Team Owner/Admin"."""
    return None if role in ("owner", "admin") else "only an owner or admin edits number settings"


def may_edit_number(editor: User, number: Number) -> str | None:
    """R12 and issue 15, item 5: an office number is "managed by the Office
    Owner/Admin": the account owner, or an admin who belongs to that office.
    An admin of another office (or of none) may not change it."""
    refused = may_edit_number_settings(editor.role)
    outsider = editor.role != "owner" and number.office_id not in editor.office_ids
    if refused is None and number.kind == "office" and outsider:
        return "an office number is managed by the account owner or an admin of that office"
    return refused


def office_route_problem(kind: str, route_user_ids: Iterable[int], office_members: set[int]) -> str | None:
    """Issue 15, item 5: an office number's unknown-caller route rings only
    users of that office (checked on PATCH and at purchase)."""
    if kind != "office":
        return None
    outsiders = [user for user in route_user_ids if user not in office_members]
    if not outsiders:
        return None
    return f"an office number rings only users of its office; {outsiders} are not"


def unknown_caller_problem(number: Number, users: dict[int, User]) -> str | None:
    """Issue 15, item 7: why ``number`` cannot ring anyone for an unknown
    caller (no route, nobody with a call/text package, nobody with a phone),
    or None. R8 still notifies someone; this is what an admin should fix."""
    route = (
        (number.owner_user_id,)
        if number.kind == "personal" and number.owner_user_id is not None
        else number.route_user_ids
    )
    if not route:
        return "no unknown-caller route: nobody is rung"
    packaged = [users[u] for u in route if u in users and users[u].package != "none"]
    if not packaged:
        return "nobody on the unknown-caller route has a call/text package"
    if not any(user.call_destination for user in packaged):
        return "nobody on the unknown-caller route has a phone (call_destination)"
    return None


@dataclass(frozen=True, slots=True)
class UnknownCallerSetup:
    """What a number does with an unknown caller (R4) and the R8 source."""

    unknown_route: str
    route_user_ids: tuple[int, ...]
    source: str


def purchase_defaults(kind: str, buyer_id: int, office_members: Iterable[int]) -> UnknownCallerSetup:
    """Issue 15, item 7: a number bought without its unknown-caller settings
    still routes: a company number rings its buyer, an office number rings its
    office's users at once, a personal number its owner (R5). The source names
    the kind of number, as Chime's examples do ("Company Number")."""
    source = f"{kind.capitalize()} Number"
    if kind == "office":
        return UnknownCallerSetup("ring_all", tuple(sorted(office_members)), source)
    if kind == "company":
        return UnknownCallerSetup("user", (buyer_id,), source)
    return UnknownCallerSetup("user", (), source)


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
