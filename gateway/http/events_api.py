"""``GET /v1/events``: a user's new texts and notifications as server-sent
events (issue 5). ``Last-Event-ID`` (or ``?last_event_id=``) resumes after
the last event the client saw, read from the database: a reconnect loses
nothing."""

from __future__ import annotations

import asyncio
import contextlib

from aiohttp import web

from gateway.http.auth import POOL, principal
from gateway.http.routes import API
from gateway.http.validation import field_error
from gateway.store.events import EventHub, events_after

HUB: web.AppKey[EventHub] = web.AppKey("event_hub", EventHub)
HEARTBEAT_S = 15.0


def _resume_point(request: web.Request) -> int:
    raw = request.headers.get("Last-Event-ID") or request.query.get("last_event_id") or "0"
    if not raw.isascii() or not raw.isdigit() or len(raw) > 18:
        raise field_error("Last-Event-ID", "must be an event id", status=400)
    return int(raw)


@API.op(
    "GET",
    "/v1/events",
    "The caller's new texts and notifications (text/event-stream; Last-Event-ID resumes)",
    errors=(400,),
)
async def stream_events(request: web.Request) -> web.StreamResponse:
    """Long-lived. Each wake-up or heartbeat costs one indexed read."""
    who = principal(request)
    last = _resume_point(request)
    hub = request.app[HUB]
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    )
    await response.prepare(request)
    waiter = hub.subscribe(who.user_id)
    try:
        await response.write(b": connected\n\n")
        while not hub.closing.is_set():
            waiter.clear()
            async with request.app[POOL].acquire() as conn:
                events = await events_after(conn, who.user_id, last)
            for event in events:
                await response.write(
                    f"id: {event['id']}\nevent: {event['kind']}\ndata: {event['payload']}\n\n".encode()
                )
                last = event["id"]
            if len(events) == 500:
                continue  # more waiting: read on before sleeping
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(HEARTBEAT_S):
                    await waiter.wait()
            if not waiter.is_set():
                await response.write(b": heartbeat\n\n")
    except (ConnectionResetError, asyncio.CancelledError):
        pass  # the client went away, or the server is stopping
    finally:
        hub.unsubscribe(who.user_id, waiter)
    return response
