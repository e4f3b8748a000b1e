"""``gateway`` command line: serve, migrate, check-config.

Every expected failure (bad config, no PostgreSQL binaries, database
unreachable) ends with one line on stderr and a non-zero exit code, never a
traceback: exit 2 for configuration, 1 for anything else.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import asyncpg

from gateway import __version__
from gateway.config import ConfigError, Settings, load_settings
from gateway.store.embedded import EmbeddedPostgres, EmbeddedPostgresError

EXIT_CONFIG = 2
EXIT_FAILURE = 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gateway", description=__doc__)
    parser.add_argument("--version", action="version", version=f"gateway {__version__}")
    parser.add_argument("--config", type=Path, help="TOML file (default: config/gateway.toml)")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the gateway until SIGTERM/SIGINT")
    serve.add_argument("--seed-demo", action="store_true", help="create the demo account if missing")
    commands.add_parser("migrate", help="apply pending database migrations and exit")
    commands.add_parser("check-config", help="validate the configuration and exit")
    args = parser.parse_args(argv)

    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        print(f"gateway: config error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    _setup_logging(settings)

    if args.command == "check-config":
        print("configuration OK")
        return 0
    if args.command == "migrate":
        return _run(lambda: _migrate(settings))
    from gateway.server import serve as serve_forever

    return _run(lambda: serve_forever(settings, seed_demo=args.seed_demo))


def _run(entry: Callable[[], Awaitable[int]]) -> int:
    import uvloop

    async def wrapped() -> int:
        return await entry()

    try:
        return int(uvloop.run(wrapped()))
    except EmbeddedPostgresError as exc:
        print(f"gateway: embedded database: {exc}", file=sys.stderr)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
        print(f"gateway: {type(exc).__name__}: {exc}", file=sys.stderr)
    except KeyboardInterrupt:
        return 130
    return EXIT_FAILURE


async def _migrate(settings: Settings) -> int:
    from gateway.store.migrations import migrate

    embedded = None
    dsn = settings.database.url
    if not dsn:
        embedded = EmbeddedPostgres(Path(settings.database.embedded_dir), settings.database.embedded_user)
        dsn = await asyncio.to_thread(embedded.start)
    try:
        conn = await asyncpg.connect(dsn, timeout=settings.database.connect_timeout_s)
        try:
            applied = await migrate(conn)
        finally:
            await conn.close()
    finally:
        if embedded is not None:
            await asyncio.to_thread(embedded.stop)
    print(f"applied migrations: {', '.join(map(str, applied))}" if applied else "schema up to date")
    return 0


def _setup_logging(settings: Settings) -> None:
    logging.basicConfig(
        level=settings.log.level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
