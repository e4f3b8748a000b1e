"""The SIP entry point: every message from the transports lands in
:meth:`SipServer.handle`, which never raises.

Responses go to the client transaction named by their branch. Requests are
checked (400 for a malformed one), matched to a dialog when they carry a To
tag, to a ringing call for CANCEL, or to the response cache when they are a
retransmission; new INVITEs become calls (:mod:`gateway.sip.inbound`,
:mod:`gateway.sip.outbound`) and MESSAGEs texts (:mod:`gateway.sip.texts`).
OPTIONS is answered 200 (trunk keepalive), methods we know but do not serve
405, the rest 501.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Coroutine
from typing import Any

import asyncpg
from aiosipua import SipRequest, SipResponse
from prometheus_client import Counter

from gateway.config import SipSettings, host_port, trunk_networks
from gateway.domain.call_slots import CallSlots
from gateway.domain.index import Index, Number
from gateway.domain.rate_limit import FailureLimiter
from gateway.domain.routing import Decision
from gateway.sip.call import Call
from gateway.sip.codec import encode
from gateway.sip.digest import DigestAuthority
from gateway.sip.inbound import inbound_call
from gateway.sip.metrics import SipMetrics
from gateway.sip.outbound import outbound_call
from gateway.sip.texts import receive_text
from gateway.sip.transactions import LINGER_S, ClientTransaction
from gateway.sip.transport import Peer, SipTransports
from gateway.sip.wire import (
    ALLOW,
    KNOWN_UNSUPPORTED,
    cseq_method,
    problems,
    response,
    tag_of,
    top_branch,
    utc,
)
from gateway.store.calls import CallRecord
from gateway.store.outbox import Outbox

log = logging.getLogger(__name__)
ENDED = None  # a dialog's tombstone: the call is over
RESPONSE_CACHE = 50_000


class SipServer:
    """Dispatch, transactions and dialogs of the gateway's SIP side."""

    def __init__(
        self,
        settings: SipSettings,
        index: Callable[[], Index],
        pool: asyncpg.Pool,
        metrics: SipMetrics,
        slots: CallSlots,
        recorder: Outbox,
        texts_received: Counter,
        limiter: FailureLimiter,
    ) -> None:
        self.settings = settings
        self.index = index
        self.pool = pool
        self.metrics = metrics
        self.slots = slots
        self.recorder = recorder
        self.texts_received = texts_received
        self.limiter = limiter
        self.loop = asyncio.get_event_loop()
        self.trunks = trunk_networks(settings.trunk_cidrs)
        self.outbound_trunk = host_port(settings.outbound_trunk) if settings.outbound_trunk else None
        secret = settings.nonce_secret.encode() or secrets.token_bytes(32)
        self.digest = DigestAuthority(settings.realm, secret)
        self.transports = SipTransports(
            settings.host, settings.port, self.handle, self._malformed, settings.max_message_bytes
        )
        self.metrics.transactions.set_function(lambda: len(self._clients))
        self.via_host = ""
        self.contact = ""
        self.draining = False
        self.calls: set[Call] = set()
        self._clients: dict[str, ClientTransaction] = {}
        self._dialogs: dict[tuple[str, str], tuple[Call, object] | None] = {}
        self._ringing: dict[tuple[str, str], Call] = {}
        self._answered: OrderedDict[tuple[str, str, str], tuple[float, Call | bytes]] = OrderedDict()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._idle = asyncio.Event()

    @property
    def port(self) -> int:
        return self.transports.port

    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        await self.transports.start()
        host = self.settings.advertised_host or (
            self.settings.host if self.settings.host not in ("0.0.0.0", "::", "") else "127.0.0.1"  # noqa: S104
        )
        self.via_host = host if ":" in host and not host.startswith("[") else f"{host}:{self.port}"
        self.contact = f"<sip:gateway@{self.via_host}>"

    async def stop(self, grace_s: float) -> None:
        """Refuse new calls (503), let calls in progress finish within ``grace_s``,
        then hang up the rest; their records are handed to the recorder."""
        self.draining = True
        if self.calls:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), grace_s)
        for call in list(self.calls):
            call.abort()
        # Ended calls' records reach the disk first: the 200s to their BYEs wait for that.
        await self.recorder.wait_durable(max(grace_s, 1.0))
        await asyncio.sleep(0.05)  # let the BYEs, 200s and 503s leave
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for tx in list(self._clients.values()):
            tx.stop()
        await self.transports.stop()

    # -- plumbing used by calls and transactions ----------------------------------

    def send(self, message: SipRequest | SipResponse, peer: Peer) -> bool:
        if isinstance(message, SipResponse):
            return self.send_raw(encode(message), peer, cseq_method(message), message.status_code)
        return self.send_raw(encode(message), peer, message.method, None)

    def send_raw(self, data: bytes, peer: Peer, method: str, status: int | None) -> bool:
        self.metrics.count_message("out", method, status)
        return self.transports.send_bytes(data, peer)

    def register(self, key: str, tx: ClientTransaction) -> None:
        self._clients[key] = tx

    def unregister(self, key: str) -> None:
        self._clients.pop(key, None)

    def bind_dialog(self, call_id: str, local_tag: str, call: Call, side: object) -> None:
        self._dialogs[(call_id, local_tag)] = (call, side)

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = self.loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self.metrics.handler_errors.inc()
            log.error("SIP handler failed", exc_info=task.exception())

    def destination_uri(self, destination: str) -> str | None:
        """A user's call destination as a SIP URI: as is, or an E.164 through the
        outbound trunk (None when no trunk is configured)."""
        if destination.startswith("+"):
            if self.outbound_trunk is None:
                return None
            return f"sip:{destination}@{self.outbound_trunk[0]}:{self.outbound_trunk[1]}"
        return destination

    def is_trunk(self, host: str) -> bool:
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False
        return any(address in net for net in self.trunks)

    def reply(
        self,
        request: SipRequest,
        peer: Peer,
        status: int,
        reason: str,
        *,
        headers: tuple[tuple[str, str], ...] = (),
        cache: bool = True,
    ) -> None:
        """A final answer outside any call, remembered so a retransmission of the
        request gets the same answer without being processed again."""
        if status == 403 and not self.is_trunk(peer.host):
            self.limiter.fail(peer.host, time.monotonic())  # a failed attempt from an unknown source
        resp = response(request, status, reason, to_tag=secrets.token_hex(4), headers=headers)
        data = encode(resp)
        if cache:
            self._remember(request, data)
        self.send_raw(data, peer, request.method, status)

    def _remember(self, request: SipRequest, what: Call | bytes) -> None:
        key = (request.headers.get_first("call-id") or "", top_branch(request), request.method)
        now = time.monotonic()
        self._answered.pop(key, None)  # re-inserted at the end, so the oldest stay first
        self._answered[key] = (now, what)
        while self._answered:
            first_key, (at, _) = next(iter(self._answered.items()))
            if now - at < LINGER_S and len(self._answered) <= RESPONSE_CACHE:
                break
            del self._answered[first_key]

    def hold(self, request: SipRequest) -> None:
        """The request is being handled off the loop: absorb its retransmissions."""
        self._remember(request, b"")

    def release(self, request: SipRequest) -> None:
        self._answered.pop(
            (request.headers.get_first("call-id") or "", top_branch(request), request.method), None
        )

    def track(self, call: Call, request: SipRequest) -> None:
        """A new call: route its CANCEL and retransmitted INVITEs to it."""
        self.calls.add(call)
        self._idle.clear()
        key = (request.headers.get_first("call-id") or "", top_branch(request))
        self._ringing[key] = call
        self._remember(request, call)

    def call_ended(self, call: Call) -> None:
        """The call is over: keep only tombstones of its dialogs and its last
        answer for the linger time (retransmitted BYEs and INVITEs), not the call."""
        self.calls.discard(call)
        if not self.calls:
            self._idle.set()
        call_id = call.invite.headers.get_first("call-id") or ""
        self._ringing.pop((call_id, top_branch(call.invite)), None)
        self._remember(call.invite, call.last_a_response or b"")
        keys = [(leg.call_id, leg.tag) for leg in call.legs]
        if call.a_dialog is not None:
            keys.append((call.a_dialog.call_id, call.a_tag))
        for key in keys:
            self._dialogs[key] = ENDED
        self.loop.call_later(LINGER_S, self._forget_dialogs, keys)

    def finish_call(self, number: Number, decision: Decision, call: Call) -> None:
        """A call ended: forget it, count it, and hand its record to the outbox
        (which sends the held-back 200 to a BYE once the record is on disk)."""
        self.call_ended(call)
        o = call.outcome
        self.metrics.calls.labels(o.direction, o.disposition).inc()
        record = CallRecord(
            sip_call_id=o.call_id,
            direction="inbound" if o.direction == "inbound" else "outbound",
            number=number,
            caller=o.caller,
            callee=o.callee,
            invited_at=utc(o.invited_at),
            ended_at=utc(o.ended_at or time.time()),
            disposition=o.disposition,
            decision=decision,
            targets_tried=tuple(o.targets_tried),
            answered_by=o.answered_by,
            answered_at=utc(o.answered_at) if o.answered_at is not None else None,
        )
        self.recorder.add_call(record, call.send_final_reply)

    def _forget_dialogs(self, keys: list[tuple[str, str]]) -> None:
        for key in keys:
            self._dialogs.pop(key, None)

    # -- input -----------------------------------------------------------------------

    def _malformed(self, peer: Peer) -> None:
        self.metrics.malformed.labels(peer.transport).inc()

    def handle(self, message: SipRequest | SipResponse, peer: Peer) -> None:
        """Entry point for every parsed message. Never raises."""
        try:
            if isinstance(message, SipResponse):
                method = cseq_method(message)
                self.metrics.count_message("in", method, message.status_code)
                tx = self._clients.get(f"{top_branch(message)}:{method}")
                if tx is not None:
                    tx.receive(message)
                return
            self.metrics.count_message("in", message.method, None)
            self._request(message, peer)
        except Exception:
            self.metrics.handler_errors.inc()
            log.exception("SIP message from %s:%s not handled", peer.host, peer.port)

    def _request(self, req: SipRequest, peer: Peer) -> None:
        problem = problems(req)
        if problem is not None:
            self.metrics.malformed.labels(peer.transport).inc()
            if req.method != "ACK" and req.headers.get("via"):
                self.reply(req, peer, 400, problem, cache=False)
            return
        method = req.method
        call_id = req.headers.get_first("call-id") or ""
        to_tag = tag_of(req.headers.get_first("to"))
        if method == "CANCEL":
            call = self._ringing.get((call_id, top_branch(req)))
            if call is None:
                self.reply(req, peer, 481, "Call/Transaction Does Not Exist", cache=False)
            else:
                call.on_cancel(req)
            return
        if to_tag is not None:
            if (call_id, to_tag) not in self._dialogs:
                if method != "ACK":  # an ACK for a stateless final, or for a forgotten call
                    self.reply(req, peer, 481, "Call/Transaction Does Not Exist", cache=False)
                return
            found = self._dialogs[(call_id, to_tag)]
            if found is not ENDED:
                found[0].on_request(found[1], req, peer)
            elif method == "BYE":  # a retransmission of the BYE that ended it
                self.reply(req, peer, 200, "OK", cache=False)
            elif method != "ACK":
                self.reply(req, peer, 481, "Call/Transaction Does Not Exist", cache=False)
            return
        if method == "ACK":
            return
        if self.limiter.blocked(peer.host, time.monotonic()) and not self.is_trunk(peer.host):
            self.metrics.refused.labels("throttled").inc()
            return  # silence: a scanner learns nothing and costs nothing
        seen = self._answered.get((call_id, top_branch(req), method))
        if seen is not None:
            what = seen[1]
            if isinstance(what, bytes):
                if what:  # empty: still being handled
                    self.send_raw(what, peer, method, None)
            else:
                what.resend_last()
            return
        if method == "INVITE":
            self._invite(req, peer)
        elif method == "MESSAGE":
            receive_text(self, req, peer)
        elif method == "OPTIONS":
            self.reply(
                req, peer, 200, "OK", headers=(("Allow", ALLOW), ("Accept", "application/sdp, text/plain"))
            )
        elif method in KNOWN_UNSUPPORTED or method in ("BYE", "UPDATE", "INFO"):
            self.reply(req, peer, 405, "Method Not Allowed", headers=(("Allow", ALLOW),))
        else:
            self.reply(req, peer, 501, "Not Implemented", headers=(("Allow", ALLOW),))

    def _invite(self, req: SipRequest, peer: Peer) -> None:
        if self.draining:
            self.metrics.refused.labels("draining").inc()
            self.reply(req, peer, 503, "Service Unavailable", headers=(("Retry-After", "5"),))
            return
        credentials = req.headers.get_first("proxy-authorization") or req.headers.get_first("authorization")
        if self.is_trunk(peer.host) and credentials is None:
            inbound_call(self, req, peer)
        else:
            self.send(response(req, 100, "Trying"), peer)
            self.hold(req)
            self.spawn(outbound_call(self, req, peer, credentials))
