"""The B2BUA over the transaction layer, on a fake clock (issue 11): one test
per defect the carrier, the hostile phone and the lossy network found, in
microseconds of real time. SIPp tests of the same defects over real UDP live
in test_sip_rfc3261.py."""

from __future__ import annotations

from collections.abc import Coroutine, Generator
from typing import Any

from aiosipua import SipRequest

from gateway.domain.call_slots import CallSlots, Slot
from gateway.sip.transaction import T1, TIMEOUT
from tests.sip_harness import (
    AGENT,
    AGENT2,
    AGENT_SDP,
    CARRIER,
    SDP,
    Harness,
    answer,
    in_dialog,
    invite,
    to_tag,
)


def ring(h: Harness, **kw: object) -> SipRequest:
    """A call in: the agent's INVITE as the gateway sent it."""
    h.deliver(invite(**kw))  # type: ignore[arg-type]
    sent = h.wire.take()
    assert [s.code for s in sent if s.peer == CARRIER] == [100]
    (leg,) = [s.message for s in sent if s.method == "INVITE"]
    assert isinstance(leg, SipRequest)
    return leg


def answered(h: Harness, *, body: bytes = SDP) -> tuple[SipRequest, str]:
    """A call answered by the agent and ACKed by the caller: (agent INVITE, caller to-tag)."""
    leg = ring(h, body=body)
    h.deliver(answer(leg, 180, "Ringing"), AGENT)
    h.deliver(answer(leg, 200, "OK", body=AGENT_SDP), AGENT)
    ok = next(s for s in h.wire.take() if s.code == 200 and s.peer == CARRIER)
    tag = to_tag(ok.message)
    h.deliver(in_dialog("ACK", tag, branch="z9hG4bKack", cseq=1), CARRIER)
    return leg, tag


# -- defect 2: failure finals are retransmitted (Timer G) until ACK or Timer H --------------------


def test_an_unanswered_callers_480_is_repeated_until_acked() -> None:
    h = Harness()
    leg = ring(h)
    h.deliver(answer(leg, 486, "Busy Here"), AGENT)  # the only agent declines: 480 to the caller
    sent = h.wire.take()
    assert [s.method for s in sent if s.peer == AGENT] == ["ACK"]  # the transaction ACKs the 486
    assert [s.code for s in sent if s.peer == CARRIER] == [480]
    h.advance(T1 + 2 * T1 + 4 * T1)  # the 480 is lost twice...
    assert [s.code for s in h.wire.take()] == [480, 480, 480]
    h.deliver(in_dialog("ACK", to_tag(sent[-1].message), branch="z9hG4bKc1", cseq=1))  # ...then ACKed
    h.advance(TIMEOUT)
    assert h.wire.take() == []
    assert h.slots.total() == 0 and [r.disposition for r in h.recorder.calls] == ["no_answer"]


def test_a_486_at_the_limit_is_repeated_and_gives_up_at_timer_h() -> None:
    h = Harness(limit=1)
    ring(h)
    h.deliver(invite("z9hG4bKc2", call_id="call-2"))
    assert [s.code for s in h.wire.take()] == [100, 486]
    h.advance(TIMEOUT + 1)
    repeats = [s.code for s in h.wire.take() if s.message.headers.get_first("call-id") == "call-2"]
    assert repeats and set(repeats) == {486} and 8 <= len(repeats) <= 12  # G capped at T2, for 64*T1
    assert h.core._servers.get("z9hG4bKc2 INVITE") is None  # Timer H ended it


# -- defect 3: CANCEL retransmissions and BYE in the early dialog -------------------------------


