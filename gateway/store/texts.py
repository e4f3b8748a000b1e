"""Inbound texts, from any provider, through one pipeline (issue 5):
claim -> route (R1-R6) -> message, timeline, usage -> commit -> acknowledge.

The claim is ``INSERT ... ON CONFLICT (provider, provider_message_id) DO
NOTHING`` inside the same transaction as the side effects (DESIGN §5): a
redelivery, even one racing the first delivery, changes nothing and is still
acknowledged. Texting has no concurrency limit (seed: "no limit to the number
of text messages").
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from pydantic import TypeAdapter

from gateway.domain.billing import billing_period, text_segments
from gateway.domain.index import Index, Number
from gateway.domain.notifications import r8_recipients, text_raises_r8
from gateway.domain.routing import Decision, route
from gateway.domain.text_back import opt_keyword
from gateway.store import Conn
from gateway.store.crm import (
    InboundEvent,
    decide,
    r8_recipients_sql,
    raise_unknown_caller_notifications,
    record_timeline,
    record_usage,
)

Provider = Literal["twilio", "telnyx", "sip"]


@dataclass(frozen=True, slots=True)
class InboundText:
    """A text as every provider's adapter normalises it (E.164 numbers)."""

    provider: Provider
    provider_message_id: str
    from_e164: str
    to_e164: str
    body: str
    received_at: datetime
    media: list[dict[str, str]] = field(default_factory=list)
    segments: int | None = None  # the provider's count, when it sends one


@dataclass(frozen=True, slots=True)
class Accepted:
    message_id: int
    duplicate: bool
    recipients: tuple[int, ...] = ()
    reason: str = ""


class UnknownNumber(Exception):
    """The text was sent to a number this gateway does not own."""


def segments_of(text: InboundText) -> int:
    """R9: the provider's segment count when it sends a plausible one, else ours."""
    return text.segments if text.segments and 0 < text.segments <= 100 else text_segments(text.body)


@dataclass(frozen=True, slots=True)
class TextRow:
    """One text as the batch statement writes it: the text and what routing
    decided for it (recipients, timeline leads, who is charged, R8)."""

    text: InboundText
    account_id: int
    number_id: int
    segments: int
    handler: int | None
    status: str
    recipients: tuple[int, ...]
    reason: str
    leads: tuple[int, ...]
    notify: tuple[int, ...]  # R8: users to notify of an unknown texter
    notify_admins: bool  # R8: ... or the account's owners and admins
    opt: str | None = None  # R17: "out" (STOP) or "in" (START) for automated texts


def row_for(number: Number, decision: Decision, text: InboundText) -> TextRow:
    """The row for ``text`` routed by ``decision``. Pure and cheap."""
    recipients = decision.text_recipients()
    r8 = text_raises_r8(decision, text.from_e164)
    notify = r8_recipients(decision) if r8 else ()
    return TextRow(
        text=text,
        account_id=number.account_id,
        number_id=number.id,
        segments=segments_of(text),
        handler=recipients[0] if recipients else None,  # R9: the first recipient is charged, once
        status="received" if recipients else "undelivered_no_target",  # R6: stored, never lost
        recipients=recipients,
        reason=decision.reason,
        leads=tuple(decision.timeline_leads),
        notify=notify or (),
        notify_admins=r8 and notify is None,
        opt=opt_keyword(text.body),
    )


async def accept(conn: Conn, index: Index, text: InboundText) -> Accepted:
    """Store ``text`` with everything it causes, atomically; return only after
    commit. One statement (one round trip, one commit) unless the number hunts
    round-robin, whose shared turn needs a transaction of a few round trips.
    No lock beyond the claim's unique index."""
    number = index.number(text.to_e164)
    if number is None:
        raise UnknownNumber(text.to_e164)
    decision = route(index, number, text.from_e164)
    if decision.strategy == "round_robin" and len(decision.targets) > 1:
        return await _accept_round_robin(conn, index, text, number, segments_of(text))
    row = row_for(number, decision, text)
    ids = await write_rows(conn, [row])
    if not ids:
        found = await existing_ids(conn, [text])
        return Accepted(found[(text.provider, text.provider_message_id)], duplicate=True)
    return Accepted(ids[0], duplicate=False, recipients=row.recipients, reason=row.reason)


