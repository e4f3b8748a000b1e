"""How a SIP password rests in the database: never itself, only its digest
HA1s (RFC 2617/7616: ``H(username:realm:password)``), one per algorithm the
gateway offers. The admin API stores them; ``sip/digest`` verifies against them.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Literal

Algorithm = Literal["MD5", "SHA-256"]


@dataclass(frozen=True, slots=True)
class StoredKeys:
    """The HA1 of each algorithm a user's credentials were saved with."""

    md5: str | None
    sha256: str | None

    def for_algorithm(self, algorithm: Algorithm) -> str | None:
        return self.sha256 if algorithm == "SHA-256" else self.md5


@dataclass(frozen=True, slots=True)
class SipUser:
    """The user a phone authenticates as, with their stored keys."""

    user_id: int
    account_id: int
    keys: StoredKeys


def ha1(username: str, realm: str, password: str, algorithm: Algorithm = "MD5") -> str:
    """The HA1 stored for ``algorithm``. Microseconds."""
    text = f"{username}:{realm}:{password}".encode()
    if algorithm == "MD5":
        return hashlib.md5(text, usedforsecurity=False).hexdigest()
    return hashlib.sha256(text).hexdigest()
