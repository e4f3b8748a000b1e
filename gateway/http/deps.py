"""Everything the HTTP side depends on, in one typed object built by the
composition root (``gateway/server.py``) and reached from a handler as
``deps(request)``: no module declares its own application keys."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Network, IPv6Network
from typing import TYPE_CHECKING

from aiohttp import web

from gateway.domain.live_calls import LiveCalls

if TYPE_CHECKING:
    from gateway.domain.index import Index
    from gateway.domain.rate_limit import FailureLimiter
    from gateway.http.load_shed import LoopLag
    from gateway.metrics import Metrics
    from gateway.providers import Providers
    from gateway.store import Pool
    from gateway.store.events import EventHub
    from gateway.store.outbox import Outbox
    from gateway.store.outcome_batch import SendOutcomes
    from gateway.store.purchases import Inventory
    from gateway.store.status_batch import StatusBatcher
    from gateway.store.text_batch import TextBatcher

Readiness = Callable[[], Awaitable[tuple[bool, dict[str, object]]]]
Networks = Sequence[IPv4Network | IPv6Network]


@dataclass(slots=True)
class Deps:
    metrics: Metrics
    readiness: Readiness
    pool: Pool
    index: Callable[[], Index]
    providers: Providers
    event_hub: EventHub
    outbox: Outbox
    texts: TextBatcher
    statuses: StatusBatcher
    send_outcomes: SendOutcomes
    loop_lag: LoopLag
    limiter: FailureLimiter
    inventory: Inventory
    sip_realm: str
    public_base_url: str
    twilio_auth_token: str
    telnyx_public_key: str
    max_body_bytes: int
    max_import_bytes: int
    trusted_proxies: Networks = ()
    live_calls: LiveCalls = field(default_factory=LiveCalls)  # inbound calls in progress (console)
    webhook_private_targets: bool = False  # event webhooks may go to private addresses (tests, labs)
    open_streams: dict[int, int] = field(default_factory=dict)  # event streams per API key (state)


DEPS: web.AppKey[Deps] = web.AppKey("deps", Deps)


def deps(request: web.Request) -> Deps:
    return request.app[DEPS]