async def record_opt(conn: Conn, account_id: int, e164: str, opt: str | None) -> None:
    """R17: a STOP opts the sender out of the account's automated texts, a
    START back in. One statement when ``opt`` is set, none otherwise."""
    if opt == "out":
        await conn.execute(
            "INSERT INTO text_opt_outs (account_id, e164) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            account_id,
            e164,
        )
    elif opt == "in":
        await conn.execute("DELETE FROM text_opt_outs WHERE account_id = $1 AND e164 = $2", account_id, e164)


async def write_rows(conn: Conn, rows: list[TextRow]) -> dict[int, int]:
    """Write ``rows`` and everything they cause in one statement: {position in
    ``rows``: new message id} for each text not stored before. One round trip;
    Postgres's cost grows with the rows (about 0.1 ms each) on a fixed ~1 ms."""
    return {row["ord"]: row["id"] for row in await conn.fetch(_BATCH, *_columns(rows))}


async def _accept_round_robin(
    conn: Conn, index: Index, text: InboundText, number: Number, segments: int
) -> Accepted:
    """:func:`accept` for a number that hunts round-robin (R4): the turn is
    claimed in the same transaction as the rest. A few round trips."""
    async with conn.transaction():
        message_id = await conn.fetchval(
            "INSERT INTO messages (account_id, number_id, direction, provider, provider_message_id,"
            " from_e164, to_e164, body, media, segments, status, created_at)"
            " VALUES ($1, $2, 'inbound', $3, $4, $5, $6, $7, $8::jsonb, $9, 'received', $10)"
            " ON CONFLICT (provider, provider_message_id) DO NOTHING RETURNING id",
            number.account_id,
            number.id,
            text.provider,
            text.provider_message_id,
            text.from_e164,
            text.to_e164,
            text.body,
            json.dumps(text.media),
            segments,
            text.received_at,
        )
        if message_id is None:
            found = await existing_ids(conn, [text])
            return Accepted(found[(text.provider, text.provider_message_id)], duplicate=True)
        decision = await decide(conn, index, number, text.from_e164)
        recipients = decision.text_recipients()
        # The first recipient handles it: R9 charges them, once, whoever else a blast reached.
        handler = recipients[0] if recipients else None
        await conn.execute(
            "UPDATE messages SET user_id = $2, status = $3 WHERE id = $1",
            message_id,
            handler,
            "received" if recipients else "undelivered_no_target",  # R6: stored, never lost
        )
        if recipients:
            # Every recipient sees it live (a ring_all blast reaches them all).
            await conn.execute(
                "INSERT INTO user_events (account_id, user_id, kind, payload)"
                " SELECT $1, u, 'text', jsonb_build_object('message_id', m.id, 'from', m.from_e164,"
                " 'to', m.to_e164, 'body', m.body, 'media', m.media, 'number_id', m.number_id,"
                " 'created_at', m.created_at)"
                " FROM unnest($2::bigint[]) u, messages m WHERE m.id = $3",
                number.account_id,
                list(recipients),
                message_id,
            )
        event = InboundEvent(
            number=number,
            channel="text",
            caller=text.from_e164,
            event_key=f"text:{text.provider}:{text.provider_message_id}",
            occurred_at=text.received_at,
            agent_id=handler,
            message_id=message_id,
        )
        await record_timeline(conn, event, decision)
        await record_opt(conn, number.account_id, text.from_e164, opt_keyword(text.body))
        if text_raises_r8(decision, text.from_e164):
            await raise_unknown_caller_notifications(conn, event, decision)
        if handler is not None:
            await record_usage(
                conn,
                account_id=number.account_id,
                user_id=handler,
                kind="text_segments",
                quantity=segments,
                at=text.received_at,
                number_id=number.id,
                event_key=event.event_key,
                message_id=message_id,
            )
    return Accepted(message_id, duplicate=False, recipients=recipients, reason=decision.reason)


