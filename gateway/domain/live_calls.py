"""The board of inbound calls in progress that the admin console watches
(issue 16, item 3): per account, each call that holds one of its number's
R7 slots, ringing or answered.

Plain data, updated by the SIP core as calls start, are answered and end,
and read by the HTTP side. A listener is a callback per account: the core
never waits for a reader, and a reader that falls behind only sees a later
board (the board is a state, not a log of events)."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Literal

Listener = Callable[[], None]


@dataclass(frozen=True, slots=True)
class LiveCall:
    id: int  # this gateway's own sequence, stable for the call's life
    account_id: int
    number_id: int
    caller: str
    state: Literal["ringing", "answered"]
    invited_at: float  # Unix seconds
    answered_at: float | None = None


class LiveCalls:
    """Calls in progress by account. Every method is O(1) but
    :meth:`of_account`, which is O(calls of the account)."""

    __slots__ = ("_by_account", "_calls", "_ids", "_listeners")

    def __init__(self) -> None:
        self._ids = itertools.count(1)
        self._calls: dict[int, LiveCall] = {}
        self._by_account: dict[int, set[int]] = {}
        self._listeners: dict[int, set[Listener]] = {}

    def started(self, account_id: int, number_id: int, caller: str, invited_at: float) -> int:
        """A call took a slot of ``number_id``; returns its id on the board."""
        call = LiveCall(next(self._ids), account_id, number_id, caller, "ringing", invited_at)
        self._calls[call.id] = call
        self._by_account.setdefault(account_id, set()).add(call.id)
        self._changed(account_id)
        return call.id

    def answered(self, call_id: int, at: float) -> None:
        call = self._calls.get(call_id)
        if call is None or call.state == "answered":
            return
        self._calls[call_id] = replace(call, state="answered", answered_at=at)
        self._changed(call.account_id)

    def ended(self, call_id: int) -> None:
        """Idempotent: a call may end by several paths."""
        call = self._calls.pop(call_id, None)
        if call is None:
            return
        ids = self._by_account[call.account_id]
        ids.discard(call_id)
        if not ids:
            del self._by_account[call.account_id]  # idle accounts cost nothing
        self._changed(call.account_id)

    def of_account(self, account_id: int) -> list[LiveCall]:
        """The account's calls, oldest first."""
        return sorted((self._calls[i] for i in self._by_account.get(account_id, ())), key=lambda c: c.id)

    def __len__(self) -> int:
        return len(self._calls)

    def listen(self, account_id: int, listener: Listener) -> Callable[[], None]:
        """Call ``listener`` after each change to the account's board; returns
        the function that stops it."""
        self._listeners.setdefault(account_id, set()).add(listener)

        def stop() -> None:
            listeners = self._listeners.get(account_id)
            if listeners is not None:
                listeners.discard(listener)
                if not listeners:
                    del self._listeners[account_id]

        return stop

    def _changed(self, account_id: int) -> None:
        for listener in tuple(self._listeners.get(account_id, ())):
            listener()
