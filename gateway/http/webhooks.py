"""Aggregator webhooks for inbound texts (issue 5): Twilio (form) and Telnyx
(JSON). Each verifies the provider's signature first: a bad one is 403 and
leaves nothing but a metric and a log line. Then it normalises the text and
hands it to the one pipeline, which acknowledges only after commit; if the
database cannot take it, 503 makes the provider redeliver.
"""

from __future__ import annotations

import json
import logging
import re
import time
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from gateway.domain.phone import to_e164
from gateway.http.deps import deps
from gateway.http.problems import problem
from gateway.http.responses import not_found
from gateway.http.routes import API
from gateway.http.signatures import telnyx_valid, twilio_algorithm, twilio_valid
from gateway.http.validation import field_error
from gateway.providers import map_status
from gateway.store import DB_AWAY, texts
from gateway.store.text_batch import DATA_REFUSED, Overloaded

log = logging.getLogger(__name__)

EMPTY_TWIML = '<?xml version="1.0" encoding="UTF-8"?><Response/>'
_DB_DOWN = DB_AWAY
# Twilio signs names and values run together, so a captured webhook can be
# re-cut at a field boundary and still verify (issue 12, item 8). What Twilio
# really sends pins the cuts: its message SIDs are SM/MM + 32 hex digits, and
# a name that is not Twilio's but starts or ends with one of Twilio's is a
# merge. (New Twilio parameters with names of their own still pass.)
TWILIO_SID = re.compile(r"^(SM|MM)[0-9a-f]{32}$")
_TWILIO_PARAMS = frozenset(
    [
        "AccountSid",
        "ApiVersion",
        "Body",
        "ErrorCode",
        "ErrorMessage",
        "From",
        "FromCity",
        "FromCountry",
        "FromState",
        "FromZip",
        "MessageSid",
        "MessageStatus",
        "MessagingServiceSid",
        "NumMedia",
        "NumSegments",
        "ReferralNumMedia",
        "SmsMessageSid",
        "SmsSid",
        "SmsStatus",
        "To",
        "ToCity",
        "ToCountry",
        "ToState",
        "ToZip",
        "ProfileName",
        "WaId",
        "Forwarded",
        "FrequentlyForwarded",
        "ButtonText",
        "ButtonPayload",
        "Latitude",
        "Longitude",
        "Address",
        "Label",
        "ChannelMetadata",
        "RawDlrDoneDate",
    ]
)
_TWILIO_NUMBERED = re.compile(r"^(MediaUrl|MediaContentType)[0-9]{1,2}$")


def _refuse(request: web.Request, provider: str, reason: str, status: int, detail: str) -> web.Response:
    deps(request).metrics.webhook_refused(provider, reason).inc()
    log.warning("%s webhook refused from %s: %s", provider, request.remote, reason)
    return problem(status, "Forbidden" if status == 403 else "Service Unavailable", detail)


def _shed(request: web.Request, provider: str) -> web.Response | None:
    """503 before the body is read while the loop is too far behind (see
    :mod:`gateway.http.load_shed`); None when the request may go on."""
    if not deps(request).loop_lag.overloaded:
        return None
    deps(request).metrics.text_outcome(provider, "overloaded").inc()
    refused = problem(503, "Service Unavailable", "the gateway is behind; redeliver it")
    refused.headers["Retry-After"] = "1"
    return refused


def _redeliver(detail: str) -> web.Response:
    """503 with Retry-After: nothing was acknowledged, so the provider sends it again."""
    response = problem(503, "Service Unavailable", detail)
    response.headers["Retry-After"] = "5"
    return response


def _phone(value: Any, field: str) -> str:
    e164 = to_e164(value) if isinstance(value, str) else None
    if e164 is None:
        raise field_error(field, "is not a phone number", status=400)
    return e164


def _count(fields: dict[str, str], name: str) -> int | None:
    """A Twilio count (NumMedia, NumSegments), or None when absent. ASCII
    digits only ("²" passes str.isdigit), and few enough for an int column."""
    raw = fields.get(name, "")
    if not raw:
        return None
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 6):
        raise field_error(name, "must be a non-negative integer below 1000000", status=400)
    return int(raw)


def _text(body: str) -> str:
    """A text's body as Postgres can keep it: NUL (which no SMS means, and
    Postgres text refuses) is dropped; everything else is kept as sent."""
    return body.replace("\x00", "") if "\x00" in body else body