def test_a_retransmitted_cancel_gets_200_again_not_481() -> None:
    h = Harness()
    leg = ring(h)
    h.deliver(answer(leg, 180, "Ringing"), AGENT)
    h.wire.take()
    cancel = invite().replace("INVITE sip", "CANCEL sip", 1).replace("CSeq: 1 INVITE", "CSeq: 1 CANCEL")
    h.deliver(cancel)
    first = h.wire.take()
    assert sorted(s.code for s in first if s.peer == CARRIER) == [200, 487]
    assert [s.method for s in first if s.peer == AGENT] == ["CANCEL"]
    h.deliver(cancel)  # the 200 was lost
    assert [s.code for s in h.wire.take()] == [200]
    assert h.slots.total() == 0


def test_bye_in_the_early_dialog_ends_the_attempt_and_frees_the_slot() -> None:
    h = Harness()
    leg = ring(h)
    h.deliver(answer(leg, 180, "Ringing"), AGENT)
    ringing = next(s for s in h.wire.take() if s.code == 180)
    h.deliver(in_dialog("BYE", to_tag(ringing.message), branch="z9hG4bKbye", cseq=2))
    sent = h.wire.take()
    assert sorted(s.code for s in sent if s.peer == CARRIER) == [200, 487]
    assert [s.method for s in sent if s.peer == AGENT] == ["CANCEL"]  # the agent stops ringing
    assert h.slots.total() == 0 and [r.disposition for r in h.recorder.calls] == ["canceled"]


# -- defect 4: a retransmitted INVITE during a slow routing decision is the same call -------------


def test_invite_retransmissions_while_round_robin_waits_are_one_call() -> None:
    h = Harness(strategy="round_robin", agents=2)
    h.deliver(invite())
    h.deliver(invite())
    h.deliver(invite())  # the database is slow: the carrier's Timer A fires twice
    assert [s.code for s in h.wire.take()] == [100, 100, 100]
    assert h.slots.total() == 1 and len(h.core.calls) == 1
    h.run_spawned()  # the turn is claimed
    invites = [s for s in h.wire.take() if s.method == "INVITE"]
    assert len(invites) == 1 and h.slots.total() == 1


# -- defect 5: CANCEL waits for a provisional (RFC 3261 §9.1) ----------------------------------


def test_a_silent_agent_is_cancelled_only_after_its_first_provisional() -> None:
    h = Harness()
    leg = ring(h)
    cancel = invite().replace("INVITE sip", "CANCEL sip", 1).replace("CSeq: 1 INVITE", "CSeq: 1 CANCEL")
    h.deliver(cancel)
    assert [s.method for s in h.wire.take() if s.peer == AGENT] == []  # nothing heard from it yet
    h.deliver(answer(leg, 100, "Trying"), AGENT)
    assert [s.method for s in h.wire.take() if s.peer == AGENT] == ["CANCEL"]
    h.deliver(answer(leg, 487, "Request Terminated"), AGENT)
    assert [s.method for s in h.wire.take() if s.peer == AGENT] == ["ACK"]


# -- defect 6: a failed re-INVITE is ACKed on both sides ----------------------------------------


def test_a_refused_reinvite_is_acked_toward_the_agent_and_repeated_to_the_caller() -> None:
    h = Harness()
    _, tag = answered(h)
    h.wire.take()
    h.deliver(in_dialog("INVITE", tag, branch="z9hG4bKre1", cseq=2, body=SDP))
    (fwd,) = [s.message for s in h.wire.take() if s.peer == AGENT]
    assert isinstance(fwd, SipRequest) and fwd.method == "INVITE"
    h.deliver(answer(fwd, 488, "Not Acceptable Here"), AGENT)
    sent = h.wire.take()
    assert [s.method for s in sent if s.peer == AGENT] == ["ACK"]
    assert [s.code for s in sent if s.peer == CARRIER] == [488]
    h.advance(T1)
    assert [s.code for s in h.wire.take()] == [488]  # until the caller ACKs it
    h.deliver(in_dialog("ACK", tag, branch="z9hG4bKre1", cseq=2))
    h.advance(10)
    assert [s.code for s in h.wire.take()] == []


