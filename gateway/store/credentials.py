"""How a SIP password rests in the database: never itself, only its digest
HA1s (RFC 2617/7616: ``H(username:realm:password)``), one per algorithm the
gateway offers. The admin API stores them; ``sip/digest`` verifies against them.
"""

from __future__ import annotations

import hashlib
from typing import Literal

Algorithm = Literal["MD5", "SHA-256"]


def ha1(username: str, realm: str, password: str, algorithm: Algorithm = "MD5") -> str:
    """The HA1 stored for ``algorithm``. Microseconds."""
    text = f"{username}:{realm}:{password}".encode()
    if algorithm == "MD5":
        return hashlib.md5(text, usedforsecurity=False).hexdigest()
    return hashlib.sha256(text).hexdigest()