async def _accept(request: web.Request, text: texts.InboundText) -> texts.Accepted | web.Response:
    metrics = deps(request).metrics
    try:
        accepted = await deps(request).texts.accept(deps(request).index(), text)
    except Overloaded as exc:
        # More waiting than can be written within the provider's budget: say so
        # now, rather than answer after the provider gave up (issue 13).
        metrics.text_outcome(text.provider, "overloaded").inc()
        log.warning("text %s refused: %s", text.provider_message_id, exc)
        refused = problem(503, "Service Unavailable", "too many texts waiting; redeliver it")
        refused.headers["Retry-After"] = "1"
        return refused
    except texts.UnknownNumber:
        metrics.text_outcome(text.provider, "unknown_number").inc()
        return not_found(f"number {text.to_e164} on this gateway")
    except DATA_REFUSED as exc:
        # Never 200 for what is not stored, and never to the outbox, which could
        # not store it either (issue 12, item 2).
        metrics.text_outcome(text.provider, "rejected").inc()
        log.warning("text %s refused by the database: %s", text.provider_message_id, exc)
        return problem(400, "Bad Request", f"the text cannot be stored: {type(exc).__name__}")
    except _DB_DOWN as exc:
        # The database is away: acknowledge once the text is durable in the outbox (issue 7).
        try:
            await deps(request).outbox.add_text(text)
        except OSError as disk:
            metrics.text_outcome(text.provider, "db_unavailable").inc()
            log.warning("text %s not stored (%s; outbox: %s)", text.provider_message_id, exc, disk)
            return _redeliver("the text could not be stored; redeliver it")
        metrics.text_outcome(text.provider, "queued").inc()
        return texts.Accepted(0, duplicate=False, reason="queued")
    outcome = "duplicate" if accepted.duplicate else ("routed" if accepted.recipients else "no_target")
    metrics.text_outcome(text.provider, outcome).inc()
    return accepted


async def _twilio_form(request: web.Request) -> list[tuple[str, str]] | web.Response:
    """The form's pairs if X-Twilio-Signature verifies, else the refusal to send."""
    token = deps(request).twilio_auth_token
    if not token:
        return _refuse(request, "twilio", "not_configured", 503, "the Twilio webhook is not configured")
    params: list[tuple[str, str]] = []  # no body at all: an empty form, which no signature covers
    if request.content_type == "application/x-www-form-urlencoded":
        form = await request.post()
        # A list of pairs, never a dict: repeated names are part of what Twilio signs.
        params = [(name, value) for name, value in form.items() if isinstance(value, str)]
    elif request.body_exists:
        raise field_error("Content-Type", "must be application/x-www-form-urlencoded", status=415)
    url = deps(request).public_base_url.rstrip("/") + request.path_qs
    algorithm = twilio_algorithm(request.headers.get("X-Twilio-Webhooks-Signature-Settings"))
    if not twilio_valid(token, url, params, request.headers.get("X-Twilio-Signature", ""), algorithm):
        return _refuse(request, "twilio", "bad_signature", 403, "invalid X-Twilio-Signature")
    for name, _ in params:
        if _merged_twilio_name(name):
            raise field_error(name[:40], "is not a parameter Twilio sends", status=400)
    return params


def _merged_twilio_name(name: str) -> bool:
    if name in _TWILIO_PARAMS or _TWILIO_NUMBERED.match(name):
        return False
    if not name.isascii() or not name.isalnum():
        return True
    return any(name.startswith(known) or name.endswith(known) for known in _TWILIO_PARAMS)


def _twilio_sid(fields: dict[str, str]) -> str:
    """The message SID, in Twilio's format, the same wherever Twilio repeats it."""
    sid = fields.get("MessageSid") or fields.get("SmsSid") or ""
    if not TWILIO_SID.match(sid):
        raise field_error(
            "MessageSid", "must be a Twilio message SID (SM or MM and 32 hex digits)", status=400
        )
    for copy in ("SmsSid", "SmsMessageSid"):
        if fields.get(copy, sid) != sid:
            raise field_error(copy, "differs from MessageSid", status=400)
    return sid


@API.op(
    "POST",
    "/v1/webhooks/twilio/status",
    "Twilio delivery status callback for outbound texts",
    public=True,
    errors=(400, 403, 413, 415, 503),
    consumes=("application/x-www-form-urlencoded",),
)
async def twilio_status(request: web.Request) -> web.Response:
    if (shed := _shed(request, "twilio")) is not None:
        return shed
    verified = await _twilio_form(request)
    if isinstance(verified, web.Response):
        return verified
    fields = dict(verified)
    status = map_status(fields.get("MessageStatus"))
    sid = _twilio_sid(fields)
    if status is None:
        raise field_error("MessageStatus", "a known MessageStatus is required", status=400)
    return await _status_update(request, "twilio", sid, status, fields.get("ErrorCode") or None)


async def _status_update(
    request: web.Request, provider: str, message_id: str, status: str, error: str | None
) -> web.Response:
    try:
        changed = await deps(request).statuses.update(provider, message_id, status, error)
    except Overloaded:
        refused = problem(503, "Service Unavailable", "too many status callbacks waiting; redeliver it")
        refused.headers["Retry-After"] = "1"
        return refused
    except _DB_DOWN:
        return _redeliver("status not stored; redeliver it")
    return web.json_response({"updated": changed})


