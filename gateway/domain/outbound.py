"""Outbound sender selection (DESIGN §1, R10-R12): which number a user's text or
call goes out from. The same function answers ``GET /v1/numbers/…/senders``
and picks the sender when sending, so the two can never disagree.

Seed (Chime, Outbound Logic): manual texts choose "between both options";
auto texts use "Sender ID to Display" if set, "If you do not choose a Sender ID
to Display, then it will default to use the Personal Number if available and if
not, it will use the Company Number as the secondary option." Calls may use
"(a) Company Number (b) Personal Number (requires upgrade) (c) Bridge Number".
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from gateway.domain.index import Number, User

TextKind = Literal["manual", "auto"]

# DESIGN §5: delivery events arrive out of order, so a text's status only ever
# moves forward along this ranking (a late "sent" never undoes "delivered").
STATUS_RANK = {"queued": 0, "sending": 1, "sent": 2, "delivered": 3, "undelivered": 3, "failed": 3}


@dataclass(frozen=True, slots=True)
class Sender:
    """A chosen sender number, or the reason there is none (a 4xx for the client)."""

    number: Number | None
    why: str

    @property
    def ok(self) -> bool:
        return self.number is not None


def may_send_from(user: User, number: Number) -> str | None:
    """R10/R12 allow-list: None if ``user`` may use ``number``, else the reason.
    Their personal number (which needs ``upgraded``), any company number of their
    account (R12: no per-user permission), their offices' office numbers."""
    if number.account_id != user.account_id:
        return "the number belongs to another account"
    if user.package == "none":
        return "the user has no call/text package"
    if number.kind == "personal":
        if number.owner_user_id != user.id:
            return "a personal number is used only by its owner"
        if user.package != "upgraded":
            return "a personal number requires the upgraded package"
        return None
    if number.kind == "office" and number.office_id not in user.office_ids:
        return "an office number is used only by that office's users"
    return None


def allowed_senders(user: User, numbers: Iterable[Number]) -> list[Number]:
    """Every number ``user`` may send from, personal first, then company, then office."""
    order = {"personal": 0, "company": 1, "office": 2}
    usable = [n for n in numbers if may_send_from(user, n) is None]
    return sorted(usable, key=lambda n: (order[n.kind], n.id))


def choose_text_sender(
    user: User, numbers: Iterable[Number], kind: TextKind, requested: Number | None = None
) -> Sender:
    """R10. ``manual``: the number the user picked, if allowed (without a pick,
    the same default as ``auto``). ``auto``: Sender ID to Display if set and
    still allowed, else the personal number, else a company number, the user's
    offices' company numbers first."""
    if user.package == "none":
        return Sender(None, "the user has no call/text package")
    candidates = list(numbers)
    if kind == "manual" and requested is not None:
        problem = may_send_from(user, requested)
        return Sender(requested, "chosen by the user") if problem is None else Sender(None, problem)
    by_id = {n.id: n for n in candidates}
    chosen = by_id.get(user.sender_number_id) if user.sender_number_id is not None else None
    if chosen is not None and may_send_from(user, chosen) is None:
        return Sender(chosen, "the user's Sender ID to Display")
    for number in candidates:
        if number.kind == "personal" and may_send_from(user, number) is None:
            return Sender(number, "the user's personal number")
    company = _company_number(user, candidates)
    if company is not None:
        return company
    return Sender(None, "no number this user may send from: no Sender ID, personal or company number")


def company_numbers(user: User, numbers: Iterable[Number]) -> list[Number]:
    """R10/R11: the company numbers ``user`` may use, in the order both rules
    pick from: their offices' (groups') company numbers first, then by id."""
    companies = [n for n in numbers if n.kind == "company" and may_send_from(user, n) is None]
    companies.sort(key=lambda n: (n.office_id not in user.office_ids, n.id))
    return companies


def _company_number(user: User, numbers: Iterable[Number]) -> Sender | None:
    companies = company_numbers(user, numbers)
    if not companies:
        return None
    mine = companies[0].office_id in user.office_ids
    return Sender(companies[0], "their office's company number" if mine else "a company number")


CallerIdChoice = Literal["company", "personal", "bridge"]


def choose_caller_id(
    user: User, numbers: Iterable[Number], choice: CallerIdChoice | str | None, bridge: Number | None = None
) -> Sender:
    """R11: ``company``, ``personal`` (requires ``upgraded``), ``bridge``, or an
    E.164 the user may use (same allow-list as R10); no choice: the auto-text
    default. A bridge number is the account's configured one, if any."""
    candidates = list(numbers)
    if choice is None:
        return choose_text_sender(user, candidates, "auto")
    if choice == "bridge":
        if bridge is None:
            return Sender(None, "the account has no bridge number")
        problem = may_send_from(user, bridge)
        return Sender(bridge, "the bridge number") if problem is None else Sender(None, problem)
    if choice == "company":  # the same order as R10's auto texts (issue 15, item 4)
        company = _company_number(user, candidates)
        return company or Sender(None, "the user has no company number to call from")
    if choice == "personal":
        for number in allowed_senders(user, candidates):
            if number.kind == choice:
                return Sender(number, f"the user's {choice} number")
        if choice == "personal" and user.package != "upgraded":
            return Sender(None, "a personal number requires the upgraded package")
        return Sender(None, f"the user has no {choice} number to call from")
    for number in candidates:
        if number.e164 == choice:
            problem = may_send_from(user, number)
            return Sender(number, "chosen by the user") if problem is None else Sender(None, problem)
    return Sender(None, "the caller ID is not a number of this account")
