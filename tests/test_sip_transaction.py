"""RFC 3261 §17's four transaction machines (issue 11), driven with the time
as an argument: every timer A-M is exercised in microseconds.

Each table row is (event, expected actions, expected state); a hypothesis
property then throws random event sequences at each machine and checks the
invariants a carrier relies on: a final is never lost while the peer keeps
retransmitting, every transaction terminates, and nothing is sent after it
terminated."""

from __future__ import annotations

from typing import Any

import pytest
from aiosipua import SipRequest, SipResponse
from hypothesis import given
from hypothesis import strategies as st

from gateway.sip import transaction as tx
from gateway.sip.codec import encode, parse
from gateway.sip.transaction import T1, T2, T4, TIMEOUT, State, Timer

BRANCH = "z9hG4bKtest1"


def request(method: str = "INVITE") -> SipRequest:
    raw = (
        f"{method} sip:agent@127.0.0.1:5070 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch={BRANCH}\r\n"
        "Route: <sip:proxy.example;lr>\r\nMax-Forwards: 70\r\nFrom: <sip:gw@127.0.0.1>;tag=f1\r\n"
        f"To: <sip:agent@127.0.0.1>\r\nCall-ID: c1\r\nCSeq: 7 {method}\r\nContent-Length: 0\r\n\r\n"
    )
    message = parse(raw.encode())
    assert isinstance(message, SipRequest)
    return message


def reply(code: int, method: str = "INVITE", to_tag: str = "t1") -> SipResponse:
    raw = (
        f"SIP/2.0 {code} X\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch={BRANCH}\r\n"
        f"From: <sip:gw@127.0.0.1>;tag=f1\r\nTo: <sip:agent@127.0.0.1>;tag={to_tag}\r\nCall-ID: c1\r\n"
        f"CSeq: 7 {method}\r\nContent-Length: 0\r\n\r\n"
    )
    message = parse(raw.encode())
    assert isinstance(message, SipResponse)
    return message


def kinds(actions: list[tx.Action]) -> list[str]:
    """Actions as short strings: 'send', 'arm A@0.5', 'disarm B', 'deliver 180', ..."""
    out = []
    for a in actions:
        if isinstance(a, tx.Send):
            out.append("send " + a.data.split(b" ", 2)[1 if a.data.startswith(b"SIP/") else 0].decode())
        elif isinstance(a, tx.Arm):
            out.append(f"arm {a.timer.value}@{a.at:g}")
        elif isinstance(a, tx.Disarm):
            out.append(f"disarm {a.timer.value}")
        elif isinstance(a, tx.Deliver):
            out.append(f"deliver {a.response.status_code}")
        elif isinstance(a, tx.SendCancel):
            out.append("cancel")
        elif isinstance(a, tx.Failed):
            out.append(f"failed {a.timer.value}")
        else:
            out.append("terminated")
    return out


# -- INVITE client ------------------------------------------------------------------------


def test_invite_client_retransmits_with_timer_a_doubling_and_gives_up_at_timer_b() -> None:
    ict = tx.ClientInvite(request(), reliable=False)
    assert kinds(ict.start(0)) == ["send INVITE", "arm B@32", "arm A@0.5"]
    at = T1
    for interval in (1.0, 2.0, 4.0, 8.0, 16.0):  # A doubles without the T2 cap (§17.1.1.2)
        assert kinds(ict.fire(Timer.A, at)) == ["send INVITE", f"arm A@{at + interval:g}"]
        at += interval
    assert kinds(ict.fire(Timer.B, TIMEOUT)) == ["disarm A", "failed B", "terminated"]
    assert ict.state is State.TERMINATED
    assert ict.fire(Timer.A, 40) == []  # a late timer does nothing


def test_invite_client_acks_a_failure_itself_and_repeats_the_ack_until_timer_d() -> None:
    ict = tx.ClientInvite(request(), reliable=False)
    ict.start(0)
    assert kinds(ict.receive(reply(180), 0.1)) == ["disarm A", "disarm B", "deliver 180"]
    actions = ict.receive(reply(486), 1)
    assert kinds(actions) == ["send ACK", "disarm A", "disarm B", "deliver 486", "arm D@33"]
    ack = parse(actions[0].data)  # type: ignore[union-attr]
    assert isinstance(ack, SipRequest)
    # §17.1.1.3: same Request-URI, Via branch, Route and CSeq number; To from the response.
    assert ack.uri == "sip:agent@127.0.0.1:5070" and BRANCH in (ack.headers.get_first("via") or "")
    assert ack.headers.get_first("cseq") == "7 ACK" and ack.headers.get("route") == ["<sip:proxy.example;lr>"]
    assert ack.headers.get_first("to", "").endswith("tag=t1")
    assert kinds(ict.receive(reply(486), 2)) == ["send ACK"]  # the retransmission is not delivered again
    assert kinds(ict.fire(Timer.D, 33)) == ["terminated"]


