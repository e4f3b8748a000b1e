"""The SIP core (:class:`gateway.sip.server.SipServer`) with its I/O replaced:
a fake clock whose timers run when the test advances time, a wire that keeps
what the gateway sends, and an in-memory routing index. The core, the
transaction machines and the B2BUA are the real ones; only sockets, the
event loop and the database are not there, so a 32-second Timer H takes
microseconds.

The outbox stand-in keeps call records in a list and says "durable" when
the test says so (``durable()``), which is what the held-back 200 to a BYE
waits for."""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from aiosipua import SipRequest, SipResponse
from prometheus_client import CollectorRegistry, Counter

from gateway.config import SipSettings
from gateway.domain.call_slots import CallSlots
from gateway.domain.index import Index, Number, User
from gateway.domain.rate_limit import FailureLimiter
from gateway.domain.routing import Decision, route
from gateway.sip.codec import parse
from gateway.sip.metrics import SipMetrics
from gateway.sip.server import SipServer
from gateway.sip.transport import Peer

GATEWAY = "127.0.0.1:5060"
CARRIER = Peer("udp", "127.0.0.2", 5070)
AGENT = Peer("udp", "127.0.0.1", 5090)
AGENT2 = Peer("udp", "127.0.0.1", 5091)
NUMBER = "+15550140000"
CALLER = "+15550199999"


class FakeClock:
    """Timers in a heap; nothing runs until :meth:`advance`."""

    def __init__(self) -> None:
        self.now = 1000.0
        self._heap: list[tuple[float, int, _Timer]] = []
        self._seq = itertools.count()
        self.coroutines: list[Coroutine[Any, Any, None]] = []

    def time(self) -> float:
        return self.now

    def call_at(self, when: float, callback: Callable[..., None], *args: Any) -> _Timer:
        timer = _Timer(callback, args)
        heapq.heappush(self._heap, (when, next(self._seq), timer))
        return timer

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        self.coroutines.append(coro)

    def __del__(self) -> None:
        # A test that never ran its spawned round trips (an over-limit caller's
        # event, say) drops them quietly rather than leave "never awaited".
        for coro in self.coroutines:
            coro.close()

    def advance(self, seconds: float) -> None:
        end = self.now + seconds
        while self._heap and self._heap[0][0] <= end:
            when, _, timer = heapq.heappop(self._heap)
            self.now = max(self.now, when)
            if not timer.cancelled:
                timer.callback(*timer.args)
        self.now = end

    def pending(self) -> int:
        return sum(1 for _, _, t in self._heap if not t.cancelled)


@dataclass
class _Timer:
    callback: Callable[..., None]
    args: tuple[Any, ...]
    cancelled: bool = False

    def cancel(self) -> None:
        self.cancelled = True


@dataclass
class Sent:
    peer: Peer
    data: bytes

    @property
    def message(self) -> SipRequest | SipResponse:
        return parse(self.data)

    @property
    def code(self) -> int:
        return self.message.status_code if isinstance(self.message, SipResponse) else 0

    @property
    def method(self) -> str:
        return self.message.method if isinstance(self.message, SipRequest) else ""


class Wire:
    def __init__(self) -> None:
        self.sent: list[Sent] = []

    def send_bytes(self, data: bytes, peer: Peer) -> bool:
        self.sent.append(Sent(peer, data))
        return True

    def take(self) -> list[Sent]:
        out, self.sent = self.sent, []
        return out


@dataclass
class Recorder:
    calls: list[Any] = field(default_factory=list)
    waiting: list[Callable[[], None]] = field(default_factory=list)

    def add_call(self, record: Any, on_durable: Callable[[], None] | None = None) -> None:
        self.calls.append(record)
        if on_durable is not None:
            self.waiting.append(on_durable)

    def durable(self) -> None:
        waiting, self.waiting = self.waiting, []
        for callback in waiting:
            callback()


class Store:
    """Round robin as Postgres would answer it, once the test lets it."""

    def __init__(self, index: Index) -> None:
        self.index = index
        self.over_limits: list[tuple[str, str | None, str]] = []
        self.texted: list[tuple[str, str, str]] = []
        self.call_events: list[tuple[str, int, dict[str, object]]] = []

    async def rotate(self, number: Number, caller: str | None) -> Decision:
        return route(self.index, number, caller)

    async def over_limit(self, number: Number, caller: str | None, action: str) -> None:
        self.over_limits.append((number.e164, caller, action))

    def call_event(self, event_type: str, account_id: int, data: Callable[[], dict[str, object]]) -> None:
        self.call_events.append((event_type, account_id, data()))

    async def text_back(self, number: Number, caller: str, body: str) -> None:
        self.texted.append((number.e164, caller, body))

    async def missed_call_text(self, number: Number, caller: str) -> None:
        assert number.missed_call_text is not None
        self.texted.append((number.e164, caller, number.missed_call_text))


def user(user_id: int, destination: str | None, package: str = "standard") -> User:
    return User(user_id, 1, "agent", package, frozenset(), destination, None)  # type: ignore[arg-type]


