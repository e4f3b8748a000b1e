"""The SIP core: every message from the transports lands in
:meth:`SipServer.handle`, which never raises.

It is the only driver of the pure transaction machines
(:mod:`gateway.sip.transaction`): it matches messages to them (RFC 3261
§17.1.3, §17.2.3), carries out their actions (send bytes, arm and disarm
timers on the injected :class:`~gateway.sip.scheduler.Scheduler`) and hands
what they deliver to their user: a B2BUA :class:`~gateway.sip.call.Call`, or
the out-of-dialog handlers here. Every request is answered through a server
transaction, so retransmissions are absorbed and every final is repeated
until acknowledged, by construction.

Before a request reaches a transaction it is checked: 400 for a malformed
one (including a UDP body shorter than its Content-Length), 505 for another
SIP version, 483 when Max-Forwards is used up, 482 when it carries this
gateway's own loop marker, 420 for an unknown ``Require``. OPTIONS is
answered 200 (trunk keepalive), methods we know but do not serve 405, the
rest 501.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import secrets
from collections.abc import Callable
from functools import partial
from typing import Any, Protocol

from aiosipua import SipRequest, SipResponse
from prometheus_client import Counter

from gateway.config import SipSettings, host_port
from gateway.domain.index import Index, Number
from gateway.domain.live_calls import LiveCalls
from gateway.domain.rate_limit import FailureLimiter
from gateway.domain.routing import Decision
from gateway.domain.text_back import in_quiet_hours, wants_missed_call_text
from gateway.sip import transaction as tx
from gateway.sip.call import Call
from gateway.sip.codec import encode
from gateway.sip.digest import DigestAuthority, parse_algorithms
from gateway.sip.inbound import inbound_call
from gateway.sip.metrics import SipMetrics
from gateway.sip.outbound import outbound_call
from gateway.sip.ports import CallAdmission, SipStore
from gateway.sip.scheduler import Handle, Scheduler
from gateway.sip.texts import receive_text
from gateway.sip.transport import Peer
from gateway.sip.wire import (
    ALLOW,
    KNOWN_UNSUPPORTED,
    MAGIC_COOKIE,
    SUPPORTED,
    cseq_method,
    problems,
    response,
    stamp_via,
    tag_of,
    top_branch,
    unsupported_required,
    utc,
    vias_carry,
)
from gateway.store.calls import CallRecord
from gateway.store.outbox import Outbox

log = logging.getLogger(__name__)


class Wire(Protocol):
    """Where bytes go (:class:`~gateway.sip.transport.SipTransports` in production)."""

    def send_bytes(self, data: bytes, peer: Peer) -> bool: ...


class ClientTx:
    """A live client transaction: the pure machine, its peer, its timers and
    who hears its responses and failures."""

    __slots__ = ("handles", "key", "machine", "on_failure", "on_response", "peer")

    def __init__(
        self,
        machine: tx.Client,
        peer: Peer,
        key: str,
        on_response: Callable[[SipResponse], None] | None,
        on_failure: Callable[[], None] | None,
    ) -> None:
        self.machine = machine
        self.peer = peer
        self.key = key
        self.on_response = on_response
        self.on_failure = on_failure
        self.handles: dict[tx.Timer, Handle] = {}


class ServerTx:
    """A live server transaction; ``call`` is the B2BUA call it belongs to."""

    __slots__ = ("call", "handles", "key", "machine", "on_failure", "peer")

    def __init__(self, machine: tx.Server, peer: Peer, key: str) -> None:
        self.machine = machine
        self.peer = peer
        self.key = key
        self.call: Call | None = None
        self.on_failure: Callable[[], None] | None = None
        self.handles: dict[tx.Timer, Handle] = {}

    @property
    def request(self) -> SipRequest:
        return self.machine.request

    @property
    def pending(self) -> bool:
        """No final response yet."""
        return self.machine.state in (tx.State.PROCEEDING, tx.State.TRYING)


class SipServer:
    """Dispatch, transactions and dialogs of the gateway's SIP side."""

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
        scheduler: Scheduler,
        wire: Wire,
        live: LiveCalls | None = None,
    ) -> None:
        self.settings = settings
        self.index = index
        self.store = store
        self.metrics = metrics
        self.slots = slots
        self.recorder = recorder
        self.texts_received = texts_received
        self.limiter = limiter
        self.scheduler = scheduler
        self.wire = wire
        self.live = live if live is not None else LiveCalls()  # what the admin console shows
        self.trunks = list(settings.trunk_cidrs)
        self.outbound_trunk = host_port(settings.outbound_trunk) if settings.outbound_trunk else None
        secret = settings.nonce_secret.get_secret_value().encode() or secrets.token_bytes(32)
        self.digest = DigestAuthority(settings.realm, secret, parse_algorithms(settings.digest_algorithms))
        # Our branches carry this marker; an INVITE that arrives with it in a
        # Via went out from us and came back: a loop (482).
        self.loop_marker = "gw" + secrets.token_hex(4)
        self.via_host = ""
        self.contact = ""
        self.draining = False
        self.calls: set[Call] = set()
        self._clients: dict[str, ClientTx] = {}
        self._servers: dict[str, ServerTx] = {}
        self._dialogs: dict[tuple[str, str], tuple[Call, object]] = {}
        self._trunk_cache: dict[str, bool] = {}
        self.metrics.transactions.set_function(lambda: len(self._clients) + len(self._servers))

    def bind(self, host: str, port: int) -> None:
        """Where we are reachable: the Via sent-by and Contact of our messages."""
        self.via_host = host if ":" in host and not host.startswith("[") else f"{host}:{port}"
        self.contact = f"<sip:gateway@{self.via_host}>"

    def new_branch(self) -> str:
        return f"{MAGIC_COOKIE}{self.loop_marker}.{secrets.token_hex(8)}"

    def now(self) -> float:
        return self.scheduler.time()

    def idle(self) -> bool:
        return not self.calls

    def abort_calls(self) -> None:
        """Shutdown: end every call where it stands (503 ringing, BYE answered)."""
        for call in list(self.calls):
            call.abort()

    def stop_transactions(self) -> None:
        records: list[ClientTx | ServerTx] = [*self._clients.values(), *self._servers.values()]
        for rec in records:
            self._disarm_all(rec)
        self._clients.clear()
        self._servers.clear()

    # -- the transaction driver ---------------------------------------------------------

    def request(
        self,
        request: SipRequest,
        peer: Peer,
        on_response: Callable[[SipResponse], None] | None = None,
        on_failure: Callable[[], None] | None = None,
    ) -> ClientTx:
        """Send ``request`` through a new client transaction."""
        reliable = peer.transport != "udp"
        machine: tx.Client = (
            tx.ClientInvite(request, reliable=reliable)
            if request.method == "INVITE"
            else tx.ClientNonInvite(request, reliable=reliable)
        )
        rec = ClientTx(machine, peer, f"{top_branch(request)} {request.method}", on_response, on_failure)
        self._clients[rec.key] = rec
        self._apply(rec, machine.start(self.now()))
        return rec

    def cancel(self, rec: ClientTx) -> None:
        """CANCEL an INVITE client transaction (deferred until a provisional)."""
        machine = rec.machine
        if isinstance(machine, tx.ClientInvite) and rec.key in self._clients:
            self._apply(rec, machine.cancel(self.now()))

    def respond(self, rec: ServerTx, resp: SipResponse) -> None:
        """Answer through a server transaction (ignored once it has a final)."""
        data = encode(resp)
        self.metrics.count_message("out", cseq_method(resp), resp.status_code)
        self._apply(rec, rec.machine.respond(data, resp.status_code, self.now()))

    def acked(self, rec: ServerTx) -> None:
        """The ACK of our 2xx arrived (through the dialog)."""
        machine = rec.machine
        if isinstance(machine, tx.ServerInvite):
            self._apply(rec, machine.acked(self.now()))

    def send(self, message: SipRequest | SipResponse, peer: Peer) -> bool:
        """Outside any transaction: an ACK to a 2xx."""
        if isinstance(message, SipResponse):
            return self.send_raw(encode(message), peer, cseq_method(message), message.status_code)
        return self.send_raw(encode(message), peer, message.method, None)

    def send_raw(self, data: bytes, peer: Peer, method: str, status: int | None) -> bool:
        self.metrics.count_message("out", method, status)
        return self.wire.send_bytes(data, peer)

    def schedule(self, delay: float, callback: Callable[..., None], *args: Any) -> Handle:
        return self.scheduler.call_at(self.now() + delay, callback, *args)

    def _apply(self, rec: ClientTx | ServerTx, actions: list[tx.Action]) -> None:
        for action in actions:
            kind = type(action)
            if kind is tx.Send:
                assert isinstance(action, tx.Send)
                if not self.wire.send_bytes(action.data, rec.peer):
                    self._transport_error(rec)
                    return
            elif kind is tx.Arm:
                assert isinstance(action, tx.Arm)
                old = rec.handles.get(action.timer)
                if old is not None:
                    old.cancel()
                rec.handles[action.timer] = self.scheduler.call_at(action.at, self._fire, rec, action.timer)
            elif kind is tx.Disarm:
                assert isinstance(action, tx.Disarm)
                handle = rec.handles.pop(action.timer, None)
                if handle is not None:
                    handle.cancel()
            elif kind is tx.Deliver:
                assert isinstance(action, tx.Deliver) and isinstance(rec, ClientTx)
                if rec.on_response is not None:
                    rec.on_response(action.response)
            elif kind is tx.SendCancel:
                assert isinstance(action, tx.SendCancel) and isinstance(rec, ClientTx)
                self.request(action.request, rec.peer)
            elif kind is tx.Failed:
                callback = rec.on_failure
                rec.on_failure = None
                if callback is not None:
                    callback()
            else:  # Terminated
                self._forget(rec)

    def _fire(self, rec: ClientTx | ServerTx, timer: tx.Timer) -> None:
        rec.handles.pop(timer, None)
        try:
            self._apply(rec, rec.machine.fire(timer, self.now()))
        except Exception:
            self.metrics.handler_errors.inc()
            log.exception("SIP timer %s failed", timer.value)

    def _transport_error(self, rec: ClientTx | ServerTx) -> None:
        machine = rec.machine
        if isinstance(machine, tx.ClientInvite | tx.ClientNonInvite):
            self._apply(rec, machine.transport_error())

    def _forget(self, rec: ClientTx | ServerTx) -> None:
        self._disarm_all(rec)
        table: dict[str, Any] = self._clients if isinstance(rec, ClientTx) else self._servers
        if table.get(rec.key) is rec:
            del table[rec.key]

    @staticmethod
    def _disarm_all(rec: ClientTx | ServerTx) -> None:
        for handle in rec.handles.values():
            handle.cancel()
        rec.handles.clear()

    # -- what calls use ------------------------------------------------------------------

    def bind_dialog(self, call_id: str, local_tag: str, call: Call, side: object) -> None:
        self._dialogs[(call_id, local_tag)] = (call, side)

    def unbind_dialog(self, call_id: str, local_tag: str) -> None:
        self._dialogs.pop((call_id, local_tag), None)

    def destination_uri(self, destination: str) -> str | None:
        """A user's call destination as a SIP URI: as is, or an E.164 through the
        outbound trunk (None when no trunk is configured)."""
        if destination.startswith("+"):
            if self.outbound_trunk is None:
                return None
            return f"sip:{destination}@{self.outbound_trunk[0]}:{self.outbound_trunk[1]}"
        return destination

    def is_trunk(self, host: str) -> bool:
        """Cached per source address (asked for every INVITE and MESSAGE)."""
        known = self._trunk_cache.get(host)
        if known is None:
            try:
                address = ipaddress.ip_address(host)
            except ValueError:
                known = False
            else:
                known = any(address in net for net in self.trunks)
            if len(self._trunk_cache) >= 65536:
                self._trunk_cache.clear()
            self._trunk_cache[host] = known
        return known

    def reply(
        self,
        rec: ServerTx,
        status: int,
        reason: str,
        *,
        headers: tuple[tuple[str, str], ...] = (),
    ) -> None:
        """A final answer outside any call, through the request's transaction."""
        if status == 403 and not self.is_trunk(rec.peer.host):
            self.limiter.fail(rec.peer.host, self.now())  # a failed attempt from an unknown source
        tag = None if status == 100 else secrets.token_hex(4)
        self.respond(rec, response(rec.request, status, reason, to_tag=tag, headers=headers))

    def track(self, call: Call) -> None:
        self.calls.add(call)

    def call_answered(self, call: Call) -> None:
        if call.live_id:
            self.live.answered(call.live_id, call.outcome.answered_at or 0.0)
        self.call_event(call, "call.answered")

    def call_event(self, call: Call, event_type: str) -> None:
        """``call.started``/``call.answered`` to the account's event webhooks
        (issue 16): queued off the call's path, and only for an account that
        listens (else the store answers None and nothing runs)."""
        number = call.number
        if number is None:
            return
        work = self.store.call_event(event_type, number.account_id, partial(_call_event_data, call, number))
        if work is not None:
            self.scheduler.spawn(work)

    def finish_call(self, number: Number, decision: Decision, call: Call) -> None:
        """A call ended: forget it, count it, and hand its record to the outbox
        (which sends the held-back 200 to a BYE once the record is on disk)."""
        self.calls.discard(call)
        if call.live_id:
            self.live.ended(call.live_id)
        o = call.outcome
        self.metrics.calls.labels(o.direction, o.disposition).inc()
        record = CallRecord(
            sip_call_id=o.call_id,
            direction="inbound" if o.direction == "inbound" else "outbound",
            number=number,
            caller=o.caller,
            callee=o.callee,
            invited_at=utc(o.invited_at),
            ended_at=utc(o.ended_at or o.invited_at),
            disposition=o.disposition,
            decision=decision,
            targets_tried=tuple(o.targets_tried),
            answered_by=o.answered_by,
            answered_at=utc(o.answered_at) if o.answered_at is not None else None,
            steps=tuple(o.steps),
        )
        self.recorder.add_call(record, call.send_final_reply)
        missed = o.direction == "inbound" and wants_missed_call_text(number, o.caller, o.disposition)
        if missed and not in_quiet_hours(number, utc(o.ended_at or o.invited_at)):  # R17
            self.scheduler.spawn(self.store.missed_call_text(number, o.caller))

    # -- input -------------------------------------------------------------------------

    def malformed(self, peer: Peer) -> None:
        self.metrics.malformed.labels(peer.transport).inc()

    def bad_version(self, message: SipRequest | SipResponse, peer: Peer) -> None:
        """RFC 3261 §8.2.6 / §21.5.6: a request of another SIP version gets 505."""
        self.metrics.malformed.labels(peer.transport).inc()
        if isinstance(message, SipRequest) and message.method != "ACK" and message.headers.get("via"):
            self.send(response(message, 505, "Version Not Supported", to_tag=secrets.token_hex(4)), peer)

    def handle(self, message: SipRequest | SipResponse, peer: Peer) -> None:
        """Entry point for every parsed message. Never raises."""
        try:
            if isinstance(message, SipResponse):
                method = cseq_method(message)
                self.metrics.count_message("in", method, message.status_code)
                rec = self._clients.get(f"{top_branch(message)} {method}")
                if rec is not None:
                    self._apply(rec, rec.machine.receive(message, self.now()))
                return
            self.metrics.count_message("in", message.method, None)
            self._request(message, peer)
        except Exception:
            self.metrics.handler_errors.inc()
            log.exception("SIP message from %s:%s not handled", peer.host, peer.port)

    def _request(self, req: SipRequest, peer: Peer) -> None:
        method = req.method
        problem = problems(req, peer.transport)
        if problem is not None:
            self.metrics.malformed.labels(peer.transport).inc()
            if method != "ACK" and req.headers.get("via"):
                self.send(response(req, 400, problem, to_tag=secrets.token_hex(4)), peer)
            return
        stamp_via(req, peer)  # RFC 3581 received/rport: every response goes back the way it came
        key = server_key(req)
        if method == "ACK":
            rec = self._servers.get(key)
            if rec is not None and rec.machine.state is tx.State.COMPLETED:
                self._apply(rec, rec.machine.receive(req, self.now()))
                return
            self._in_dialog_ack(req, peer)
            return
        rec = self._servers.get(key)
        if rec is not None:  # a retransmission: the transaction answers it, where it came from
            rec.peer = peer
            self._apply(rec, rec.machine.receive(req, self.now()))
            return
        if (
            self.limiter.blocked(peer.host, self.now())
            and tag_of(req.headers.get_first("to")) is None
            and not self.is_trunk(peer.host)
        ):
            self.metrics.refused.labels("throttled").inc()
            return  # silence: a scanner learns nothing and costs nothing
        if method not in STATEFUL:
            self._stateless(req, peer)
            return
        reliable = peer.transport != "udp"
        machine: tx.Server = (
            tx.ServerInvite(req, reliable=reliable)
            if method == "INVITE"
            else tx.ServerNonInvite(req, reliable=reliable)
        )
        rec = ServerTx(machine, peer, key)
        self._servers[key] = rec
        refusal = self._refusal(req)
        if refusal is not None:
            status, reason, headers = refusal
            self.metrics.refused.labels(f"sip_{status}").inc()
            self.reply(rec, status, reason, headers=headers)
            return
        if method == "INVITE":
            if self.draining:
                self.metrics.refused.labels("draining").inc()
                self.reply(rec, 503, "Service Unavailable", headers=(("Retry-After", "5"),))
                return
            self.reply(rec, 100, "Trying")  # RFC 3261 §17.2.1: at once, stops the caller's Timer A
        if method == "CANCEL":
            self._cancel(rec)
            return
        to_tag = tag_of(req.headers.get_first("to"))
        if to_tag is not None:
            self._in_dialog(rec, to_tag)
            return
        if method == "INVITE":
            self._invite(rec)
        elif method == "MESSAGE":
            receive_text(self, rec)
        else:  # BYE, UPDATE, INFO outside a dialog
            self.reply(rec, 405, "Method Not Allowed", headers=(("Allow", ALLOW),))

    def _stateless(self, req: SipRequest, peer: Peer) -> None:
        """OPTIONS, and methods we do not serve: the same answer every time, so
        no transaction is kept (a scanner's flood leaves no state behind)."""
        if req.method == "OPTIONS":
            status, reason = 200, "OK"
            headers: tuple[tuple[str, str], ...] = (
                ("Allow", ALLOW),
                ("Accept", "application/sdp, text/plain"),
                ("Supported", SUPPORTED),
            )
        elif req.method in KNOWN_UNSUPPORTED:
            status, reason, headers = 405, "Method Not Allowed", (("Allow", ALLOW),)
        else:
            status, reason, headers = 501, "Not Implemented", (("Allow", ALLOW),)
        tag = tag_of(req.headers.get_first("to")) or _stateless_tag(req)
        self.send(response(req, status, reason, to_tag=tag, headers=headers), peer)

    def _refusal(self, req: SipRequest) -> tuple[int, str, tuple[tuple[str, str], ...]] | None:
        """483, 482 and 420 (RFC 3261 §8.2.2, §16.3, §8.2.2.3)."""
        if req.method == "CANCEL":
            return None
        max_forwards = req.headers.get_first("max-forwards")
        if max_forwards is not None and max_forwards.strip() == "0" and req.method != "OPTIONS":
            return 483, "Too Many Hops", ()
        if req.method == "INVITE" and vias_carry(req, self.loop_marker):
            return 482, "Loop Detected", ()
        unknown = unsupported_required(req)
        if unknown:
            return 420, "Bad Extension", (("Unsupported", ", ".join(unknown)), ("Supported", SUPPORTED))
        return None

    def _cancel(self, rec: ServerTx) -> None:
        """RFC 3261 §9.2: the CANCEL's own transaction is answered 200 when it
        matches an INVITE transaction (else 481); a pending INVITE then gets 487."""
        invite = self._servers.get(server_key(rec.request, "INVITE"))
        if invite is None:
            self.reply(rec, 481, "Call/Transaction Does Not Exist")
            return
        self.respond(rec, response(rec.request, 200, "OK", to_tag=_invite_to_tag(invite)))
        if invite.call is not None:
            invite.call.on_cancel()
        elif invite.pending:  # still authenticating: nothing was started yet
            self.reply(invite, 487, "Request Terminated")

    def _in_dialog(self, rec: ServerTx, to_tag: str) -> None:
        call_id = rec.request.headers.get_first("call-id") or ""
        found = self._dialogs.get((call_id, to_tag))
        if found is None:
            self.reply(rec, 481, "Call/Transaction Does Not Exist")
            return
        call, side = found
        call.on_request(side, rec)

    def _in_dialog_ack(self, req: SipRequest, peer: Peer) -> None:
        to_tag = tag_of(req.headers.get_first("to"))
        if to_tag is None:
            return
        found = self._dialogs.get((req.headers.get_first("call-id") or "", to_tag))
        if found is not None:
            found[0].on_ack(found[1], req)

    def _invite(self, rec: ServerTx) -> None:
        req = rec.request
        credentials = req.headers.get_first("proxy-authorization") or req.headers.get_first("authorization")
        if self.is_trunk(rec.peer.host) and credentials is None:
            inbound_call(self, rec)
        else:
            self.scheduler.spawn(outbound_call(self, rec, credentials))


