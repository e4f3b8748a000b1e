"""Request models of the HTTP API: validation and OpenAPI schemas in one place."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
)

Id = Annotated[int, Field(ge=1, le=2**63 - 1)]


def _no_nul(value: Any) -> Any:
    """Postgres text cannot hold U+0000; refuse it here, naming the field,
    rather than let the database refuse it later (issue 12, item 4)."""
    strings = value if isinstance(value, list) else [value]
    if any(isinstance(item, str) and "\x00" in item for item in strings):
        raise ValueError("must not contain the NUL character (U+0000)")
    return value


def _in_utc(value: datetime) -> datetime:
    """Stored as UTC: a time whose conversion leaves year 1..9999 is refused."""
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise ValueError("is out of range once converted to UTC") from None


def _document_not_null(schema: dict[str, Any], model: type[BaseModel]) -> None:
    """The schema of a NOT_NULL field says what the validator enforces: the
    field may be left out, but when sent it is never null."""
    for name in getattr(model, "NOT_NULL", ()):
        prop = schema["properties"][name]
        options = [option for option in prop.pop("anyOf", [prop]) if option != {"type": "null"}]
        kept = {key: value for key, value in prop.items() if key not in ("default", "anyOf")}
        schema["properties"][name] = (
            {**kept, **options[0]} if len(options) == 1 else {**kept, "anyOf": options}
        )


class Input(BaseModel):
    """Every request model: no string anywhere may hold a NUL."""

    _no_nul = field_validator("*", mode="after")(classmethod(lambda cls, value: _no_nul(value)))


class Strict(Input):
    """No coercion ("7" is not 7), no unknown fields: a typo is an error, not a no-op.

    PATCH models list in ``NOT_NULL`` the fields that may be left out but are
    never null when sent (their columns are NOT NULL)."""

    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra=_document_not_null)
    NOT_NULL: ClassVar[frozenset[str]] = frozenset()

    @field_validator("*", mode="before")
    @classmethod
    def _refuse_null(cls, value: Any, info: ValidationInfo) -> Any:
        if value is None and info.field_name in cls.NOT_NULL:
            raise ValueError("cannot be null")
        return value


class NotificationAction(Strict):
    """R8: settle an unknown-caller notification."""

    action: Literal["new_lead", "associate"]
    lead_id: Id | None = Field(None, description="associate: the existing lead")
    primary_agent_id: Id | None = Field(None, description="new_lead: defaults to the acting user")
    name: str = Field("", max_length=200, description="new_lead: the lead's name")


class NotificationsQuery(Input):
    model_config = ConfigDict(extra="ignore")
    state: Literal["open", "closed", "all"] = "open"


class UsageQuery(Input):
    model_config = ConfigDict(extra="ignore")
    period: str = Field(pattern=r"^2[01][0-9]{2}-(0[1-9]|1[0-2])$", description="billing month, YYYY-MM")


class NumberSettings(Strict):
    """R4/R12 settings of a number; only the fields sent change."""

    description: str | None = Field(None, max_length=200)
    unknown_route: Literal["user", "ring_all", "round_robin", "sequential"] | None = None
    route_user_ids: list[Id] | None = Field(
        None, max_length=50, description="users the route rings, in order"
    )
    unknown_step_timeout_s: int | None = Field(None, ge=1, le=300)
    source: str | None = Field(None, min_length=1, max_length=200)
    tag: str | None = Field(None, min_length=1, max_length=200)
    max_concurrent_calls: int | None = Field(None, ge=1, le=10_000, description="R7; default 50")
    provider: Literal["twilio", "telnyx", "sip"] | None = None
    bridge: bool | None = Field(None, description="R11: the account's bridge number (one per account)")
    office_id: Id | None = Field(
        None, description="a company number's group (one company number each); null: the whole account"
    )
    overflow: Literal["busy", "forward", "text_back"] | None = Field(
        None, description="past the R7 limit: 486 (busy), ring overflow_target (forward), or 486 and a text"
    )
    overflow_target: str | None = Field(
        None, min_length=1, max_length=300, description="forward: a sip: URI or an E.164"
    )
    overflow_text: str | None = Field(None, min_length=1, max_length=640, description="text_back's message")
    business_hours: dict[str, Any] | None = Field(
        None,
        description='R16: {"time_zone": "America/New_York", "weekly": {"mon": [["09:00", "17:00"]], ...},'
        ' "holidays": ["2026-12-25"]}; null: always open',
    )
    after_hours: Literal["users", "forward", "text_back"] | None = Field(
        None, description="R16: outside hours ring after_hours_user_ids, forward, or 480 and a text"
    )
    after_hours_user_ids: list[Id] | None = Field(None, max_length=50)
    after_hours_target: str | None = Field(
        None, min_length=1, max_length=300, description="a sip: URI or an E.164"
    )
    after_hours_text: str | None = Field(None, min_length=1, max_length=640)
    fallback_target: str | None = Field(
        None, min_length=1, max_length=300, description="R18: rung last, after the agent and the route"
    )
    missed_call_text: str | None = Field(
        None, min_length=1, max_length=640, description="R17: texted to unanswered callers; null: off"
    )
    missed_call_quiet_from: str | None = Field(None, pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]$")
    missed_call_quiet_to: str | None = Field(None, pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]$")
    missed_call_every_s: int | None = Field(
        None, ge=60, le=2_592_000, description="seconds: at most one text per caller in this period"
    )

    NOT_NULL = frozenset(
        {
            "bridge",
            "description",
            "overflow",
            "after_hours",
            "after_hours_user_ids",
            "missed_call_quiet_from",
            "missed_call_quiet_to",
            "missed_call_every_s",
            "unknown_route",
            "route_user_ids",
            "unknown_step_timeout_s",
            "max_concurrent_calls",
            "provider",
        }
    )


class SendersQuery(Input):
    model_config = ConfigDict(extra="ignore")
    kind: Literal["manual", "auto"] = "auto"
    user: Annotated[int, Field(ge=1, le=2**63 - 1)] | None = Field(None, description="defaults to the caller")


class TextCode(Strict):
    keyword: str = Field(pattern=r"^[A-Za-z0-9]{2,20}$")
    purpose: Literal["campaign", "postcard"] = "campaign"


class NumberPurchase(Strict):
    """R13: buy a number from the provider inventory (owner, Enterprise plan)."""

    kind: Literal["company", "office", "personal"]
    office_id: Id | None = Field(
        None, description="company: the group it serves (one each); office: required"
    )
    owner_user_id: Id | None = Field(None, description="personal: its owner (upgraded package)")
    description: str = Field("", max_length=200)
    unknown_route: Literal["user", "ring_all", "round_robin", "sequential"] | None = Field(
        None, description="R4; default: a company number rings its buyer, an office number its office"
    )
    route_user_ids: list[Id] | None = Field(None, max_length=50, description="default: see unknown_route")
    source: str | None = Field(
        None, min_length=1, max_length=200, description='R8; default "Company Number" etc.'
    )
    tag: str | None = Field(None, min_length=1, max_length=200, description="R8; default: the number itself")


Name = Annotated[str, Field(min_length=1, max_length=200)]
PackageName = Literal["none", "standard", "upgraded"]
Allowance = Annotated[int, Field(ge=0, le=10_000_000)]


class AccountPatch(Strict):
    over_quota: Literal["record", "block"] | None = Field(
        None, description="R9: beyond an allowance, record and flag the usage, or block outbound sends"
    )

    NOT_NULL = frozenset({"over_quota"})


class OfficeIn(Strict):
    name: Name


class UserCreate(Strict):
    email: str = Field(pattern=r"^[^@\s]{1,64}@[^@\s]{1,189}$", max_length=254)
    name: str = Field("", max_length=200)
    role: Literal["admin", "agent"] = "agent"
    package: PackageName = "none"
    call_destination: str | None = Field(
        None, max_length=300, description="SIP URI of the phone, or an E.164"
    )
    included_minutes: Allowance | None = None
    included_segments: Allowance | None = None
    addon_minutes: Allowance = Field(0, description="added-on minutes beyond the package, each month")
    addon_segments: Allowance = Field(0, description="added-on text segments beyond the package, each month")
    office_ids: list[Id] = Field(default_factory=list, max_length=100)


class UserPatch(Strict):
    """Only the fields sent change; ``null`` clears an optional one."""

    name: str | None = Field(None, max_length=200)
    role: Literal["admin", "agent"] | None = None
    package: PackageName | None = None
    sender_number_id: Id | None = Field(None, description="R10 Sender ID to Display; null clears it")
    call_destination: str | None = Field(None, max_length=300)
    included_minutes: Allowance | None = None
    included_segments: Allowance | None = None
    addon_minutes: Allowance | None = Field(None, description="added-on minutes beyond the package")
    addon_segments: Allowance | None = Field(None, description="added-on text segments beyond the package")
    sip_username: str | None = Field(None, pattern=r"^[A-Za-z0-9._-]{3,64}$")
    sip_password: str | None = Field(
        None, min_length=12, max_length=128, description="write-only; stored as HA1"
    )

    NOT_NULL = frozenset({"name", "role", "package", "sip_password", "addon_minutes", "addon_segments"})


class KeyCreate(Strict):
    label: str = Field("", max_length=100)


PhoneIn = Annotated[str, Field(min_length=1, max_length=64, description="any format; stored as E.164")]
TagIn = Annotated[str, Field(min_length=1, max_length=200)]
# JSON carries times as ISO 8601 strings, so these fields parse (the rest stay strict).
When = Annotated[AwareDatetime, Field(strict=False), AfterValidator(_in_utc)]


class LeadIn(Strict):
    name: str = Field("", max_length=200)
    primary_agent_id: Id | None = Field(None, description="defaults to the caller")
    source: Name
    phones: list[PhoneIn] = Field(min_length=1, max_length=20)
    tags: list[TagIn] = Field(default_factory=list, max_length=100)
    created_at: When | None = None


class LeadPatch(Strict):
    name: str | None = Field(None, max_length=200)
    primary_agent_id: Id | None = None
    source: Name | None = None
    phones: list[PhoneIn] | None = Field(None, min_length=1, max_length=20, description="replaces all phones")
    tags: list[TagIn] | None = Field(None, max_length=100, description="replaces all tags")

    # A lead keeps exactly one source and one primary agent.
    NOT_NULL = frozenset({"name", "primary_agent_id", "source", "phones", "tags"})


class LeadSearch(BaseModel):
    """Not an ``Input``: the phone is only parsed, never stored, and one that
    does not parse (NUL or not) is the handler's 422."""

    model_config = ConfigDict(extra="ignore")
    phone: str = Field(min_length=1, max_length=64)