def number(
    route_users: tuple[int, ...], strategy: str = "user", limit: int = 50, timeout_s: int = 20
) -> Number:
    return Number(
        1,
        1,
        NUMBER,
        "company",
        None,
        None,
        strategy,
        route_users,
        timeout_s,
        "Billboard",
        "elm",
        limit,
        "sip",  # type: ignore[arg-type]
    )


class Harness:
    def __init__(
        self, *, strategy: str = "user", agents: int = 1, limit: int = 50, slots: Any = None, **sip: Any
    ) -> None:
        self.clock = FakeClock()
        self.wire = Wire()
        self.recorder = Recorder()
        self.index = Index()
        peers = [AGENT, AGENT2][:agents]
        for i, peer in enumerate(peers, start=10):
            self.index.put_user(user(i, f"sip:agent@{peer.host}:{peer.port}"))
        self.index.put_number(number(tuple(range(10, 10 + agents)), strategy, limit))
        self.slots = slots if slots is not None else CallSlots()
        settings = SipSettings(host="127.0.0.1", port=5060, trunk_cidrs="127.0.0.2/32", **sip)
        registry = CollectorRegistry()
        self.core = SipServer(
            settings,
            lambda: self.index,
            Store(self.index),  # type: ignore[arg-type]
            SipMetrics(registry, self.slots, 10),
            self.slots,
            self.recorder,  # type: ignore[arg-type]
            Counter("texts", "t", ["provider", "outcome"], registry=registry),
            FailureLimiter(1.0, 30),
            self.clock,
            self.wire,
        )
        self.core.bind("127.0.0.1", 5060)
        self.calls = itertools.count(1)

    # -- feeding the core -----------------------------------------------------

    def deliver(self, text: str, peer: Peer = CARRIER, body: bytes = b"") -> None:
        self.core.handle(parse(text.encode() + body), peer)

    def run_spawned(self) -> None:
        """Let the spawned coroutines (database round trips) finish."""
        while self.clock.coroutines:
            coro = self.clock.coroutines.pop(0)
            try:
                coro.send(None)
            except StopIteration:
                continue
            raise AssertionError("a spawned coroutine awaited something the harness cannot run")

    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)


SDP = b"v=0\r\no=- 1 1 IN IP4 127.0.0.2\r\ns=-\r\nc=IN IP4 127.0.0.2\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n"
AGENT_SDP = (
    b"v=0\r\no=- 2 2 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 5000 RTP/AVP 0\r\n"
)


def invite(
    branch: str = "z9hG4bKc1",
    *,
    call_id: str = "call-1",
    body: bytes = SDP,
    extra: str = "",
    max_forwards: int = 70,
    cseq: int = 1,
) -> str:
    ctype = "Content-Type: application/sdp\r\n" if body else ""
    return (
        f"INVITE sip:{NUMBER}@{GATEWAY} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.2:5070;branch={branch};rport\r\n"
        f"From: <sip:{CALLER}@127.0.0.2>;tag=c\r\nTo: <sip:{NUMBER}@{GATEWAY}>\r\nCall-ID: {call_id}\r\n"
        f"CSeq: {cseq} INVITE\r\nContact: <sip:carrier@127.0.0.2:5070>\r\nMax-Forwards: {max_forwards}\r\n"
        f"{extra}{ctype}Content-Length: {len(body)}\r\n\r\n"
    ) + body.decode()


def in_dialog(
    method: str,
    to_tag: str,
    *,
    branch: str,
    cseq: int,
    call_id: str = "call-1",
    body: bytes = b"",
    extra: str = "",
    cseq_method: str | None = None,
) -> str:
    ctype = "Content-Type: application/sdp\r\n" if body else ""
    return (
        f"{method} sip:gateway@{GATEWAY} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.2:5070;branch={branch}\r\n"
        f"From: <sip:{CALLER}@127.0.0.2>;tag=c\r\nTo: <sip:{NUMBER}@{GATEWAY}>;tag={to_tag}\r\n"
        f"Call-ID: {call_id}\r\nCSeq: {cseq} {cseq_method or method}\r\nMax-Forwards: 70\r\n"
        f"{extra}{ctype}Content-Length: {len(body)}\r\n\r\n"
    ) + body.decode()


def answer(
    request: SipRequest,
    code: int,
    reason: str,
    *,
    tag: str = "agent",
    body: bytes = b"",
    extra: str = "",
    contact: Peer = AGENT,
) -> str:
    """The agent's response to a request the gateway sent it."""
    h = request.headers
    ctype = "Content-Type: application/sdp\r\n" if body else ""
    contact_line = f"Contact: <sip:agent@{contact.host}:{contact.port}>\r\n" if code < 300 else ""
    return (
        f"SIP/2.0 {code} {reason}\r\nVia: {h.get_first('via')}\r\nFrom: {h.get_first('from')}\r\n"
        f"To: {h.get_first('to')}{'' if ';tag=' in (h.get_first('to') or '') else f';tag={tag}'}\r\n"
        f"Call-ID: {h.get_first('call-id')}\r\nCSeq: {h.get_first('cseq')}\r\n{contact_line}{extra}{ctype}"
        f"Content-Length: {len(body)}\r\n\r\n"
    ) + body.decode()


def to_tag(message: SipRequest | SipResponse) -> str:
    return (message.headers.get_first("to") or "").rsplit("tag=", 1)[-1]
