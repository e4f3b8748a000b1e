"""RFC 3261 §17's four transaction machines, sans-IO: everything that affects
a transaction's state lives here (h11's rule), nothing here touches a socket,
a loop or a clock.

Each machine is fed events with the time as an argument and answers with a
list of actions for the driver (:mod:`gateway.sip.core`) to carry out:

- :class:`Send` the bytes to the transaction's peer;
- :class:`Arm` / :class:`Disarm` a named timer (A, B, D, E, F, G, H, I, J, K
  of RFC 3261, and L, M of RFC 6026);
- :class:`Deliver` a response (client) to the transaction user;
- :class:`SendCancel`: the deferred CANCEL of RFC 3261 §9.1 may now leave;
- :class:`Failed`: a timeout the transaction user must hear of (B, F, H);
- :class:`Terminated`: forget the transaction.

Over a reliable transport (TCP) nothing is retransmitted and the linger
timers (D, I, J, K) are zero, so those transactions end at once.

The ACK of a non-2xx final is the INVITE client's own business (§17.1.1.3),
built and repeated here; the ACK of a 2xx belongs to the dialog and is the
caller's (TU's) job, as is the 2xx's retransmission on the server side -- but
the INVITE server machine below retransmits its 2xx with Timer G until the TU
reports the ACK (:meth:`ServerInvite.acked`) or Timer H gives up, which is
what a B2BUA's core does anyway (§13.3.1.4) and keeps all retransmission in
one place.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from aiosipua import SipRequest, SipResponse

from gateway.sip.codec import encode

T1 = 0.5
T2 = 4.0
T4 = 5.0
TIMEOUT = 64 * T1  # Timers B, F, H, J, L, M


class Timer(enum.Enum):
    A = "A"  # INVITE client: retransmit the request (unreliable)
    B = "B"  # INVITE client: give up waiting for any response (and §9.1 after CANCEL)
    D = "D"  # INVITE client: absorb retransmitted non-2xx finals
    E = "E"  # non-INVITE client: retransmit the request (unreliable)
    F = "F"  # non-INVITE client: give up waiting for a final
    G = "G"  # INVITE server: retransmit the final (unreliable)
    H = "H"  # INVITE server: give up waiting for the ACK
    I = "I"  # INVITE server: absorb retransmitted ACKs  # noqa: E741
    J = "J"  # non-INVITE server: absorb retransmitted requests
    K = "K"  # non-INVITE client: absorb retransmitted finals
    L = "L"  # INVITE server (RFC 6026): absorb retransmitted INVITEs after the 2xx's ACK
    M = "M"  # INVITE client (RFC 6026): accept retransmitted 2xx


class State(enum.Enum):
    CALLING = "calling"
    TRYING = "trying"
    PROCEEDING = "proceeding"
    ACCEPTED = "accepted"
    COMPLETED = "completed"
    CONFIRMED = "confirmed"
    TERMINATED = "terminated"


@dataclass(frozen=True, slots=True)
class Send:
    data: bytes


@dataclass(frozen=True, slots=True)
class Arm:
    timer: Timer
    at: float


@dataclass(frozen=True, slots=True)
class Disarm:
    timer: Timer


@dataclass(frozen=True, slots=True)
class Deliver:
    response: SipResponse


@dataclass(frozen=True, slots=True)
class SendCancel:
    request: SipRequest  # the CANCEL, to run as a non-INVITE client transaction


@dataclass(frozen=True, slots=True)
class Failed:
    timer: Timer  # which give-up timer fired: B, F or H


@dataclass(frozen=True, slots=True)
class Terminated:
    pass


Action = Send | Arm | Disarm | Deliver | SendCancel | Failed | Terminated
TERMINATED = Terminated()
# What a lingering transaction keeps instead of its request: after its final
# it only absorbs copies (Timers D, I, J, K, L, M), and tens of thousands of
# parsed requests held for 32 s cost long gen-2 GC pauses.
SETTLED = SipRequest(method="SETTLED", uri="")


class ClientInvite:
    """INVITE client transaction (§17.1.1, with RFC 6026's Accepted state)."""

    __slots__ = ("_cancel", "_interval", "_sent", "data", "reliable", "request", "state")

    def __init__(self, request: SipRequest, *, reliable: bool) -> None:
        self.request = request
        self.data = encode(request)
        self.reliable = reliable
        self.state = State.CALLING
        self._interval = T1
        self._cancel = False  # the TU asked to CANCEL before any provisional came
        self._sent: bytes = b""  # our ACK to a non-2xx final, repeated for its retransmissions

    def start(self, now: float) -> list[Action]:
        actions: list[Action] = [Send(self.data), Arm(Timer.B, now + TIMEOUT)]
        if not self.reliable:
            actions.append(Arm(Timer.A, now + T1))
        return actions

    def receive(self, response: SipResponse, now: float) -> list[Action]:
        code = response.status_code
        state = self.state
        if code < 200:
            if state is State.CALLING:
                self.state = State.PROCEEDING
                actions: list[Action] = [Disarm(Timer.A)]
                if self._cancel:  # §9.1: the CANCEL waited for this provisional
                    actions += [SendCancel(self._cancel_request()), Arm(Timer.B, now + TIMEOUT)]
                else:
                    actions.append(Disarm(Timer.B))
                actions.append(Deliver(response))
                return actions
            return [Deliver(response)] if state is State.PROCEEDING else []
        if code < 300:
            if state in (State.CALLING, State.PROCEEDING):
                self.state = State.ACCEPTED
                self._settle()
                return [Disarm(Timer.A), Disarm(Timer.B), Arm(Timer.M, now + TIMEOUT), Deliver(response)]
            return [Deliver(response)] if state is State.ACCEPTED else []  # the TU re-ACKs
        if state in (State.CALLING, State.PROCEEDING):
            self.state = State.COMPLETED
            self._sent = encode(self._ack(response))
            self._settle()
            actions = [Send(self._sent), Disarm(Timer.A), Disarm(Timer.B), Deliver(response)]
            if self.reliable:
                self.state = State.TERMINATED
                actions.append(TERMINATED)
            else:
                actions.append(Arm(Timer.D, now + 32.0))
            return actions
        if state is State.COMPLETED:
            return [Send(self._sent)]  # a retransmitted final: ACK it again, the TU heard it once
        return []

    def cancel(self, now: float) -> list[Action]:
        """The TU wants this INVITE cancelled (§9.1): at once after a
        provisional, else deferred until one arrives; nothing once final."""
        if self.state is State.PROCEEDING:
            if self._cancel:
                return []
            self._cancel = True
            return [SendCancel(self._cancel_request()), Arm(Timer.B, now + TIMEOUT)]
        if self.state is State.CALLING:
            self._cancel = True
        return []

    def fire(self, timer: Timer, now: float) -> list[Action]:
        state = self.state
        if timer is Timer.A and state is State.CALLING:
            self._interval *= 2
            return [Send(self.data), Arm(Timer.A, now + self._interval)]
        if timer is Timer.B and state in (State.CALLING, State.PROCEEDING):
            self.state = State.TERMINATED
            return [Disarm(Timer.A), Failed(Timer.B), TERMINATED]
        if (timer is Timer.D and state is State.COMPLETED) or (timer is Timer.M and state is State.ACCEPTED):
            self.state = State.TERMINATED
            return [TERMINATED]
        return []

    def transport_error(self) -> list[Action]:
        if self.state in (State.CALLING, State.PROCEEDING):
            self.state = State.TERMINATED
            return [Disarm(Timer.A), Disarm(Timer.B), Failed(Timer.B), TERMINATED]
        return []

    def _settle(self) -> None:
        self.request, self.data = SETTLED, b""

    def _ack(self, response: SipResponse) -> SipRequest:
        """§17.1.1.3: To from the response (with its tag)."""
        return self._derived("ACK", response.headers.get_first("to") or "")

    def _cancel_request(self) -> SipRequest:
        """§9.1: To as the INVITE had it."""
        return self._derived("CANCEL", self.request.headers.get_first("to") or "")

    def _derived(self, method: str, to: str) -> SipRequest:
        """ACK and CANCEL of this INVITE: its Request-URI, top Via (so its
        branch), Route, From, Call-ID and CSeq number, with ``method``."""
        inv = self.request
        derived = SipRequest(method=method, uri=inv.uri)
        h = derived.headers
        h.append("Via", inv.headers.get_first("via") or "")
        for route in inv.headers.get("route"):
            h.append("Route", route)
        h.append("Max-Forwards", "70")
        h.append("From", inv.headers.get_first("from") or "")
        h.append("To", to)
        h.append("Call-ID", inv.headers.get_first("call-id") or "")
        h.append("CSeq", f"{_cseq_number(inv)} {method}")
        return derived


class ClientNonInvite:
    """Non-INVITE client transaction (§17.1.2): BYE, CANCEL, UPDATE, INFO, ..."""

    __slots__ = ("_interval", "data", "reliable", "request", "state")

    def __init__(self, request: SipRequest, *, reliable: bool) -> None:
        self.request = request
        self.data = encode(request)
        self.reliable = reliable
        self.state = State.TRYING
        self._interval = T1

    def start(self, now: float) -> list[Action]:
        actions: list[Action] = [Send(self.data), Arm(Timer.F, now + TIMEOUT)]
        if not self.reliable:
            actions.append(Arm(Timer.E, now + T1))
        return actions

    def receive(self, response: SipResponse, now: float) -> list[Action]:
        state = self.state
        if state not in (State.TRYING, State.PROCEEDING):
            return []  # Completed: a retransmitted final, absorbed (Timer K)
        if response.status_code < 200:
            self.state = State.PROCEEDING
            return [Deliver(response)]
        self.state = State.COMPLETED
        self.request, self.data = SETTLED, b""
        actions: list[Action] = [Disarm(Timer.E), Disarm(Timer.F), Deliver(response)]
        if self.reliable:
            self.state = State.TERMINATED
            actions.append(TERMINATED)
        else:
            actions.append(Arm(Timer.K, now + T4))
        return actions

    def fire(self, timer: Timer, now: float) -> list[Action]:
        state = self.state
        if timer is Timer.E and state in (State.TRYING, State.PROCEEDING):
            self._interval = min(self._interval * 2, T2) if state is State.TRYING else T2
            return [Send(self.data), Arm(Timer.E, now + self._interval)]
        if timer is Timer.F and state in (State.TRYING, State.PROCEEDING):
            self.state = State.TERMINATED
            return [Disarm(Timer.E), Failed(Timer.F), TERMINATED]
        if timer is Timer.K and state is State.COMPLETED:
            self.state = State.TERMINATED
            return [TERMINATED]
        return []

    def transport_error(self) -> list[Action]:
        if self.state in (State.TRYING, State.PROCEEDING):
            self.state = State.TERMINATED
            return [Disarm(Timer.E), Disarm(Timer.F), Failed(Timer.F), TERMINATED]
        return []


class ServerInvite:
    """INVITE server transaction (§17.2.1, with RFC 6026's Accepted state).

    Created when an INVITE arrives; the TU answers through :meth:`respond`.
    Retransmitted INVITEs are answered with the latest response; every final
    is retransmitted over UDP (Timer G) until its ACK or Timer H."""

    __slots__ = ("_interval", "last", "last_status", "reliable", "request", "state")

    def __init__(self, request: SipRequest, *, reliable: bool) -> None:
        self.request = request
        self.reliable = reliable
        self.state = State.PROCEEDING
        self.last: bytes = b""
        self.last_status = 0
        self._interval = T1

    def respond(self, data: bytes, status: int, now: float) -> list[Action]:
        """Send a response built by the TU. Ignored once a final was sent."""
        if self.state is not State.PROCEEDING:
            return []
        self.last, self.last_status = data, status
        if status < 200:
            return [Send(data)]
        self.state = State.ACCEPTED if status < 300 else State.COMPLETED
        self.request = SETTLED
        actions: list[Action] = [Send(data), Arm(Timer.H, now + TIMEOUT)]
        if not self.reliable:
            actions.append(Arm(Timer.G, now + T1))
        return actions

    def receive(self, request: SipRequest, now: float) -> list[Action]:
        """A retransmitted INVITE, or the ACK of a non-2xx final (same branch)."""
        state = self.state
        if request.method == "ACK":
            if state is State.COMPLETED:
                return self._confirm(now, Timer.I, 0.0 if self.reliable else T4)
            return []
        if state in (State.PROCEEDING, State.ACCEPTED, State.COMPLETED) and self.last:
            return [Send(self.last)]
        return []

    def acked(self, now: float) -> list[Action]:
        """The TU saw the ACK of our 2xx (a transaction of its own, matched by
        dialog): stop retransmitting, absorb late INVITE copies until Timer L."""
        if self.state is State.ACCEPTED:
            return self._confirm(now, Timer.L, TIMEOUT)
        return []

    def _confirm(self, now: float, linger: Timer, delay: float) -> list[Action]:
        self.state = State.CONFIRMED
        actions: list[Action] = [Disarm(Timer.G), Disarm(Timer.H)]
        if delay <= 0:
            self.state = State.TERMINATED
            actions.append(TERMINATED)
        else:
            actions.append(Arm(linger, now + delay))
        return actions

    def fire(self, timer: Timer, now: float) -> list[Action]:
        state = self.state
        if timer is Timer.G and state in (State.ACCEPTED, State.COMPLETED):
            self._interval = min(self._interval * 2, T2)
            return [Send(self.last), Arm(Timer.G, now + self._interval)]
        if timer is Timer.H and state in (State.ACCEPTED, State.COMPLETED):
            self.state = State.TERMINATED
            return [Disarm(Timer.G), Failed(Timer.H), TERMINATED]
        if timer in (Timer.I, Timer.L) and state is State.CONFIRMED:
            self.state = State.TERMINATED
            return [TERMINATED]
        return []


class ServerNonInvite:
    """Non-INVITE server transaction (§17.2.2): retransmissions of the request
    get the latest response (nothing while the TU is still working on it)."""

    __slots__ = ("last", "last_status", "reliable", "request", "state")

    def __init__(self, request: SipRequest, *, reliable: bool) -> None:
        self.request = request
        self.reliable = reliable
        self.state = State.TRYING
        self.last: bytes = b""
        self.last_status = 0

    def respond(self, data: bytes, status: int, now: float) -> list[Action]:
        if self.state not in (State.TRYING, State.PROCEEDING):
            return []
        self.last, self.last_status = data, status
        if status < 200:
            self.state = State.PROCEEDING
            return [Send(data)]
        self.state = State.COMPLETED
        self.request = SETTLED
        if self.reliable:
            self.state = State.TERMINATED
            return [Send(data), TERMINATED]
        return [Send(data), Arm(Timer.J, now + TIMEOUT)]

    def receive(self, request: SipRequest, now: float) -> list[Action]:
        if self.state in (State.PROCEEDING, State.COMPLETED):
            return [Send(self.last)]
        return []  # Trying: the TU has not answered yet; the retransmission is absorbed

    def fire(self, timer: Timer, now: float) -> list[Action]:
        if timer is Timer.J and self.state is State.COMPLETED:
            self.state = State.TERMINATED
            return [TERMINATED]
        return []


Client = ClientInvite | ClientNonInvite
Server = ServerInvite | ServerNonInvite


def _cseq_number(message: SipRequest) -> int:
    head = (message.headers.get_first("cseq") or "0").strip().split(" ", 1)[0]
    return int(head) if head.isdigit() else 0
