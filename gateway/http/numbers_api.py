"""Number endpoints (issue 4): list, settings (R4, R12), senders (R10), text codes (R14).

Reads come from Postgres, not the routing index, so an answer reflects every
committed change, even one the index will see a few milliseconds later.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

from aiohttp import web

from gateway.domain.hours import format_hours, parse_hours
from gateway.domain.index import Number, User
from gateway.domain.number_policy import (
    NUMBER_MONTHLY_CENTS,
    UnknownCallerSetup,
    may_buy_number,
    may_edit_number,
    may_edit_number_settings,
    may_use_for_text_codes,
    office_route_problem,
    purchase_defaults,
    unknown_caller_problem,
)
from gateway.domain.outbound import choose_text_sender, may_send_from
from gateway.domain.phone import to_e164
from gateway.http.auth import principal
from gateway.http.deps import deps
from gateway.http.models import NumberPurchase, NumberSettings, SendersQuery, TextCode
from gateway.http.openapi import body, query
from gateway.http.problems import problem
from gateway.http.responses import forbidden, not_found
from gateway.http.routes import API
from gateway.http.validation import field_error, path_id
from gateway.store import Conn, Duplicate, Referenced, Refused, purchases, update_columns
from gateway.store import numbers as number_store
from gateway.store.index_queries import (
    fetch_account_numbers,
    fetch_account_users,
    fetch_number,
    fetch_office_members,
    fetch_user,
)


def number_json(number: Number, users: dict[int, User] | None = None) -> dict[str, Any]:
    """A number as the API shows it; with the account's ``users``, also why
    it cannot ring anyone for an unknown caller (issue 15, item 7), or null."""
    data = asdict(number)
    data["route_user_ids"] = list(number.route_user_ids)
    data["unknown_step_timeout_s"] = data.pop("step_timeout_s")
    data["business_hours"] = format_hours(number.hours)
    data["after_hours_user_ids"] = list(number.after_hours_user_ids)
    del data["hours"]
    if users is not None:
        data["unknown_caller_problem"] = unknown_caller_problem(number, users)
    return data


def _dial_target(raw: str, field: str) -> str:
    """A sip: URI as given, or any phone format as E.164 (the outbound trunk dials it)."""
    if raw.lower().startswith(("sip:", "sips:")):
        return raw
    e164 = to_e164(raw)
    if e164 is None:
        raise field_error(field, "must be a sip: URI or a phone number")
    return e164


def _business_hours(raw: dict[str, Any] | None) -> str | None:
    """Validated and stored in its canonical form (JSON text for jsonb)."""
    if raw is None:
        return None
    try:
        return json.dumps(format_hours(parse_hours(raw)))
    except (ValueError, TypeError) as exc:
        raise field_error("business_hours", f"is not a schedule ({exc})") from None


async def _users(conn: Conn, account_id: int) -> dict[int, User]:
    return {user.id: user for user in await fetch_account_users(conn, account_id)}


async def _number_of_account(conn: Conn, account_id: int, number_id: int) -> Number | None:
    number = await fetch_number(conn, number_id)
    return number if number is not None and number.account_id == account_id else None


@API.op("GET", "/v1/numbers", "The account's numbers and their settings")
async def list_numbers(request: web.Request) -> web.Response:
    """Two round trips: the numbers, and the users their routes name."""
    who = principal(request)
    async with deps(request).pool.acquire() as conn:
        numbers = await fetch_account_numbers(conn, who.account_id)
        users = await _users(conn, who.account_id)
    return web.json_response({"numbers": [number_json(n, users) for n in numbers]})


@API.op("GET", "/v1/numbers/{number_id}", "One number", errors=(404,))
async def get_number(request: web.Request) -> web.Response:
    who, number_id = principal(request), path_id(request, "number_id")
    async with deps(request).pool.acquire() as conn:
        number = await _number_of_account(conn, who.account_id, number_id)
        users = await _users(conn, who.account_id)
    if number is None:
        return not_found("number")
    return web.json_response(number_json(number, users))


@API.op(
    "PATCH",
    "/v1/numbers/{number_id}",
    "Change a number's settings (owner/admin, R12)",
    body=NumberSettings,
    errors=(403, 404, 409),
)
async def patch_number(request: web.Request) -> web.Response:
    """One transaction: the row, and the route's users when given."""
    who, number_id = principal(request), path_id(request, "number_id")
    settings = await body(request, NumberSettings)
    refused = may_edit_number_settings(who.role)
    if refused:
        return forbidden(refused)
    changes = settings.model_dump(exclude_unset=True)
    route_users = changes.pop("route_user_ids", None)
    if route_users is not None and len(set(route_users)) != len(route_users):
        raise field_error("route_user_ids", "lists a user twice")
    async with deps(request).pool.acquire() as conn, conn.transaction():
        number = await _number_of_account(conn, who.account_id, number_id)
        if number is None:
            return not_found("number")
        if number.kind == "office":  # "managed by the Office Owner/Admin" (issue 15, item 5)
            editor = await fetch_user(conn, who.user_id)
            refused = may_edit_number(editor, number) if editor is not None else "unknown user"
            if refused:
                return forbidden(refused)
            if route_users is not None and number.office_id is not None:
                members = await fetch_office_members(conn, who.account_id, number.office_id)
                outside = office_route_problem(number.kind, route_users, members)
                if outside:
                    raise field_error("route_user_ids", outside)
        for field in ("overflow_target", "after_hours_target", "fallback_target"):
            if changes.get(field) is not None:
                changes[field] = _dial_target(changes[field], field)
        if "business_hours" in changes:
            changes["business_hours"] = _business_hours(changes["business_hours"])
        if changes.get("after_hours_user_ids"):
            account_users = await _users(conn, who.account_id)
            strangers = [u for u in changes["after_hours_user_ids"] if u not in account_users]
            if strangers:
                raise field_error("after_hours_user_ids", f"{strangers} are not users of this account")
        if "office_id" in changes and number.kind != "company" and changes["office_id"] != number.office_id:
            raise field_error("office_id", "only a company number is assigned to a group")
        route = changes.get("unknown_route", number.unknown_route)
        users = route_users if route_users is not None else list(number.route_user_ids)
        if route == "user" and len(users) > 1:
            raise field_error("route_user_ids", "the user route rings exactly one user")
        try:
            async with conn.transaction():
                await update_columns(conn, "numbers", number_id, who.account_id, changes)
        except Duplicate as exc:
            if exc.constraint_name == "numbers_one_company_per_office":
                return problem(
                    409, "Conflict", f"office {changes.get('office_id')} already has a company number"
                )
            raise field_error("bridge", "the account already has a bridge number") from None
        except Referenced:
            raise field_error("office_id", "names no office of this account") from None
        except Refused as exc:
            if exc.constraint_name == "numbers_overflow_needs_target":
                raise field_error("overflow_target", "forward needs an overflow_target") from None
            if exc.constraint_name == "numbers_after_hours_needs_target":
                raise field_error("after_hours_target", "forward needs an after_hours_target") from None
            raise field_error("bridge", "a personal number cannot be the bridge number") from None
        if route_users is not None:
            try:
                await number_store.set_route_users(conn, who.account_id, number_id, route_users)
            except Referenced:
                raise field_error("route_user_ids", "names a user who is not in this account") from None
        updated = await fetch_number(conn, number_id)
        account_users = await _users(conn, who.account_id)
    assert updated is not None
    return web.json_response(number_json(updated, account_users))