def test_invite_client_accepts_2xx_copies_until_timer_m() -> None:
    ict = tx.ClientInvite(request(), reliable=False)
    ict.start(0)
    assert kinds(ict.receive(reply(200), 0.2)) == ["disarm A", "disarm B", "arm M@32.2", "deliver 200"]
    assert kinds(ict.receive(reply(200), 0.7)) == ["deliver 200"]  # the TU re-ACKs it
    assert kinds(ict.fire(Timer.M, 32.2)) == ["terminated"]


def test_cancel_waits_for_a_provisional_rfc3261_9_1() -> None:
    ict = tx.ClientInvite(request(), reliable=False)
    ict.start(0)
    assert ict.cancel(0.1) == []  # nothing heard yet: the CANCEL must wait
    actions = ict.receive(reply(100), 0.3)
    assert kinds(actions) == ["disarm A", "cancel", "arm B@32.3", "deliver 100"]
    cancel = actions[1].request  # type: ignore[union-attr]
    assert cancel.method == "CANCEL" and cancel.headers.get_first("cseq") == "7 CANCEL"
    assert BRANCH in (cancel.headers.get_first("via") or "")
    assert ict.cancel(0.4) == []  # once is enough
    # §9.1: no final within 64*T1 of the CANCEL: the transaction ends.
    assert kinds(ict.fire(Timer.B, 32.3)) == ["disarm A", "failed B", "terminated"]


def test_cancel_after_a_provisional_leaves_at_once_and_not_after_a_final() -> None:
    ict = tx.ClientInvite(request(), reliable=False)
    ict.start(0)
    ict.receive(reply(180), 0.1)
    assert kinds(ict.cancel(0.2)) == ["cancel", "arm B@32.2"]
    assert kinds(ict.receive(reply(487), 0.3))[:2] == ["send ACK", "disarm A"]
    assert ict.cancel(0.4) == []


def test_a_cancel_that_never_met_a_provisional_dies_with_timer_b() -> None:
    ict = tx.ClientInvite(request(), reliable=False)
    ict.start(0)
    ict.cancel(0.1)
    assert kinds(ict.fire(Timer.B, TIMEOUT)) == ["disarm A", "failed B", "terminated"]


def test_over_tcp_nothing_is_retransmitted_and_a_failure_ends_at_once() -> None:
    ict = tx.ClientInvite(request(), reliable=True)
    assert kinds(ict.start(0)) == ["send INVITE", "arm B@32"]
    assert kinds(ict.receive(reply(503), 1)) == [
        "send ACK",
        "disarm A",
        "disarm B",
        "deliver 503",
        "terminated",
    ]
    nict = tx.ClientNonInvite(request("BYE"), reliable=True)
    assert kinds(nict.start(0)) == ["send BYE", "arm F@32"]
    assert kinds(nict.receive(reply(200, "BYE"), 1)) == ["disarm E", "disarm F", "deliver 200", "terminated"]


# -- non-INVITE client ------------------------------------------------------------------------


def test_non_invite_client_timer_e_caps_at_t2_and_timer_f_gives_up() -> None:
    nict = tx.ClientNonInvite(request("BYE"), reliable=False)
    assert kinds(nict.start(0)) == ["send BYE", "arm F@32", "arm E@0.5"]
    at, interval, seen = T1, T1, []
    while at < TIMEOUT:
        actions = nict.fire(Timer.E, at)
        interval = min(interval * 2, T2)
        assert kinds(actions) == ["send BYE", f"arm E@{at + interval:g}"]
        seen.append(interval)
        at += interval
    assert seen[:4] == [1.0, 2.0, 4.0, 4.0]
    assert kinds(nict.fire(Timer.F, TIMEOUT)) == ["disarm E", "failed F", "terminated"]


