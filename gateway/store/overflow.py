"""Callers past a number's R7 limit (issue 15, item 8): the admins' event and
the text-back's message row. The send itself is the caller's (store/ holds
no provider client)."""

from __future__ import annotations

import uuid

from gateway.domain.billing import text_segments
from gateway.domain.index import Number
from gateway.store import Conn


async def announce_over_limit(conn: Conn, number: Number, caller: str | None, action: str) -> int:
    """An ``over_limit`` event on each owner's and admin's stream (the number,
    the caller and what they got), and one ``call.limit_reached`` event
    webhook for the account's CRM endpoints, in the same statement. Returns how
    many users were told. One round trip."""
    told: int = await conn.fetchval(
        "WITH event AS (SELECT jsonb_build_object('number_id', $2::bigint, 'number', $3::text,"
        " 'caller', $4::text, 'action', $5::text, 'limit', $6::int) AS data),"
        " told AS (INSERT INTO user_events (account_id, user_id, kind, payload)"
        " SELECT $1, u.id, 'over_limit', event.data || jsonb_build_object('at', now())"
        " FROM users u, event WHERE u.account_id = $1 AND u.role IN ('owner', 'admin') RETURNING 1)"
        " SELECT (SELECT count(*) FROM told), webhook_fanout(jsonb_build_array(jsonb_build_object("
        " 'account_id', $1::bigint, 'id', 'call.limit_reached_' || gen_random_uuid(),"
        " 'type', 'call.limit_reached', 'at', now(), 'data', event.data))) FROM event",
        number.account_id,
        number.id,
        number.e164,
        caller or "anonymous",
        action,
        number.max_concurrent_calls,
    )
    return told


async def record_text_back(conn: Conn, number: Number, caller: str, body: str) -> int:
    """The text-back as an outbound message, ``queued`` before it is sent. No
    user sent it, so nobody is charged (R9 charges users, never numbers); it
    is counted on the number. One round trip."""
    message_id: int = await conn.fetchval(
        "INSERT INTO messages (account_id, number_id, direction, provider, provider_message_id, from_e164,"
        " to_e164, body, segments, status) VALUES ($1, $2, 'outbound', $3, $4, $5, $6, $7, $8, 'queued')"
        " RETURNING id",
        number.account_id,
        number.id,
        number.provider,
        f"local:{uuid.uuid4()}",
        number.e164,
        caller,
        body,
        text_segments(body),
    )
    return message_id


async def text_back_sent(
    conn: Conn, message_id: int, provider_message_id: str | None, status: str, error: str | None = None
) -> None:
    """The provider's answer (its id and status), or ``failed`` with why. One statement."""
    await conn.execute(
        "UPDATE messages SET provider_message_id = COALESCE($2, provider_message_id), status = $3,"
        " error_code = $4, updated_at = now() WHERE id = $1",
        message_id,
        provider_message_id,
        status,
        error,
    )


async def claim_missed_call_text(conn: Conn, number: Number, caller: str) -> bool:
    """R17: may ``caller`` get the missed-call text now? Not after a STOP, and
    once per ``missed_call_every_s`` per number and caller; the claim is
    atomic, so two missed calls at once send one text. One statement."""
    claimed = await conn.fetchval(
        "INSERT INTO missed_call_texts (number_id, caller, sent_at)"
        " SELECT $2, $3::text, now() WHERE NOT EXISTS"
        " (SELECT 1 FROM text_opt_outs WHERE account_id = $1 AND e164 = $3::text)"
        " ON CONFLICT (number_id, caller) DO UPDATE SET sent_at = now()"
        " WHERE missed_call_texts.sent_at < now() - make_interval(secs => $4)"
        " RETURNING true",
        number.account_id,
        number.id,
        caller,
        float(number.missed_call_every_s),
    )
    return bool(claimed)
