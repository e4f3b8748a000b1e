"""Sending texts through the aggregators' HTTP APIs (issue 5): Twilio's
Messages API (form POST, HTTP Basic) and Telnyx's ``POST /v2/messages`` (JSON,
Bearer), over one shared aiohttp session with per-request timeouts.

Retries: a 429 or 5xx answer is retried with backoff, honouring
``Retry-After`` (up to ``max_retry_after_s``); so is a connection that was
never established. A timeout or a dropped connection after the request went
out is *not* retried: the provider may have sent the text, and sending twice
is worse than reporting an unknown outcome.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any, Literal

import aiohttp

from gateway.config import Settings

log = logging.getLogger(__name__)

Status = Literal["queued", "sending", "sent", "delivered", "undelivered", "failed"]


@dataclass(frozen=True, slots=True)
class Sent:
    provider_message_id: str
    status: Status


class SendFailed(Exception):
    """The provider refused or could not be reached. ``client_error``: the
    provider rejected the text itself (e.g. an invalid destination)."""

    def __init__(self, detail: str, *, client_error: bool = False, code: str | None = None) -> None:
        super().__init__(detail)
        self.detail, self.client_error, self.code = detail, client_error, code


class Providers:
    """The aggregators' APIs. One instance per gateway; ``close()`` at shutdown."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            timeout = aiohttp.ClientTimeout(total=self._settings.outbound.timeout_s)
            self._session = aiohttp.ClientSession(timeout=timeout, raise_for_status=False)
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    def status_url(self, provider: str) -> str:
        """Where ``provider`` reports delivery statuses of what we send."""
        path = "/v1/webhooks/twilio/status" if provider == "twilio" else "/v1/webhooks/telnyx/messages"
        return self._settings.http.public_base_url.rstrip("/") + path

    async def send(self, provider: str, from_e164: str, to_e164: str, body: str, status_url: str) -> Sent:
        """Send one text; at most ``outbound.max_attempts`` requests."""
        if provider == "twilio":
            return await self._send_twilio(from_e164, to_e164, body, status_url)
        if provider == "telnyx":
            return await self._send_telnyx(from_e164, to_e164, body, status_url)
        raise SendFailed(f"numbers of provider {provider!r} cannot send texts over HTTP", client_error=True)

    async def _send_twilio(self, from_e164: str, to_e164: str, body: str, status_url: str) -> Sent:
        twilio = self._settings.twilio
        if not twilio.account_sid or not twilio.auth_token.get_secret_value():
            raise SendFailed("Twilio sending is not configured (twilio.account_sid, twilio.auth_token)")
        url = f"{twilio.api_base_url.rstrip('/')}/2010-04-01/Accounts/{twilio.account_sid}/Messages.json"
        form = {"From": from_e164, "To": to_e164, "Body": body, "StatusCallback": status_url}
        headers = {
            "Authorization": aiohttp.encode_basic_auth(
                twilio.account_sid, twilio.auth_token.get_secret_value()
            )
        }
        data = await self._post(url, lambda s: s.post(url, data=form, headers=headers))
        return Sent(str(data["sid"]), _status(data.get("status")))

    async def _send_telnyx(self, from_e164: str, to_e164: str, body: str, status_url: str) -> Sent:
        telnyx = self._settings.telnyx
        if not telnyx.api_key.get_secret_value():
            raise SendFailed("Telnyx sending is not configured (telnyx.api_key)")
        url = f"{telnyx.api_base_url.rstrip('/')}/v2/messages"
        payload = {"from": from_e164, "to": to_e164, "text": body, "webhook_url": status_url}
        headers = {"Authorization": f"Bearer {telnyx.api_key.get_secret_value()}"}
        data = (await self._post(url, lambda s: s.post(url, json=payload, headers=headers)))["data"]
        to = data.get("to") or [{}]
        return Sent(str(data["id"]), _status(to[0].get("status")))

    async def _post(self, url: str, request: Any) -> dict[str, Any]:
        outbound = self._settings.outbound
        for attempt in range(1, outbound.max_attempts + 1):
            try:
                async with request(self._client()) as response:
                    if response.status < 300:
                        data: dict[str, Any] = await response.json(content_type=None)
                        return data
                    text = (await response.text())[:300]
                    if response.status != 429 and response.status < 500:
                        raise SendFailed(
                            f"provider refused ({response.status}): {text}",
                            client_error=response.status in (400, 404, 422),
                            code=str(response.status),
                        )
                    wait = _retry_after(response.headers.get("Retry-After"), attempt)
            except aiohttp.ClientConnectorError as exc:  # never reached the provider: safe to retry
                text, wait = f"cannot connect: {exc}", 0.2 * 2**attempt
            except (TimeoutError, aiohttp.ClientError) as exc:
                raise SendFailed(f"outcome unknown, not retried to avoid a double send: {exc!r}") from None
            if attempt == outbound.max_attempts or wait > outbound.max_retry_after_s:
                raise SendFailed(f"provider unavailable after {attempt} attempt(s): {text}")
            log.info("provider busy (%s); retry %d in %.2fs", text[:80], attempt, wait)
            await asyncio.sleep(wait)
        raise SendFailed("no attempt made")  # pragma: no cover - max_attempts >= 1


def _retry_after(header: str | None, attempt: int) -> float:
    if header and header.strip().isascii() and header.strip().isdigit() and len(header.strip()) <= 6:
        return float(header.strip())
    return float(0.5 * 2 ** (attempt - 1))


_STATUSES: dict[str, Status] = {
    "accepted": "queued",
    "queued": "queued",
    "scheduled": "queued",
    "sending": "sending",
    "sent": "sent",
    "delivered": "delivered",
    "undelivered": "undelivered",
    "failed": "failed",
    "delivery_failed": "failed",
    "sending_failed": "failed",
    "delivery_unconfirmed": "sent",
}


def _status(raw: Any) -> Status:
    return _STATUSES.get(str(raw).lower(), "queued")


def map_status(raw: Any) -> Status | None:
    """Either provider's delivery status in our one enum (DESIGN §5), or None."""
    return _STATUSES.get(str(raw).lower()) if raw else None
