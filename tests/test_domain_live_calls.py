"""The live-calls board of the admin console (issue 16, item 3), as plain
data: whatever order calls start, are answered and end in, each account
sees exactly its own calls in progress, each change tells its listeners
once, and an idle account holds nothing."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from gateway.domain.live_calls import LiveCalls

steps = st.lists(
    st.tuples(st.sampled_from(["start", "answer", "end", "end"]), st.integers(1, 3), st.integers(0, 20)),
    max_size=60,
)


@given(steps)
def test_the_board_is_the_calls_in_progress_of_each_account(script: list[tuple[str, int, int]]) -> None:
    live = LiveCalls()
    told: dict[int, int] = {1: 0, 2: 0, 3: 0}
    for account in told:
        live.listen(account, lambda account=account: told.__setitem__(account, told[account] + 1))
    model: dict[int, tuple[int, str]] = {}  # call id -> (account, state)
    expected_changes = dict.fromkeys(told, 0)
    for action, account, pick in script:
        ids = sorted(model)
        if action == "start":
            call = live.started(account, 100 + account, f"+1555000{pick:04d}", 1_800_000_000.0)
            assert call not in model
            model[call] = (account, "ringing")
            expected_changes[account] += 1
        elif ids:
            call = ids[pick % len(ids)]
            owner, state = model[call]
            if action == "answer":
                live.answered(call, 1_800_000_001.0)
                if state == "ringing":
                    model[call] = (owner, "answered")
                    expected_changes[owner] += 1
            else:
                live.ended(call)
                live.ended(call)  # a second ending changes nothing
                del model[call]
                expected_changes[owner] += 1
    for account in told:
        board = live.of_account(account)
        expected = [(i, state) for i, (owner, state) in sorted(model.items()) if owner == account]
        assert [(c.id, c.state) for c in board] == expected
        assert all(c.account_id == account for c in board)
    assert told == expected_changes
    assert len(live) == len(model)
    for call in list(model):
        live.ended(call)
    assert live._by_account == {}  # idle accounts cost nothing


def test_a_listener_that_stopped_hears_nothing() -> None:
    live = LiveCalls()
    heard: list[int] = []
    stop = live.listen(7, lambda: heard.append(1))
    live.started(7, 1, "+15550000001", 0.0)
    stop()
    stop()  # twice is harmless
    live.started(7, 1, "+15550000002", 0.0)
    assert heard == [1]
    assert live._listeners == {}
