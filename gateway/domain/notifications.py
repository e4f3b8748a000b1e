"""R8: who hears about an unknown caller or texter, and when (issue 15,
items 1 and 2). Pure functions of the routing decision.

Seed (Lofty, "Unknown Inbound Call & Text Routing"): an unknown caller is
never lost. Whatever kept a call from being answered (nobody picked up, the
caller hung up, nobody could be rung because the route's users have no phone
or the route was never configured, the number was at its R7 limit), and for
every text from an unknown number, a notification reaches someone who can
turn the caller into a lead: the users the decision routed to, or, when it
routed to nobody, the account's owners and admins.
"""

from __future__ import annotations

from gateway.domain.routing import Decision

# Every call ending but an answer leaves an unknown caller waiting for someone.
UNANSWERED = frozenset(("no_answer", "canceled", "rejected", "failed", "busy_limit"))


def call_raises_r8(decision: Decision, caller: str, disposition: str) -> bool:
    """An inbound call from an unknown caller that nobody answered; a withheld
    number ("anonymous") cannot become a lead, so it raises nothing."""
    return decision.unknown_caller and caller.startswith("+") and disposition in UNANSWERED


def text_raises_r8(decision: Decision, sender: str) -> bool:
    """Every text from an unknown number (a text is never "answered"); the
    store keeps one open notification per number, sender and user."""
    return decision.unknown_caller and sender.startswith("+")


def r8_recipients(decision: Decision) -> tuple[int, ...] | None:
    """The users to notify: everyone the decision routed to, or None for "the
    account's owners and admins" when it routed to nobody (R6 no target, a
    route never configured)."""
    return decision.targets or None
