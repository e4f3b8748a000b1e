"""``GET /v1/events``: a user's new texts and notifications as server-sent
events (issue 5). ``Last-Event-ID`` (or ``?last_event_id=``) resumes after
the last event the client saw, read from the database: a reconnect loses
nothing.

A stream lives only as long as its credential (issue 12): every
``CREDENTIAL_CHECK_S`` it checks that its key is unrevoked and its user
still there with the same role, and ends otherwise. At most
``MAX_STREAMS_PER_KEY`` streams per key are open at once (429 beyond)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

from aiohttp import web
from aiohttp_sse import sse_response

from gateway.http.auth import principal
from gateway.http.deps import deps
from gateway.http.problems import problem
from gateway.http.routes import API
from gateway.http.validation import field_error
from gateway.store.api_keys import Principal, still_valid
from gateway.store.events import EventHub, events_after

HEARTBEAT_S = 15.0
CREDENTIAL_CHECK_S = 1.0
MAX_STREAMS_PER_KEY = 5


def _resume_point(request: web.Request) -> int:
    raw = request.headers.get("Last-Event-ID") or request.query.get("last_event_id") or "0"
    if not raw.isascii() or not raw.isdigit() or len(raw) > 18:
        raise field_error("Last-Event-ID", "must be an event id", status=400)
    return int(raw)


@API.op(
    "GET",
    "/v1/events",
    "The caller's new texts and notifications (text/event-stream; Last-Event-ID resumes)",
    errors=(400, 429),
)
async def stream_events(request: web.Request) -> web.StreamResponse:
    """Long-lived. Each wake-up costs one indexed read, and each second one
    more to check the credential."""
    who = principal(request)
    last = _resume_point(request)
    hub = deps(request).event_hub
    with counted_stream(request, who) as refused:
        return refused or await _stream(request, who, last, hub)


@contextlib.contextmanager
def counted_stream(request: web.Request, who: Principal) -> Iterator[web.Response | None]:
    """One of the key's ``MAX_STREAMS_PER_KEY`` streams for the block, or
    (past them) the 429 to answer instead."""
    streams = deps(request).open_streams
    if streams.get(who.key_id, 0) >= MAX_STREAMS_PER_KEY:
        refused = problem(429, "Too Many Requests", f"at most {MAX_STREAMS_PER_KEY} event streams per key")
        refused.headers["Retry-After"] = "5"
        yield refused
        return
    streams[who.key_id] = streams.get(who.key_id, 0) + 1
    try:
        yield None
    finally:
        left = streams[who.key_id] - 1
        if left:
            streams[who.key_id] = left
        else:
            del streams[who.key_id]


async def _stream(request: web.Request, who: Principal, last: int, hub: EventHub) -> web.StreamResponse:
    """aiohttp-sse frames the events, pings every ``HEARTBEAT_S`` and gives up
    on a client that reads nothing for ``send_timeout``; this loop decides what
    to send and when the stream ends."""
    pool = deps(request).pool
    async with sse_response(
        request, sep="\n", headers={"X-Accel-Buffering": "no"}, ping_interval=HEARTBEAT_S
    ) as response:
        waiter = hub.subscribe(who.user_id)
        loop = asyncio.get_running_loop()
        checked_at = loop.time()
        try:
            await response.write(b": connected\n\n")
            while not hub.closing.is_set() and response.is_connected():
                if request.transport is None or request.transport.is_closing():
                    break  # the client left: give its place back now, not at the next ping
                waiter.clear()
                async with pool.acquire() as conn:
                    if loop.time() - checked_at >= CREDENTIAL_CHECK_S:
                        if not await still_valid(conn, who):
                            break  # revoked, deleted or demoted: the stream ends with its credential
                        checked_at = loop.time()
                    events = await events_after(conn, who.user_id, last)
                for event in events:
                    await response.send(event["payload"], id=str(event["id"]), event=event["kind"])
                    last = event["id"]
                if len(events) == 500:
                    continue  # more waiting: read on before sleeping
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(CREDENTIAL_CHECK_S):
                        await waiter.wait()
        except (ConnectionResetError, RuntimeError):
            pass  # the client went away (RuntimeError: a write after the connection closed)
        finally:
            hub.unsubscribe(who.user_id, waiter)
    return response
