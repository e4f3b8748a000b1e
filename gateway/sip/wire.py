"""Building and reading SIP messages (RFC 3261) on top of aiosipua's model."""

from __future__ import annotations

import functools
import secrets
from datetime import UTC, datetime

from aiosipua import SipRequest, SipResponse, parse_address, parse_uri
from aiosipua.message import missing_required_headers

from gateway.domain.phone import to_e164

MAGIC_COOKIE = "z9hG4bK"
SERVER_NAME = "gateway"
ALLOW = "INVITE, ACK, BYE, CANCEL, OPTIONS, MESSAGE, UPDATE, INFO"
# Extensions we support (RFC 4028 session timers); any other in Require gets 420.
SUPPORTED = "timer"
_SUPPORTED_OPTIONS = frozenset(("timer",))
# Methods a SIP element may know but this gateway does not serve: 405, not 501.
KNOWN_UNSUPPORTED = frozenset(("REGISTER", "SUBSCRIBE", "NOTIFY", "PUBLISH", "REFER", "PRACK"))


def new_tag() -> str:
    return secrets.token_hex(6)


def new_call_id() -> str:
    return secrets.token_hex(12) + "@gateway"


def utc(epoch: float) -> datetime:
    """An epoch time (what calls keep) as the aware datetime that records store."""
    return datetime.fromtimestamp(epoch, UTC)


def problems(request: SipRequest, transport: str = "udp") -> str | None:
    """Why ``request`` cannot be served (400), or None. Cheap checks only."""
    missing = missing_required_headers(request)
    if missing:
        return "Missing " + ", ".join(missing)
    cseq = request.headers.get_first("cseq") or ""
    number, _, method = cseq.strip().partition(" ")
    if not number.isdigit() or len(number) > 10 or method.strip() != request.method:
        return "Bad CSeq"
    if not request.uri.lower().startswith(("sip:", "sips:", "tel:")):
        return "Bad Request-URI"
    length = request.headers.get_first("content-length")
    if length is not None:
        length = length.strip()
        # RFC 3261 §18.3: over UDP a body shorter than its Content-Length is an error
        if not length.isdigit() or len(length) > 9:
            return "Bad Content-Length"
        if int(length) > len(request.body):
            return "Body Shorter Than Content-Length"
    forwards = request.headers.get_first("max-forwards")
    if forwards is not None and (not forwards.strip().isdigit() or len(forwards.strip()) > 3):
        return "Bad Max-Forwards"
    return None


def stamp_via(request: SipRequest, peer: object) -> None:
    """RFC 3261 §18.2.1 and RFC 3581: note on the top Via where the request
    really came from (``received``) and, when asked, from which port
    (``rport``), so every response built from it says so."""
    vias = request.headers.get("via")
    if not vias:
        return
    host, port = peer.host, peer.port  # type: ignore[attr-defined]
    top = vias[0]
    head, _, params = top.partition(";")
    sent_by = head.strip().split(None, 1)[-1]
    sent_host = sent_by.rsplit(":", 1)[0] if sent_by.count(":") == 1 else sent_by.strip("[]")
    parts = [p for p in params.split(";") if p] if params else []
    wants_rport = False
    kept = []
    for part in parts:
        name = part.strip().split("=", 1)[0].lower()
        if name == "rport":
            wants_rport = True
            continue
        if name == "received":
            continue
        kept.append(part.strip())
    if wants_rport:
        kept += [f"received={host}", f"rport={port}"]
    elif sent_host != host:
        kept.append(f"received={host}")
    else:
        return
    vias[0] = head + "".join(f";{part}" for part in kept)


def unsupported_required(request: SipRequest) -> list[str]:
    """Option tags in ``Require`` that we do not support (420, RFC 3261 §8.2.2.3)."""
    unknown = []
    for value in request.headers.get("require"):
        for option in value.split(","):
            tag = option.strip()
            if tag and tag.lower() not in _SUPPORTED_OPTIONS:
                unknown.append(tag)
    return unknown


def vias_carry(request: SipRequest, marker: str) -> bool:
    """Whether any Via's branch carries ``marker`` (the request passed us before)."""
    needle = MAGIC_COOKIE + marker
    return any(needle in via for via in request.headers.get("via"))


