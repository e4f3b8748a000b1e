"""Offices, users and API keys (issue 4). Every query is scoped by the caller's
account; another account's resource answers 404, exactly like a missing one."""

from __future__ import annotations

from typing import Any

import asyncpg
from aiohttp import web

from gateway.domain.index import User
from gateway.domain.outbound import may_send_from
from gateway.domain.permissions import may_change_fields, may_grant_role, may_manage_user
from gateway.domain.phone import to_e164
from gateway.http.auth import POOL, principal
from gateway.http.models import KeyCreate, OfficeIn, UserCreate, UserPatch
from gateway.http.openapi import body
from gateway.http.problems import problem
from gateway.http.responses import forbidden, json_row, not_found
from gateway.http.routes import API
from gateway.http.validation import field_error, path_id
from gateway.store import Conn, update_columns
from gateway.store.api_keys import Principal, create_key
from gateway.store.credentials import ha1
from gateway.store.index_queries import fetch_account_numbers

SIP_REALM: web.AppKey[str] = web.AppKey("sip_realm", str)

_USER_COLUMNS = (
    "u.id, u.email, u.name, u.role, u.package, u.sender_number_id, u.call_destination,"
    " u.included_minutes, u.included_segments, u.addon_minutes, u.addon_segments, u.sip_username,"
    " u.created_at,"
    " COALESCE((SELECT array_agg(o.office_id ORDER BY o.office_id) FROM user_offices o"
    " WHERE o.user_id = u.id), '{}') AS office_ids"
)


def _manager_only(who: Principal) -> web.Response | None:
    return None if who.manages else forbidden("only an owner or admin does this")


async def _user_row(conn: Conn, account_id: int, user_id: int) -> Any:
    return await conn.fetchrow(
        f"SELECT {_USER_COLUMNS} FROM users u WHERE u.id = $1 AND u.account_id = $2",
        user_id,
        account_id,
    )


# -- offices -------------------------------------------------------------------


@API.op("GET", "/v1/offices", "The account's offices and their members")
async def list_offices(request: web.Request) -> web.Response:
    who = principal(request)
    async with request.app[POOL].acquire() as conn:
        rows = await conn.fetch(
            "SELECT f.id, f.name, f.created_at, COALESCE((SELECT array_agg(m.user_id ORDER BY m.user_id)"
            " FROM user_offices m WHERE m.office_id = f.id), '{}') AS member_ids"
            " FROM offices f WHERE f.account_id = $1 ORDER BY f.id",
            who.account_id,
        )
    return web.json_response({"offices": [json_row(r) for r in rows]})


@API.op("POST", "/v1/offices", "Create an office (owner/admin)", body=OfficeIn, ok=201, errors=(403, 409))
async def create_office(request: web.Request) -> web.Response:
    who = principal(request)
    office = await body(request, OfficeIn)
    if refused := _manager_only(who):
        return refused
    async with request.app[POOL].acquire() as conn:
        try:
            row = await conn.fetchrow(
                "INSERT INTO offices (account_id, name) VALUES ($1, $2) RETURNING id, name, created_at",
                who.account_id,
                office.name,
            )
        except asyncpg.UniqueViolationError:
            return problem(409, "Conflict", f"an office named {office.name!r} exists")
    return web.json_response({**json_row(row), "member_ids": []}, status=201)


@API.op(
    "PATCH",
    "/v1/offices/{office_id}",
    "Rename an office (owner/admin)",
    body=OfficeIn,
    errors=(403, 404, 409),
)
async def rename_office(request: web.Request) -> web.Response:
    who, office_id = principal(request), path_id(request, "office_id")
    office = await body(request, OfficeIn)
    if refused := _manager_only(who):
        return refused
    async with request.app[POOL].acquire() as conn:
        try:
            row = await conn.fetchrow(
                "UPDATE offices SET name = $3 WHERE id = $1 AND account_id = $2"
                " RETURNING id, name, created_at",
                office_id,
                who.account_id,
                office.name,
            )
        except asyncpg.UniqueViolationError:
            return problem(409, "Conflict", f"an office named {office.name!r} exists")
    return not_found("office") if row is None else web.json_response(json_row(row))


