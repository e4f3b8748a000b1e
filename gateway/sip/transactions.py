"""Client transactions (RFC 3261 §17.1): retransmission over UDP and the
32-second give-up timers, driven by loop timers rather than a task each.

INVITE: retransmit at T1, 2*T1, ... until a provisional or final response
(Timer A), give up after 64*T1 (Timer B). Other requests: retransmit, capped
at T2, until a final response (Timer E), give up after 64*T1 (Timer F). Over
TCP nothing is retransmitted. After a final response an INVITE transaction
lingers (Timer D role) so that retransmitted finals still reach the call,
which re-ACKs them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol

from aiosipua import SipRequest, SipResponse

from gateway.sip.codec import encode
from gateway.sip.transport import Peer
from gateway.sip.wire import top_branch

T1 = 0.5
T2 = 4.0
TIMER_B = 64 * T1
LINGER_S = 32.0


class Registry(Protocol):
    loop: asyncio.AbstractEventLoop

    def send_raw(self, data: bytes, peer: Peer, method: str, status: int | None) -> bool: ...
    def register(self, key: str, tx: ClientTransaction) -> None: ...
    def unregister(self, key: str) -> None: ...


class ClientTransaction:
    """One outgoing request and its responses. ``on_response`` gets every
    response (retransmitted finals included); ``on_timeout`` fires once when no
    final response came within Timer B/F."""

    __slots__ = (
        "_data",
        "_handles",
        "_interval",
        "_owner",
        "branch",
        "done",
        "key",
        "method",
        "on_response",
        "on_timeout",
        "peer",
        "provisional",
    )

    def __init__(
        self,
        owner: Registry,
        request: SipRequest,
        peer: Peer,
        on_response: Callable[[SipResponse], None] | None = None,
        on_timeout: Callable[[], None] | None = None,
        *,
        timeout_s: float = TIMER_B,
    ) -> None:
        self._owner = owner
        self.method = request.method
        self.branch = top_branch(request)
        self.key = f"{self.branch}:{self.method}"
        self.peer = peer
        self.on_response = on_response
        self.on_timeout = on_timeout
        self.provisional = False
        self.done = False
        self._data = encode(request)
        self._interval = T1
        loop = owner.loop
        self._handles = [loop.call_later(timeout_s, self._expire)]
        owner.register(self.key, self)
        owner.send_raw(self._data, peer, self.method, None)
        if peer.transport == "udp":
            self._handles.append(loop.call_later(T1, self._retransmit))

    def receive(self, resp: SipResponse) -> None:
        if resp.status_code < 200:
            if not self.provisional:
                self.provisional = True
                if self.method == "INVITE":
                    self._stop_retransmitting()
        elif not self.done:
            self.done = True
            self._cancel_timers()
            self._handles = [
                self._owner.loop.call_later(LINGER_S if self.method == "INVITE" else 0, self._forget)
            ]
        if self.on_response is not None:
            self.on_response(resp)

    def stop(self) -> None:
        """Abandon the transaction (the call ended); no callback fires after this."""
        self.on_response = None
        self.on_timeout = None
        self._cancel_timers()
        self._forget()

    def _retransmit(self) -> None:
        if self.done:
            return
        self._owner.send_raw(self._data, self.peer, self.method, None)
        self._interval = self._interval * 2 if self.method == "INVITE" else min(self._interval * 2, T2)
        self._handles.append(self._owner.loop.call_later(self._interval, self._retransmit))

    def _stop_retransmitting(self) -> None:
        # handles[0] is the give-up timer; the rest are retransmissions.
        for handle in self._handles[1:]:
            handle.cancel()
        del self._handles[1:]

    def _expire(self) -> None:
        if self.done:
            return
        self.done = True
        self._cancel_timers()
        self._forget()
        callback, self.on_timeout = self.on_timeout, None
        if callback is not None:
            callback()

    def _cancel_timers(self) -> None:
        for handle in self._handles:
            handle.cancel()
        self._handles = []

    def _forget(self) -> None:
        self._owner.unregister(self.key)
