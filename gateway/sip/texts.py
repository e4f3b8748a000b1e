"""Texts over SIP MESSAGE (RFC 3428) from a carrier trunk, into the same
pipeline as the aggregators' webhooks (issue 5, DESIGN §5).

403 from a source that is not a trunk; 415 (with ``Accept: text/plain``) for
any other content type, ``application/vnd.3gpp.sms`` included; 413 when the
body is over ``sip.max_text_bytes``; 404 for a number we do not own; 202
Accepted, with no body and no Contact, once the text is committed; 503 with
Retry-After when the database cannot take it. A UDP retransmission (same
branch) meets the request's server transaction, which answers it once the
text is stored (and not before); the dedupe claim on (``sip``, Call-ID +
CSeq) makes any later duplicate a no-op.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING

from gateway.sip.ports import StoreRejected, StoreUnavailable
from gateway.sip.wire import cseq_number, user_e164
from gateway.store import texts

if TYPE_CHECKING:
    from gateway.sip.server import ServerTx, SipServer


def receive_text(server: SipServer, rec: ServerTx) -> None:
    req = rec.request
    if not server.is_trunk(rec.peer.host):
        server.metrics.refused.labels("untrusted_source").inc()
        server.reply(rec, 403, "Forbidden")
        return
    content_type = (req.headers.get_first("content-type") or "text/plain").split(";", 1)[0].strip().lower()
    if content_type != "text/plain":
        server.reply(rec, 415, "Unsupported Media Type", headers=(("Accept", "text/plain"),))
        return
    if len(req.body) > server.settings.max_text_bytes:
        server.reply(rec, 413, "Request Entity Too Large")
        return
    try:
        body = req.body.decode("utf-8").replace("\x00", "")  # as the webhooks: no SMS means a NUL
    except UnicodeDecodeError:
        server.reply(rec, 400, "Body Is Not UTF-8")
        return
    sender = user_e164(req.headers.get_first("p-asserted-identity")) or user_e164(
        req.headers.get_first("from")
    )
    recipient = user_e164(req.uri) or user_e164(req.headers.get_first("to"))
    if sender is None or recipient is None:
        server.reply(rec, 400, "From And To Must Be E.164 Numbers")
        return
    if server.index().number(recipient) is None:
        server.texts_received.labels(provider="sip", outcome="unknown_number").inc()
        server.reply(rec, 404, "Not Found")
        return
    text = texts.InboundText(
        provider="sip",
        provider_message_id=f"{req.headers.get_first('call-id')}:{cseq_number(req)}",
        from_e164=sender,
        to_e164=recipient,
        body=body,
        received_at=datetime.now(UTC),
    )
    server.scheduler.spawn(_store(server, rec, text))


async def _store(server: SipServer, rec: ServerTx, text: texts.InboundText) -> None:
    try:
        accepted = await server.store.accept_text(text)
    except texts.UnknownNumber:
        server.reply(rec, 404, "Not Found")
        return
    except StoreRejected:
        server.texts_received.labels(provider="sip", outcome="rejected").inc()
        server.reply(rec, 400, "Text Cannot Be Stored")
        return
    except StoreUnavailable:
        try:  # the database is away: 202 once the text is durable in the outbox (issue 7)
            await server.recorder.add_text(text)
        except OSError:
            server.texts_received.labels(provider="sip", outcome="db_unavailable").inc()
            server.reply(rec, 503, "Service Unavailable", headers=(("Retry-After", "5"),))
            return
        server.texts_received.labels(provider="sip", outcome="queued").inc()
        server.reply(rec, 202, "Accepted")
        return
    outcome = "duplicate" if accepted.duplicate else "stored"
    server.texts_received.labels(provider="sip", outcome=outcome).inc()
    server.reply(rec, 202, "Accepted")
