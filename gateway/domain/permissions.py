"""Who may change whom: roles rank owner > admin > agent (issue 4, R12)."""

from __future__ import annotations

from gateway.domain.index import Role

RANK = {"agent": 0, "admin": 1, "owner": 2}

# Fields a user may change on themselves; the rest need a manager.
SELF_SERVICE = frozenset({"name", "sender_number_id", "call_destination", "sip_username", "sip_password"})


def may_manage_user(actor_id: int, actor_role: Role, target_id: int, target_role: Role) -> str | None:
    """None if the actor may change or remove the target user, else why. Managers
    act only on users ranked below them; nobody changes roles above their own."""
    if actor_id == target_id:
        return None
    if actor_role == "agent":
        return "agents manage only themselves"
    if RANK[target_role] >= RANK[actor_role]:
        return f"an {actor_role} cannot manage an {target_role}"
    return None


def may_change_fields(actor_id: int, actor_role: Role, target_id: int, fields: set[str]) -> str | None:
    """Self-service covers profile fields; package, allowances and roles need a
    manager above the user. Only the owner, who pays, sets their own package:
    an admin raising their own package or allowances is charging the owner."""
    managed = fields - SELF_SERVICE
    if actor_id == target_id:
        if "role" in fields:
            return "nobody changes their own role"
        if managed and actor_role != "owner":
            return f"only the owner changes your {', '.join(sorted(managed))}"
        return None
    if actor_role in ("owner", "admin"):
        return None
    if managed:
        return f"only an owner or admin changes {', '.join(sorted(managed))}"
    return None


def may_grant_role(actor_role: Role, role: Role) -> str | None:
    """Owners make admins and agents; admins make agents; there is one owner."""
    if role == "owner":
        return "an account has exactly one owner"
    if RANK[role] >= RANK[actor_role]:
        return f"an {actor_role} cannot grant the {role} role"
    return None
