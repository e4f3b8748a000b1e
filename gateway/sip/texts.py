"""Texts over SIP MESSAGE (RFC 3428) from a carrier trunk, into the same
pipeline as the aggregators' webhooks (issue 5, DESIGN §5).

403 from a source that is not a trunk; 415 (with ``Accept: text/plain``) for
any other content type, ``application/vnd.3gpp.sms`` included; 413 when the
body is over ``sip.max_text_bytes``; 404 for a number we do not own; 202
Accepted, with no body and no Contact, once the text is committed; 503 with
Retry-After when the database cannot take it. A UDP retransmission (same
Call-ID, branch and CSeq) is answered from the response cache, and the
dedupe claim on (``sip``, Call-ID + CSeq) makes any later duplicate a no-op.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING

import asyncpg
from aiosipua import SipRequest

from gateway.sip.transport import Peer
from gateway.sip.wire import cseq_number, user_e164
from gateway.store import texts

if TYPE_CHECKING:
    from gateway.sip.server import SipServer


def receive_text(server: SipServer, req: SipRequest, peer: Peer) -> None:
    if not server.is_trunk(peer.host):
        server.metrics.refused.labels("untrusted_source").inc()
        server.reply(req, peer, 403, "Forbidden")
        return
    content_type = (req.headers.get_first("content-type") or "text/plain").split(";", 1)[0].strip().lower()
    if content_type != "text/plain":
        server.reply(req, peer, 415, "Unsupported Media Type", headers=(("Accept", "text/plain"),))
        return
    if len(req.body) > server.settings.max_text_bytes:
        server.reply(req, peer, 413, "Request Entity Too Large")
        return
    try:
        body = req.body.decode("utf-8")
    except UnicodeDecodeError:
        server.reply(req, peer, 400, "Body Is Not UTF-8")
        return
    sender = user_e164(req.headers.get_first("p-asserted-identity")) or user_e164(
        req.headers.get_first("from")
    )
    recipient = user_e164(req.uri) or user_e164(req.headers.get_first("to"))
    if sender is None or recipient is None:
        server.reply(req, peer, 400, "From And To Must Be E.164 Numbers")
        return
    if server.index().number(recipient) is None:
        server.texts_received.labels(provider="sip", outcome="unknown_number").inc()
        server.reply(req, peer, 404, "Not Found")
        return
    text = texts.InboundText(
        provider="sip",
        provider_message_id=f"{req.headers.get_first('call-id')}:{cseq_number(req)}",
        from_e164=sender,
        to_e164=recipient,
        body=body,
        received_at=datetime.now(UTC),
    )
    server.hold(req)  # retransmissions while we store it are absorbed
    server.spawn(_store(server, req, peer, text))


async def _store(server: SipServer, req: SipRequest, peer: Peer, text: texts.InboundText) -> None:
    try:
        async with server.pool.acquire(timeout=1.5) as conn:
            accepted = await texts.accept(conn, server.index(), text)
    except texts.UnknownNumber:
        server.reply(req, peer, 404, "Not Found")
        return
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
        try:  # the database is away: 202 once the text is durable in the outbox (issue 7)
            await server.recorder.add_text(text)
        except OSError:
            server.texts_received.labels(provider="sip", outcome="db_unavailable").inc()
            # Not remembered: the carrier's next attempt should be tried again.
            server.reply(req, peer, 503, "Service Unavailable", headers=(("Retry-After", "5"),), cache=False)
            server.release(req)
            return
        server.texts_received.labels(provider="sip", outcome="queued").inc()
        server.reply(req, peer, 202, "Accepted")
        return
    outcome = "duplicate" if accepted.duplicate else "stored"
    server.texts_received.labels(provider="sip", outcome=outcome).inc()
    server.reply(req, peer, 202, "Accepted")
