"""R7: at most N simultaneous inbound calls per number (default 50).

A non-blocking counting semaphore per number. :meth:`CallSlots.take` either
hands out a :class:`Slot` or refuses at once (the caller answers 486); a slot is
given back with :meth:`Slot.release`, which is idempotent, so every ending of a
call (BYE from either side, CANCEL, a failure, ACK timeout, session expiry,
transport error) may release it and the count still drops exactly once.

Across several gateways the count lives in Postgres (``store/cluster_slots``,
issue 14); while it is out of reach each gateway admits at most its share of
the limit (:func:`degraded_share`), from its own count of the calls it holds.
"""

from __future__ import annotations

import math
from typing import Protocol


class SlotOwner(Protocol):
    def state(self) -> dict[str, object]:
        """For /readyz."""
        return {"backend": "local", "mode": "local"}

    def _give_back(self, slot: Slot) -> None: ...


def degraded_share(limit: int, live_instances: int) -> int:
    """R7 while the cluster counter is unreachable: each of the gateways that
    were alive at the last contact admits ``ceil(limit / live)`` calls to a
    number. Their sum exceeds the limit by at most ``live - 1``; a gateway
    that died is still counted, which errs on the side of refusing."""
    return math.ceil(limit / max(live_instances, 1))


class Slot:
    """One taken slot of one number; :meth:`release` frees it exactly once."""

    __slots__ = ("_owner", "key", "number_id")

    def __init__(self, owner: SlotOwner, number_id: int, key: int = 0) -> None:
        self._owner: SlotOwner | None = owner
        self.number_id = number_id
        self.key = key  # the cluster counter's slot id (0 for the local counter)

    @property
    def held(self) -> bool:
        return self._owner is not None

    def release(self) -> bool:
        """Give the slot back. True the first time, False on every later call."""
        owner, self._owner = self._owner, None
        if owner is None:
            return False
        owner._give_back(self)
        return True


class CallSlots:
    """Counters of calls in progress, per number id."""

    __slots__ = ("_active",)

    def __init__(self) -> None:
        self._active: dict[int, int] = {}

    def take(self, number_id: int, limit: int, call_id: str = "") -> Slot | None:
        """A slot when fewer than ``limit`` calls to the number are in progress,
        else None (R7). O(1), decided at once (the cluster counter may answer
        with an awaitable instead: see ``store/cluster_slots``)."""
        if not self.count(number_id, limit):
            return None
        return Slot(self, number_id)

    def count(self, number_id: int, limit: int) -> bool:
        """Count one more call to the number if fewer than ``limit`` are in
        progress; False (and no change) otherwise."""
        active = self._active.get(number_id, 0)
        if active >= limit:
            return False
        self._active[number_id] = active + 1
        return True

    def active(self, number_id: int) -> int:
        return self._active.get(number_id, 0)

    def total(self) -> int:
        return sum(self._active.values())

    def busiest(self, count: int) -> list[tuple[int, int]]:
        """The ``count`` numbers with the most calls in progress, for a metric with
        bounded label cardinality."""
        return sorted(self._active.items(), key=lambda item: -item[1])[:count]

    def state(self) -> dict[str, object]:
        """For /readyz."""
        return {"backend": "local", "mode": "local"}

    def _give_back(self, slot: Slot) -> None:
        self.uncount(slot.number_id)

    def uncount(self, number_id: int) -> None:
        left = self._active[number_id] - 1
        if left:
            self._active[number_id] = left
        else:
            del self._active[number_id]  # idle numbers cost nothing