_TEXT_JSON = TypeAdapter(InboundText)


def text_to_json(text: InboundText) -> dict[str, Any]:
    """The outbox's form of a text (issue 7), derived from the dataclass."""
    data: dict[str, Any] = _TEXT_JSON.dump_python(text, mode="json")
    return data


def text_from_json(data: dict[str, Any]) -> InboundText:
    """The text back; a damaged entry raises ``pydantic.ValidationError``."""
    return _TEXT_JSON.validate_python(data)


async def existing_ids(conn: Conn, texts: list[InboundText]) -> dict[tuple[str, str], int]:
    """Ids of texts stored before (redeliveries); one indexed lookup."""
    found = await conn.fetch(
        "SELECT m.provider, m.provider_message_id, m.id FROM messages m"
        " JOIN unnest($1::text[], $2::text[]) AS k(provider, pmid)"
        " ON m.provider = k.provider AND m.provider_message_id = k.pmid",
        [text.provider for text in texts],
        [text.provider_message_id for text in texts],
    )
    return {(r["provider"], r["provider_message_id"]): r["id"] for r in found}


def _columns(batch: list[TextRow]) -> list[Any]:
    """The statement's arguments: one array per column, plus (text, user)
    pairs for live events, (text, lead) pairs for the timeline, (text, user)
    pairs for R8 notifications and the texts whose R8 goes to the admins."""
    live = [(i, user) for i, row in enumerate(batch) for user in row.recipients]
    leads = [(i, lead) for i, row in enumerate(batch) for lead in row.leads]
    notify = [(i, user) for i, row in enumerate(batch) for user in row.notify]
    return [
        list(range(len(batch))),
        [row.account_id for row in batch],
        [row.number_id for row in batch],
        [row.text.provider for row in batch],
        [row.text.provider_message_id for row in batch],
        [row.text.from_e164 for row in batch],
        [row.text.to_e164 for row in batch],
        [row.text.body for row in batch],
        [json.dumps(row.text.media) for row in batch],
        [row.segments for row in batch],
        [row.handler for row in batch],
        [row.status for row in batch],
        [row.text.received_at for row in batch],
        [row.reason for row in batch],
        [f"text:{row.text.provider}:{row.text.provider_message_id}" for row in batch],
        [billing_period(row.text.received_at) for row in batch],
        [i for i, _ in live],
        [user for _, user in live],
        [i for i, _ in leads],
        [lead for _, lead in leads],
        [i for i, _ in notify],
        [user for _, user in notify],
        [i for i, row in enumerate(batch) if row.notify_admins],
        [i for i, row in enumerate(batch) if row.opt == "out"],
        [i for i, row in enumerate(batch) if row.opt == "in"],
    ]


