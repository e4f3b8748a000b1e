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
from gateway.domain.phone import to_e164
from gateway.store.api_keys import create_account
from gateway.store.embedded import EmbeddedPostgres, EmbeddedPostgresError
from gateway.store.migrations import MigrationChanged, migrate
from gateway.store.purchases import add_to_inventory

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
    account = commands.add_parser("account", help="manage accounts").add_subparsers(
        dest="verb", required=True
    )
    create = account.add_parser("create", help="create an account and print its owner's API key")
    create.add_argument("--name", required=True)
    create.add_argument("--plan", choices=["standard", "enterprise"], default="standard")
    create.add_argument("--owner-email", required=True)
    inventory = commands.add_parser("inventory", help="numbers available to buy").add_subparsers(
        dest="verb", required=True
    )
    add = inventory.add_parser("add", help="add E.164 numbers to the purchase inventory")
    add.add_argument("numbers", nargs="+", metavar="E164")
    add.add_argument("--provider", choices=["twilio", "telnyx", "sip"], default="twilio")
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
        return _run(lambda: _with_database(settings, _migrate_only))
    if args.command == "inventory":
        return _run(lambda: _with_database(settings, lambda conn: _add_inventory(conn, args)))
    if args.command == "account":
        return _run(lambda: _with_database(settings, lambda conn: _create_account(conn, args)))
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
    except MigrationChanged as exc:
        print(f"gateway: database.migrations: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
        print(f"gateway: {type(exc).__name__}: {exc}", file=sys.stderr)
    except KeyboardInterrupt:
        return 130
    return EXIT_FAILURE


async def _with_database(settings: Settings, work: Callable[[asyncpg.Connection], Awaitable[int]]) -> int:
    """Run ``work`` on a migrated database: the configured one, or the embedded
    cluster started for the occasion and stopped afterwards."""
    embedded = None
    dsn = settings.database.url
    if not dsn:
        embedded = EmbeddedPostgres(Path(settings.database.embedded_dir), settings.database.embedded_user)
        dsn = await asyncio.to_thread(embedded.start)
    try:
        conn = await asyncpg.connect(dsn, timeout=settings.database.connect_timeout_s)
        try:
            return await work(conn)
        finally:
            await conn.close()
    finally:
        if embedded is not None:
            await asyncio.to_thread(embedded.stop)


async def _migrate_only(conn: asyncpg.Connection) -> int:
    applied = await migrate(conn)
    print(f"applied migrations: {', '.join(map(str, applied))}" if applied else "schema up to date")
    return 0


async def _create_account(conn: asyncpg.Connection, args: argparse.Namespace) -> int:
    await migrate(conn)
    try:
        account_id, owner_id, key = await create_account(conn, args.name, args.plan, args.owner_email)
    except asyncpg.IntegrityConstraintViolationError as exc:
        print(f"gateway: account not created: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    print(f"account {account_id} created; owner user {owner_id} <{args.owner_email}>")
    print(f"owner API key (shown once, store it now): {key}")
    return 0


async def _add_inventory(conn: asyncpg.Connection, args: argparse.Namespace) -> int:
    await migrate(conn)
    numbers = [to_e164(raw) for raw in args.numbers]
    bad = [raw for raw, e164 in zip(args.numbers, numbers, strict=True) if e164 is None]
    if bad:
        print(f"gateway: not phone numbers: {', '.join(bad)}", file=sys.stderr)
        return EXIT_FAILURE
    added = await add_to_inventory(conn, [n for n in numbers if n], args.provider)
    print(f"added {added} of {len(numbers)} numbers to the inventory ({args.provider})")
    return 0


def _setup_logging(settings: Settings) -> None:
    logging.basicConfig(
        level=settings.log.level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