def test_reinvite_glare_gets_491() -> None:
    h = Harness()
    _, tag = answered(h)
    h.deliver(in_dialog("INVITE", tag, branch="z9hG4bKre1", cseq=2, body=SDP))
    h.deliver(in_dialog("INVITE", tag, branch="z9hG4bKre2", cseq=3, body=SDP))
    assert 491 in [s.code for s in h.wire.take() if s.peer == CARRIER]


# -- defect 7: delayed offer -------------------------------------------------------------------


def test_delayed_offer_the_callers_answer_in_its_ack_reaches_the_agent() -> None:
    h = Harness()
    leg = ring(h, body=b"")
    assert leg.body == b""
    h.deliver(answer(leg, 200, "OK", body=AGENT_SDP), AGENT)
    sent = h.wire.take()
    ok = next(s for s in sent if s.code == 200)
    assert ok.message.body == AGENT_SDP  # the agent's offer goes to the caller
    assert [s.method for s in sent if s.peer == AGENT] == []  # no empty ACK of our own
    h.deliver(in_dialog("ACK", to_tag(ok.message), branch="z9hG4bKack", cseq=1, body=SDP))
    (ack,) = [s.message for s in h.wire.take() if s.peer == AGENT]
    assert isinstance(ack, SipRequest) and ack.method == "ACK" and ack.body == SDP


def test_delayed_offer_reinvite_relays_the_answer_in_the_ack() -> None:
    h = Harness()
    _, tag = answered(h)
    h.wire.take()
    h.deliver(in_dialog("INVITE", tag, branch="z9hG4bKre1", cseq=2))  # no SDP: asks for an offer
    (fwd,) = [s.message for s in h.wire.take() if s.peer == AGENT]
    assert isinstance(fwd, SipRequest)
    h.deliver(answer(fwd, 200, "OK", body=AGENT_SDP), AGENT)
    sent = h.wire.take()
    assert [s.method for s in sent if s.peer == AGENT] == []  # the ACK waits for the caller's answer
    assert [s.message.body for s in sent if s.peer == CARRIER] == [AGENT_SDP]
    h.deliver(in_dialog("ACK", tag, branch="z9hG4bKack2", cseq=2, body=SDP))
    (ack,) = [s.message for s in h.wire.take() if s.peer == AGENT]
    assert ack.method == "ACK" and ack.body == SDP  # type: ignore[union-attr]
    assert ack.headers.get_first("cseq") == fwd.headers.get_first("cseq").replace("INVITE", "ACK")  # type: ignore[union-attr]


# -- defect 8: loops and Max-Forwards ------------------------------------------------------------


def test_max_forwards_is_decremented_and_zero_gets_483() -> None:
    h = Harness()
    leg = ring(h, max_forwards=5)
    assert leg.headers.get_first("max-forwards") == "4"
    h.deliver(invite("z9hG4bKmf0", call_id="mf0", max_forwards=0))
    assert [s.code for s in h.wire.take()] == [483]
    assert h.slots.total() == 1


def test_an_invite_that_comes_back_through_us_is_a_loop_482() -> None:
    h = Harness()
    leg = ring(h)
    looped = invite("z9hG4bKloop", call_id="loop").replace(
        "Via: ",
        "Via: SIP/2.0/UDP 127.0.0.9:5060;branch=z9hG4bKproxy\r\n"
        f"Via: {leg.headers.get_first('via')}\r\nX-Old-Via: ",
        1,
    )
    h.deliver(looped)
    assert [s.code for s in h.wire.take()] == [482]
    assert h.slots.total() == 1  # only the first call holds a slot; no record, no notification
    assert h.recorder.calls == []


# -- defect 9: session timers -----------------------------------------------------------------