class MessageOut(Strict):
    """R10: send a text; ``from`` only for manual texts, auto texts pick their sender."""

    model_config = ConfigDict(extra="forbid", strict=True, populate_by_name=True)
    to: PhoneIn
    body: str = Field(min_length=1, max_length=1600)
    kind: Literal["manual", "auto"] = "manual"
    sender: PhoneIn | None = Field(None, alias="from")


def _iso_8601(value: Any) -> Any:
    """Only an ISO 8601 text: pydantic alone would read "0.5" as a Unix time."""
    if isinstance(value, str):
        try:
            datetime.fromisoformat(value)
        except ValueError:
            raise ValueError("must be an ISO 8601 date-time with an offset") from None
    return value


# A time in a query string, where every value is text.
QueryWhen = Annotated[When, BeforeValidator(_iso_8601)]


class StatsQuery(Input):
    """A period of analytics (issue 16, item 2): ``[from, to)``, UTC buckets."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)
    start: QueryWhen | None = Field(
        None, alias="from", description="ISO 8601; defaults to 7 days before `to`"
    )
    end: QueryWhen | None = Field(None, alias="to", description="ISO 8601, exclusive; defaults to now")
    bucket: Literal["hour", "day"] = "day"


EventType = Literal[
    "call.started",
    "call.answered",
    "call.ended",
    "call.limit_reached",
    "text.received",
    "text.status",
    "notification.created",
    "lead.created_from_notification",
]


class WebhookEndpointIn(Strict):
    """An event webhook endpoint (issue 16, item 1)."""

    url: str = Field(min_length=1, max_length=2000, description="http(s); must resolve to a public address")
    event_types: list[EventType] = Field(
        default_factory=list, max_length=20, description="the types to send; empty: every type"
    )


class WebhookEndpointChange(Strict):
    NOT_NULL: ClassVar[frozenset[str]] = frozenset({"url", "event_types", "enabled"})
    url: str | None = Field(None, min_length=1, max_length=2000)
    event_types: list[EventType] | None = Field(None, max_length=20)
    enabled: bool | None = None


class DeliveriesQuery(Input):
    model_config = ConfigDict(extra="ignore")
    status: Literal["pending", "delivered", "failed"] | None = None
    limit: int = Field(100, ge=1, le=500)
