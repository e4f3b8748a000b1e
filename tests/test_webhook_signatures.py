"""Our webhook signature checks agree with the providers' own SDKs and keys."""

from __future__ import annotations

import base64

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from hypothesis import given
from hypothesis import strategies as st
from multidict import MultiDict
from twilio.request_validator import RequestValidator

from gateway.http.signatures import telnyx_valid, twilio_algorithm, twilio_signature, twilio_valid

TOKEN = "12345678901234567890123456789012"
URL = "https://gw.example.com/v1/webhooks/twilio/messages?x=1"

texts = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=20)


@given(st.lists(st.tuples(st.sampled_from(["Body", "From", "To", "MediaUrl0", "A"]), texts), max_size=8))
def test_twilio_signature_matches_the_sdk(params: list[tuple[str, str]]) -> None:
    sdk = RequestValidator(TOKEN)
    multi = MultiDict(params)
    for algorithm in ("HMAC_SHA1", "HMAC_SHA256"):
        expected = sdk.compute_signature(URL, multi, algorithm)
        assert twilio_signature(TOKEN, URL, params, algorithm) == expected
        assert twilio_valid(TOKEN, URL, params, expected, algorithm)


@pytest.mark.parametrize(
    ("signed_url", "request_url"),
    [
        ("https://gw.example.com/hook", "https://gw.example.com:443/hook"),
        ("https://gw.example.com:443/hook", "https://gw.example.com/hook"),
        ("https://gw.example.com/hook", "https://gw.example.com:8443/hook"),
    ],
)
def test_twilio_port_variants_like_the_sdk(signed_url: str, request_url: str) -> None:
    params = [("Body", "hi")]
    signature = RequestValidator(TOKEN).compute_signature(signed_url, dict(params))
    assert RequestValidator(TOKEN).validate(request_url, dict(params), signature)
    assert twilio_valid(TOKEN, request_url, params, signature)


def test_twilio_rejects_tampering() -> None:
    params = [("Body", "hi"), ("From", "+15550001111")]
    signature = twilio_signature(TOKEN, URL, params)
    assert not twilio_valid(TOKEN, URL, [("Body", "hi!"), ("From", "+15550001111")], signature)
    assert not twilio_valid(TOKEN, URL + "&y=2", params, signature)
    assert not twilio_valid("other-token", URL, params, signature)
    assert not twilio_valid(TOKEN, URL, params, "")
    assert not twilio_valid("", URL, params, signature)
    assert not twilio_valid(TOKEN, URL, params, signature, "HMAC_MD5")


def test_twilio_algorithm_header() -> None:
    assert twilio_algorithm(None) == "HMAC_SHA1"
    assert twilio_algorithm("key=webhooks_sharedkey_x,algorithm=HMAC_SHA256") == "HMAC_SHA256"


def test_telnyx_ed25519_and_replay_window() -> None:
    private = Ed25519PrivateKey.generate()
    public = base64.b64encode(private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)).decode()
    body = b'{"data": {"event_type": "message.received"}}'
    now = 1_795_000_000
    signature = base64.b64encode(private.sign(f"{now}|".encode() + body)).decode()
    assert telnyx_valid(public, str(now), body, signature, now=now + 299)
    assert not telnyx_valid(public, str(now), body, signature, now=now + 301)  # replay
    assert not telnyx_valid(public, str(now), body + b" ", signature, now=now)  # raw bytes, not re-serialised
    assert not telnyx_valid(public, "soon", body, signature, now=now)
    assert not telnyx_valid(public, str(now), body, "not base64!", now=now)
    other = Ed25519PrivateKey.generate()
    forged = base64.b64encode(other.sign(f"{now}|".encode() + body)).decode()
    assert not telnyx_valid(public, str(now), body, forged, now=now)


def test_a_non_ascii_signature_is_simply_invalid() -> None:
    """Issue 12, item 3: compare_digest raised TypeError on non-ASCII str (a 500)."""
    params = [("Body", "hi"), ("From", "+15550001111")]
    assert not twilio_valid(TOKEN, URL, params, "été==")
    assert not twilio_valid(TOKEN, URL, params, "\udcc3\udca9")  # undecodable bytes as aiohttp passes them