def test_a_caller_that_vanishes_is_hung_up_when_its_session_expires() -> None:
    h = Harness(session_expires_s=90)
    leg = ring(h, extra="Supported: timer\r\nSession-Expires: 90;refresher=uac\r\n")
    h.deliver(answer(leg, 200, "OK", body=AGENT_SDP, extra="Session-Expires: 90;refresher=uas\r\n"), AGENT)
    ok = next(s for s in h.wire.take() if s.code == 200)
    assert ok.message.headers.get_first("session-expires") == "90;refresher=uac"
    assert ok.message.headers.get_first("require") == "timer"
    h.deliver(in_dialog("ACK", to_tag(ok.message), branch="z9hG4bKack", cseq=1))
    h.advance(59)
    assert [s.method for s in h.wire.take()] == []
    h.advance(2)  # 90 - min(32, 90/3) = 60 s without the caller's refresh
    byes = [s for s in h.wire.take() if s.method == "BYE"]
    assert {s.peer for s in byes} == {CARRIER, AGENT}
    assert h.slots.total() == 0 and [r.disposition for r in h.recorder.calls] == ["answered"]


def test_a_refresh_from_the_caller_keeps_the_call_and_we_refresh_the_agent() -> None:
    h = Harness(session_expires_s=90)
    leg = ring(h, extra="Supported: timer\r\nSession-Expires: 90;refresher=uac\r\n")
    h.deliver(answer(leg, 200, "OK", body=AGENT_SDP, extra="Allow: INVITE, ACK, BYE, UPDATE\r\n"), AGENT)
    tag = to_tag(next(s for s in h.wire.take() if s.code == 200).message)
    h.deliver(in_dialog("ACK", tag, branch="z9hG4bKack", cseq=1))
    h.advance(45)  # half the interval: our turn toward the agent, which named no refresher
    (update,) = [s.message for s in h.wire.take() if s.peer == AGENT]
    assert isinstance(update, SipRequest) and update.method == "UPDATE"
    assert update.headers.get_first("session-expires") == "90;refresher=uac"
    h.deliver(answer(update, 200, "OK"), AGENT)
    h.deliver(
        in_dialog("UPDATE", tag, branch="z9hG4bKupd", cseq=2, extra="Session-Expires: 90;refresher=uac\r\n")
    )
    assert [s.code for s in h.wire.take() if s.peer == CARRIER] == [200]
    h.advance(50)  # 95 s after the answer, alive: the caller refreshed at 45 s
    assert [s.method for s in h.wire.take() if s.method == "BYE"] == []
    assert h.slots.total() == 1


def test_a_session_interval_below_min_se_gets_422() -> None:
    h = Harness()
    h.deliver(invite(extra="Supported: timer\r\nSession-Expires: 30\r\n"))
    sent = h.wire.take()
    assert [s.code for s in sent] == [100, 422]
    assert sent[-1].message.headers.get_first("min-se") == "90"
    assert h.slots.total() == 0


# -- defect 10: protocol details ------------------------------------------------------------------


def test_responses_carry_received_and_rport() -> None:
    h = Harness()
    h.deliver(invite(), peer=CARRIER._replace(port=40000))  # NATed: not the port the Via says
    (trying,) = [s for s in h.wire.take() if s.code == 100]
    assert trying.peer.port == 40000
    assert (trying.message.headers.get_first("via") or "").endswith(";received=127.0.0.2;rport=40000")


def test_unknown_required_extension_gets_420_with_unsupported() -> None:
    h = Harness()
    h.deliver(invite(extra="Require: 100rel, foo\r\n"))
    sent = h.wire.take()
    assert [s.code for s in sent] == [420]
    assert sent[-1].message.headers.get("unsupported") == ["100rel", "foo"]


def test_a_lower_cseq_in_a_dialog_gets_500() -> None:
    h = Harness()
    _, tag = answered(h)
    h.deliver(in_dialog("INFO", tag, branch="z9hG4bKi1", cseq=5))
    h.wire.take()
    h.deliver(in_dialog("INFO", tag, branch="z9hG4bKi2", cseq=3))
    assert [s.code for s in h.wire.take()] == [500]


