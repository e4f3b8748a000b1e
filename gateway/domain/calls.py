"""How a routed call is placed and how it ended (R4, R6, R7, R9): pure rules.

:func:`call_plan` turns a routing decision into hunt steps: each step is the
set of destinations rung at once, with its no-answer timeout. ``single`` is
one step of one; ``ring_all`` one step of all (first answer wins);
``sequential`` and (already rotated) ``round_robin`` one step per user, in
order. Users with no call destination cannot be rung and are left out.

:func:`disposition` names the ending that the call record stores.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from gateway.domain.index import Index, Number
from gateway.domain.routing import Decision, unknown_route

Disposition = Literal["answered", "busy_limit", "no_answer", "canceled", "rejected", "failed"]


@dataclass(frozen=True, slots=True)
class Target:
    user_id: int | None  # None: an outbound call to the trunk
    destination: str  # a SIP URI, or an E.164 reached through the outbound trunk


@dataclass(frozen=True, slots=True)
class Step:
    targets: tuple[Target, ...]
    timeout_s: float
    label: str = ""  # why this step rings (the call record's step log): agent, route, fallback


OVERFLOW_RING_S = 60.0  # an answering service or another office gets a full minute
TEXT_BACK = "Sorry we missed your call: every line is busy. We will call you back shortly."
OverLimitAction = Literal["busy", "forward", "text_back"]


def over_limit_action(number: Number, caller: str | None) -> OverLimitAction:
    """Issue 15, item 8: what the caller past the R7 limit gets. A text-back
    needs a number to text (a withheld caller just gets busy); a forward needs
    its target."""
    if number.overflow == "forward" and number.overflow_target:
        return "forward"
    if number.overflow == "text_back" and caller is not None and caller.startswith("+"):
        return "text_back"
    return "busy"


def overflow_plan(number: Number) -> tuple[Step, ...]:
    """The forward leg for a caller past the limit: the overflow target alone."""
    assert number.overflow_target is not None
    return (Step((Target(None, number.overflow_target),), OVERFLOW_RING_S),)


def text_back_message(number: Number) -> str:
    return number.overflow_text or TEXT_BACK


AFTER_HOURS_TEXT = "Thanks for calling. We are closed right now and will call you back when we open."


def after_hours_plan(number: Number, decision: Decision, index: Index) -> tuple[Step, ...]:
    """R16: outside hours, the forward target alone, nobody (a text-back), or
    the after-hours users the decision names."""
    if number.after_hours == "forward" and number.after_hours_target:
        return (Step((Target(None, number.after_hours_target),), OVERFLOW_RING_S),)
    if number.after_hours == "text_back":
        return ()
    return call_plan(index, decision)


# Decisions that ring a lead's own agent (R1-R3) or a personal number's owner (R5).
_OWN_AGENT = frozenset(("existing_lead", "duplicate_same_agent", "duplicate_most_recent", "personal_number"))


def call_plan(index: Index, decision: Decision, number: Number | None = None) -> tuple[Step, ...]:
    """The hunt for ``decision`` (R4): who is rung together, in which order, and
    for how long. Empty when nobody reachable remains (R6: answer 480).

    With ``number``, one chain for every caller (issue 15, item 9; R18): a
    lead's agent first, then, unanswered, the number's route (the
    unknown-caller pool, without whoever already rang), then the number's
    ``fallback_target``; an unknown caller's route, then the fallback."""
    label = "agent" if decision.reason in _OWN_AGENT else "route"
    steps = _steps(index, decision, label)
    if number is None:
        return steps
    if decision.reason in _OWN_AGENT:
        pool = unknown_route(index, number, decision.timeline_leads)
        rung = set(decision.targets)
        rest = replace(pool, targets=tuple(u for u in pool.targets if u not in rung))
        steps += _steps(index, rest, "route")
    if number.fallback_target:
        steps += (Step((Target(None, number.fallback_target),), OVERFLOW_RING_S, "fallback"),)
    return steps


def _steps(index: Index, decision: Decision, label: str) -> tuple[Step, ...]:
    reachable = []
    for user_id in decision.targets:
        user = index.user(user_id)
        if user is not None and user.call_destination:
            reachable.append(Target(user_id, user.call_destination))
    if not reachable:
        return ()
    timeout = float(decision.step_timeout_s)
    if decision.strategy == "ring_all":
        return (Step(tuple(reachable), timeout, label),)
    if decision.strategy == "single":
        return (Step((reachable[0],), timeout, label),)
    return tuple(Step((target,), timeout, label) for target in reachable)


def disposition(
    *, answered: bool, canceled: bool, failed: bool, rejected: bool, busy_limit: bool = False
) -> Disposition:
    """The call record's disposition; the first that applies wins."""
    if busy_limit:
        return "busy_limit"  # R7: refused before anyone rang
    if answered:
        return "answered"
    if canceled:
        return "canceled"  # the caller hung up while it rang
    if failed:
        return "failed"  # transport or protocol failure on our side of the call
    if rejected:
        return "rejected"  # nobody could be rung (R6 no target, unknown number)
    return "no_answer"  # every target timed out or declined (486, 480, 603 ...)


def carrier_status(disp: Disposition) -> tuple[int, str]:
    """The final response the caller gets for an unanswered call."""
    if disp == "busy_limit":
        return 486, "Busy Here"
    if disp == "canceled":
        return 487, "Request Terminated"
    if disp == "failed":
        return 500, "Server Internal Error"
    return 480, "Temporarily Unavailable"
