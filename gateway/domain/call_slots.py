"""R7: at most N simultaneous inbound calls per number (default 50).

A non-blocking counting semaphore per number. :meth:`CallSlots.take` either
hands out a :class:`Slot` or refuses at once (the caller answers 486); a slot is
given back with :meth:`Slot.release`, which is idempotent, so every ending of a
call (BYE from either side, CANCEL, a failure, ACK timeout, session expiry,
transport error) may release it and the count still drops exactly once.
"""

from __future__ import annotations


class Slot:
    """One taken slot of one number; :meth:`release` frees it exactly once."""

    __slots__ = ("_owner", "number_id")

    def __init__(self, owner: CallSlots, number_id: int) -> None:
        self._owner: CallSlots | None = owner
        self.number_id = number_id

    @property
    def held(self) -> bool:
        return self._owner is not None

    def release(self) -> bool:
        """Give the slot back. True the first time, False on every later call."""
        owner, self._owner = self._owner, None
        if owner is None:
            return False
        owner._give_back(self.number_id)
        return True


class CallSlots:
    """Counters of calls in progress, per number id."""

    __slots__ = ("_active",)

    def __init__(self) -> None:
        self._active: dict[int, int] = {}

    def take(self, number_id: int, limit: int) -> Slot | None:
        """A slot when fewer than ``limit`` calls to the number are in progress,
        else None (R7). O(1)."""
        active = self._active.get(number_id, 0)
        if active >= limit:
            return None
        self._active[number_id] = active + 1
        return Slot(self, number_id)

    def active(self, number_id: int) -> int:
        return self._active.get(number_id, 0)

    def total(self) -> int:
        return sum(self._active.values())

    def busiest(self, count: int) -> list[tuple[int, int]]:
        """The ``count`` numbers with the most calls in progress, for a metric with
        bounded label cardinality."""
        return sorted(self._active.items(), key=lambda item: -item[1])[:count]

    def _give_back(self, number_id: int) -> None:
        left = self._active[number_id] - 1
        if left:
            self._active[number_id] = left
        else:
            del self._active[number_id]  # idle numbers cost nothing