@API.op("DELETE", "/v1/offices/{office_id}", "Delete an office (owner/admin)", ok=204, errors=(403, 404, 409))
async def delete_office(request: web.Request) -> web.Response:
    who, office_id = principal(request), path_id(request, "office_id")
    if refused := _manager_only(who):
        return refused
    async with request.app[POOL].acquire() as conn:
        try:
            status = await conn.execute(
                "DELETE FROM offices WHERE id = $1 AND account_id = $2", office_id, who.account_id
            )
        except asyncpg.ForeignKeyViolationError:
            return problem(409, "Conflict", "the office still has a number: release or move it first")
    return not_found("office") if status == "DELETE 0" else web.Response(status=204)


@API.op(
    "PUT",
    "/v1/offices/{office_id}/members/{user_id}",
    "Add a user to an office (owner/admin)",
    ok=204,
    errors=(403, 404),
)
async def add_member(request: web.Request) -> web.Response:
    who = principal(request)
    office_id, user_id = path_id(request, "office_id"), path_id(request, "user_id")
    if refused := _manager_only(who):
        return refused
    async with request.app[POOL].acquire() as conn:
        try:
            await conn.execute(
                "INSERT INTO user_offices (account_id, user_id, office_id) VALUES ($1, $2, $3)"
                " ON CONFLICT DO NOTHING",
                who.account_id,
                user_id,
                office_id,
            )
        except asyncpg.ForeignKeyViolationError:
            return not_found("office or user")
    return web.Response(status=204)


@API.op(
    "DELETE",
    "/v1/offices/{office_id}/members/{user_id}",
    "Remove a user from an office (owner/admin)",
    ok=204,
    errors=(403, 404),
)
async def remove_member(request: web.Request) -> web.Response:
    who = principal(request)
    office_id, user_id = path_id(request, "office_id"), path_id(request, "user_id")
    if refused := _manager_only(who):
        return refused
    async with request.app[POOL].acquire() as conn:
        status = await conn.execute(
            "DELETE FROM user_offices WHERE office_id = $1 AND user_id = $2 AND account_id = $3",
            office_id,
            user_id,
            who.account_id,
        )
    return not_found("membership") if status == "DELETE 0" else web.Response(status=204)


# -- users ---------------------------------------------------------------------


def _destination(value: str | None) -> str | None:
    """A call destination: a sip:/sips: URI as given, or any phone number as E.164."""
    if value is None or (value.startswith(("sip:", "sips:")) and "@" in value and " " not in value):
        return value
    e164 = to_e164(value)
    if e164 is None:
        raise field_error("call_destination", "must be a sip: URI (sip:user@host) or a phone number")
    return e164


@API.op("GET", "/v1/users", "The account's users")
async def list_users(request: web.Request) -> web.Response:
    who = principal(request)
    async with request.app[POOL].acquire() as conn:
        rows = await conn.fetch(
            f"SELECT {_USER_COLUMNS} FROM users u WHERE u.account_id = $1 ORDER BY u.id",
            who.account_id,
        )
    return web.json_response({"users": [json_row(r) for r in rows]})


@API.op("GET", "/v1/users/{user_id}", "One user", errors=(404,))
async def get_user(request: web.Request) -> web.Response:
    who, user_id = principal(request), path_id(request, "user_id")
    async with request.app[POOL].acquire() as conn:
        row = await _user_row(conn, who.account_id, user_id)
    return not_found("user") if row is None else web.json_response(json_row(row))