def cseq_number(message: SipRequest | SipResponse) -> int:
    raw = message.headers.get_first("cseq") or "0"
    head = raw.strip().split(" ", 1)[0]
    return int(head) if head.isdigit() else 0


def cseq_method(message: SipRequest | SipResponse) -> str:
    raw = message.headers.get_first("cseq") or ""
    parts = raw.strip().split()
    return parts[1] if len(parts) > 1 else ""


def top_branch(message: SipRequest | SipResponse) -> str:
    vias = message.headers.get("via")
    if not vias:
        return ""
    for part in vias[0].split(";")[1:]:
        name, _, value = part.strip().partition("=")
        if name.lower() == "branch":
            return value
    return ""


def tag_of(header_value: str | None) -> str | None:
    """The ``tag`` parameter of a From/To value, without a full parse."""
    if not header_value:
        return None
    tail = header_value.rsplit(">", 1)[-1] if ">" in header_value else header_value
    for part in tail.split(";")[1:]:
        name, _, value = part.strip().partition("=")
        if name.lower() == "tag":
            return value
    return None


def response(
    request: SipRequest,
    status: int,
    reason: str,
    *,
    to_tag: str | None = None,
    headers: tuple[tuple[str, str], ...] = (),
    body: bytes = b"",
    content_type: str | None = None,
) -> SipResponse:
    """A response to ``request`` (RFC 3261 §8.2.6): its Vias, From, Call-ID and
    CSeq, and its To with ``to_tag`` added when it has none."""
    resp = SipResponse(status_code=status, reason_phrase=reason)
    h = resp.headers
    for via in request.headers.get("via"):
        h.append("Via", via)
    h.append("From", request.headers.get_first("from") or "")
    to = request.headers.get_first("to") or ""
    if to_tag and tag_of(to) is None:
        to = f"{to};tag={to_tag}"
    h.append("To", to)
    h.append("Call-ID", request.headers.get_first("call-id") or "")
    h.append("CSeq", request.headers.get_first("cseq") or "")
    h.append("Server", SERVER_NAME)
    for name, value in headers:
        h.append(name, value)
    if body:
        h.append("Content-Type", content_type or "application/sdp")
        resp.body = body
    return resp


def uri_host_port(uri: str) -> tuple[str, int] | None:
    """Where to send a request for ``uri`` (no DNS: an IP or name and port)."""
    try:
        parsed = parse_uri(uri.strip().strip("<>"))
    except Exception:
        return None
    if not parsed.host:
        return None
    return parsed.host, parsed.port or 5060


def uri_of(header_value: str | None) -> str | None:
    """The URI of a name-addr header value (Contact, From, To)."""
    if not header_value:
        return None
    try:
        addr = parse_address(header_value)
    except Exception:
        return None
    uri = addr.uri
    if uri is None or not uri.host:
        return None
    scheme = uri.scheme or "sip"
    user = f"{uri.user}@" if uri.user else ""
    port = f":{uri.port}" if uri.port else ""
    params = "".join(f";{k}={v}" if v is not None else f";{k}" for k, v in uri.params.items())
    return f"{scheme}:{user}{uri.host}{port}{params}"


def user_e164(uri_or_header: str | None) -> str | None:
    """The E.164 number in the user part of a SIP or tel URI, else None
    (anonymous, withheld, or not a phone number)."""
    if not uri_or_header:
        return None
    text = uri_or_header
    if "<" in text:
        text = text[text.index("<") + 1 : text.index(">")] if ">" in text else text
    scheme, _, rest = text.strip().partition(":")
    if scheme.lower() == "tel":
        user = rest.split(";", 1)[0]
    elif "@" in rest:
        user = rest.split("@", 1)[0].split(";", 1)[0]
    else:
        return None
    return _e164_of_user(user)


@functools.lru_cache(maxsize=65536)
def _e164_of_user(user: str) -> str | None:
    """Cached: carriers repeat the same numbers, and phonenumbers costs tens
    of microseconds a call."""
    user = user.replace("%2B", "+").replace("%2b", "+")
    if user.startswith("+"):
        return to_e164(user)
    if user.isdigit():  # trunks that drop the plus: 15551234567 (with country code) or national
        return to_e164("+" + user) if len(user) > 10 else to_e164(user)
    return None
