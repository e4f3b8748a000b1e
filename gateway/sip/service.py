"""The SIP side's only asyncio code: it binds the transports, runs the core
(:class:`~gateway.sip.server.SipServer`) on the loop's clock and timers, and
drains it on shutdown."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from prometheus_client import Counter

from gateway.config import SipSettings
from gateway.domain.index import Index
from gateway.domain.live_calls import LiveCalls
from gateway.domain.rate_limit import FailureLimiter
from gateway.sip.metrics import SipMetrics
from gateway.sip.ports import CallAdmission, SipStore
from gateway.sip.scheduler import LoopScheduler
from gateway.sip.server import SipServer
from gateway.sip.transport import SipTransports
from gateway.store.outbox import Outbox

log = logging.getLogger(__name__)


class SipService:
    def __init__(
        self,
        settings: SipSettings,
        index: Callable[[], Index],
        store: SipStore,
        metrics: SipMetrics,
        slots: CallAdmission,
        recorder: Outbox,
        texts_received: Counter,
        limiter: FailureLimiter,
        live: LiveCalls | None = None,
    ) -> None:
        self.settings = settings
        self.recorder = recorder
        self.scheduler = LoopScheduler(asyncio.get_running_loop(), self._task_failed)
        self.transports = SipTransports(
            settings.host,
            settings.port,
            lambda message, peer: self.core.handle(message, peer),
            lambda peer: self.core.malformed(peer),
            settings.max_message_bytes,
            lambda message, peer: self.core.bad_version(message, peer),
            settings.udp_receive_buffer_bytes,
        )
        self.core = SipServer(
            settings,
            index,
            store,
            metrics,
            slots,
            recorder,
            texts_received,
            limiter,
            self.scheduler,
            self.transports,
            live,
        )

    @property
    def port(self) -> int:
        return self.transports.port

    @property
    def draining(self) -> bool:
        return self.core.draining

    async def start(self) -> None:
        await self.transports.start()
        s = self.settings
        host = s.advertised_host or (s.host if s.host not in ("0.0.0.0", "::", "") else "127.0.0.1")  # noqa: S104
        self.core.bind(host, self.port)

    async def stop(self, grace_s: float) -> None:
        """Refuse new calls (503), let calls in progress finish within ``grace_s``,
        then hang up the rest; their records are handed to the recorder."""
        self.core.draining = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace_s
        # The core is sans-IO (no Event to wait on): look every 50 ms.
        while not self.core.idle() and loop.time() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        self.core.abort_calls()
        # Ended calls' records reach the disk first: the 200s to their BYEs wait for that.
        await self.recorder.wait_durable(max(grace_s, 1.0))
        await asyncio.sleep(0.05)  # let the BYEs, 200s and 503s leave
        await self.scheduler.cancel_all()
        self.core.stop_transactions()
        await self.transports.stop()

    def _task_failed(self, exc: BaseException) -> None:
        self.core.metrics.handler_errors.inc()
        log.error("SIP handler failed", exc_info=exc)
