"""R10-R14 as pure functions: sender choice, caller ID, number policy."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.domain.index import Number, User
from gateway.domain.number_policy import (
    Refusal,
    may_buy_number,
    may_edit_number_settings,
    may_use_for_text_codes,
)
from gateway.domain.outbound import allowed_senders, choose_caller_id, choose_text_sender, may_send_from

ACCOUNT = 1


def num(
    nid: int, kind: str, owner: int | None = None, office: int | None = None, account: int = ACCOUNT
) -> Number:
    return Number(
        nid,
        account,
        f"+1555010{nid:04d}",
        kind,
        owner,
        office,
        "user",
        (),
        20,
        None,
        None,
        50,  # type: ignore[arg-type]
        "twilio",
    )


def usr(
    uid: int = 5,
    package: str = "upgraded",
    offices: frozenset[int] = frozenset({3}),
    sender: int | None = None,
    account: int = ACCOUNT,
) -> User:
    return User(uid, account, "agent", package, offices, None, sender)  # type: ignore[arg-type]


PERSONAL = num(1, "personal", owner=5)
SOMEONE_ELSES = num(2, "personal", owner=6)
COMPANY = num(3, "company")
COMPANY_OF_MY_OFFICE = num(4, "company", office=3)
COMPANY_OF_OTHER_OFFICE = num(5, "company", office=9)
MY_OFFICE = num(6, "office", office=3)
OTHER_OFFICE = num(7, "office", office=9)
FOREIGN = num(8, "company", account=2)
ALL = [
    PERSONAL,
    SOMEONE_ELSES,
    COMPANY,
    COMPANY_OF_MY_OFFICE,
    COMPANY_OF_OTHER_OFFICE,
    MY_OFFICE,
    OTHER_OFFICE,
    FOREIGN,
]


def test_r10_allow_list() -> None:
    """'their personal number, their account's company numbers, their offices' office numbers'."""
    assert [n.id for n in allowed_senders(usr(), ALL)] == [1, 3, 4, 5, 6]
    assert may_send_from(usr(), SOMEONE_ELSES) == "a personal number is used only by its owner"
    assert may_send_from(usr(), OTHER_OFFICE) == "an office number is used only by that office's users"
    assert may_send_from(usr(), FOREIGN) == "the number belongs to another account"
    assert (
        may_send_from(usr(package="standard"), PERSONAL) == "a personal number requires the upgraded package"
    )
    assert may_send_from(usr(package="none"), COMPANY) == "the user has no call/text package"


def test_r12_every_user_with_a_package_may_use_the_company_number() -> None:
    """'No, currently there is no permission of this type meaning all users on a team can use it'."""
    for package in ("standard", "upgraded"):
        assert may_send_from(usr(package=package, offices=frozenset()), COMPANY) is None


def test_r10_manual_uses_the_pick_if_allowed() -> None:
    """'you will be able to choose between both options when sending a manual text'."""
    assert choose_text_sender(usr(), ALL, "manual", COMPANY).number == COMPANY
    refused = choose_text_sender(usr(), ALL, "manual", SOMEONE_ELSES)
    assert not refused.ok and "only by its owner" in refused.why


@pytest.mark.parametrize(
    ("user", "numbers", "expected", "why"),
    [
        # 'If you edit this option and choose a Sender ID to Display, then that is the number
        # that will be used for auto-texts'
        (usr(sender=6), ALL, MY_OFFICE, "Sender ID"),
        # 'it will default to use the Personal Number if available'
        (usr(), ALL, PERSONAL, "personal"),
        # 'and if not, it will use the Company Number as the secondary option' (their office's first)
        (usr(package="standard"), ALL, COMPANY_OF_MY_OFFICE, "office's company"),
        (usr(package="standard", offices=frozenset()), ALL, COMPANY, "a company number"),
        # A Sender ID the user may no longer use is ignored, not obeyed.
        (usr(sender=2), ALL, PERSONAL, "personal"),
    ],
)
def test_r10_auto_text_sender(user: User, numbers: list[Number], expected: Number, why: str) -> None:
    chosen = choose_text_sender(user, numbers, "auto")
    assert chosen.number == expected and why in chosen.why


@given(st.permutations(ALL), st.sets(st.sampled_from([3, 9, 11])))
def test_r10_auto_text_and_r11_company_caller_id_pick_the_same_company_number(
    numbers: list[Number], offices: set[int]
) -> None:
    """Issue 15, item 4: one order for both rules, whatever the listing order."""
    user = usr(package="standard", offices=frozenset(offices))
    texted = choose_text_sender(user, [n for n in numbers if n.kind != "personal"], "auto").number
    assert choose_caller_id(user, numbers, "company").number == texted


def test_r10_anything_else_is_a_clear_error() -> None:
    assert choose_text_sender(usr(package="none"), ALL, "auto").why == "the user has no call/text package"
    nothing = choose_text_sender(usr(package="standard"), [SOMEONE_ELSES, OTHER_OFFICE, FOREIGN], "auto")
    assert not nothing.ok and "no number this user may send from" in nothing.why


def test_r11_caller_id_choices() -> None:
    """'(a) Company Number (b) Personal Number (requires upgrade) (c) Bridge Number'."""
    # The caller's group's company number first, as R10's auto texts (issue 15, item 4).
    assert choose_caller_id(usr(), ALL, "company").number == COMPANY_OF_MY_OFFICE
    assert choose_caller_id(usr(offices=frozenset()), ALL, "company").number == COMPANY
    assert choose_caller_id(usr(offices=frozenset({9})), ALL, "company").number == COMPANY_OF_OTHER_OFFICE
    assert choose_caller_id(usr(), [PERSONAL], "company").why == "the user has no company number to call from"
    assert choose_caller_id(usr(), ALL, "personal").number == PERSONAL
    assert choose_caller_id(usr(package="standard"), ALL, "personal").why == (
        "a personal number requires the upgraded package"
    )
    assert (
        choose_caller_id(usr(), ALL, "bridge", bridge=COMPANY_OF_OTHER_OFFICE).number
        == COMPANY_OF_OTHER_OFFICE
    )
    assert choose_caller_id(usr(), ALL, "bridge").why == "the account has no bridge number"
    assert choose_caller_id(usr(), ALL, MY_OFFICE.e164).number == MY_OFFICE
    assert not choose_caller_id(usr(), ALL, OTHER_OFFICE.e164).ok
    assert choose_caller_id(usr(), ALL, "+15559999999").why == "the caller ID is not a number of this account"
    assert choose_caller_id(usr(), ALL, None).number == PERSONAL  # the user's default


@given(
    st.sampled_from(["none", "standard", "upgraded"]),
    st.frozensets(st.sampled_from([3, 9])),
    st.one_of(st.none(), st.integers(1, 8)),
    st.sampled_from(["manual", "auto"]),
)
def test_a_chosen_sender_is_always_allowed(
    package: str, offices: frozenset[int], sender: int | None, kind: str
) -> None:
    user = usr(package=package, offices=offices, sender=sender)
    chosen = choose_text_sender(user, ALL, kind)  # type: ignore[arg-type]
    if chosen.number is not None:
        assert may_send_from(user, chosen.number) is None
    else:
        assert chosen.why


def test_r12_settings_are_edited_by_owner_or_admin() -> None:
    assert may_edit_number_settings("owner") is None and may_edit_number_settings("admin") is None
    assert may_edit_number_settings("agent") == "only an owner or admin edits number settings"


def test_r13_buying_numbers() -> None:
    """'The Company Owner (no other roles at this point in time) can buy'; 'only available for the
    Enterprise package'; 'Only one Company Number can be assigned to each group'."""
    owned = [COMPANY_OF_MY_OFFICE]
    assert may_buy_number("owner", "enterprise", "company", 9, owned) is None
    assert may_buy_number("admin", "enterprise", "company", 9, owned) == Refusal(
        "forbidden", "only the account owner buys numbers"
    )
    assert may_buy_number("owner", "standard", "company", 9, owned) == Refusal(
        "forbidden", "buying numbers needs the Enterprise plan"
    )
    duplicate = may_buy_number("owner", "enterprise", "company", 3, owned)
    assert duplicate is not None and duplicate.kind == "conflict"
    assert "already has a company number" in duplicate.reason
    # 'An unlimited amount of Company Numbers may be purchased'
    many = [replace(COMPANY, id=i) for i in range(100)]
    assert may_buy_number("owner", "enterprise", "company", None, many) is None
    assert may_buy_number("owner", "enterprise", "office", None, []) == Refusal(
        "invalid", "an office number needs an office"
    )


def test_r14_no_text_codes_or_postcards_on_shared_numbers() -> None:
    """'Can the Company Number be used for Text Codes via the Campaigns page? Or with Postcards? No.'"""
    assert may_use_for_text_codes(PERSONAL) is None
    for shared in (COMPANY, MY_OFFICE):
        assert "cannot be used for text codes or postcards" in (may_use_for_text_codes(shared) or "")