@API.op(
    "GET",
    "/v1/numbers/{number_id}/senders",
    "Which number R10 sends a user's text from, and why (the function sending uses)",
    query=SendersQuery,
    errors=(404,),
)
async def senders(request: web.Request) -> web.Response:
    """``kind=manual``: may the user send from this number? ``kind=auto``: the
    number an auto text would use. Two round trips."""
    who, number_id = principal(request), path_id(request, "number_id")
    asked = query(request, SendersQuery)
    user_id = asked.user or who.user_id
    if user_id != who.user_id and not who.manages:
        return not_found("user")
    async with deps(request).pool.acquire() as conn:
        numbers = await fetch_account_numbers(conn, who.account_id)
        user = await fetch_user(conn, user_id)
    this = next((n for n in numbers if n.id == number_id), None)
    if this is None:
        return not_found("number")
    if user is None or user.account_id != who.account_id:
        return not_found("user")
    chosen = choose_text_sender(user, numbers, asked.kind, requested=this if asked.kind == "manual" else None)
    return web.json_response(
        {
            "user_id": user.id,
            "kind": asked.kind,
            "sender": number_json(chosen.number) if chosen.number else None,
            "why": chosen.why,
            "this_number_allowed": may_send_from(user, this) is None,
        }
    )


@API.op(
    "POST",
    "/v1/numbers/{number_id}/text-codes",
    "Attach a campaign keyword or postcard code (personal numbers only, R14)",
    body=TextCode,
    ok=201,
    errors=(403, 404, 409),
)
async def create_text_code(request: web.Request) -> web.Response:
    who, number_id = principal(request), path_id(request, "number_id")
    code = await body(request, TextCode)
    async with deps(request).pool.acquire() as conn:
        number = await _number_of_account(conn, who.account_id, number_id)
        if number is None:
            return not_found("number")
        refused = may_use_for_text_codes(number)
        if refused:
            return problem(409, "Conflict", refused)
        if number.owner_user_id != who.user_id and not who.manages:
            return forbidden("only the number's owner, an owner or an admin adds text codes")
        try:
            code_id = await number_store.add_text_code(
                conn, who.account_id, number_id, code.keyword, code.purpose
            )
        except Duplicate:
            return problem(409, "Conflict", f"keyword {code.keyword!r} is already on this number")
    return web.json_response(
        {"id": code_id, "number_id": number_id, "keyword": code.keyword, "purpose": code.purpose}, status=201
    )