def server_key(req: SipRequest, method: str | None = None) -> str:
    """RFC 3261 §17.2.3: the top Via's branch and the method (ACK matches its
    INVITE); for pre-3261 peers without the magic cookie, Call-ID, CSeq number
    and From tag stand in for the branch."""
    name = method or ("INVITE" if req.method == "ACK" else req.method)
    branch = top_branch(req)
    if branch.startswith(MAGIC_COOKIE):
        return f"{branch} {name}"
    cseq = (req.headers.get_first("cseq") or "").strip().split(" ", 1)[0]
    return f"{req.headers.get_first('call-id')} {cseq} {tag_of(req.headers.get_first('from'))} {name}"


# Requests answered through a server transaction; the rest statelessly.
STATEFUL = frozenset(("INVITE", "CANCEL", "BYE", "MESSAGE", "UPDATE", "INFO"))


def _stateless_tag(req: SipRequest) -> str:
    """A To tag that is the same for every retransmission (RFC 3261 §8.2.6.2)."""
    seed = f"{req.headers.get_first('call-id')}|{top_branch(req)}"
    return hashlib.blake2s(seed.encode(), digest_size=4).hexdigest()


def _invite_to_tag(invite: ServerTx) -> str | None:
    call = invite.call
    return call.caller.tag if call is not None else None


def _call_event_data(call: Call, number: Number) -> dict[str, Any]:
    o = call.outcome
    data: dict[str, Any] = {
        "sip_call_id": o.call_id, "number_id": number.id, "direction": o.direction,
        "caller": o.caller, "callee": o.callee, "invited_at": utc(o.invited_at).isoformat(),
    }  # fmt: skip
    if o.answered_at is not None:
        data["answered_at"] = utc(o.answered_at).isoformat()
        data["answered_by"] = o.answered_by
    return data
