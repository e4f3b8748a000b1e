"""What the SIP side needs from the database, as small interfaces that
``store/`` implements (:class:`gateway.store.sip_store.PgSipStore`): ``sip/``
holds no SQL and no pool. Each call is one round trip."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Protocol

from gateway.domain.call_slots import Slot
from gateway.domain.index import Number
from gateway.domain.routing import Decision
from gateway.store import StoreRejected, StoreUnavailable
from gateway.store.credentials import SipUser
from gateway.store.texts import Accepted, InboundText

__all__ = ["CallAdmission", "SipStore", "SipUser", "StoreRejected", "StoreUnavailable"]


class SipStore(Protocol):
    async def rotate(self, number: Number, caller: str | None) -> Decision:
        """R4 round robin: the decision with the number's shared turn claimed."""

    async def sip_user(self, username: str) -> SipUser | None:
        """The user whose phone authenticates as ``username`` (any case)."""

    async def account_numbers(self, account_id: int) -> list[Number]:
        """Every number of the account (for R11's caller-ID choice)."""

    async def accept_text(self, text: InboundText) -> Accepted:
        """Store an inbound text exactly once. Raises texts.UnknownNumber,
        StoreRejected (bad data) or StoreUnavailable (database away)."""

    async def over_limit(self, number: Number, caller: str | None, action: str) -> None:
        """Tell the account's owners and admins a caller found ``number`` at its limit."""

    async def text_back(self, number: Number, caller: str, body: str) -> None:
        """Text ``body`` from ``number`` to ``caller`` through its provider, and record it."""

    def call_event(
        self, event_type: str, account_id: int, data: Callable[[], dict[str, Any]]
    ) -> Coroutine[Any, Any, None] | None:
        """Queue ``call.started``/``call.answered`` for the account's event
        webhooks: the work to await, or None when nobody listens."""

    async def missed_call_text(self, number: Number, caller: str) -> None:
        """R17: the number's missed-call text to ``caller``, unless they opted
        out or had one within the number's period."""


class CallAdmission(Protocol):
    """R7's counter of inbound calls in progress: in this process
    (:class:`gateway.domain.call_slots.CallSlots`) or across every gateway on
    the database (:class:`gateway.store.cluster_slots.ClusterSlots`)."""

    def take(self, number_id: int, limit: int, call_id: str) -> Slot | Awaitable[Slot | None] | None:
        """A slot, None (the number is at its limit), or, when the answer
        needs a round trip, an awaitable of one of those."""

    def active(self, number_id: int) -> int:
        """Calls to the number this gateway holds."""

    def total(self) -> int:
        """Calls this gateway holds."""

    def busiest(self, count: int) -> list[tuple[int, int]]:
        """This gateway's ``count`` busiest numbers and their calls."""
