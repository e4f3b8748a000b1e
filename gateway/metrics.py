"""Prometheus metrics, one registry per running gateway (so tests can run many)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TypeVar

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)

from gateway import __version__

Labelled = TypeVar("Labelled", Counter, Gauge, Histogram)


def children(metric: Labelled) -> Callable[..., Labelled]:
    """``metric.labels(*values)`` with each child made once. ``labels()``
    validates, builds a tuple and takes a lock on every call; the webhook
    path asks for the same few children for every text (issue 13). Label
    values must come from a bounded set, as for ``labels()`` itself."""
    made: dict[tuple[str, ...], Labelled] = {}

    def child(*values: str) -> Labelled:
        found = made.get(values)
        if found is None:
            found = made[values] = metric.labels(*values)
        return found

    return child


class Metrics:
    """Every metric the gateway exports. Updating one costs a lock and an add."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        r = self.registry
        build = Gauge("gateway_build_info", "Build of this gateway", ["version"], registry=r)
        build.labels(version=__version__).set(1)
        self.index_size = Gauge(
            "gateway_index_entries", "Entries in the in-memory routing index", ["kind"], registry=r
        )
        self.index_age = Gauge(
            "gateway_index_age_seconds", "Seconds since the index was last fully loaded", registry=r
        )
        self.index_generation = Gauge(
            "gateway_index_generation", "Full loads of the routing index so far", registry=r
        )
        self.index_reload_seconds = Histogram(
            "gateway_index_reload_duration_seconds",
            "Time to load the whole routing index from Postgres",
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32),
            registry=r,
        )
        self.index_notifications = Counter(
            "gateway_index_notifications_applied",
            "Change notifications applied to the routing index",
            ["table"],
            registry=r,
        )
        self.index_listener_reconnects = Counter(
            "gateway_index_listener_reconnects",
            "Times the index listener reconnected to Postgres",
            registry=r,
        )
        self.asyncio_tasks = Gauge("gateway_asyncio_tasks", "asyncio tasks alive on the loop", registry=r)
        self.asyncio_tasks.set_function(_task_count)
        self.db_pool_size = Gauge("gateway_db_pool_connections", "Connections open in the pool", registry=r)
        self.db_pool_in_use = Gauge("gateway_db_pool_in_use", "Pool connections checked out", registry=r)
        self.http_requests = Counter(
            "gateway_http_requests", "HTTP requests answered", ["route", "status"], registry=r
        )
        self.http_request_seconds = Histogram(
            "gateway_http_request_duration_seconds",
            "Time to answer an HTTP request (an event stream: until it ends), by method and route template",
            ["method", "route"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=r,
        )

        self.texts_received = Counter(
            "gateway_texts_received",
            "Inbound texts by provider and outcome",
            ["provider", "outcome"],
            registry=r,
        )
        self.text_outcome = children(self.texts_received)  # (provider, outcome)
        self.http_answered = children(self.http_requests)  # (route, status)
        self.http_timed = children(self.http_request_seconds)  # (method, route)
        self.text_batch_size = Histogram(
            "gateway_text_batch_size",
            "Inbound texts written per group commit",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
            registry=r,
        )
        self.text_batch_seconds = Histogram(
            "gateway_text_batch_commit_seconds",
            "Time to write and commit one batch of inbound texts",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2),
            registry=r,
        )
        self.send_outcome_batch_size = Histogram(
            "gateway_send_outcome_batch_size",
            "Outbound sends whose outcome (status, timeline, usage) was written per group commit",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
            registry=r,
        )
        self.text_queue_depth = Gauge(
            "gateway_text_queue_depth", "Inbound texts waiting for the next batch", registry=r
        )
        self.text_writers = Gauge(
            "gateway_text_writers",
            "Text batches being written now; more than one only while the queue is deep",
            registry=r,
        )
        self.loop_lag = Gauge(
            "gateway_event_loop_lag_seconds", "How late the event loop runs a 20 ms timer", registry=r
        )
        self.outbox_backlog = Gauge(
            "gateway_outbox_backlog",
            "Call records and texts acknowledged but not yet applied to Postgres (durable on disk)",
            registry=r,
        )
        self.index_following = Gauge(
            "gateway_index_following",
            "1 while the index listens to Postgres for changes; 0: database away, routing from the snapshot",
            registry=r,
        )
        self.call_slots_degraded = Gauge(
            "gateway_call_slots_degraded",
            "1 while R7 is decided from this gateway's share instead of the cluster counter",
            registry=r,
        )
        self.cluster_live_instances = Gauge(
            "gateway_cluster_live_instances", "Gateways with a live lease at the last heartbeat", registry=r
        )
        self.call_admissions = Counter(
            "gateway_call_admissions",
            "R7 admissions decided, by counter (cluster or degraded) and result",
            ["mode", "result"],
            registry=r,
        )
        self.event_webhooks = Counter(
            "gateway_event_webhook_deliveries",
            "Event webhook sends to CRM endpoints, by result (delivered, retry, given_up)",
            ["result"],
            registry=r,
        )
        for result in ("delivered", "retry", "given_up"):
            self.event_webhooks.labels(result)  # exported from the start, so rates start at 0
        self.webhooks_rejected = Counter(
            "gateway_webhooks_rejected",
            "Webhook requests refused before reading them (bad signature, not configured)",
            ["provider", "reason"],
            registry=r,
        )
        self.webhook_refused = children(self.webhooks_rejected)  # (provider, reason)

    def watch_pool(self, size: Callable[[], float], in_use: Callable[[], float]) -> None:
        self.db_pool_size.set_function(size)
        self.db_pool_in_use.set_function(in_use)

    def observe_text_batch(self, size: int, seconds: float) -> None:
        self.text_batch_size.observe(size)
        self.text_batch_seconds.observe(seconds)

    def observe_send_outcome_batch(self, size: int, seconds: float) -> None:
        self.send_outcome_batch_size.observe(size)

    def watch_cluster(self, degraded: Callable[[], float], live: Callable[[], float]) -> None:
        """The cluster R7 counter's state (issue 14)."""
        self.call_slots_degraded.set_function(degraded)
        self.cluster_live_instances.set_function(live)

    def count_admission(self, mode: str, admitted: bool) -> None:
        self.call_admissions.labels(mode, "admitted" if admitted else "refused").inc()

    def watch_outbox(self, backlog: Callable[[], float]) -> None:
        self.outbox_backlog.set_function(backlog)

    def watch_index_following(self, following: Callable[[], float]) -> None:
        self.index_following.set_function(following)

    def watch_text_queue(self, depth: Callable[[], float], writers: Callable[[], float]) -> None:
        self.text_queue_depth.set_function(depth)
        self.text_writers.set_function(writers)

    def watch_loop_lag(self, lag: Callable[[], float]) -> None:
        self.loop_lag.set_function(lag)

    def watch_index_age(self, age: Callable[[], float]) -> None:
        self.index_age.set_function(age)


def _task_count() -> float:
    try:
        return float(len(asyncio.all_tasks()))
    except RuntimeError:  # scraped off the loop (not by the gateway's own /metrics)
        return 0.0
