"""Percentiles from a histogram (issue 16, item 2): time to answer is kept as
counts per whole second, which add up across days and numbers; p50/p90 come
from the merged counts, interpolated as Postgres's ``percentile_cont``."""

from __future__ import annotations

from collections.abc import Sequence

ANSWER_BINS = 121  # 0..119 s, and the last for 120 s or more


def percentile(counts: Sequence[int], q: float) -> float | None:
    """The ``q`` quantile (0..1) of the values ``counts`` describes (``counts[i]``
    values equal to i), linear between the two nearest ranks; None for none.
    O(len(counts))."""
    total = sum(counts)
    if total == 0:
        return None
    rank = q * (total - 1)
    low_rank = int(rank)
    low = _value_at(counts, low_rank)
    if rank == low_rank:
        return float(low)
    high = _value_at(counts, low_rank + 1)
    return low + (rank - low_rank) * (high - low)


def _value_at(counts: Sequence[int], rank: int) -> int:
    seen = 0
    for value, count in enumerate(counts):
        seen += count
        if rank < seen:
            return value
    raise IndexError(rank)


def add(into: list[int], more: Sequence[int]) -> None:
    """Add the histogram ``more`` into ``into``, bin by bin."""
    for i, count in enumerate(more):
        into[i] += count
