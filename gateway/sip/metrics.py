"""SIP metrics (issue 6), registered on the gateway's own registry.

Per-number series are bounded: active calls are exported for the
``per_number_limit`` busiest numbers only (computed at scrape time), and limit
rejections keep a label for the first ``per_number_limit`` numbers that hit
the limit, folding the rest into ``other``.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from gateway.sip.ports import CallAdmission

KNOWN_METHODS = frozenset(
    ("INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "MESSAGE", "UPDATE", "INFO", "PRACK", "REGISTER")
)


class _BusiestNumbers(Collector):
    def __init__(self, slots: CallAdmission, limit: int) -> None:
        self._slots = slots
        self._limit = limit

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "gateway_sip_active_calls_by_number",
            "Inbound calls in progress on the busiest numbers (R7)",
            labels=["number_id"],
        )
        for number_id, active in self._slots.busiest(self._limit):
            family.add_metric([str(number_id)], active)
        yield family


class SipMetrics:
    """Counters and histograms of the SIP front end. Updating one costs a lock and an add."""

    def __init__(self, registry: CollectorRegistry, slots: CallAdmission, per_number_limit: int) -> None:
        r = registry
        self._per_number_limit = per_number_limit
        self._labelled_numbers: set[int] = set()
        self._message_children: dict[tuple[str, str, int], Counter] = {}
        self.active_calls = Gauge("gateway_sip_active_calls", "Inbound calls in progress (R7)", registry=r)
        self.active_calls.set_function(slots.total)
        r.register(_BusiestNumbers(slots, per_number_limit))
        self.calls = Counter(
            "gateway_sip_calls",
            "Calls ended, by direction and disposition",
            ["direction", "disposition"],
            registry=r,
        )
        self.limit_rejections = Counter(
            "gateway_sip_limit_rejections",
            "INVITEs refused with 486 because the number was at its concurrent-call limit (R7)",
            ["number_id"],
            registry=r,
        )
        self.setup_seconds = Histogram(
            "gateway_sip_setup_seconds",
            "INVITE received -> first provisional from an agent leg, and -> answer",
            ["stage"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=r,
        )
        self.messages = Counter(
            "gateway_sip_messages",
            "SIP messages by direction, method and class (request, or the response's 1xx-6xx)",
            ["direction", "method", "kind"],
            registry=r,
        )
        self.malformed = Counter(
            "gateway_sip_malformed",
            "SIP input that could not be parsed or lacked mandatory headers",
            ["transport"],
            registry=r,
        )
        self.refused = Counter(
            "gateway_sip_refused", "Requests refused before routing, by reason", ["reason"], registry=r
        )
        self.transactions = Gauge(
            "gateway_sip_transactions_in_flight", "Client transactions awaiting a final response", registry=r
        )
        self.handler_errors = Counter(
            "gateway_sip_handler_errors", "Unexpected exceptions caught at the SIP entry point", registry=r
        )

    def count_message(self, direction: str, method: str, status: int | None) -> None:
        """Two dict lookups and an add: the labelled child is looked up once."""
        key = (direction, method, status // 100 if status is not None else 0)
        child = self._message_children.get(key)
        if child is None:
            known = method if method in KNOWN_METHODS else "other"
            kind = "request" if status is None else f"{status // 100}xx"
            child = self.messages.labels(direction, known, kind)
            if len(self._message_children) < 1000:  # bounded even for hostile method names
                self._message_children[key] = child
        child.inc()

    def count_limit_rejection(self, number_id: int) -> None:
        if number_id not in self._labelled_numbers and len(self._labelled_numbers) < self._per_number_limit:
            self._labelled_numbers.add(number_id)
        label = str(number_id) if number_id in self._labelled_numbers else "other"
        self.limit_rejections.labels(label).inc()
