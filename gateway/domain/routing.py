"""Inbound routing (DESIGN §1, R1-R6): who gets a call or text, and which
leads' timelines record it. Everything that affects that decision lives here.

:func:`route` is a pure function of the index snapshot, the dialled number
and the caller's E.164 number. It never looks outside the number's account,
and it never names a user without a call/text package (R6).

Round-robin (R4) needs a cursor shared by every process that routes, so it is
the one input that lives in Postgres: :func:`route` lists the eligible users in
configured order, and the caller rotates them with :func:`rotate` and the
cursor it claimed.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from typing import Literal

from gateway.domain.hours import is_open
from gateway.domain.index import Index, LeadRef, Number, User

Reason = Literal[
    "existing_lead",  # R1
    "duplicate_same_agent",  # R2
    "duplicate_most_recent",  # R3
    "unknown_caller",  # R4
    "personal_number",  # R5
    "fallback_no_package",  # R6: the lead's agent has no package; the unknown-caller route took over
    "no_target",  # R6: nobody eligible remains
    "after_hours",  # R16: a call outside the number's business hours took its after-hours route
]
# How targets are tried: one user; all at once, first answer wins; in order with a
# per-step timeout; or in rotation (which, once rotated, hunts like sequential).
Strategy = Literal["single", "ring_all", "sequential", "round_robin"]
Channel = Literal["call", "text"]


@dataclass(frozen=True, slots=True)
class Decision:
    reason: Reason
    strategy: Strategy
    targets: tuple[int, ...]  # user ids, in the order to try them
    timeline_leads: tuple[int, ...]  # lead ids that get a timeline record (R1-R3)
    step_timeout_s: int  # per-target no-answer timeout for sequential hunting
    skipped: tuple[int, ...] = ()  # users passed over for lacking a package (R6)

    @property
    def unknown_caller(self) -> bool:
        """No lead owns the caller: an unanswered call raises an R8 notification."""
        return not self.timeline_leads

    def text_recipients(self) -> tuple[int, ...]:
        """R4 for texts: ``ring_all`` delivers to every target, the others to one."""
        return self.targets if self.strategy == "ring_all" else self.targets[:1]


def can_use(user: User | None, number: Number) -> bool:
    """R6/R12: any user of the number's account with a call/text package may use it."""
    return user is not None and user.account_id == number.account_id and user.package != "none"


def route(index: Index, number: Number, caller: str | None, call_at: datetime | None = None) -> Decision:
    """The routing decision for a call or text from ``caller`` (E.164, or None
    when withheld) to ``number``; ``call_at`` (a call's arrival; None for a
    text) applies the number's business hours (R16). A few dict lookups; no I/O."""
    leads = index.leads_for(number.account_id, caller) if caller else ()
    timeline, agent, reason = lead_rules(leads)
    if call_at is not None and not is_open(number.hours, call_at):
        return _after_hours(index, number, timeline)
    if number.kind == "personal":  # R5: the owner, whoever calls; R1-R3 still pick the records.
        agent, reason = number.owner_user_id, "personal_number"
    if agent is None:  # R4
        return _unknown_route(index, number, "unknown_caller", timeline)
    if can_use(index.user(agent), number):
        return Decision(reason, "single", (agent,), timeline, number.step_timeout_s)
    fallback = _unknown_route(index, number, "fallback_no_package", timeline)  # R6
    return replace(fallback, skipped=(agent, *fallback.skipped))


def newest(leads: tuple[LeadRef, ...]) -> LeadRef:
    """R3's "lead that was created most recently". Ties on creation time go to
    the greater lead id (the later insert), so the choice is deterministic."""
    return max(leads, key=lambda lead: (lead.created_at, lead.lead_id))


def rotate(targets: tuple[int, ...], cursor: int) -> tuple[int, ...]:
    """R4 round-robin: start the hunt at ``cursor`` (mod the number of targets).
    Successive cursors hand out first places whose counts differ by at most one."""
    if not targets:
        return targets
    start = cursor % len(targets)
    return targets[start:] + targets[:start]


def lead_rules(leads: tuple[LeadRef, ...]) -> tuple[tuple[int, ...], int | None, Reason]:
    """R1-R3: (leads that get timeline records, the agent, the reason)."""
    if not leads:
        return (), None, "unknown_caller"
    if len(leads) == 1:  # R1
        return (leads[0].lead_id,), leads[0].agent_id, "existing_lead"
    agent = leads[0].agent_id
    if all(lead.agent_id == agent for lead in leads):  # R2: every duplicate gets a record
        return tuple(sorted(lead.lead_id for lead in leads)), agent, "duplicate_same_agent"
    chosen = newest(leads)  # R3: only the newest lead gets a record
    return (chosen.lead_id,), chosen.agent_id, "duplicate_most_recent"


def unknown_route(index: Index, number: Number, timeline: tuple[int, ...]) -> Decision:
    """R4's route for ``number`` whoever calls: the pool a lead's call falls
    back to when its agent does not answer (R18)."""
    return _unknown_route(index, number, "unknown_caller", timeline)


def _after_hours(index: Index, number: Number, timeline: tuple[int, ...]) -> Decision:
    """R16: outside business hours every caller, lead or not, takes the
    after-hours route: its users at once (minus those who may not use the
    number, R6), or nobody for a forward or text-back (the call layer acts)."""
    if number.after_hours != "users":
        return Decision("after_hours", "single", (), timeline, number.step_timeout_s)
    eligible, skipped = _eligible(index, number, number.after_hours_user_ids)
    return Decision("after_hours", "ring_all", eligible, timeline, number.step_timeout_s, skipped)


def _unknown_route(index: Index, number: Number, reason: Reason, timeline: tuple[int, ...]) -> Decision:
    """R4: the number's unknown-caller route, minus users who may not use it (R6)."""
    configured = number.route_user_ids[:1] if number.unknown_route == "user" else number.route_user_ids
    eligible, skipped = _eligible(index, number, configured)
    strategy: Strategy = "single" if number.unknown_route == "user" else number.unknown_route
    if not eligible:
        return Decision("no_target", strategy, (), timeline, number.step_timeout_s, skipped)
    return Decision(reason, strategy, eligible, timeline, number.step_timeout_s, skipped)


def _eligible(
    index: Index, number: Number, users: tuple[int, ...]
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """R6: (the users who may use the number, in order; those passed over)."""
    eligible = tuple(u for u in users if can_use(index.user(u), number))
    return eligible, tuple(u for u in users if u not in eligible)