# The claim, each message, its recipients' live events, the R1-R3 timeline, the
# R9 usage and the R8 notifications, for many texts in one statement: every part
# reads from the claim, so a redelivery writes nothing else. Whether usage is over
# quota is derived when it is read (domain/billing.over_quota), not stored.
_BATCH = """
WITH input AS (
    SELECT * FROM unnest($1::int[], $2::bigint[], $3::bigint[], $4::text[], $5::text[], $6::text[],
                         $7::text[], $8::text[], $9::text[], $10::int[], $11::bigint[], $12::text[],
                         $13::timestamptz[], $14::text[], $15::text[], $16::date[])
        AS t(ord, account_id, number_id, provider, pmid, from_e164, to_e164, body, media, segments, handler,
             status, received_at, reason, event_key, period)
), msg AS (
    INSERT INTO messages (account_id, number_id, direction, provider, provider_message_id, from_e164, to_e164,
                          body, media, segments, user_id, status, created_at)
    SELECT account_id, number_id, 'inbound', provider, pmid, from_e164, to_e164, body, media::jsonb, segments,
           handler, status, received_at
      FROM input ORDER BY provider, pmid
    ON CONFLICT (provider, provider_message_id) DO NOTHING
    RETURNING id, provider, provider_message_id, from_e164, to_e164, body, media, number_id, created_at
), claimed AS (
    SELECT m.*, i.ord, i.account_id, i.handler, i.segments, i.reason, i.event_key, i.period, i.received_at
      FROM msg m JOIN input i ON i.provider = m.provider AND i.pmid = m.provider_message_id
), timeline AS (
    INSERT INTO timeline_events (account_id, lead_id, number_id, channel, direction, agent_id, reason,
                                 message_id, occurred_at, idempotency_key)
    SELECT c.account_id, l.lead, c.number_id, 'text', 'inbound', c.handler, c.reason, c.id, c.received_at,
           c.event_key || ':lead:' || l.lead
      FROM claimed c JOIN unnest($19::int[], $20::bigint[]) AS l(ord, lead) ON l.ord = c.ord
    ON CONFLICT (idempotency_key) DO NOTHING
), usage AS (
    INSERT INTO usage_ledger (account_id, user_id, period, kind, quantity, number_id, message_id,
                              idempotency_key, created_at)
    SELECT account_id, handler, period, 'text_segments', segments, number_id, id,
           event_key || ':usage:' || handler || ':text_segments', received_at
      FROM claimed WHERE handler IS NOT NULL
    ON CONFLICT (idempotency_key) DO NOTHING
), r8 AS (
    {R8}
), raised AS (
    -- One open notification per number, texter and user: later texts join it.
    INSERT INTO notifications (account_id, user_id, number_id, channel, event_key, caller_e164, source, tag,
                               message_id)
    SELECT c.account_id, r.user_id, c.number_id, 'text', c.event_key, c.from_e164, n.source, n.tag, c.id
      FROM r8 r JOIN claimed c ON c.ord = r.ord JOIN numbers n ON n.id = c.number_id
     ORDER BY c.ord
    ON CONFLICT DO NOTHING
    RETURNING id, user_id, number_id, channel, caller_e164, source, tag, created_at, account_id, message_id
), opted_out AS (
    INSERT INTO text_opt_outs (account_id, e164)
    SELECT c.account_id, c.from_e164 FROM claimed c JOIN unnest($24::int[]) AS o(ord) ON o.ord = c.ord
    ON CONFLICT DO NOTHING
), opted_in AS (
    DELETE FROM text_opt_outs t USING claimed c JOIN unnest($25::int[]) AS i(ord) ON i.ord = c.ord
     WHERE t.account_id = c.account_id AND t.e164 = c.from_e164
), live AS (
    -- Each recipient's stream gets the text, then any notification it raised, in that order.
    INSERT INTO user_events (account_id, user_id, kind, payload)
    SELECT account_id, user_id, kind, payload FROM (
        SELECT c.ord, 0 AS step, c.account_id, r.user_id, 'text' AS kind,
               jsonb_build_object('message_id', c.id, 'from', c.from_e164, 'to', c.to_e164, 'body', c.body,
                                  'media', c.media, 'number_id', c.number_id, 'created_at', c.created_at)
                   AS payload
          FROM claimed c JOIN unnest($17::int[], $18::bigint[]) AS r(ord, user_id) ON r.ord = c.ord
        UNION ALL
        SELECT c.ord, 1, raised.account_id, raised.user_id, 'notification',
               to_jsonb(raised) - 'account_id' - 'message_id'
          FROM raised JOIN claimed c ON c.id = raised.message_id
    ) AS event ORDER BY ord, step
)
SELECT ord, id FROM claimed
""".replace("{R8}", r8_recipients_sql((21, 22), 23))
