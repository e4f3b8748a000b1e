"""Webhook signatures, as the providers compute them (DESIGN §5): provider wire
format, not business rules, so they live beside the webhook handlers. Pure functions.

Twilio: base64 HMAC (SHA-1, or SHA-256 when ``X-Twilio-Webhooks-Signature-Settings``
says so) over the full public URL followed by each parameter name and value,
names sorted, each name's distinct values sorted, as the SDK's
``RequestValidator`` does; the URL is tried with and without its default port.

Telnyx: Ed25519 over ``"{telnyx-timestamp}|{raw body}"`` with the account's
public key, within ±300 s of now (replay).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Iterable
from functools import lru_cache
from urllib.parse import urlsplit, urlunsplit

from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey

TELNYX_TOLERANCE_S = 300
_DIGESTS = {"HMAC_SHA1": hashlib.sha1, "HMAC_SHA256": hashlib.sha256}


def twilio_algorithm(settings_header: str | None) -> str:
    """The algorithm named by ``X-Twilio-Webhooks-Signature-Settings`` (default HMAC_SHA1)."""
    for part in (settings_header or "").split(","):
        name, separator, value = part.partition("=")
        if separator and name.strip() == "algorithm" and value.strip():
            return value.strip().upper()
    return "HMAC_SHA1"


def twilio_signature(
    auth_token: str, url: str, params: Iterable[tuple[str, str]], algorithm: str = "HMAC_SHA1"
) -> str:
    """The ``X-Twilio-Signature`` for a request; ``params`` keep repeated names."""
    values: dict[str, set[str]] = {}
    for name, value in params:
        values.setdefault(name, set()).add(value)
    text = url + "".join(name + value for name in sorted(values) for value in sorted(values[name]))
    mac = hmac.new(auth_token.encode(), text.encode(), _DIGESTS[algorithm])
    return base64.b64encode(mac.digest()).decode()


def twilio_valid(
    auth_token: str, url: str, params: list[tuple[str, str]], signature: str, algorithm: str = "HMAC_SHA1"
) -> bool:
    """Constant-time check against the URL with and without its default port."""
    if not auth_token or not signature or algorithm not in _DIGESTS:
        return False
    # As bytes: compare_digest refuses non-ASCII str, and a header is whatever
    # a stranger sent (a 500 there was issue 12's item 3).
    given = signature.encode("utf-8", "surrogateescape")
    # any() stops at the first match: a genuine webhook costs one HMAC.
    return any(
        hmac.compare_digest(twilio_signature(auth_token, candidate, params, algorithm).encode(), given)
        for candidate in _with_and_without_port(url)
    )


def telnyx_valid(public_key_b64: str, timestamp: str, body: bytes, signature_b64: str, now: float) -> bool:
    """Ed25519 over ``timestamp|body`` with the timestamp within ±300 s of ``now``."""
    try:
        sent_at = int(timestamp)
        key = _telnyx_key(public_key_b64)
        signature = base64.b64decode(signature_b64, validate=True)
    except (ValueError, binascii.Error):  # nacl's errors for a bad key are ValueErrors too
        return False
    if abs(now - sent_at) > TELNYX_TOLERANCE_S:
        return False
    try:
        key.verify(timestamp.encode() + b"|" + body, signature)
    except (BadSignatureError, ValueError):  # ValueError: not 64 bytes
        return False
    return True


@lru_cache(maxsize=4)  # the configured key, decoded once
def _telnyx_key(public_key_b64: str) -> VerifyKey:
    return VerifyKey(base64.b64decode(public_key_b64, validate=True))


@lru_cache(maxsize=256)  # one public base URL, a handful of webhook paths
def _with_and_without_port(url: str) -> tuple[str, str]:
    """As the SDK: the URL with any port removed, and with the default port added
    when it has none."""
    parts = urlsplit(url)
    without = urlunsplit(parts._replace(netloc=parts.netloc.rsplit(":", 1)[0])) if parts.port else url
    default = 443 if parts.scheme == "https" else 80
    with_port = url if parts.port else urlunsplit(parts._replace(netloc=f"{parts.netloc}:{default}"))
    return without, with_port
