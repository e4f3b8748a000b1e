"""The account itself (issue 15, item 6): its plan and its over-quota mode.

R9: usage beyond a user's allowance is recorded and flagged (``record``, the
default) or, with ``block``, outbound sends that would exceed it are refused
(inbound calls and texts never are: nothing may be lost). Only the owner, who
pays, changes it.
"""

from __future__ import annotations

from aiohttp import web

from gateway.http.auth import principal
from gateway.http.deps import deps
from gateway.http.models import AccountPatch
from gateway.http.openapi import body
from gateway.http.responses import forbidden, json_row, not_found
from gateway.http.routes import API
from gateway.store import admin


@API.op("GET", "/v1/account", "The caller's account: plan and over-quota mode (R9)")
async def get_account(request: web.Request) -> web.Response:
    """One indexed read."""
    who = principal(request)
    async with deps(request).pool.acquire() as conn:
        row = await admin.account(conn, who.account_id)
    if row is None:
        return not_found("account")
    return web.json_response(json_row(row))


@API.op(
    "PATCH",
    "/v1/account",
    "Change the account's over-quota mode (owner): record or block usage beyond allowances",
    body=AccountPatch,
    errors=(403,),
)
async def patch_account(request: web.Request) -> web.Response:
    """One statement."""
    who = principal(request)
    change = await body(request, AccountPatch)
    if who.role != "owner":
        return forbidden("only the account owner changes its over-quota mode")
    async with deps(request).pool.acquire() as conn:
        row = await admin.set_over_quota(conn, who.account_id, change.over_quota)
    if row is None:
        return not_found("account")
    return web.json_response(json_row(row))


@API.op("GET", "/v1/me", "The caller: their user, role and account (what a console shows after sign-in)")
async def get_me(request: web.Request) -> web.Response:
    """One indexed read."""
    who = principal(request)
    async with deps(request).pool.acquire() as conn:
        row = await admin.user_row(conn, who.account_id, who.user_id)
    if row is None:
        return not_found("user")
    return web.json_response({**json_row(row), "user_id": who.user_id, "account_id": who.account_id})
