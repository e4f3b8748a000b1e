"""SIP digest authentication of agents' phones (RFC 3261 §22, RFC 2617 MD5
with qop=auth), checked against the HA1 stored per user (never a password).

Nonces are stateless: ``<issued epoch>.<HMAC of it>``, valid for
``NONCE_TTL_S``; an expired one earns a fresh challenge with ``stale=true``
so the phone retries without asking its user. Comparisons are constant-time.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from typing import Literal

from aiosipua import AuthCredentials, parse_auth

NONCE_TTL_S = 300
Verdict = Literal["ok", "stale", "bad"]


class DigestAuthority:
    def __init__(self, realm: str, secret: bytes) -> None:
        self.realm = realm
        self._secret = secret

    def challenge(self, *, stale: bool = False, now: float | None = None) -> str:
        """A Proxy-Authenticate / WWW-Authenticate value."""
        issued = str(int(now if now is not None else time.time()))
        nonce = f"{issued}.{self._sign(issued)}"
        value = f'Digest realm="{self.realm}", nonce="{nonce}", algorithm=MD5, qop="auth"'
        return value + ", stale=true" if stale else value

    def credentials(self, header_value: str) -> AuthCredentials | None:
        """Parsed Digest credentials, or None when the header is not usable."""
        try:
            creds = parse_auth(header_value, credentials=True)
        except Exception:
            return None
        if creds.scheme.lower() != "digest" or not creds.params.get("username"):
            return None
        return creds

    def verify(self, creds: AuthCredentials, method: str, ha1: str, now: float | None = None) -> Verdict:
        p = creds.params
        nonce, response, uri = p.get("nonce", ""), p.get("response", ""), p.get("uri", "")
        if p.get("realm") != self.realm or not nonce or not response or not uri:
            return "bad"
        issued, _, mac = nonce.partition(".")
        if not issued.isdigit() or not hmac.compare_digest(mac, self._sign(issued)):
            return "bad"
        ha2 = _md5(f"{method}:{uri}")
        qop = p.get("qop")
        if qop == "auth":
            expected = _md5(f"{ha1}:{nonce}:{p.get('nc', '')}:{p.get('cnonce', '')}:auth:{ha2}")
        elif qop is None:
            expected = _md5(f"{ha1}:{nonce}:{ha2}")
        else:
            return "bad"
        if not hmac.compare_digest(expected, response.lower()):
            return "bad"
        age = (now if now is not None else time.time()) - int(issued)
        return "ok" if 0 <= age <= NONCE_TTL_S else "stale"

    def _sign(self, issued: str) -> str:
        return hmac.new(self._secret, issued.encode(), hashlib.sha256).hexdigest()[:24]


def ha1(username: str, realm: str, password: str) -> str:
    return _md5(f"{username}:{realm}:{password}")


def _md5(text: str) -> str:
    return hashlib.md5(text.encode(), usedforsecurity=False).hexdigest()
