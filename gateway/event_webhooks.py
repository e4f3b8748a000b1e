"""Delivering event webhooks to the CRM (issue 16, item 1), signed per the
Standard Webhooks specification: ``webhook-id`` (the event's stable id),
``webhook-timestamp`` (Unix seconds) and ``webhook-signature``
(``v1,`` + base64 HMAC-SHA256 of ``id.timestamp.body`` under the endpoint's
``whsec_`` secret).

At least once: a delivery is claimed with a lease, sent, then marked; a
failure is retried on :data:`RETRY_S` with jitter (just over a day in all),
then marked failed, visible and redeliverable through the API. One slow or
dead endpoint holds at most ``webhooks.per_endpoint`` sends at a time, each
bounded by ``webhooks.timeout_s``; the rest of the queue goes on without it.

Only to addresses an operator allows: an endpoint that resolves to loopback,
private, link-local or other special ranges is refused, at registration and
again at every send (its DNS may change), unless
``webhooks.allow_private_targets`` is set.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import hashlib
import hmac
import ipaddress
import logging
import random
import secrets
import time
from urllib.parse import urlsplit

import aiohttp
import asyncpg
from prometheus_client import Counter

from gateway.config import WebhooksSettings
from gateway.store import event_webhooks as queue

log = logging.getLogger(__name__)

# Seconds before each retry: about 24.7 hours from the first attempt to the last.
RETRY_S = (5, 30, 120, 600, 1800, 3600, 7200, 14400, 28800, 33000)
BATCH = 64
LEASE_S = 60.0


def new_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def sign(secret: str, event_id: str, timestamp: int, body: str) -> str:
    """The ``webhook-signature`` header value."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    mac = hmac.new(key, f"{event_id}.{timestamp}.{body}".encode(), hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def retry_in(attempts: int) -> float | None:
    """Seconds until the next try after ``attempts`` failed ones (±20 % jitter,
    so endpoints that failed together do not all come back together), or None
    once the schedule is spent."""
    if attempts > len(RETRY_S):
        return None
    return RETRY_S[attempts - 1] * random.uniform(0.8, 1.2)  # noqa: S311 - jitter, not a secret


class TargetRefused(ValueError):
    """The URL is not one the gateway may call."""


async def check_target(url: str, allow_private: bool) -> None:
    """Raise :class:`TargetRefused` unless ``url`` is http(s) with a host that
    resolves only to public addresses (or ``allow_private``). One DNS lookup."""
    try:
        parts = urlsplit(url)
        port = parts.port  # raises for a port that is no number, or out of range
    except ValueError:
        raise TargetRefused("is not a URL") from None
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise TargetRefused("must be an http or https URL with a host")
    if parts.username or parts.password:
        raise TargetRefused("must not carry credentials")
    if allow_private:
        return
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(parts.hostname, port or 443)
    except OSError as exc:
        raise TargetRefused(f"host does not resolve ({exc.strerror or exc})") from None
    for info in infos:
        address = ipaddress.ip_address(str(info[4][0]).split("%")[0])
        if not address.is_global:
            raise TargetRefused(f"resolves to {address}, which is not a public address")


class Sender:
    """The gateway's delivery loop. ``start()`` and ``stop()`` from the
    composition root; any number of gateways may share one queue."""

    def __init__(self, pool: asyncpg.Pool, settings: WebhooksSettings, counter: Counter) -> None:
        self._pool = pool
        self._settings = settings
        self._counter = counter  # gateway_event_webhook_deliveries_total{result}
        self._session: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None
        self._sending: collections.Counter[int] = collections.Counter()  # sends in flight per endpoint
        self._in_flight: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        timeout = aiohttp.ClientTimeout(total=self._settings.timeout_s)
        self._session = aiohttp.ClientSession(timeout=timeout, raise_for_status=False)
        self._task = asyncio.get_running_loop().create_task(self._run(), name="event-webhooks")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            except Exception as exc:
                # Cancelled inside a claim: the pool's reset of that connection
                # can fail too ("another operation is in progress"). The queue
                # is in Postgres, so stopping loses nothing; say so and go on.
                log.warning("event webhooks: stopped mid-claim (%r)", exc)
        for task in list(self._in_flight):
            task.cancel()
        await asyncio.gather(*self._in_flight, return_exceptions=True)
        if self._session is not None:
            await self._session.close()

    async def _run(self) -> None:
        while True:
            try:
                claimed = await self._claim()
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
                log.warning("event webhooks: cannot read the queue (%s)", exc)
                claimed = 0
            if claimed < BATCH:
                await asyncio.sleep(self._settings.poll_interval_s)

    async def _claim(self) -> int:
        # Claim only what can start now: never more than per_endpoint sends to
        # one endpoint, so a dead endpoint's backlog waits in the queue (not in
        # memory, and not past its lease behind its own earlier sends).
        room = BATCH - len(self._in_flight)
        if room <= 0:
            return 0
        limit = self._settings.per_endpoint
        busy = [endpoint for endpoint, sending in self._sending.items() if sending >= limit]
        async with self._pool.acquire(timeout=2.0) as conn:
            due = await queue.claim_due(conn, room, LEASE_S, limit, busy)
        for delivery in due:
            self._sending[delivery.endpoint_id] += 1
            task = asyncio.get_running_loop().create_task(self._deliver(delivery))
            self._in_flight.add(task)
            task.add_done_callback(self._in_flight.discard)
        return len(due)

    async def _deliver(self, d: queue.Due) -> None:
        try:
            status, error = await self._post(d)
        finally:
            self._sending[d.endpoint_id] -= 1
            if self._sending[d.endpoint_id] <= 0:
                del self._sending[d.endpoint_id]
        try:
            async with self._pool.acquire(timeout=2.0) as conn:
                if error is None and status is not None:
                    await queue.delivered(conn, d.id, status)
                    self._counter.labels("delivered").inc()
                else:
                    retry = retry_in(d.attempts)
                    await queue.failed_attempt(conn, d.id, status, error or "", retry)
                    self._counter.labels("retry" if retry is not None else "given_up").inc()
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
            # The lease runs out and the delivery is claimed again: at least once.
            log.warning("event webhooks: delivery %d not marked (%s)", d.id, exc)

    async def _post(self, d: queue.Due) -> tuple[int | None, str | None]:
        """(HTTP status, None) for a 2xx, else (status or None, why)."""
        assert self._session is not None
        try:
            await check_target(d.url, self._settings.allow_private_targets)
        except TargetRefused as exc:
            return None, f"refused target: {exc}"
        timestamp = int(time.time())
        headers = {
            "content-type": "application/json",
            "webhook-id": d.event_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(d.secret, d.event_id, timestamp, d.payload),
            "user-agent": "gateway-webhooks/1",
        }
        try:
            async with self._session.post(d.url, data=d.payload.encode(), headers=headers) as response:
                await response.read()
                if 200 <= response.status < 300:
                    return response.status, None
                return response.status, f"HTTP {response.status}"
        except TimeoutError:
            return None, f"no answer within {self._settings.timeout_s:g} s"
        except aiohttp.ClientError as exc:
            return None, f"{type(exc).__name__}: {exc}"
