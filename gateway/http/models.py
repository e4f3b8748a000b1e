"""Request models of the HTTP API: validation and OpenAPI schemas in one place."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

Id = Annotated[int, Field(ge=1, le=2**63 - 1)]


class Strict(BaseModel):
    """No coercion ("7" is not 7), no unknown fields: a typo is an error, not a no-op."""

    model_config = ConfigDict(extra="forbid", strict=True)


class NotificationAction(Strict):
    """R8: settle an unknown-caller notification."""

    action: Literal["new_lead", "associate"]
    lead_id: Id | None = Field(None, description="associate: the existing lead")
    primary_agent_id: Id | None = Field(None, description="new_lead: defaults to the acting user")
    name: str = Field("", max_length=200, description="new_lead: the lead's name")


class NotificationsQuery(BaseModel):
    model_config = ConfigDict(extra="ignore")
    state: Literal["open", "closed", "all"] = "open"


class UsageQuery(BaseModel):
    model_config = ConfigDict(extra="ignore")
    period: str = Field(pattern=r"^\d{4}-(0[1-9]|1[0-2])$", description="billing month, YYYY-MM")