@API.op(
    "POST",
    "/v1/users",
    "Create a user (owner: admins and agents; admin: agents)",
    body=UserCreate,
    ok=201,
    errors=(403, 409),
)
async def create_user(request: web.Request) -> web.Response:
    who = principal(request)
    new = await body(request, UserCreate)
    if refused := _manager_only(who) or (
        forbidden(reason) if (reason := may_grant_role(who.role, new.role)) else None
    ):
        return refused
    destination = _destination(new.call_destination)
    async with request.app[POOL].acquire() as conn, conn.transaction():
        try:
            user_id = await conn.fetchval(
                "INSERT INTO users (account_id, email, name, role, package, call_destination,"
                " included_minutes, included_segments, addon_minutes, addon_segments)"
                " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING id",
                who.account_id,
                new.email,
                new.name,
                new.role,
                new.package,
                destination,
                new.included_minutes,
                new.included_segments,
                new.addon_minutes,
                new.addon_segments,
            )
        except asyncpg.UniqueViolationError:
            return problem(409, "Conflict", f"a user with email {new.email!r} exists")
        try:
            await conn.executemany(
                "INSERT INTO user_offices (account_id, user_id, office_id) VALUES ($1, $2, $3)"
                " ON CONFLICT DO NOTHING",
                [(who.account_id, user_id, office) for office in new.office_ids],
            )
        except asyncpg.ForeignKeyViolationError:
            raise field_error("office_ids", "names an office that is not in this account") from None
        row = await _user_row(conn, who.account_id, user_id)
    return web.json_response(json_row(row), status=201)


@API.op(
    "PATCH",
    "/v1/users/{user_id}",
    "Change a user (self: profile; owner/admin: also package, role, allowances)",
    body=UserPatch,
    errors=(403, 404, 409),
)
async def patch_user(request: web.Request) -> web.Response:
    who, user_id = principal(request), path_id(request, "user_id")
    patch = await body(request, UserPatch)
    changes = patch.model_dump(exclude_unset=True)
    async with request.app[POOL].acquire() as conn, conn.transaction():
        current = await _user_row(conn, who.account_id, user_id)
        if current is None:
            return not_found("user")
        reason = (
            may_manage_user(who.user_id, who.role, user_id, current["role"])
            or may_change_fields(who.user_id, who.role, user_id, set(changes))
            or (may_grant_role(who.role, changes["role"]) if changes.get("role") else None)
        )
        if reason:
            return forbidden(reason)
        if "call_destination" in changes:
            changes["call_destination"] = _destination(changes["call_destination"])
        await _sip_credentials(changes, current["sip_username"], request.app[SIP_REALM])
        package = changes.get("package", current["package"])
        if package != "upgraded" and await conn.fetchval(
            "SELECT 1 FROM numbers WHERE owner_user_id = $1 AND kind = 'personal'", user_id
        ):
            return problem(
                409, "Conflict", "the user has a personal number, which needs upgraded: release it first"
            )
        sender = changes.get("sender_number_id", current["sender_number_id"])
        if changes.get("sender_number_id") is not None or ("package" in changes and sender is not None):
            await _check_sender(conn, who.account_id, current, package, sender)
        try:
            await update_columns(conn, "users", user_id, who.account_id, changes)
        except asyncpg.UniqueViolationError:
            # Digest finds a device by username alone in the one realm, so names
            # are unique gateway-wide; the answer never says who holds one.
            raise field_error("sip_username", "is taken; choose another", status=409) from None
        row = await _user_row(conn, who.account_id, user_id)
    return web.json_response(json_row(row))


async def _sip_credentials(changes: dict[str, Any], current_username: str | None, realm: str) -> None:
    """Replace a sent password by its HA1; a new username needs the password too."""
    password = changes.pop("sip_password", None)
    username = changes.get("sip_username", current_username)
    if "sip_username" in changes and password is None and changes["sip_username"] is not None:
        raise field_error("sip_password", "is required with a new sip_username (only its HA1 is kept)")
    if password is not None:
        if username is None:
            raise field_error("sip_username", "is required to set a SIP password")
        # RFC 2617/8760 digest: registrars keep HA1 = H(user:realm:password) per algorithm,
        # never the password.
        changes["sip_ha1"] = ha1(username, realm, password)
        changes["sip_ha1_sha256"] = ha1(username, realm, password, "SHA-256")
    elif changes.get("sip_username", "") is None:
        changes["sip_ha1"] = None
        changes["sip_ha1_sha256"] = None