@API.op(
    "POST",
    "/v1/webhooks/twilio/messages",
    "Twilio inbound message webhook (form, X-Twilio-Signature)",
    public=True,
    errors=(400, 403, 404, 413, 415, 503),
    produces="text/xml",
    consumes=("application/x-www-form-urlencoded",),
)
async def twilio_messages(request: web.Request) -> web.Response:
    if (shed := _shed(request, "twilio")) is not None:
        return shed
    verified = await _twilio_form(request)
    if isinstance(verified, web.Response):
        return verified
    params = verified
    fields = dict(params)
    sid = _twilio_sid(fields)
    count = _count(fields, "NumMedia") or 0
    media = [
        {"url": fields[f"MediaUrl{i}"], "content_type": fields.get(f"MediaContentType{i}", "")}
        for i in range(min(count, 10))
        if f"MediaUrl{i}" in fields
    ]
    text = texts.InboundText(
        provider="twilio",
        provider_message_id=sid,
        from_e164=_phone(fields.get("From"), "From"),
        to_e164=_phone(fields.get("To"), "To"),
        body=_text(fields.get("Body", "")),
        received_at=datetime.now(UTC),
        media=media,
        segments=_count(fields, "NumSegments"),
    )
    accepted = await _accept(request, text)
    if isinstance(accepted, web.Response):
        return accepted
    return web.Response(text=EMPTY_TWIML, content_type="text/xml")


@API.op(
    "POST",
    "/v1/webhooks/telnyx/messages",
    "Telnyx messaging webhook (JSON, Ed25519 signature)",
    public=True,
    errors=(400, 403, 404, 413, 503),
    consumes=("application/json",),
)
async def telnyx_messages(request: web.Request) -> web.Response:
    if (shed := _shed(request, "telnyx")) is not None:
        return shed
    key = deps(request).telnyx_public_key
    if not key:
        return _refuse(request, "telnyx", "not_configured", 503, "the Telnyx webhook is not configured")
    raw = await request.read()  # the raw bytes are what Telnyx signed, never re-serialised JSON
    signature = request.headers.get("telnyx-signature-ed25519", "")
    timestamp = request.headers.get("telnyx-timestamp", "")
    if not telnyx_valid(key, timestamp, raw, signature, now=time.time()):
        return _refuse(request, "telnyx", "bad_signature", 403, "invalid or expired telnyx-signature-ed25519")
    try:
        data = json.loads(raw)["data"]
        event_type = data["event_type"]
        payload = data["payload"]
    except (ValueError, KeyError, TypeError, RecursionError):
        raise field_error("data", "must hold event_type and payload", status=400) from None
    if event_type in ("message.sent", "message.finalized") and isinstance(payload, dict):
        recipients = payload.get("to") if isinstance(payload.get("to"), list) else []
        raw_status = recipients[0].get("status") if recipients and isinstance(recipients[0], dict) else None
        status, sent_id = map_status(raw_status), payload.get("id")
        if status is None or not isinstance(sent_id, str):
            raise field_error("data.payload", "needs id and to[0].status", status=400)
        errors = payload.get("errors")
        error = (
            str(errors[0].get("code"))
            if isinstance(errors, list) and errors and isinstance(errors[0], dict)
            else None
        )
        return await _status_update(request, "telnyx", sent_id, status, error)
    if event_type != "message.received":
        return web.json_response({"ignored": str(event_type)[:100]})
    to_list = payload.get("to") if isinstance(payload, dict) else None
    message_id = payload.get("id") if isinstance(payload, dict) else None
    if not isinstance(message_id, str) or not message_id or len(message_id) > 200 or "\x00" in message_id:
        raise field_error("data.payload.id", "is required (and holds no NUL)", status=400)
    if not isinstance(to_list, list) or not to_list or not isinstance(to_list[0], dict):
        raise field_error("data.payload.to", "must list the recipient", status=400)
    sender = payload.get("from")
    media = payload.get("media") if isinstance(payload.get("media"), list) else []
    parts = payload.get("parts")
    text = texts.InboundText(
        provider="telnyx",
        provider_message_id=message_id,
        from_e164=_phone(
            sender.get("phone_number") if isinstance(sender, dict) else None, "data.payload.from"
        ),
        to_e164=_phone(to_list[0].get("phone_number"), "data.payload.to"),
        body=_text(payload.get("text") if isinstance(payload.get("text"), str) else ""),
        received_at=datetime.now(UTC),
        media=[
            {"url": str(m.get("url", "")), "content_type": str(m.get("content_type", ""))}
            for m in media[:10]
            if isinstance(m, dict)
        ],
        segments=parts if isinstance(parts, int) and not isinstance(parts, bool) else None,
    )
    accepted = await _accept(request, text)
    if isinstance(accepted, web.Response):
        return accepted
    return web.json_response({"message_id": accepted.message_id, "duplicate": accepted.duplicate})
