"""R1-R6 as pure decisions: a table quoting the seeds, then properties over
generated accounts (issue 3)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field, replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.domain.index import Index, LeadRef, Number, User
from gateway.domain.routing import Decision, can_use, newest, rotate, route

ACCOUNT, OTHER = 1, 2
CALLER = "+15557770000"


def user(uid: int, package: str = "standard", account: int = ACCOUNT) -> User:
    return User(uid, account, "agent", package, frozenset(), f"sip:u{uid}@127.0.0.1", None)  # type: ignore[arg-type]


def number(
    kind: str = "company", route: str = "user", route_users: tuple[int, ...] = (90,), owner: int | None = None
) -> Number:
    return Number(
        7,
        ACCOUNT,
        "+15550100000",
        kind,
        owner,
        3 if kind == "office" else None,  # type: ignore[arg-type]
        route,
        route_users,
        15,
        "Company Number",
        "inbound",
        50,
        "twilio",
    )  # type: ignore[arg-type]


@dataclass
class World:
    users: list[User] = field(default_factory=lambda: [user(u) for u in (10, 11, 12, 90, 91, 92)])
    leads: list[tuple[int, str, LeadRef]] = field(default_factory=list)

    def index(self) -> Index:
        idx = Index()
        for u in self.users:
            idx.put_user(u)
        for account, phone, ref in self.leads:
            idx.put_lead_phone(account, phone, ref)
        return idx


def lead(lead_id: int, agent: int, created: float, account: int = ACCOUNT, phone: str = CALLER):
    return (account, phone, LeadRef(lead_id, agent, created))


# Each case: the seed sentence it checks, the world, the number, and the decision expected.
CASES = [
    (
        "R1 'Inbound calls/texts from EXISTING leads will be sent directly to the user listed "
        "in the primary Agent role of a lead record'",
        [lead(1, 10, 100.0)],
        number(),
        Decision("existing_lead", "single", (10,), (1,), 15),
    ),
    (
        "R2 'their primary agent is the same, the call/text will be sent to that agent and a timeline "
        "record will be made on all the lead records'",
        [lead(1, 10, 100.0), lead(2, 10, 300.0), lead(3, 10, 200.0)],
        number(),
        Decision("duplicate_same_agent", "single", (10,), (1, 2, 3), 15),
    ),
    (
        "R3 'sent to the agent who owns the lead that was created most recently and a timeline record "
        "will be made only on that lead'",
        [lead(1, 10, 100.0), lead(2, 11, 300.0), lead(3, 12, 200.0)],
        number(),
        Decision("duplicate_most_recent", "single", (11,), (2,), 15),
    ),
    (
        "R3 tie on creation time: the greater lead id wins (documented choice)",
        [lead(5, 10, 100.0), lead(4, 11, 100.0)],
        number(),
        Decision("duplicate_most_recent", "single", (10,), (5,), 15),
    ),
    (
        "R4 'Inbound calls/texts from UNKNOWN leads will be sent directly to the specific user defined "
        "in the Company Number settings'",
        [],
        number(route_users=(90, 91)),
        Decision("unknown_caller", "single", (90,), (), 15),
    ),
    (
        "R4 ring_all: the blast to several users",
        [],
        number(route="ring_all", route_users=(90, 91, 92)),
        Decision("unknown_caller", "ring_all", (90, 91, 92), (), 15),
    ),
    (
        "R4 sequential: hunt in configured order with the per-step timeout",
        [],
        number(route="sequential", route_users=(92, 90)),
        Decision("unknown_caller", "sequential", (92, 90), (), 15),
    ),
    (
        "R4 round_robin: eligible users in configured order, rotated by the shared cursor later",
        [],
        number(route="round_robin", route_users=(90, 91)),
        Decision("unknown_caller", "round_robin", (90, 91), (), 15),
    ),
    (
        "R4 'a lead of another account never matches, even with the same phone'",
        [lead(1, 10, 100.0, account=OTHER)],
        number(),
        Decision("unknown_caller", "single", (90,), (), 15),
    ),
    (
        "R5 personal numbers route to their owner for every caller; R1 still picks the record",
        [lead(1, 10, 100.0)],
        number(kind="personal", owner=12),
        Decision("personal_number", "single", (12,), (1,), 15),
    ),
    (
        "R5 personal number, unknown caller: the owner",
        [],
        number(kind="personal", owner=12),
        Decision("personal_number", "single", (12,), (), 15),
    ),
    (
        "Office number 'functions the same way as Company Numbers' (Lofty)",
        [lead(1, 11, 100.0)],
        number(kind="office"),
        Decision("existing_lead", "single", (11,), (1,), 15),
    ),
]


@pytest.mark.parametrize(("rule", "leads", "num", "expected"), CASES, ids=[c[0][:40] for c in CASES])
def test_rule_table(rule: str, leads: list, num: Number, expected: Decision) -> None:
    world = World(leads=leads)
    assert route(world.index(), num, CALLER) == expected, rule


def test_r6_agent_without_package_falls_back_to_unknown_route_and_says_why() -> None:
    world = World(leads=[lead(1, 10, 100.0)])
    world.users[0] = user(10, package="none")
    decision = route(world.index(), number(route="ring_all", route_users=(90, 91)), CALLER)
    assert decision == Decision("fallback_no_package", "ring_all", (90, 91), (1,), 15, skipped=(10,))
    assert not decision.unknown_caller  # the caller is a lead: records, not a notification


def test_r6_no_eligible_target_left() -> None:
    world = World(leads=[lead(1, 10, 100.0)])
    world.users = [user(10, package="none"), user(90, package="none")]
    decision = route(world.index(), number(route_users=(90,)), CALLER)
    assert decision.reason == "no_target" and decision.targets == ()
    assert decision.timeline_leads == (1,)  # the record is still kept: nothing is lost
    assert decision.skipped == (10, 90)


def test_r6_route_users_without_package_or_of_another_account_are_skipped() -> None:
    world = World()
    world.users += [user(93, package="none"), user(94, account=OTHER)]
    decision = route(world.index(), number(route="ring_all", route_users=(93, 90, 94, 91)), CALLER)
    assert decision.targets == (90, 91) and decision.skipped == (93, 94)


def test_withheld_caller_is_unknown() -> None:
    assert route(World().index(), number(), None).reason == "unknown_caller"


def test_user_route_uses_only_the_first_configured_user() -> None:
    world = World()
    world.users[3] = user(90, package="none")
    decision = route(world.index(), number(route="user", route_users=(90, 91)), CALLER)
    assert decision.reason == "no_target"  # Chime: "one specific person", no silent substitute


def test_text_recipients() -> None:
    blast = Decision("unknown_caller", "ring_all", (1, 2, 3), (), 15)
    assert blast.text_recipients() == (1, 2, 3)
    assert replace(blast, strategy="sequential").text_recipients() == (1,)
    assert replace(blast, strategy="round_robin").text_recipients() == (1,)
    assert replace(blast, targets=()).text_recipients() == ()


# -- properties over generated accounts ------------------------------------

agents = st.sampled_from([10, 11, 12, 13])
lead_refs = st.lists(
    st.builds(LeadRef, st.integers(1, 50), agents, st.sampled_from([1.0, 2.0, 3.0, 4.5])),
    max_size=6,
    unique_by=lambda r: r.lead_id,
)
packages = st.fixed_dictionaries(
    {u: st.sampled_from(["none", "standard", "upgraded"]) for u in (10, 11, 12, 13, 90, 91)}
)
other_account_leads = st.lists(
    st.builds(LeadRef, st.integers(51, 60), st.just(99), st.floats(0, 9)),
    max_size=2,
    unique_by=lambda r: r.lead_id,
)


@settings(max_examples=500)
@given(
    lead_refs,
    other_account_leads,
    packages,
    st.sampled_from(["user", "ring_all", "round_robin", "sequential"]),
    st.sampled_from(["company", "office", "personal"]),
)
def test_properties(
    refs: list[LeadRef], foreign: list[LeadRef], pkgs: dict[int, str], strategy: str, kind: str
) -> None:
    idx = Index()
    for uid, pkg in pkgs.items():
        idx.put_user(user(uid, pkg))
    idx.put_user(user(99, account=OTHER))
    for ref in refs:
        idx.put_lead_phone(ACCOUNT, CALLER, ref)
    for ref in foreign:
        idx.put_lead_phone(OTHER, CALLER, ref)
    num = number(
        kind=kind, route=strategy, route_users=(90, 91, 99), owner=13 if kind == "personal" else None
    )
    decision = route(idx, num, CALLER)

    # Never a user of another account, never a user without a package (R6).
    for target in decision.targets:
        assert can_use(idx.user(target), num)
    # The timeline leads are exactly what R1-R3 say, and only this account's.
    ids = {r.lead_id for r in refs}
    if not refs:
        assert decision.timeline_leads == ()
    elif len({r.agent_id for r in refs}) == 1:
        assert set(decision.timeline_leads) == ids  # R2 (and R1)
    else:
        best = max(refs, key=lambda r: (r.created_at, r.lead_id))
        assert decision.timeline_leads == (best.lead_id,)  # R3
        assert all(best.created_at >= r.created_at for r in refs)
    # The rule's agent is the one target whenever it may use the number; else R6 falls back.
    if kind == "personal":
        expected_agent: int | None = 13
    elif not refs:
        expected_agent = None
    elif len({r.agent_id for r in refs}) == 1:
        expected_agent = refs[0].agent_id
    else:
        expected_agent = max(refs, key=lambda r: (r.created_at, r.lead_id)).agent_id
    if expected_agent is not None and can_use(idx.user(expected_agent), num):
        assert decision.targets == (expected_agent,) and decision.strategy == "single"
    elif expected_agent is not None:
        assert decision.reason in ("fallback_no_package", "no_target")
        assert expected_agent in decision.skipped
    else:
        assert decision.reason in ("unknown_caller", "no_target")
    if decision.reason == "no_target":
        assert decision.targets == ()


@given(
    st.lists(
        st.builds(LeadRef, st.integers(1, 99), st.integers(1, 5), st.sampled_from([1.0, 2.0])),
        min_size=1,
        max_size=8,
        unique_by=lambda r: r.lead_id,
    )
)
def test_r3_newest_has_greatest_creation_time_then_id(refs: list[LeadRef]) -> None:
    chosen = newest(tuple(refs))
    assert all((chosen.created_at, chosen.lead_id) >= (r.created_at, r.lead_id) for r in refs)
    assert newest(tuple(reversed(refs))) == chosen  # order of the index never matters


@given(st.integers(1, 12), st.integers(0, 10_000), st.integers(1, 200))
def test_round_robin_is_fair(n_users: int, start: int, picks: int) -> None:
    targets = tuple(range(100, 100 + n_users))
    firsts = Counter(rotate(targets, cursor)[0] for cursor in range(start, start + picks))
    counts = [firsts.get(t, 0) for t in targets]
    assert max(counts) - min(counts) <= 1
    assert sorted(rotate(targets, start)) == sorted(targets)  # a rotation, nobody lost