async def _check_sender(conn: Conn, account_id: int, current: Any, package: str, sender: int | None) -> None:
    """R10: a Sender ID to Display must be a number the user may send from."""
    if sender is None:
        return
    numbers = {n.id: n for n in await fetch_account_numbers(conn, account_id)}
    number = numbers.get(sender)
    if number is None:
        raise field_error("sender_number_id", "names no number of this account")
    user = User(
        current["id"],
        account_id,
        current["role"],
        package,  # type: ignore[arg-type]  # validated by UserPatch or read from the row
        frozenset(current["office_ids"]),
        current["call_destination"],
        sender,
    )
    if reason := may_send_from(user, number):
        raise field_error("sender_number_id", reason)


@API.op(
    "DELETE",
    "/v1/users/{user_id}",
    "Delete a user (owner/admin, below their own role)",
    ok=204,
    errors=(403, 404, 409),
)
async def delete_user(request: web.Request) -> web.Response:
    who, user_id = principal(request), path_id(request, "user_id")
    if user_id == who.user_id:
        return forbidden("nobody deletes themselves")
    async with request.app[POOL].acquire() as conn:
        current = await _user_row(conn, who.account_id, user_id)
        if current is None:
            return not_found("user")
        if reason := may_manage_user(who.user_id, who.role, user_id, current["role"]):
            return forbidden(reason)
        try:
            await conn.execute("DELETE FROM users WHERE id = $1 AND account_id = $2", user_id, who.account_id)
        except asyncpg.ForeignKeyViolationError:
            return problem(
                409,
                "Conflict",
                "the user still owns leads, a personal number or usage history: reassign or release first",
            )
    return web.Response(status=204)


# -- API keys ------------------------------------------------------------------


async def _may_handle_keys_of(conn: Conn, who: Principal, user_id: int) -> web.Response | None:
    if user_id == who.user_id:
        return None
    target = await conn.fetchval(
        "SELECT role FROM users WHERE id = $1 AND account_id = $2", user_id, who.account_id
    )
    if target is None:
        return not_found("user")
    reason = may_manage_user(who.user_id, who.role, user_id, target)
    return forbidden(reason) if reason else None


@API.op(
    "POST",
    "/v1/users/{user_id}/api-keys",
    "Create an API key, shown once",
    body=KeyCreate,
    ok=201,
    errors=(403, 404),
)
async def create_api_key(request: web.Request) -> web.Response:
    who, user_id = principal(request), path_id(request, "user_id")
    options = await body(request, KeyCreate)
    async with request.app[POOL].acquire() as conn:
        if refused := await _may_handle_keys_of(conn, who, user_id):
            return refused
        key = await create_key(conn, who.account_id, user_id, options.label)
        key_id = await conn.fetchval("SELECT id FROM api_keys WHERE prefix = $1", key.split("_")[1])
    return web.json_response({"id": key_id, "key": key, "label": options.label}, status=201)


@API.op(
    "GET", "/v1/users/{user_id}/api-keys", "A user's API keys (never the keys themselves)", errors=(403, 404)
)
async def list_api_keys(request: web.Request) -> web.Response:
    who, user_id = principal(request), path_id(request, "user_id")
    async with request.app[POOL].acquire() as conn:
        if refused := await _may_handle_keys_of(conn, who, user_id):
            return refused
        rows = await conn.fetch(
            "SELECT id, prefix, label, created_at, last_used_at, revoked_at FROM api_keys"
            " WHERE user_id = $1 AND account_id = $2 ORDER BY id",
            user_id,
            who.account_id,
        )
    return web.json_response({"api_keys": [json_row(r) for r in rows]})


@API.op("DELETE", "/v1/api-keys/{key_id}", "Revoke an API key", ok=204, errors=(403, 404))
async def revoke_api_key(request: web.Request) -> web.Response:
    who, key_id = principal(request), path_id(request, "key_id")
    async with request.app[POOL].acquire() as conn:
        owner = await conn.fetchval(
            "SELECT user_id FROM api_keys WHERE id = $1 AND account_id = $2", key_id, who.account_id
        )
        if owner is None:
            return not_found("API key")
        if refused := await _may_handle_keys_of(conn, who, owner):
            return refused
        await conn.execute(
            "UPDATE api_keys SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL", key_id
        )
    return web.Response(status=204)
