"""Offices, users and API keys (issue 4). Every query is scoped by the caller's
account; another account's resource answers 404, exactly like a missing one."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from gateway.domain.index import User
from gateway.domain.outbound import may_send_from
from gateway.domain.permissions import may_change_fields, may_grant_role, may_manage_user
from gateway.domain.phone import to_e164
from gateway.http.auth import principal
from gateway.http.deps import deps
from gateway.http.models import KeyCreate, OfficeIn, UserCreate, UserPatch
from gateway.http.openapi import body
from gateway.http.problems import problem
from gateway.http.responses import forbidden, json_row, not_found
from gateway.http.routes import API
from gateway.http.validation import field_error, path_id
from gateway.store import Conn, Duplicate, Referenced, admin, update_columns
from gateway.store.api_keys import Principal, create_key
from gateway.store.credentials import ha1
from gateway.store.index_queries import fetch_account_numbers

# Fields of UserCreate stored as they are (offices and the destination are not).
_NEW_USER_COLUMNS = {
    "email",
    "name",
    "role",
    "package",
    "included_minutes",
    "included_segments",
    "addon_minutes",
    "addon_segments",
}


def _manager_only(who: Principal) -> web.Response | None:
    return None if who.manages else forbidden("only an owner or admin does this")


# -- offices -------------------------------------------------------------------


@API.op("GET", "/v1/offices", "The account's offices and their members")
async def list_offices(request: web.Request) -> web.Response:
    who = principal(request)
    async with deps(request).pool.acquire() as conn:
        rows = await admin.list_offices(conn, who.account_id)
    return web.json_response({"offices": [json_row(r) for r in rows]})


@API.op("POST", "/v1/offices", "Create an office (owner/admin)", body=OfficeIn, ok=201, errors=(403, 409))
async def create_office(request: web.Request) -> web.Response:
    who = principal(request)
    office = await body(request, OfficeIn)
    if refused := _manager_only(who):
        return refused
    async with deps(request).pool.acquire() as conn:
        try:
            row = await admin.create_office(conn, who.account_id, office.name)
        except Duplicate:
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
    async with deps(request).pool.acquire() as conn:
        try:
            row = await admin.rename_office(conn, who.account_id, office_id, office.name)
        except Duplicate:
            return problem(409, "Conflict", f"an office named {office.name!r} exists")
    return not_found("office") if row is None else web.json_response(json_row(row))


@API.op("DELETE", "/v1/offices/{office_id}", "Delete an office (owner/admin)", ok=204, errors=(403, 404, 409))
async def delete_office(request: web.Request) -> web.Response:
    who, office_id = principal(request), path_id(request, "office_id")
    if refused := _manager_only(who):
        return refused
    async with deps(request).pool.acquire() as conn:
        try:
            deleted = await admin.delete_office(conn, who.account_id, office_id)
        except Referenced:
            return problem(409, "Conflict", "the office still has a number: release or move it first")
    return web.Response(status=204) if deleted else not_found("office")


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
    async with deps(request).pool.acquire() as conn:
        try:
            await admin.add_members(conn, who.account_id, (office_id,), user_id)
        except Referenced:
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
    async with deps(request).pool.acquire() as conn:
        removed = await admin.remove_member(conn, who.account_id, office_id, user_id)
    return web.Response(status=204) if removed else not_found("membership")


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
    async with deps(request).pool.acquire() as conn:
        rows = await admin.list_users(conn, who.account_id)
    return web.json_response({"users": [json_row(r) for r in rows]})


@API.op("GET", "/v1/users/{user_id}", "One user", errors=(404,))
async def get_user(request: web.Request) -> web.Response:
    who, user_id = principal(request), path_id(request, "user_id")
    async with deps(request).pool.acquire() as conn:
        row = await admin.user_row(conn, who.account_id, user_id)
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
    async with deps(request).pool.acquire() as conn, conn.transaction():
        try:
            user_id = await admin.create_user(
                conn,
                who.account_id,
                {
                    **new.model_dump(include=_NEW_USER_COLUMNS),
                    "call_destination": destination,
                },
            )
        except Duplicate:
            return problem(409, "Conflict", f"a user with email {new.email!r} exists")
        try:
            await admin.add_members(conn, who.account_id, new.office_ids, user_id)
        except Referenced:
            raise field_error("office_ids", "names an office that is not in this account") from None
        row = await admin.user_row(conn, who.account_id, user_id)
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
    async with deps(request).pool.acquire() as conn, conn.transaction():
        current = await admin.user_row(conn, who.account_id, user_id)
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
        await _sip_credentials(changes, current["sip_username"], deps(request).sip_realm)
        package = changes.get("package", current["package"])
        if package != "upgraded" and await admin.has_personal_number(conn, user_id):
            return problem(
                409, "Conflict", "the user has a personal number, which needs upgraded: release it first"
            )
        sender = changes.get("sender_number_id", current["sender_number_id"])
        if changes.get("sender_number_id") is not None or ("package" in changes and sender is not None):
            await _check_sender(conn, who.account_id, current, package, sender)
        try:
            await update_columns(conn, "users", user_id, who.account_id, changes)
        except Duplicate:
            # Digest finds a device by username alone in the one realm, so names
            # are unique gateway-wide; the answer never says who holds one.
            raise field_error("sip_username", "is taken; choose another", status=409) from None
        row = await admin.user_row(conn, who.account_id, user_id)
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
    async with deps(request).pool.acquire() as conn:
        current = await admin.user_row(conn, who.account_id, user_id)
        if current is None:
            return not_found("user")
        if reason := may_manage_user(who.user_id, who.role, user_id, current["role"]):
            return forbidden(reason)
        try:
            await admin.delete_user(conn, who.account_id, user_id)
        except Referenced:
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
    target = await admin.user_role(conn, who.account_id, user_id)
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
    async with deps(request).pool.acquire() as conn:
        if refused := await _may_handle_keys_of(conn, who, user_id):
            return refused
        key = await create_key(conn, who.account_id, user_id, options.label)
        key_id = await admin.key_id(conn, key.split("_")[1])
    return web.json_response({"id": key_id, "key": key, "label": options.label}, status=201)


@API.op(
    "GET", "/v1/users/{user_id}/api-keys", "A user's API keys (never the keys themselves)", errors=(403, 404)
)
async def list_api_keys(request: web.Request) -> web.Response:
    who, user_id = principal(request), path_id(request, "user_id")
    async with deps(request).pool.acquire() as conn:
        if refused := await _may_handle_keys_of(conn, who, user_id):
            return refused
        rows = await admin.list_keys(conn, who.account_id, user_id)
    return web.json_response({"api_keys": [json_row(r) for r in rows]})


@API.op("DELETE", "/v1/api-keys/{key_id}", "Revoke an API key", ok=204, errors=(403, 404))
async def revoke_api_key(request: web.Request) -> web.Response:
    who, key_id = principal(request), path_id(request, "key_id")
    async with deps(request).pool.acquire() as conn:
        owner = await admin.key_owner(conn, who.account_id, key_id)
        if owner is None:
            return not_found("API key")
        if refused := await _may_handle_keys_of(conn, who, owner):
            return refused
        await admin.revoke_key(conn, key_id)
    return web.Response(status=204)
