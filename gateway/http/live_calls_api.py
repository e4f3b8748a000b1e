"""Inbound calls in progress against each number's R7 limit, for the admin
console (issue 16, item 3): ``GET /v1/live-calls`` once, or
``GET /v1/live-calls/stream`` as server-sent events that carry the whole
board again after each change (a board is a few calls per number, and a
client that reconnects needs no resume point).

The board is this gateway's: in a cluster (``cluster.slots = "postgres"``)
each gateway shows the calls it holds."""

from __future__ import annotations

import asyncio
import contextlib
import json
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from aiohttp_sse import sse_response

from gateway.domain.index import Index
from gateway.domain.live_calls import LiveCall, LiveCalls
from gateway.http.auth import principal
from gateway.http.deps import deps
from gateway.http.events_api import CREDENTIAL_CHECK_S, HEARTBEAT_S, counted_stream
from gateway.http.responses import forbidden
from gateway.http.routes import API
from gateway.store.api_keys import Principal, still_valid

_ONLY_MANAGERS = "live calls are for the account's owner and admins"
COALESCE_S = 0.1  # a burst of call changes is one board, not one frame per change


def _when(at: float | None) -> str | None:
    return None if at is None else datetime.fromtimestamp(at, UTC).isoformat()


def board(live: LiveCalls, index: Index, account_id: int) -> dict[str, Any]:
    """The account's calls in progress, grouped by number, each number with
    its limit. O(calls of the account)."""
    numbers: dict[int, dict[str, Any]] = {}
    for call in live.of_account(account_id):
        entry = numbers.get(call.number_id)
        if entry is None:
            number = index.number_by_id(call.number_id)
            entry = numbers[call.number_id] = {
                "number_id": call.number_id,
                "e164": number.e164 if number else None,
                "limit": number.max_concurrent_calls if number else None,
                "active": 0,
                "calls": [],
            }
        entry["active"] += 1
        entry["calls"].append(_call_json(call))
    return {"numbers": list(numbers.values())}


def _call_json(call: LiveCall) -> dict[str, Any]:
    return {
        "id": call.id,
        "caller": call.caller,
        "state": call.state,
        "invited_at": _when(call.invited_at),
        "answered_at": _when(call.answered_at),
    }


@API.op(
    "GET",
    "/v1/live-calls",
    "Inbound calls in progress per number against its limit (owner/admin)",
    errors=(403,),
)
async def live_calls(request: web.Request) -> web.Response:
    """From memory: no database round trip."""
    who = principal(request)
    if not who.manages:
        return forbidden(_ONLY_MANAGERS)
    return web.json_response(board(deps(request).live_calls, deps(request).index(), who.account_id))


@API.op(
    "GET",
    "/v1/live-calls/stream",
    "The live-calls board as server-sent events, sent again after each change (owner/admin)",
    errors=(403, 429),
    produces="text/event-stream",
)
async def live_calls_stream(request: web.Request) -> web.StreamResponse:
    """Long-lived. A change costs a board built from memory; each second one
    indexed read checks the credential."""
    who = principal(request)
    if not who.manages:
        return forbidden(_ONLY_MANAGERS)
    with counted_stream(request, who) as refused:
        return refused or await _stream(request, who)


async def _stream(request: web.Request, who: Principal) -> web.StreamResponse:
    live, index, pool = deps(request).live_calls, deps(request).index, deps(request).pool
    changed = asyncio.Event()
    changed.set()  # the first board goes out at once
    stop_listening = live.listen(who.account_id, changed.set)
    loop = asyncio.get_running_loop()
    checked_at = loop.time()
    try:
        async with sse_response(
            request, sep="\n", headers={"X-Accel-Buffering": "no"}, ping_interval=HEARTBEAT_S
        ) as response:
            with contextlib.suppress(ConnectionResetError, RuntimeError):  # the client went away
                while response.is_connected() and request.transport and not request.transport.is_closing():
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(CREDENTIAL_CHECK_S):
                            await changed.wait()
                    if loop.time() - checked_at >= CREDENTIAL_CHECK_S:
                        async with pool.acquire() as conn:
                            if not await still_valid(conn, who):
                                break  # revoked, deleted or demoted: the stream ends with its credential
                        checked_at = loop.time()
                    if changed.is_set():
                        await asyncio.sleep(COALESCE_S)
                        changed.clear()
                        await response.send(json.dumps(board(live, index(), who.account_id)), event="board")
        return response
    finally:
        stop_listening()
