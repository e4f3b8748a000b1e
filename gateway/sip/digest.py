"""SIP digest authentication of agents' phones (RFC 3261 §22, RFC 7616 and
RFC 8760: SHA-256 and MD5, qop=auth), checked against the HA1s stored per
user (never a password).

Replay is refused three ways:

- the credentials' ``uri`` must be the request's Request-URI, so a header
  captured for one destination cannot place a call to another;
- nonces are ``<issued epoch>.<salt>.<HMAC of both>`` under ``sip.nonce_secret``
  (shared by every instance that serves one address, so a nonce issued by
  one verifies on another), valid for ``NONCE_TTL_S``; an expired but
  genuine one earns a fresh challenge with ``stale=true``;
- each nonce's nonce-count must grow (:class:`NonceCounts`): a reused or
  lower ``nc`` is refused, and a request without qop may use its nonce once.
  The counts are bounded in memory (oldest nonces forgotten first; a
  forgotten nonce is answered ``stale`` so the phone simply re-authenticates).

Comparisons are constant-time.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections import OrderedDict
from typing import Literal

from aiosipua import AuthCredentials, parse_auth

from gateway.store.credentials import Algorithm, StoredKeys

NONCE_TTL_S = 300
MAX_TRACKED_NONCES = 100_000
Verdict = Literal["ok", "stale", "bad"]
ALGORITHMS: tuple[Algorithm, ...] = ("MD5", "SHA-256")


class NonceCounts:
    """The highest nonce-count seen per nonce, bounded (RFC 7616 §3.4.5)."""

    def __init__(self, capacity: int = MAX_TRACKED_NONCES) -> None:
        self._capacity = capacity
        self._seen: OrderedDict[str, int] = OrderedDict()
        self._floor = 0.0  # nonces issued before this were evicted unseen-able: stale

    def claim(self, nonce: str, issued: int, nc: int) -> Verdict:
        """``ok`` and remember ``nc`` when it is above every count seen for
        ``nonce``; ``bad`` for a replay; ``stale`` when the nonce's history was
        evicted (it cannot be told apart from a replay, so ask again)."""
        last = self._seen.get(nonce)
        if last is None:
            if issued < self._floor:
                return "stale"
            self._seen[nonce] = nc
            while len(self._seen) > self._capacity:
                evicted, _ = self._seen.popitem(last=False)
                self._floor = max(self._floor, float(evicted.partition(".")[0] or 0) + 1)
            return "ok"
        if nc <= last:
            return "bad"
        self._seen[nonce] = nc
        return "ok"

    def forget_before(self, issued_before: float) -> None:
        """Drop nonces that expired anyway (their requests are ``stale``)."""
        while self._seen:
            nonce = next(iter(self._seen))
            if float(nonce.partition(".")[0] or 0) >= issued_before:
                break
            del self._seen[nonce]

    def __len__(self) -> int:
        return len(self._seen)


class DigestAuthority:
    def __init__(self, realm: str, secret: bytes, algorithms: tuple[Algorithm, ...] = ALGORITHMS) -> None:
        """``algorithms``: the challenges offered, in order. RFC 8760 §2.4 puts
        the strongest first, but many phones (and SIPp) answer only the first
        challenge and only know MD5, so the default offers MD5 first."""
        self.realm = realm
        self._secret = secret
        self.algorithms = algorithms
        self.counts = NonceCounts()

    def challenges(self, *, stale: bool = False, now: float | None = None) -> tuple[str, ...]:
        """Proxy-Authenticate values, one per offered algorithm."""
        # Unique per challenge (a random salt), so nonce counts are per phone request.
        issued = f"{int(now if now is not None else time.time())}.{secrets.token_hex(6)}"
        nonce = f"{issued}.{self._sign(issued)}"
        tail = ", stale=true" if stale else ""
        return tuple(
            f'Digest realm="{self.realm}", nonce="{nonce}", algorithm={algorithm}, qop="auth"{tail}'
            for algorithm in self.algorithms
        )

    def credentials(self, header_value: str) -> AuthCredentials | None:
        """Parsed Digest credentials, or None when the header is not usable."""
        try:
            creds = parse_auth(header_value, credentials=True)
        except Exception:
            return None
        if creds.scheme.lower() != "digest" or not creds.params.get("username"):
            return None
        return creds

    def verify(
        self,
        creds: AuthCredentials,
        method: str,
        request_uri: str,
        keys: StoredKeys,
        now: float | None = None,
    ) -> Verdict:
        """``ok``, ``stale`` (genuine but expired or forgotten nonce: challenge
        again with stale=true) or ``bad``. Costs two hashes and an HMAC."""
        p = creds.params
        nonce, response, uri = p.get("nonce", ""), p.get("response", ""), p.get("uri", "")
        if p.get("realm") != self.realm or not nonce or not response or not uri:
            return "bad"
        if not _same_uri(uri, request_uri):
            return "bad"  # signed for another destination: a replay
        algorithm = _algorithm(p.get("algorithm"))
        if algorithm is None:
            return "bad"
        ha1 = keys.for_algorithm(algorithm)
        if ha1 is None:
            return "bad"
        epoch, _, rest = nonce.partition(".")
        salt, _, mac = rest.partition(".")
        if not epoch.isdigit() or len(epoch) > 12 or not salt:
            return "bad"
        if not hmac.compare_digest(mac, self._sign(f"{epoch}.{salt}")):
            return "bad"
        issued = epoch
        digest = _HASHES[algorithm]
        ha2 = digest(f"{method}:{uri}")
        qop = p.get("qop")
        nc_text = p.get("nc", "")
        if qop == "auth":
            if len(nc_text) != 8 or not all(c in "0123456789abcdefABCDEF" for c in nc_text):
                return "bad"
            nc = int(nc_text, 16)
            expected = digest(f"{ha1}:{nonce}:{nc_text}:{p.get('cnonce', '')}:auth:{ha2}")
        elif qop is None:
            nc = 1  # RFC 2069 style: no count, so the nonce is good for one request
            expected = digest(f"{ha1}:{nonce}:{ha2}")
        else:
            return "bad"
        if not hmac.compare_digest(expected, response.lower()):
            return "bad"
        clock = now if now is not None else time.time()
        age = clock - int(issued)
        if not 0 <= age <= NONCE_TTL_S:
            return "stale"
        self.counts.forget_before(clock - NONCE_TTL_S)
        return self.counts.claim(nonce, int(issued), nc)

    def _sign(self, issued: str) -> str:
        return hmac.new(self._secret, issued.encode(), hashlib.sha256).hexdigest()[:24]


def _md5(text: str) -> str:
    return hashlib.md5(text.encode(), usedforsecurity=False).hexdigest()


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


_HASHES = {"MD5": _md5, "SHA-256": _sha256}


def parse_algorithms(text: str) -> tuple[Algorithm, ...]:
    """``"MD5,SHA-256"`` -> the offered algorithms; ValueError for others."""
    found: list[Algorithm] = []
    for name in text.split(","):
        algorithm = _algorithm(name.strip())
        if algorithm is None or not name.strip():
            raise ValueError(f"unknown digest algorithm {name.strip()!r} (MD5, SHA-256)")
        found.append(algorithm)
    return tuple(found)


def _algorithm(value: str | None) -> Algorithm | None:
    name = (value or "MD5").strip().strip('"').upper()
    if name == "MD5":
        return "MD5"
    if name == "SHA-256":
        return "SHA-256"
    return None  # -sess variants and anything else are not offered


def _same_uri(signed: str, request_uri: str) -> bool:
    """RFC 3261 §22.4 asks for equality; case of scheme and host does not count."""
    a, b = signed.strip(), request_uri.strip()
    return a == b or a.lower() == b.lower()