def test_a_body_shorter_than_content_length_is_400() -> None:
    h = Harness()
    text = invite().replace(f"Content-Length: {len(SDP)}", f"Content-Length: {len(SDP) + 40}")
    h.deliver(text)
    assert [s.code for s in h.wire.take()] == [400]
    h.deliver(invite("z9hG4bKc9").replace(f"Content-Length: {len(SDP)}", "Content-Length: many"))
    assert [s.code for s in h.wire.take()] == [400]
    assert h.slots.total() == 0


# -- defect 12: a retransmitted BYE is answered only once the record is durable ------------------


def test_a_retransmitted_bye_waits_for_the_durable_record() -> None:
    h = Harness()
    _, tag = answered(h)
    h.wire.take()
    bye = in_dialog("BYE", tag, branch="z9hG4bKbye", cseq=2)
    h.deliver(bye)
    assert [s.method for s in h.wire.take()] == ["BYE"]  # to the agent; no 200 yet
    h.deliver(bye)  # the caller retransmits
    assert [s.code for s in h.wire.take() if s.peer == CARRIER] == []
    h.recorder.durable()
    assert [s.code for s in h.wire.take() if s.peer == CARRIER] == [200]
    h.deliver(bye)
    assert [s.code for s in h.wire.take()] == [200]
    h.deliver(in_dialog("BYE", tag, branch="z9hG4bKbye2", cseq=3))  # a new BYE for a gone dialog
    assert [s.code for s in h.wire.take()] == [481]


# -- the rest of the life of a call --------------------------------------------------------------


def test_timer_h_on_our_200_hangs_up_both_sides() -> None:
    h = Harness()
    leg = ring(h)
    h.deliver(answer(leg, 200, "OK", body=AGENT_SDP), AGENT)
    h.wire.take()
    h.advance(TIMEOUT + 0.01)
    sent = h.wire.take()
    assert {s.peer for s in sent if s.method == "BYE"} == {CARRIER, AGENT}
    assert [r.disposition for r in h.recorder.calls] == ["failed"] and h.slots.total() == 0


def test_ring_all_first_answer_wins_and_a_late_answer_is_hung_up() -> None:
    h = Harness(strategy="ring_all", agents=2)
    h.deliver(invite())
    legs = {s.peer: s.message for s in h.wire.take() if s.method == "INVITE"}
    assert set(legs) == {AGENT, AGENT2}
    for peer, leg in legs.items():
        h.deliver(answer(leg, 180, "Ringing"), peer)  # type: ignore[arg-type]
    h.deliver(answer(legs[AGENT], 200, "OK", body=AGENT_SDP), AGENT)  # type: ignore[arg-type]
    sent = h.wire.take()
    assert [s.method for s in sent if s.peer == AGENT2] == ["CANCEL"]
    h.deliver(answer(legs[AGENT2], 200, "OK", body=AGENT_SDP, contact=AGENT2), AGENT2)  # type: ignore[arg-type]
    assert [s.method for s in h.wire.take() if s.peer == AGENT2] == ["ACK", "BYE"]


def test_every_transaction_and_timer_ends() -> None:
    h = Harness()
    _, tag = answered(h)
    h.deliver(in_dialog("BYE", tag, branch="z9hG4bKbye", cseq=2))
    (bye,) = [s.message for s in h.wire.take() if s.peer == AGENT]
    h.deliver(answer(bye, 200, "OK"), AGENT)  # type: ignore[arg-type]
    h.recorder.durable()
    h.advance(3 * TIMEOUT)
    assert h.core._clients == {} and h.core._servers == {} and h.core._dialogs == {}
    assert h.clock.pending() == 0 and h.slots.total() == 0


