"""Lead endpoints (issue 4): CRUD, search by phone, and bulk import through COPY.

Agents create and edit their own leads (they are the primary agent); owners
and admins any lead of the account, and only they delete or import.
"""

from __future__ import annotations

from aiohttp import web

from gateway.domain.phone import to_e164
from gateway.http import lead_import
from gateway.http.auth import principal
from gateway.http.deps import deps
from gateway.http.models import LeadIn, LeadPatch, LeadSearch
from gateway.http.openapi import body, query
from gateway.http.problems import problem
from gateway.http.responses import forbidden, not_found
from gateway.http.routes import API
from gateway.http.validation import field_error, path_id
from gateway.store import Referenced, leads
from gateway.store.api_keys import Principal


def _phones(raw: list[str]) -> tuple[str, ...]:
    normalised: list[str] = []
    for i, value in enumerate(raw):
        e164 = to_e164(value)
        if e164 is None:
            raise field_error(f"phones.{i}", f"{value[:40]!r} is not a phone number")
        if e164 not in normalised:
            normalised.append(e164)
    return tuple(normalised)


def _agent_refusal(who: Principal, agent_id: int) -> web.Response | None:
    if agent_id != who.user_id and not who.manages:
        return forbidden("agents own only leads whose primary agent they are")
    return None


@API.op("POST", "/v1/leads", "Create a lead", body=LeadIn, ok=201, errors=(403,))
async def create_lead(request: web.Request) -> web.Response:
    who = principal(request)
    lead = await body(request, LeadIn)
    agent = lead.primary_agent_id or who.user_id
    if refused := _agent_refusal(who, agent):
        return refused
    row = leads.LeadRow(
        lead.name, agent, lead.source, _phones(lead.phones), tuple(dict.fromkeys(lead.tags)), lead.created_at
    )
    async with deps(request).pool.acquire() as conn:
        try:
            lead_id = await leads.create_lead(conn, who.account_id, row)
        except Referenced:
            raise field_error("primary_agent_id", "names no user of this account") from None
        created = await leads.get_lead(conn, who.account_id, lead_id)
    return web.json_response(created, status=201)


@API.op("GET", "/v1/leads", "Find the account's leads by phone", query=LeadSearch)
async def search_leads(request: web.Request) -> web.Response:
    who = principal(request)
    e164 = to_e164(query(request, LeadSearch).phone)
    if e164 is None:
        raise field_error("phone", "is not a phone number")  # well-formed, but no number: 422
    async with deps(request).pool.acquire() as conn:
        ids = await leads.find_by_phone(conn, who.account_id, e164)
        found = [await leads.get_lead(conn, who.account_id, lead_id) for lead_id in ids]
    return web.json_response({"phone": e164, "leads": found})


@API.op("GET", "/v1/leads/{lead_id}", "One lead with its phones and tags", errors=(404,))
async def get_lead(request: web.Request) -> web.Response:
    who, lead_id = principal(request), path_id(request, "lead_id")
    async with deps(request).pool.acquire() as conn:
        lead = await leads.get_lead(conn, who.account_id, lead_id)
    return not_found("lead") if lead is None else web.json_response(lead)


@API.op(
    "PATCH",
    "/v1/leads/{lead_id}",
    "Change a lead; phones and tags, when sent, replace the old",
    body=LeadPatch,
    errors=(403, 404),
)
async def patch_lead(request: web.Request) -> web.Response:
    who, lead_id = principal(request), path_id(request, "lead_id")
    patch = await body(request, LeadPatch)
    changes = patch.model_dump(exclude_unset=True)
    new_phones, new_tags = changes.pop("phones", None), changes.pop("tags", None)
    phones = _phones(new_phones) if new_phones is not None else None
    tags = tuple(dict.fromkeys(new_tags)) if new_tags is not None else None
    async with deps(request).pool.acquire() as conn:
        current = await leads.get_lead(conn, who.account_id, lead_id)
        if current is None:
            return not_found("lead")
        if refused := _agent_refusal(who, current["primary_agent_id"]) or _agent_refusal(
            who, changes.get("primary_agent_id", current["primary_agent_id"])
        ):
            return refused
        try:
            await leads.update_lead(conn, who.account_id, lead_id, changes, phones, tags)
        except Referenced:
            raise field_error("primary_agent_id", "names no user of this account") from None
        updated = await leads.get_lead(conn, who.account_id, lead_id)
    return web.json_response(updated)


@API.op("DELETE", "/v1/leads/{lead_id}", "Delete a lead (owner/admin)", ok=204, errors=(403, 404))
async def delete_lead(request: web.Request) -> web.Response:
    who, lead_id = principal(request), path_id(request, "lead_id")
    if not who.manages:
        return forbidden("only an owner or admin deletes leads")
    async with deps(request).pool.acquire() as conn:
        deleted = await leads.delete_lead(conn, who.account_id, lead_id)
    return web.Response(status=204) if deleted else not_found("lead")


@API.op(
    "POST",
    "/v1/leads:import",
    "Import leads from CSV or NDJSON: all or nothing (owner/admin)",
    ok=201,
    errors=(400, 403, 413, 415, 422),
    consumes=("text/csv", "application/x-ndjson"),
)
async def import_leads(request: web.Request) -> web.Response:
    """Reads the upload (up to http.max_import_bytes), validates every row, then
    writes them all with COPY in one transaction, or nothing with a per-row report."""
    who = principal(request)
    if not who.manages:
        return forbidden("only an owner or admin imports leads")
    limit = deps(request).max_import_bytes
    if request.content_length is not None and request.content_length > limit:
        return problem(413, "Payload Too Large", f"imports are limited to {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.content.iter_chunked(1 << 16):
        size += len(chunk)
        if size > limit:
            return problem(413, "Payload Too Large", f"imports are limited to {limit} bytes")
        chunks.append(chunk)
    if not size:  # whatever its declared type, an empty upload holds no leads
        raise field_error("body", "is empty; send CSV with a header row, or NDJSON")
    async with deps(request).pool.acquire() as conn:
        agent_ids = await leads.user_ids(conn, who.account_id)
        try:
            rows, errors, count = lead_import.validate(
                lead_import.parse(b"".join(chunks), request.content_type), agent_ids
            )
        except lead_import.ImportRejected as rejected:
            raise field_error(rejected.field, rejected.message, status=rejected.status) from None
        if count:
            return problem(
                422,
                "Import rejected",
                f"{count} invalid field(s); nothing was imported",
                errors=errors,
                error_count=count,
            )
        if not rows:
            raise field_error("body", "has no rows", status=400)
        ids = await leads.import_leads(conn, who.account_id, rows)
    return web.json_response({"imported": len(ids), "first_id": ids[0], "last_id": ids[-1]}, status=201)
