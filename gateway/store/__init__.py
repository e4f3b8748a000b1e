"""Postgres: migrations, the embedded cluster, the routing index's loader and listener."""

from __future__ import annotations

from typing import Any, TypeAlias

import asyncpg
from asyncpg.pool import PoolConnectionProxy

# A connection, whether taken from the pool or opened on its own.
Conn: TypeAlias = "asyncpg.Connection[Any] | PoolConnectionProxy[Any]"
