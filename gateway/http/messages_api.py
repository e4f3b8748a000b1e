"""``POST /v1/messages``: a user sends a text (issue 5, R10, R9).

The sender comes from ``choose_text_sender``, the function behind
``/v1/numbers/{id}/senders``. The message is committed as ``queued`` before
the provider is called, keyed by the client's ``Idempotency-Key``, so a
retried request returns the first one's message and never sends twice.
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from gateway.domain.billing import text_segments
from gateway.domain.outbound import choose_text_sender
from gateway.domain.phone import to_e164
from gateway.http.auth import principal
from gateway.http.deps import deps
from gateway.http.models import MessageOut
from gateway.http.openapi import body
from gateway.http.problems import problem
from gateway.http.responses import forbidden, json_row
from gateway.http.routes import API
from gateway.http.validation import field_error
from gateway.providers import SendFailed, Sent
from gateway.store import outbound
from gateway.store.crm import may_use
from gateway.store.group_commit import DATA_REFUSED
from gateway.store.index_queries import fetch_account_numbers, fetch_user

log = logging.getLogger(__name__)


@API.op(
    "POST",
    "/v1/messages",
    "Send a text (R10 picks or checks the sender); Idempotency-Key honoured",
    body=MessageOut,
    ok=201,
    errors=(403, 422, 502),
)
async def send_message(request: web.Request) -> web.Response:
    who = principal(request)
    message = await body(request, MessageOut)
    key = request.headers.get("Idempotency-Key")
    if key is not None and not 1 <= len(key) <= 200:
        raise field_error("Idempotency-Key", "must be 1-200 characters", status=400)
    to = to_e164(message.to)
    if to is None:
        raise field_error("to", "is not a phone number")
    if message.kind == "auto" and message.sender is not None:
        raise field_error("from", "auto texts use the Sender ID rules (R10); omit from")
    async with deps(request).pool.acquire() as conn:
        user = await fetch_user(conn, who.user_id)
        numbers = await fetch_account_numbers(conn, who.account_id)
        assert user is not None
        requested = None
        if message.sender is not None:
            wanted = to_e164(message.sender)
            requested = next((n for n in numbers if n.e164 == wanted), None)
            if requested is None:
                return forbidden("from is not a number of this account")
        chosen = choose_text_sender(user, numbers, message.kind, requested)
        if chosen.number is None:
            return forbidden(chosen.why)
        number = chosen.number
        segments = text_segments(message.body)
        at = datetime.now(UTC)
        if not await may_use(conn, who.account_id, who.user_id, "text_segments", segments, at):
            return forbidden("over the package's text allowance, and this account blocks over-quota use")
        row, claimed = await outbound.claim(
            conn,
            number=number,
            user_id=who.user_id,
            to_e164=to,
            body=message.body,
            segments=segments,
            idempotency_key=key,
            fingerprint=_fingerprint(to, message.body, message.kind, number.e164) if key else None,
            local_id=f"local:{uuid.uuid4()}",
        )
    if claimed == "conflict":  # as the IETF Idempotency-Key draft and Stripe answer it
        raise field_error("Idempotency-Key", "was already used for a different request", status=422)
    if claimed == "replay":
        response = web.json_response(_message(row), status=200)
        response.headers["Idempotent-Replayed"] = "true"
        return response
    sent: Sent | None = None
    failure: SendFailed | None = None
    try:
        sent = await deps(request).providers.send(
            number.provider,
            number.e164,
            to,
            message.body,
            deps(request).providers.status_url(number.provider),
        )
    except SendFailed as exc:
        failure = exc
    outcome = outbound.Outcome(
        message_id=row["id"],
        number=number,
        user_id=who.user_id,
        to_e164=to,
        segments=segments,
        at=at,
        sent=(sent.provider_message_id, sent.status) if sent is not None else None,
        error_code=(failure.code or failure.detail) if failure is not None else "",
    )
    try:
        row = await deps(request).send_outcomes.record(deps(request).index(), outcome)
    except DATA_REFUSED as exc:
        # The provider took the text but answered what Postgres refuses (an id
        # past 200 characters): the provider's fault, not the client's, never a 500.
        log.warning("outcome of message %s not recorded: %s", row["id"], exc)
        return problem(
            502, "Text not recorded", f"the provider's answer could not be recorded: {type(exc).__name__}"
        )
    if failure is not None:
        status = 422 if failure.client_error else 502
        return problem(status, "Text not sent", failure.detail, message=_message(row))
    return web.json_response({**_message(row), "sender_reason": chosen.why}, status=201)


def _fingerprint(to: str, body: str, kind: str, sender: str) -> bytes:
    """What makes two sends the same request under one Idempotency-Key."""
    return hashlib.sha256(json.dumps([to, body, kind, sender]).encode()).digest()


def _message(row: Any) -> dict[str, Any]:
    return json_row(row)