def test_non_invite_client_proceeding_retransmits_every_t2_then_absorbs_with_timer_k() -> None:
    nict = tx.ClientNonInvite(request("BYE"), reliable=False)
    nict.start(0)
    assert kinds(nict.receive(reply(100, "BYE"), 0.1)) == ["deliver 100"]
    assert kinds(nict.fire(Timer.E, 0.5)) == ["send BYE", "arm E@4.5"]
    assert kinds(nict.receive(reply(200, "BYE"), 1)) == [
        "disarm E",
        "disarm F",
        "deliver 200",
        f"arm K@{1 + T4:g}",
    ]
    assert nict.receive(reply(200, "BYE"), 2) == []  # absorbed
    assert kinds(nict.fire(Timer.K, 1 + T4)) == ["terminated"]


# -- INVITE server ------------------------------------------------------------------------


def test_invite_server_repeats_its_failure_with_timer_g_until_the_ack() -> None:
    """Defect 2: 486/487/480/... to the carrier are retransmitted, not sent once."""
    ist = tx.ServerInvite(request(), reliable=False)
    assert kinds(ist.respond(b"SIP/2.0 100 Trying\r\n\r\n", 100, 0)) == ["send 100"]
    assert kinds(ist.receive(request(), 0.5)) == ["send 100"]  # a retransmitted INVITE
    assert kinds(ist.respond(b"SIP/2.0 486 Busy\r\n\r\n", 486, 1)) == ["send 486", "arm H@33", "arm G@1.5"]
    at, interval = 1.5, T1
    for _ in range(5):
        interval = min(interval * 2, T2)
        assert kinds(ist.fire(Timer.G, at)) == ["send 486", f"arm G@{at + interval:g}"]
        at += interval
    assert kinds(ist.receive(request(), at)) == ["send 486"]
    ack = request("ACK")
    assert kinds(ist.receive(ack, at)) == ["disarm G", "disarm H", f"arm I@{at + T4:g}"]
    assert ist.state is State.CONFIRMED
    assert ist.receive(ack, at + 1) == []  # ACK copies absorbed
    assert kinds(ist.fire(Timer.I, at + T4)) == ["terminated"]


def test_invite_server_without_ack_gives_up_at_timer_h() -> None:
    ist = tx.ServerInvite(request(), reliable=False)
    ist.respond(b"SIP/2.0 480 X\r\n\r\n", 480, 0)
    assert kinds(ist.fire(Timer.H, TIMEOUT)) == ["disarm G", "failed H", "terminated"]
    assert ist.fire(Timer.G, 40) == []


def test_invite_server_retransmits_its_2xx_until_the_dialog_reports_the_ack() -> None:
    ist = tx.ServerInvite(request(), reliable=False)
    assert kinds(ist.respond(b"SIP/2.0 200 OK\r\n\r\n", 200, 0)) == ["send 200", "arm H@32", "arm G@0.5"]
    assert kinds(ist.fire(Timer.G, 0.5)) == ["send 200", "arm G@1.5"]
    assert kinds(ist.receive(request(), 0.7)) == ["send 200"]
    assert ist.respond(b"SIP/2.0 486 X\r\n\r\n", 486, 0.8) == []  # one final only
    assert kinds(ist.acked(1)) == ["disarm G", "disarm H", "arm L@33"]
    assert ist.acked(2) == []
    assert kinds(ist.fire(Timer.L, 33)) == ["terminated"]


def test_invite_server_2xx_without_ack_fails_at_timer_h() -> None:
    ist = tx.ServerInvite(request(), reliable=False)
    ist.respond(b"SIP/2.0 200 OK\r\n\r\n", 200, 0)
    assert kinds(ist.fire(Timer.H, TIMEOUT)) == ["disarm G", "failed H", "terminated"]


# -- non-INVITE server ------------------------------------------------------------------------


def test_non_invite_server_absorbs_until_answered_then_repeats_its_answer_until_timer_j() -> None:
    """Defect 3 and 12: a retransmitted CANCEL or BYE is answered from its
    transaction (never 481), and not before the TU answered (the BYE's 200
    waits for the call record to be durable)."""
    nist = tx.ServerNonInvite(request("BYE"), reliable=False)
    assert nist.receive(request("BYE"), 0.5) == []  # still working on it: silence
    assert kinds(nist.respond(b"SIP/2.0 200 OK\r\n\r\n", 200, 1)) == ["send 200", "arm J@33"]
    assert kinds(nist.receive(request("BYE"), 2)) == ["send 200"]
    assert nist.respond(b"SIP/2.0 500 X\r\n\r\n", 500, 3) == []
    assert kinds(nist.fire(Timer.J, 33)) == ["terminated"]


