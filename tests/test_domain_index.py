"""The pure index against a naive model: any sequence of changes (issue 2)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.domain.index import Index, LeadRef, Number, User, phone_from_key, phone_key

ACCOUNTS = st.integers(1, 3)
PHONES = st.sampled_from(["+15550000001", "+15550000002", "+442071234567"])
LEADS = st.integers(1, 6)

put = st.tuples(st.just("put"), ACCOUNTS, PHONES, LEADS, st.integers(1, 4), st.floats(0, 1e9))
drop = st.tuples(st.just("drop"), ACCOUNTS, PHONES, LEADS)
bulk = st.tuples(st.just("bulk"), ACCOUNTS, PHONES, LEADS, st.integers(1, 4), st.floats(0, 1e9))


@settings(max_examples=300)
@given(st.lists(st.one_of(put, drop, bulk), max_size=40))
def test_lead_phone_changes_match_a_model(ops: list[tuple[object, ...]]) -> None:
    index = Index()
    model: dict[tuple[int, str], dict[int, LeadRef]] = {}
    for op in ops:
        if op[0] == "put" or (op[0] == "bulk" and op[3] not in model.get((op[1], op[2]), {})):
            _, account, phone, lead, agent, created = op
            ref = LeadRef(lead, agent, created)  # type: ignore[arg-type]
            if op[0] == "put":
                index.put_lead_phone(account, phone, ref)  # type: ignore[arg-type]
            else:
                index.load_lead_phone(account, phone_key(phone), ref)  # type: ignore[arg-type]
            model.setdefault((account, phone), {})[lead] = ref  # type: ignore[index]
        elif op[0] == "drop":
            _, account, phone, lead = op
            index.drop_lead_phone(account, phone, lead)  # type: ignore[arg-type]
            model.get((account, phone), {}).pop(lead, None)  # type: ignore[arg-type]
        for (account, phone), leads in model.items():
            got = index.leads_for(account, phone)
            assert sorted(got) == sorted(leads.values())
        assert index.size().lead_phones == sum(len(v) for v in model.values())


def test_another_accounts_lead_never_matches() -> None:
    index = Index()
    index.put_lead_phone(1, "+15550000001", LeadRef(10, 100, 1.0))
    assert index.leads_for(1, "+15550000001") == (LeadRef(10, 100, 1.0),)
    assert index.leads_for(2, "+15550000001") == ()


def test_put_lead_restates_agent_on_every_phone() -> None:
    index = Index()
    for phone in ("+15550000001", "+15550000002"):
        index.put_lead_phone(1, phone, LeadRef(10, 100, 1.0))
    index.put_lead_phone(1, "+15550000002", LeadRef(11, 101, 2.0))
    index.put_lead(1, LeadRef(10, 200, 1.0), ["+15550000001", "+15550000002"])
    assert index.leads_for(1, "+15550000001") == (LeadRef(10, 200, 1.0),)
    assert sorted(index.leads_for(1, "+15550000002")) == [LeadRef(10, 200, 1.0), LeadRef(11, 101, 2.0)]
    assert index.size().lead_phones == 3


def _number(id_: int, e164: str) -> Number:
    return Number(id_, 1, e164, "company", None, None, "user", (5,), 20, "Web", "tag", 50, "twilio")


def test_number_renumbered_drops_old_key() -> None:
    index = Index()
    index.put_number(_number(1, "+15550000009"))
    index.put_number(_number(1, "+15550000008"))
    assert index.number("+15550000009") is None
    assert index.number("+15550000008") == _number(1, "+15550000008")
    index.drop_number(1)
    assert index.number("+15550000008") is None and index.number_by_id(1) is None
    index.drop_number(1)  # idempotent


def test_users_put_and_drop() -> None:
    index = Index()
    user = User(7, 1, "agent", "standard", frozenset({3}), "sip:a@127.0.0.1", None)
    index.put_user(user)
    assert index.user(7) is user
    index.drop_user(7)
    index.drop_user(7)
    assert index.user(7) is None


@given(st.from_regex(r"\+[1-9][0-9]{6,14}", fullmatch=True))
def test_phone_key_round_trips(e164: str) -> None:
    assert phone_from_key(phone_key(e164)) == e164
