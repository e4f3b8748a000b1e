"""R7 slots, the R4 hunt plan, dispositions and SIP digest, as pure code."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.domain.call_slots import CallSlots
from gateway.domain.calls import Step, Target, call_plan, carrier_status, disposition
from gateway.domain.index import Index
from gateway.domain.routing import Decision
from tests.test_domain_routing import user


@settings(max_examples=300)
@given(
    st.lists(
        st.tuples(st.sampled_from(["take", "release", "release_again"]), st.integers(1, 3)), max_size=200
    )
)
def test_slots_never_exceed_the_limit_and_release_exactly_once(ops: list[tuple[str, int]]) -> None:
    """R7: whatever the order of takes and (repeated) releases, the count per
    number stays within [0, limit] and equals the slots held."""
    limit = 3
    slots = CallSlots()
    held = []
    for op, number_id in ops:
        if op == "take":
            slot = slots.take(number_id, limit)
            assert (slot is None) == (sum(1 for s in held if s.number_id == number_id) == limit)
            if slot is not None:
                held.append(slot)
        elif held:
            slot = held[0]
            assert slot.release() is True
            assert slot.release() is False  # a second ending frees nothing
            held.pop(0)
        for n in (1, 2, 3):
            assert slots.active(n) == sum(1 for s in held if s.number_id == n) <= limit
    assert slots.total() == len(held)


def test_the_51st_call_is_refused_and_a_release_makes_room() -> None:
    slots = CallSlots()
    taken = [slots.take(7, 50) for _ in range(50)]
    assert all(taken) and slots.take(7, 50) is None
    assert taken[0] is not None and taken[0].release()
    assert slots.take(7, 50) is not None
    assert slots.busiest(1) == [(7, 50)]


def index_with_phones() -> Index:
    index = Index()
    index.put_user(user(1))
    index.put_user(user(2))
    index.put_user(user(3))
    no_phone = user(4)
    index.put_user(
        no_phone.__class__(
            **{**{f: getattr(no_phone, f) for f in no_phone.__slots__}, "call_destination": None}
        )
    )
    return index


def test_call_plan_follows_the_strategy() -> None:
    """R4: ring_all rings everyone at once; sequential one at a time, in order;
    users without a phone are skipped; nobody reachable means no plan (480)."""
    index = index_with_phones()
    d = Decision("unknown_caller", "ring_all", (1, 2, 4, 3), (), 12)
    (step,) = call_plan(index, d)
    assert [t.user_id for t in step.targets] == [1, 2, 3] and step.timeout_s == 12
    seq = call_plan(index, Decision("unknown_caller", "sequential", (3, 1), (), 5))
    assert seq == (
        Step((Target(3, "sip:u3@127.0.0.1"),), 5.0, "route"),
        Step((Target(1, "sip:u1@127.0.0.1"),), 5.0, "route"),
    )
    assert len(call_plan(index, Decision("existing_lead", "single", (2,), (9,), 20))) == 1
    assert call_plan(index, Decision("unknown_caller", "single", (4,), (), 20)) == ()


def test_dispositions_and_carrier_answers() -> None:
    assert (
        disposition(answered=False, canceled=False, failed=False, rejected=False, busy_limit=True)
        == "busy_limit"
    )
    assert disposition(answered=True, canceled=False, failed=False, rejected=False) == "answered"
    assert disposition(answered=False, canceled=True, failed=False, rejected=False) == "canceled"
    assert disposition(answered=False, canceled=False, failed=False, rejected=True) == "rejected"
    assert disposition(answered=False, canceled=False, failed=False, rejected=False) == "no_answer"
    assert carrier_status("no_answer") == (480, "Temporarily Unavailable")
    assert carrier_status("busy_limit")[0] == 486
