"""Fast paths for SIP wire format, producing and consuming aiosipua's own
message objects (so everything above works on one model).

:func:`parse` handles the common case (CRLF line ends, no folded lines;
comma-joined multi-instance headers are split with aiosipua's own splitter)
in about a third of the time of
``SipMessage.parse``, and hands anything else to aiosipua's parser, which is
the reference: tests hold the two to identical results. :func:`encode`
writes header names as they were added (the gateway adds canonical ones)
instead of re-prettifying each, and always states the exact Content-Length.
"""

from __future__ import annotations

from aiosipua import SipMessage, SipRequest, SipResponse
from aiosipua.headers import COMPACT_HEADERS, MULTI_INSTANCE_HEADERS, CaseInsensitiveDict
from aiosipua.message import MAX_HEADERS, _split_multi_value


def parse(data: bytes) -> SipRequest | SipResponse:
    """Parse one message; raises ValueError when it is not SIP."""
    head, separator, body = data.partition(b"\r\n\r\n")
    text = head.decode("utf-8", "replace")
    if not separator or "\n " in text or "\n\t" in text or "\r\n\r\n" in text:
        return SipMessage.parse(data)
    lines = text.split("\r\n")
    if len(lines) > MAX_HEADERS + 1:
        raise ValueError(f"Too many headers ({len(lines) - 1} > {MAX_HEADERS})")
    headers = CaseInsensitiveDict()
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if not colon:
            continue
        name = name.strip()
        value = value.strip()
        if len(name) == 1:
            name = COMPACT_HEADERS.get(name.lower(), name)
        if "\r" in value or "\n" in value or "\r" in name or "\n" in name:
            return SipMessage.parse(data)
        if ("," in value or not value) and name.lower() in MULTI_INSTANCE_HEADERS:
            if not value:
                return SipMessage.parse(data)
            # Allow, Supported, Via...: split exactly as aiosipua's parser does
            for part in _split_multi_value(value):
                headers.append(name, part)
            continue
        headers.append(name, value)
    length = headers.get_first("content-length")
    if length is not None:
        length = length.strip()
        if length.isdigit() and len(body) > int(length):
            body = body[: int(length)]
    start = lines[0].strip()
    if not start:
        raise ValueError("Missing start line")
    if start.startswith("SIP/"):
        parts = start.split(None, 2)
        status = int(parts[1]) if len(parts) > 1 else 0
        return SipResponse(
            headers=headers, body=body, status_code=status, reason_phrase=parts[2] if len(parts) > 2 else ""
        )
    parts = start.split(None, 2)
    if len(parts) < 3:
        raise ValueError(f"Malformed request line: {start!r}")
    return SipRequest(headers=headers, body=body, method=parts[0], uri=parts[1])


def encode(message: SipRequest | SipResponse) -> bytes:
    """Wire bytes with an exact Content-Length (RFC 3261 §18.3)."""
    if isinstance(message, SipResponse):
        lines = [f"SIP/2.0 {message.status_code} {message.reason_phrase}"]
    else:
        lines = [f"{message.method} {message.uri} SIP/2.0"]
    for name, values in message.headers.items():
        if name.lower() != "content-length":
            lines.extend(f"{name}: {value}" for value in values)
    lines.append(f"Content-Length: {len(message.body)}\r\n\r\n")
    return "\r\n".join(lines).encode() + message.body
