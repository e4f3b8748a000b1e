"""RFC 4028 session timers, as pure functions of headers: how long a call's
session lasts without a refresh, and which side refreshes it.

A call has two dialogs (caller and agent) and a session timer on each:

- as UAS toward the caller: we honour the caller's ``Session-Expires`` (never
  above our own interval, 422 below ``Min-SE``) and its choice of refresher;
  a caller that supports timers but chose nobody refreshes itself (``uac``);
  one that does not support them leaves the refreshing to us (``uas``);
- as UAC toward the agent: we offer our interval with ``Supported: timer``;
  the agent's 2xx says who refreshes; when it says nothing, we refresh
  anyway, so a vanished agent is still noticed.

The side that refreshes sends a re-INVITE or UPDATE at half the interval;
the other side is watched and the session ends (BYE both ways) when no
refresh came by ``interval - min(32, interval / 3)`` (§10).
"""

from __future__ import annotations

from dataclasses import dataclass

from aiosipua import SipRequest, SipResponse

MIN_SE = 90  # RFC 4028 §4: the smallest interval anyone may ask for


@dataclass(frozen=True, slots=True)
class Session:
    interval: int
    we_refresh: bool

    def next_deadline(self) -> float:
        """Seconds until we refresh, or until the peer's refresh is overdue."""
        if self.we_refresh:
            return self.interval / 2
        return max(self.interval - min(32.0, self.interval / 3), 1.0)

    def header(self, *, we_are_uac: bool) -> str:
        """``Session-Expires`` naming the refresher from the message's point of
        view (``uac``: the side that sent the request)."""
        refresher = "uac" if self.we_refresh == we_are_uac else "uas"
        return f"{self.interval};refresher={refresher}"


def parse_session_expires(value: str | None) -> tuple[int | None, str | None]:
    """``"1800;refresher=uac"`` -> (1800, "uac"); (None, None) when absent or bad."""
    if not value:
        return None, None
    head, *params = (part.strip() for part in value.split(";"))
    if not head.isdigit() or len(head) > 9:
        return None, None
    refresher = None
    for param in params:
        name, _, val = param.partition("=")
        if name.strip().lower() == "refresher" and val.strip().lower() in ("uac", "uas"):
            refresher = val.strip().lower()
    return int(head), refresher


def supports_timer(message: SipRequest | SipResponse) -> bool:
    for name in ("supported", "require", "k"):
        for value in message.headers.get(name):
            if any(option.strip().lower() == "timer" for option in value.split(",")):
                return True
    return False


def interval_too_small(invite: SipRequest) -> bool:
    """§8.1.1: a Session-Expires below our Min-SE is refused with 422."""
    interval, _ = parse_session_expires(invite.headers.get_first("session-expires"))
    return interval is not None and interval < MIN_SE


def as_uas(invite: SipRequest, default: int) -> Session:
    """The caller's dialog (§9): its interval capped at ours, its refresher."""
    asked, refresher = parse_session_expires(invite.headers.get_first("session-expires"))
    interval = max(min(asked or default, default), MIN_SE)
    if refresher is None:
        refresher = "uac" if supports_timer(invite) else "uas"
    return Session(interval, we_refresh=refresher == "uas")


def as_uac(answer: SipResponse, default: int) -> Session:
    """The agent's dialog (§7.2): what its 2xx says; we refresh when it is silent."""
    interval, refresher = parse_session_expires(answer.headers.get_first("session-expires"))
    if interval is None:
        return Session(max(default, MIN_SE), we_refresh=True)
    return Session(max(interval, MIN_SE), we_refresh=refresher != "uas")
