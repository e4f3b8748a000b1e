"""Percentiles from histograms (issue 16, item 2) agree with percentile_cont
over the values themselves."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from gateway.domain.stats import ANSWER_BINS, add, percentile


def percentile_cont(values: list[int], q: float) -> float:
    ordered = sorted(values)
    rank = q * (len(ordered) - 1)
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (rank - low) * (ordered[high] - ordered[low])


@given(
    st.lists(st.integers(0, ANSWER_BINS - 1), min_size=1, max_size=300), st.sampled_from([0.0, 0.5, 0.9, 1.0])
)
def test_a_histograms_percentile_is_percentile_cont_of_its_values(values: list[int], q: float) -> None:
    counts = [0] * ANSWER_BINS
    for v in values:
        counts[v] += 1
    assert percentile(counts, q) == percentile_cont(values, q)


def test_examples() -> None:
    counts = [0] * ANSWER_BINS
    assert percentile(counts, 0.5) is None
    add(counts, [0, 0, 1, 0, 1] + [0] * 5 + [1] + [0] * 110)  # 2, 4 and 10 s
    assert (percentile(counts, 0.5), percentile(counts, 0.9)) == (4.0, 8.8)
