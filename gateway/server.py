"""The composition root: config -> database -> migrations -> index -> servers.

``Gateway.start`` builds the parts in that order; ``Gateway.stop`` takes them
down in reverse (stop accepting, drain, close the pool, stop the embedded
cluster) within ``shutdown.grace_period_s``. Nothing else in the package
constructs long-lived parts.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
from pathlib import Path

import asyncpg
from aiohttp import web

from gateway.config import Settings
from gateway.domain.call_slots import CallSlots
from gateway.domain.live_calls import LiveCalls
from gateway.domain.rate_limit import FailureLimiter
from gateway.event_webhooks import Sender as WebhookSender
from gateway.http.app import build_app
from gateway.http.deps import Deps
from gateway.http.load_shed import LoopLag
from gateway.metrics import Metrics
from gateway.providers import Providers
from gateway.sip.metrics import SipMetrics
from gateway.sip.service import SipService
from gateway.store import demo, purchases
from gateway.store.cluster_slots import ClusterSlots, new_instance_id
from gateway.store.embedded import EmbeddedPostgres
from gateway.store.events import EventHub
from gateway.store.index_keeper import IndexKeeper
from gateway.store.migrations import migrate
from gateway.store.outbox import Outbox
from gateway.store.outcome_batch import SendOutcomes
from gateway.store.sip_store import PgSipStore
from gateway.store.status_batch import StatusBatcher
from gateway.store.text_batch import TextBatcher

log = logging.getLogger(__name__)


class Gateway:
    """One running gateway: its database, index and listeners."""

    def __init__(self, settings: Settings, seed_demo: bool = False) -> None:
        self.settings = settings
        self.seed_demo = seed_demo
        self.metrics = Metrics()
        self.embedded: EmbeddedPostgres | None = None
        self.pool: asyncpg.Pool | None = None
        self.keeper: IndexKeeper | None = None
        self.dsn = settings.database.url
        self._runner: web.AppRunner | None = None
        self.providers = Providers(settings)
        self.event_hub: EventHub | None = None
        self.http_port: int | None = None
        self.slots: CallSlots | ClusterSlots = CallSlots()
        self.live_calls = LiveCalls()  # SIP writes it, the admin console reads it
        self.recorder: Outbox | None = None
        self.sip: SipService | None = None
        self.loop_lag: LoopLag | None = None
        self.webhooks: WebhookSender | None = None

    async def start(self) -> None:
        db = self.settings.database
        if not self.dsn:
            self.embedded = EmbeddedPostgres(Path(db.embedded_dir), run_as=db.embedded_user)
            self.dsn = await asyncio.to_thread(self.embedded.start)
        self.pool = await asyncpg.create_pool(
            self.dsn,
            min_size=db.pool_min_size,
            max_size=db.pool_max_size,
            timeout=db.connect_timeout_s,
            command_timeout=db.command_timeout_s,
        )
        pool = self.pool
        self.metrics.watch_pool(pool.get_size, lambda: pool.get_size() - pool.get_idle_size())
        async with pool.acquire() as conn:
            await migrate(conn)
        self.keeper = IndexKeeper(
            self.dsn,
            self.metrics,
            reload_interval_s=self.settings.index.reload_interval_s,
            max_backoff_s=self.settings.index.reconnect_max_backoff_s,
            connect_timeout_s=db.connect_timeout_s,
        )
        await self.keeper.start()
        keeper = self.keeper
        self.event_hub = EventHub(self.dsn, db.connect_timeout_s)
        await self.event_hub.start()
        if self.seed_demo:
            async with pool.acquire() as conn:
                for line in await demo.seed(conn):
                    print(line, flush=True)
            # Listen only once the demo can be routed.
            await self.keeper.wait_until(demo.routable, limit_s=10)
        self.recorder = Outbox(pool, Path(self.settings.outbox.dir), lambda: keeper.index)
        recorder = self.recorder
        self.metrics.watch_outbox(lambda: recorder.backlog())
        self.metrics.watch_index_following(lambda: float(keeper.ready))
        replayed = await self.recorder.start()
        if replayed:
            log.warning("replaying %d outbox entries from the previous run", replayed)
        self.texts = TextBatcher(
            pool,
            max_batch=self.settings.texts.batch_max,
            max_pending=self.settings.texts.max_pending,
            writers=self.settings.texts.writers,
            on_batch=self.metrics.observe_text_batch,
        )
        texts = self.texts
        self.metrics.watch_text_queue(lambda: texts.depth, lambda: texts.writing)
        self.loop_lag = LoopLag(self.settings.texts.shed_at_loop_lag_s)
        self.loop_lag.start()
        self.webhooks = WebhookSender(pool, self.settings.webhooks, self.metrics.event_webhooks)
        self.webhooks.start()
        lag = self.loop_lag
        self.metrics.watch_loop_lag(lambda: lag.lag_s)
        http = self.settings.http
        app = build_app(
            Deps(
                metrics=self.metrics,
                readiness=self.readiness,
                pool=pool,
                index=lambda: keeper.index,
                providers=self.providers,
                event_hub=self.event_hub,
                outbox=self.recorder,
                texts=self.texts,
                statuses=StatusBatcher(
                    pool, max_batch=self.settings.texts.batch_max, max_pending=self.settings.texts.max_pending
                ),
                send_outcomes=SendOutcomes(pool, on_batch=self.metrics.observe_send_outcome_batch),
                loop_lag=self.loop_lag,
                limiter=FailureLimiter(
                    self.settings.limits.failures_per_s, self.settings.limits.failure_burst
                ),
                inventory=purchases.LocalInventory(),
                sip_realm=self.settings.sip.realm,
                public_base_url=http.public_base_url,
                twilio_auth_token=self.settings.twilio.auth_token.get_secret_value(),
                telnyx_public_key=self.settings.telnyx.public_key,
                max_body_bytes=http.max_body_bytes,
                max_import_bytes=http.max_import_bytes,
                trusted_proxies=http.trusted_proxies,
                webhook_private_targets=self.settings.webhooks.allow_private_targets,
                live_calls=self.live_calls,
            )
        )
        self._runner = web.AppRunner(
            app, shutdown_timeout=self.settings.shutdown.grace_period_s, access_log=None
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.settings.http.host, self.settings.http.port)
        await site.start()
        self.http_port = self._bound_port()
        log.info("HTTP listening on %s:%s", self.settings.http.host, self.http_port)
        if self.settings.cluster.slots == "postgres":
            self.slots = await self._cluster_slots(pool)
        self.sip = SipService(
            self.settings.sip,
            lambda: keeper.index,
            PgSipStore(pool, lambda: keeper.index, self.texts, self._send_text),
            SipMetrics(self.metrics.registry, self.slots, self.settings.sip.per_number_metrics),
            self.slots,
            self.recorder,
            self.metrics.texts_received,
            FailureLimiter(self.settings.limits.failures_per_s, self.settings.limits.failure_burst),
            self.live_calls,
        )
        await self.sip.start()
        if isinstance(self.slots, ClusterSlots):
            self.slots.sip_address = self.sip.core.via_host  # where the cluster's operators find us
        # Once, before any call: the first index (millions of tuples) and the
        # start-up objects leave the cycle collector's generations, so a gen-2
        # collection never scans them. Not at reloads: objects alive then
        # include calls in flight, whose cycles would never be collected.
        gc.freeze()
        log.info("SIP listening on %s:%s (UDP and TCP)", self.settings.sip.host, self.sip.port)

    async def _cluster_slots(self, pool: asyncpg.Pool) -> ClusterSlots:
        c = self.settings.cluster
        s = self.settings.sip
        slots = ClusterSlots(
            pool,
            instance_id=c.instance_id or new_instance_id(),
            sip_address=f"{s.advertised_host or s.host}:{s.port}",
            lease_s=c.lease_s,
            heartbeat_s=c.heartbeat_s,
            admit_timeout_s=c.admit_timeout_s,
            on_admission=self.metrics.count_admission,
        )
        await slots.start()
        self.metrics.watch_cluster(
            lambda: float(slots.state()["mode"] == "degraded"), lambda: slots.live_instances
        )
        log.info("call slots on the cluster counter as %s (%s)", slots.instance_id, slots.mode)
        return slots

    async def _send_text(self, provider: str, sender: str, to: str, body: str) -> tuple[str, str]:
        """A system text (the over-limit text-back) through the number's
        provider, with the usual delivery status callback."""
        sent = await self.providers.send(provider, sender, to, body, self.providers.status_url(provider))
        return sent.provider_message_id, sent.status

    async def stop(self) -> None:
        """Reverse of start; safe to call on a partly started gateway."""
        grace = self.settings.shutdown.grace_period_s
        if self.sip is not None:
            await self.sip.stop(grace)  # new INVITEs get 503; calls in progress may finish
            self.sip = None
        if isinstance(self.slots, ClusterSlots):
            await self.slots.stop()  # our slots leave the cluster counter now, not at lease expiry
        if self.recorder is not None:
            await self.recorder.stop(grace)
            self.recorder = None
        if self.event_hub is not None:
            await self.event_hub.stop()  # ends open event streams, so draining need not wait for them
            self.event_hub = None
        if self._runner is not None:
            await self._runner.cleanup()  # stops accepting, then drains within grace
            self._runner = None
        if self.loop_lag is not None:
            await self.loop_lag.stop()
            self.loop_lag = None
        if self.webhooks is not None:
            await self.webhooks.stop()  # unmarked sends are claimed again when their lease ends
            self.webhooks = None
        await self.providers.close()
        if self.keeper is not None:
            await self.keeper.stop()
            self.keeper = None
        if self.pool is not None:
            try:
                async with asyncio.timeout(max(grace, 1.0)):
                    await self.pool.close()
            except TimeoutError:
                self.pool.terminate()
            self.pool = None
        if self.embedded is not None:
            await asyncio.to_thread(self.embedded.stop)
            self.embedded = None

    async def readiness(self) -> tuple[bool, dict[str, object]]:
        """Database reachable and index loaded and following changes."""
        keeper = self.keeper
        detail: dict[str, object] = {}
        if keeper is not None:
            size = keeper.index.size()
            detail = {
                "index_generation": keeper.generation,
                "index_age_seconds": round(keeper.age_s(), 3) if keeper.loaded_at else None,
                "index_lead_phones": size.lead_phones,
                "index_numbers": size.numbers,
                "outbox_backlog": self.recorder.backlog() if self.recorder is not None else 0,
                "active_calls": self.slots.total(),
                "call_slots": self.slots.state(),
            }
        if self.pool is None or keeper is None:
            return False, {**detail, "reason": "starting"}
        if self.sip is not None and self.sip.draining:
            return False, {**detail, "reason": "draining: shutting down, calls in progress may finish"}
        try:
            async with asyncio.timeout(self.settings.database.connect_timeout_s):
                await self.pool.fetchval("SELECT 1")
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
            reason = f"database unreachable: {type(exc).__name__}"
            if keeper.loaded_at and self.recorder is not None:  # issue 7: serve from the snapshot
                backlog = self.recorder.backlog()
                return True, {
                    **detail,
                    "status": "degraded",
                    "reason": f"{reason}; routing from the index snapshot, {backlog} writes in the outbox",
                }
            return False, {**detail, "reason": reason}
        if not keeper.ready:
            return False, {**detail, "reason": keeper.last_error or "index not ready"}
        return True, detail

    def _bound_port(self) -> int:
        assert self._runner is not None
        for site_address in self._runner.addresses:
            if isinstance(site_address, tuple):
                return int(site_address[1])
        return self.settings.http.port


async def serve(settings: Settings, seed_demo: bool = False) -> int:
    """Run until SIGTERM/SIGINT, then shut down in order. Returns the exit code."""
    gateway = Gateway(settings, seed_demo=seed_demo)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await gateway.start()
        print(
            f"gateway ready: HTTP http://{_display_host(settings.http.host)}:{gateway.http_port} "
            f"(/healthz /readyz /metrics), SIP udp+tcp {_display_host(settings.sip.host)}:"
            f"{gateway.sip.port if gateway.sip else settings.sip.port}",
            flush=True,
        )
        await stop.wait()
        log.info("shutting down")
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(sig)
        await gateway.stop()
    return 0


def _display_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "::", "") else host  # noqa: S104
