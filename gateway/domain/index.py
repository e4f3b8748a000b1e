"""The in-memory routing index (DESIGN §2): plain data, no I/O.

Every lookup that routing makes (R1-R6) is one dict access:

* ``number(e164)``: the dialled number and its settings;
* ``user(id)``: a user's role, package and offices;
* ``leads_for(account_id, e164)``: the leads of one account that own a phone.

Lead phones are keyed per account by the E.164 digits as an int
(:func:`phone_key`): an int key costs about half the memory of the string. A
phone owned by one lead (nearly all) stores its bare :class:`LeadRef`; only
duplicates (R2/R3) pay for a tuple. A million phones must fit in 200 MB.

The loader in ``gateway.store`` fills a fresh :class:`Index` and swaps it in;
the listener applies change events with the ``put_*``/``drop_*`` methods, all
of which are idempotent ("set the state to ..."), so replaying events that a
snapshot already contains is harmless.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, NamedTuple

from gateway.domain.hours import BusinessHours

NumberKind = Literal["company", "office", "personal"]
UnknownRoute = Literal["user", "ring_all", "round_robin", "sequential"]
Role = Literal["owner", "admin", "agent"]
Package = Literal["none", "standard", "upgraded"]


def phone_key(e164: str) -> int:
    """The dict key of an E.164 string: its digits as an int. ``"+1555..." -> 1555...``
    (``int`` accepts the leading ``+``, which saves a slice on the hot path)."""
    return int(e164)


def phone_from_key(key: int) -> str:
    return f"+{key}"


class LeadRef(NamedTuple):
    """A lead as routing needs it: who owns it (R1) and how new it is (R3)."""

    lead_id: int
    agent_id: int
    created_at: float  # epoch seconds; only compared


@dataclass(frozen=True, slots=True)
class Number:
    id: int
    account_id: int
    e164: str
    kind: NumberKind
    owner_user_id: int | None
    office_id: int | None
    unknown_route: UnknownRoute
    route_user_ids: tuple[int, ...]
    step_timeout_s: int
    source: str | None
    tag: str | None
    max_concurrent_calls: int
    provider: str
    bridge: bool = False  # R11: the account's bridge number for outbound caller ID
    description: str = ""  # the title the account gave it, "so that you can reference it"
    overflow: str = "busy"  # past the R7 limit: busy, forward or text_back (issue 15, item 8)
    overflow_target: str | None = None  # forward: a SIP URI or an E.164
    overflow_text: str | None = None  # text_back: the message (a default when None)
    hours: BusinessHours | None = None  # None: always open (issue 15, item 10)
    after_hours: str = "users"  # outside hours: users, forward or text_back
    after_hours_user_ids: tuple[int, ...] = ()
    after_hours_target: str | None = None
    after_hours_text: str | None = None
    missed_call_text: str | None = None  # None: no missed-call text-back (issue 15, item 11)
    missed_call_quiet_from: str = "21:00"
    missed_call_quiet_to: str = "08:00"
    missed_call_every_s: int = 86_400
    fallback_target: str | None = None  # R18: the chain's last step, a sip: URI or an E.164


@dataclass(frozen=True, slots=True)
class User:
    id: int
    account_id: int
    role: Role
    package: Package
    office_ids: frozenset[int]
    call_destination: str | None
    sender_number_id: int | None


@dataclass(frozen=True, slots=True)
class IndexSize:
    numbers: int
    users: int
    accounts: int
    lead_phones: int


_NO_LEADS: tuple[LeadRef, ...] = ()
# One lead: the bare LeadRef; duplicates: a tuple of them.
_Entry = LeadRef | tuple[LeadRef, ...]


def _as_tuple(entry: _Entry) -> tuple[LeadRef, ...]:
    return (entry,) if type(entry) is LeadRef else entry  # type: ignore[return-value]


def _as_entry(leads: tuple[LeadRef, ...]) -> _Entry:
    return leads[0] if len(leads) == 1 else leads


class Index:
    """One snapshot of numbers, users and lead phones, mutated only by its owner."""

    __slots__ = ("_lead_phones", "_numbers", "_numbers_by_id", "_phone_count", "_users")

    def __init__(self) -> None:
        self._numbers: dict[str, Number] = {}
        self._numbers_by_id: dict[int, Number] = {}
        self._users: dict[int, User] = {}
        self._lead_phones: dict[int, dict[int, _Entry]] = {}
        self._phone_count = 0

    # -- lookups: O(1) -------------------------------------------------------

    def number(self, e164: str) -> Number | None:
        return self._numbers.get(e164)

    def number_by_id(self, number_id: int) -> Number | None:
        return self._numbers_by_id.get(number_id)

    def user(self, user_id: int) -> User | None:
        return self._users.get(user_id)

    def leads_for(self, account_id: int, e164: str) -> tuple[LeadRef, ...]:
        """The leads of ``account_id`` owning ``e164``; another account's never match.
        The hot path of every inbound call and text: helpers are inlined."""
        phones = self._lead_phones.get(account_id)
        if phones is None:
            return _NO_LEADS
        entry = phones.get(int(e164))  # phone_key(e164), inlined
        if entry is None:
            return _NO_LEADS
        return (entry,) if type(entry) is LeadRef else entry  # type: ignore[return-value]

    def size(self) -> IndexSize:
        return IndexSize(
            numbers=len(self._numbers),
            users=len(self._users),
            accounts=len(self._lead_phones),
            lead_phones=self._phone_count,
        )

    # -- changes: each sets a state, so replays are harmless -----------------

    def put_number(self, number: Number) -> None:
        self.drop_number(number.id)
        self._numbers[number.e164] = number
        self._numbers_by_id[number.id] = number

    def drop_number(self, number_id: int) -> None:
        old = self._numbers_by_id.pop(number_id, None)
        if old is not None and self._numbers.get(old.e164) is old:
            del self._numbers[old.e164]

    def put_user(self, user: User) -> None:
        self._users[user.id] = user

    def drop_user(self, user_id: int) -> None:
        self._users.pop(user_id, None)

    def put_lead_phone(self, account_id: int, e164: str, lead: LeadRef) -> None:
        """``lead`` owns ``e164`` in ``account_id``, with this agent and creation time."""
        phones = self._lead_phones.setdefault(account_id, {})
        key = phone_key(e164)
        entry = phones.get(key)
        current = _NO_LEADS if entry is None else _as_tuple(entry)
        kept = tuple(ref for ref in current if ref.lead_id != lead.lead_id)
        if len(kept) == len(current):
            self._phone_count += 1
        phones[key] = _as_entry((*kept, lead))

    def drop_lead_phone(self, account_id: int, e164: str, lead_id: int) -> None:
        phones = self._lead_phones.get(account_id)
        if phones is None:
            return
        key = phone_key(e164)
        entry = phones.get(key)
        if entry is None:
            return
        current = _as_tuple(entry)
        kept = tuple(ref for ref in current if ref.lead_id != lead_id)
        if len(kept) == len(current):
            return
        self._phone_count -= 1
        if kept:
            phones[key] = _as_entry(kept)
        else:
            del phones[key]
            if not phones:
                del self._lead_phones[account_id]

    def put_lead(self, account_id: int, lead: LeadRef, e164s: list[str]) -> None:
        """The lead's agent or creation time changed: restate it on each of its phones."""
        for e164 in e164s:
            self.put_lead_phone(account_id, e164, lead)

    # -- bulk load -----------------------------------------------------------

    def load_lead_phone(self, account_id: int, key: int, lead: LeadRef) -> None:
        """Bulk-load path: like :meth:`put_lead_phone`, with the key precomputed and
        assuming each (phone, lead) pair arrives once, as the loader's query guarantees."""
        phones = self._lead_phones.get(account_id)
        if phones is None:
            phones = self._lead_phones[account_id] = {}
        entry = phones.get(key)
        phones[key] = lead if entry is None else (*_as_tuple(entry), lead)
        self._phone_count += 1