@API.op(
    "POST",
    "/v1/numbers/purchase",
    "Buy a number (owner, Enterprise plan; one company number per office, R13)",
    body=NumberPurchase,
    ok=201,
    errors=(403, 409),
)
async def purchase_number(request: web.Request) -> web.Response:
    """One transaction: inventory claim, number, 2700-cent monthly charge."""
    who = principal(request)
    order = await body(request, NumberPurchase)
    if order.kind == "personal" and order.owner_user_id is None:
        raise field_error("owner_user_id", "a personal number needs its owner")
    if order.kind != "personal" and order.owner_user_id is not None:
        raise field_error("owner_user_id", "only a personal number has an owner")
    if order.kind == "personal" and order.office_id is not None:
        raise field_error("office_id", "a personal number belongs to no office")
    async with deps(request).pool.acquire() as conn:
        plan = await number_store.account_plan(conn, who.account_id)
        if order.office_id is not None and not await number_store.office_exists(
            conn, who.account_id, order.office_id
        ):
            raise field_error("office_id", "names no office of this account")
        if order.owner_user_id is not None:
            # Checked here, scoped to the account, so another account's user id
            # is answered exactly like a missing one (no existence probe).
            package = await number_store.user_package(conn, who.account_id, order.owner_user_id)
            if package is None:
                raise field_error("owner_user_id", "names no user of this account")
            if package != "upgraded":
                raise field_error("owner_user_id", "a personal number needs the upgraded package")
        owned = await fetch_account_numbers(conn, who.account_id)
        refused = may_buy_number(who.role, plan, order.kind, order.office_id, owned)
        if refused is not None:
            if refused.kind == "invalid":
                raise field_error("office_id", refused.reason)
            status, title = (403, "Forbidden") if refused.kind == "forbidden" else (409, "Conflict")
            return problem(status, title, refused.reason)
        setup = await _purchase_setup(conn, who.account_id, who.user_id, order)
        try:
            bought = await purchases.buy(
                conn,
                deps(request).inventory,
                account_id=who.account_id,
                kind=order.kind,
                office_id=order.office_id,
                owner_user_id=order.owner_user_id,
                description=order.description,
                setup=setup,
                tag=order.tag,
            )
        except purchases.InventoryEmpty as empty:
            return problem(409, "Conflict", str(empty))
        except Referenced as exc:
            field = "route_user_ids" if "route_targets" in str(exc) else "owner_user_id"
            raise field_error(field, "names no user of this account") from None
        except Refused as exc:
            raise field_error("owner_user_id", str(exc)) from None
        except Duplicate:  # a concurrent purchase won the office, or the owner has one
            return problem(409, "Conflict", "that office or user already has such a number")
        number = await fetch_number(conn, bought.number_id)
        users = await _users(conn, who.account_id)
    assert number is not None
    return web.json_response(
        {
            **number_json(number, users),
            "charge": {"id": bought.charge_id, "amount_cents": NUMBER_MONTHLY_CENTS, "period": "monthly"},
        },
        status=201,
    )


async def _purchase_setup(
    conn: Conn, account_id: int, buyer_id: int, order: NumberPurchase
) -> UnknownCallerSetup:
    """The order's unknown-caller settings, each defaulted when not given
    (issue 15, item 7); an office number's route keeps to its office (item 5)."""
    members = (
        await fetch_office_members(conn, account_id, order.office_id)
        if order.kind == "office" and order.office_id is not None
        else set()
    )
    default = purchase_defaults(order.kind, buyer_id, members)
    route_users = tuple(order.route_user_ids) if order.route_user_ids is not None else default.route_user_ids
    if len(set(route_users)) != len(route_users):
        raise field_error("route_user_ids", "lists a user twice")
    unknown_route = order.unknown_route or default.unknown_route
    if unknown_route == "user" and len(route_users) > 1:
        raise field_error("route_user_ids", "the user route rings exactly one user")
    if order.route_user_ids is not None and (
        outside := office_route_problem(order.kind, route_users, members)
    ):
        raise field_error("route_user_ids", outside)
    return UnknownCallerSetup(unknown_route, route_users, order.source or default.source)


@API.op(
    "DELETE",
    "/v1/numbers/{number_id}",
    "Release a number to inventory and end its charge (owner)",
    ok=204,
    errors=(403, 404),
)
async def release_number(request: web.Request) -> web.Response:
    who, number_id = principal(request), path_id(request, "number_id")
    if who.role != "owner":
        return forbidden("only the account owner releases numbers")
    async with deps(request).pool.acquire() as conn:
        released = await purchases.release(conn, deps(request).inventory, who.account_id, number_id)
    if not released:
        return not_found("number")
    return web.Response(status=204)
