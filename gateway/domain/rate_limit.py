"""Per-source limits on failed unauthenticated attempts (issue 7): webhook
calls with a bad signature, SIP requests from sources that are neither a
trunk nor an authenticated phone.

A token bucket per source address, charged only by failures, so a provider or
trunk that gets its signatures right is never slowed by its own volume. Time
is an argument (sans-IO); memory is bounded by evicting the least recently
seen source.
"""

from __future__ import annotations

from collections import OrderedDict


class FailureLimiter:
    def __init__(self, per_second: float, burst: int, max_sources: int = 100_000) -> None:
        self.per_second = per_second
        self.burst = float(burst)
        self.max_sources = max_sources
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # source -> (tokens, at)

    def blocked(self, source: str, now: float) -> bool:
        """True while ``source`` has used up its failures: refuse before doing any work."""
        return self._tokens(source, now) < 1.0

    def fail(self, source: str, now: float) -> None:
        """``source`` failed once more (bad signature, refused request)."""
        tokens = self._tokens(source, now)
        self._buckets[source] = (max(tokens - 1.0, 0.0), now)
        self._buckets.move_to_end(source)
        while len(self._buckets) > self.max_sources:
            self._buckets.popitem(last=False)

    def retry_after(self, source: str, now: float) -> int:
        """Whole seconds until ``source`` may try again."""
        missing = 1.0 - self._tokens(source, now)
        return max(1, int(missing / self.per_second + 0.999)) if missing > 0 else 0

    def _tokens(self, source: str, now: float) -> float:
        state = self._buckets.get(source)
        if state is None:
            return self.burst
        tokens, at = state
        return min(self.burst, tokens + max(now - at, 0.0) * self.per_second)