def test_options_and_unknown_methods_are_answered_without_keeping_state() -> None:
    """A scanner's OPTIONS flood must leave no transaction behind for 32 s."""
    h = Harness()
    options = invite("z9hG4bKo1", call_id="o1").replace("INVITE sip", "OPTIONS sip", 1)
    options = options.replace("CSeq: 1 INVITE", "CSeq: 1 OPTIONS")
    h.deliver(options)
    h.deliver(options)  # a retransmission gets the same answer, same tag
    first, second = h.wire.take()
    assert first.code == second.code == 200 and to_tag(first.message) == to_tag(second.message)
    h.deliver(options.replace("OPTIONS sip", "SUBSCRIBE sip", 1).replace("1 OPTIONS", "1 SUBSCRIBE"))
    h.deliver(options.replace("OPTIONS sip", "FROBNICATE sip", 1).replace("1 OPTIONS", "1 FROBNICATE"))
    assert [s.code for s in h.wire.take()] == [405, 501]
    assert h.core._servers == {} and h.clock.pending() == 0


# -- issue 14: R7 on a counter that answers after a round trip (the cluster's) ----------------


class _Answer:
    """A database answer the test releases by hand."""

    def __init__(self) -> None:
        self.error: Exception | None = None

    def __await__(self) -> Generator[None, None, None]:
        yield  # the round trip


class _RoundTripSlots:
    """A CallAdmission whose every answer needs a round trip, over a local count."""

    def __init__(self) -> None:
        self.local = CallSlots()
        self.answers: list[_Answer] = []

    def take(self, number_id: int, limit: int, call_id: str) -> Coroutine[Any, Any, Slot | None]:
        answer = _Answer()
        self.answers.append(answer)

        async def taken() -> Slot | None:
            await answer
            if answer.error is not None:
                raise answer.error
            return self.local.take(number_id, limit)

        return taken()

    def active(self, number_id: int) -> int:
        return self.local.active(number_id)

    def total(self) -> int:
        return self.local.total()

    def busiest(self, count: int) -> list[tuple[int, int]]:
        return self.local.busiest(count)


def _admission_in_flight(h: Harness) -> Coroutine[Any, Any, None]:
    (pending,) = h.clock.coroutines
    h.clock.coroutines.clear()
    pending.send(None)  # up to the round trip
    return pending


def _finish(coroutine: Coroutine[Any, Any, None]) -> None:
    try:
        coroutine.send(None)
    except StopIteration:
        return
    raise AssertionError("the admission awaited twice")


def test_a_cancel_while_the_cluster_counter_answers_gets_487_and_the_slot_goes_back() -> None:
    slots = _RoundTripSlots()
    h = Harness(slots=slots)
    h.deliver(invite())
    h.deliver(invite())  # the carrier's Timer A: still one admission
    assert [s.code for s in h.wire.take()] == [100, 100] and len(slots.answers) == 1
    pending = _admission_in_flight(h)
    h.deliver(invite().replace("INVITE sip", "CANCEL sip", 1).replace("CSeq: 1 INVITE", "CSeq: 1 CANCEL"))
    assert sorted(s.code for s in h.wire.take()) == [200, 487]
    _finish(pending)  # the counter admitted the call after all
    assert slots.total() == 0 and not h.core.calls  # released at once, nothing rang
    assert not [s for s in h.wire.take() if s.method == "INVITE"]


def test_an_admission_that_fails_unexpectedly_answers_503_not_silence() -> None:
    slots = _RoundTripSlots()
    h = Harness(slots=slots)
    h.deliver(invite())
    h.wire.take()
    pending = _admission_in_flight(h)
    slots.answers[0].error = RuntimeError("a bug")
    _finish(pending)
    (refused,) = h.wire.take()
    assert refused.code == 503 and slots.total() == 0


def test_a_call_admitted_after_the_round_trip_rings_and_releases_once() -> None:
    slots = _RoundTripSlots()
    h = Harness(slots=slots)
    h.deliver(invite())
    h.wire.take()
    _finish(_admission_in_flight(h))
    assert slots.total() == 1
    (leg,) = [s for s in h.wire.take() if s.method == "INVITE"]
    assert leg.peer == AGENT
