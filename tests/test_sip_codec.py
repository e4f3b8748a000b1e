"""The fast SIP codec agrees with aiosipua's reference parser on every input
it accepts, and falls back to it for the rest (folded lines, comma-joined
headers, bare LF)."""

from __future__ import annotations

from aiosipua import SipMessage
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.sip.codec import encode, parse
from tests.test_sip_input import TORTURE

INVITE = (
    b"INVITE sip:+15550001111@127.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.2:5061;branch=z9hG4bK-1\r\n"
    b"v: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK-2, SIP/2.0/UDP 10.0.0.2;branch=z9hG4bK-3\r\n"
    b'f: "Caller, Jr" <sip:+15551@127.0.0.2>;tag=1\r\nTo: <sip:+15550001111@127.0.0.1>\r\ni: abc@host\r\n'
    b"CSeq: 1 INVITE\r\nContact: <sip:trunk@127.0.0.2:5061>\r\nRecord-Route: <sip:p1;lr>\r\n"
    b"Subject: folded\r\n  continued\r\nContent-Type: application/sdp\r\nl: 5\r\n\r\nv=0\r\nextra"
)


def same(data: bytes) -> None:
    try:
        ours = parse(data)
    except ValueError as exc:
        ours_error: str | None = type(exc).__name__
    else:
        ours_error = None
    try:
        ref = SipMessage.parse(data)
    except ValueError as exc:
        assert ours_error == type(exc).__name__
        return
    assert ours_error is None
    assert type(ours) is type(ref)
    assert ours.headers._store == ref.headers._store
    assert ours.body == ref.body
    assert ours._start_line() == ref._start_line()


def test_known_messages_parse_as_aiosipua_does() -> None:
    same(INVITE)
    same(INVITE.replace(b"Subject: folded\r\n  continued\r\n", b""))
    same(INVITE.replace(b"\r\n", b"\n"))
    for datagram in TORTURE:
        if datagram.strip():
            same(datagram)


@settings(max_examples=300)
@given(st.lists(st.sampled_from(INVITE.split(b"\r\n")), min_size=1, max_size=14), st.binary(max_size=20))
def test_any_shuffle_of_header_lines_parses_as_aiosipua_does(lines: list[bytes], noise: bytes) -> None:
    same(b"\r\n".join([INVITE.split(b"\r\n")[0], *lines]) + noise)


def test_encode_round_trips() -> None:
    message = parse(INVITE.replace(b"Subject: folded\r\n  continued\r\n", b""))
    again = parse(encode(message))
    assert again.headers._store == message.headers._store | {"content-length": ["5"]}
    assert again.body == b"v=0\r\n"