def test_non_invite_server_provisional_then_final() -> None:
    nist = tx.ServerNonInvite(request("MESSAGE"), reliable=True)
    assert kinds(nist.respond(b"SIP/2.0 100 X\r\n\r\n", 100, 0)) == ["send 100"]
    assert kinds(nist.receive(request("MESSAGE"), 0.1)) == ["send 100"]
    assert kinds(nist.respond(b"SIP/2.0 202 X\r\n\r\n", 202, 0.2)) == ["send 202", "terminated"]


# -- properties -------------------------------------------------------------------------------

CLIENT_EVENTS = st.one_of(
    st.sampled_from([100, 180, 200, 486, 487, 503]).map(lambda c: ("recv", c)),
    st.sampled_from(list(Timer)).map(lambda t: ("fire", t)),
    st.just(("cancel", None)),
    st.just(("transport", None)),
)


def _run_client(machine: Any, events: list[tuple[str, Any]]) -> list[list[tx.Action]]:
    out = [machine.start(0.0)]
    now = 0.0
    for kind, value in events:
        now += 0.25
        if kind == "recv":
            out.append(machine.receive(reply(value, machine.request.method), now))
        elif kind == "fire":
            out.append(machine.fire(value, now))
        elif kind == "cancel" and isinstance(machine, tx.ClientInvite):
            out.append(machine.cancel(now))
        elif kind == "transport":
            out.append(machine.transport_error())
    return out


@pytest.mark.parametrize("reliable", [False, True])
@given(events=st.lists(CLIENT_EVENTS, max_size=40))
def test_client_machines_terminate_once_and_are_silent_afterwards(
    reliable: bool, events: list[tuple[str, Any]]
) -> None:
    for machine in (
        tx.ClientInvite(request(), reliable=reliable),
        tx.ClientNonInvite(request("BYE"), reliable=reliable),
    ):
        batches = _run_client(machine, events)
        flat = [a for batch in batches for a in batch]
        ends = [i for i, a in enumerate(flat) if isinstance(a, tx.Terminated)]
        assert len(ends) <= 1
        if ends:
            assert machine.state is State.TERMINATED
            assert not any(isinstance(a, tx.Send | tx.Arm | tx.Deliver) for a in flat[ends[0] + 1 :])
        finals = [a for a in flat if isinstance(a, tx.Deliver) and a.response.status_code >= 300]
        assert len(finals) <= 1  # a failure reaches the TU once, however often it is retransmitted
        failed = [a for a in flat if isinstance(a, tx.Failed)]
        assert len(failed) <= 1


SERVER_EVENTS = st.one_of(
    st.sampled_from([100, 180, 200, 486, 503]).map(lambda c: ("respond", c)),
    st.sampled_from(list(Timer)).map(lambda t: ("fire", t)),
    st.just(("retransmit", None)),
    st.just(("ack", None)),
    st.just(("acked", None)),
)


@given(events=st.lists(SERVER_EVENTS, max_size=40))
def test_a_final_reaches_a_retransmitting_peer_until_acknowledged(events: list[tuple[str, Any]]) -> None:
    """While the INVITE server has a final and no ACK, every retransmitted
    INVITE is answered with that final: a lossy link never loses it."""
    ist = tx.ServerInvite(request(), reliable=False)
    now, final = 0.0, b""
    for kind, value in events:
        now += 0.25
        if kind == "respond":
            data = f"SIP/2.0 {value} X\r\n\r\n".encode()
            was_pending = ist.state is State.PROCEEDING
            ist.respond(data, value, now)
            if was_pending and value >= 200:
                final = data
        elif kind == "fire":
            ist.fire(value, now)
        elif kind == "ack":
            ist.receive(request("ACK"), now)
        elif kind == "acked":
            ist.acked(now)
        else:
            sent = [a.data for a in ist.receive(request(), now) if isinstance(a, tx.Send)]
            if final and ist.state in (State.ACCEPTED, State.COMPLETED):
                assert sent == [final]


def test_encode_of_built_requests_round_trips() -> None:
    ict = tx.ClientInvite(request(), reliable=False)
    ict.start(0)
    ict.receive(reply(180), 0)
    cancel = ict.cancel(0)[0].request  # type: ignore[union-attr]
    assert parse(encode(cancel)).headers.get_first("call-id") == "c1"  # type: ignore[union-attr]
