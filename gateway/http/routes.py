"""The one registry of HTTP operations; modules declare theirs with ``@API.op``."""

from __future__ import annotations

from gateway.http.openapi import Api

API = Api()
