"""``POST /v1/leads:import``: CSV or NDJSON in, validated :class:`LeadRow` s out,
or a per-row error report. Nothing is written unless every row is valid.

CSV needs a header; columns ``source``, ``primary_agent_id`` and ``phones`` are
required, ``name``, ``tags`` and ``created_at`` optional; several phones or tags
are separated by ``;``. NDJSON takes one JSON object per line with the same
fields (phones and tags as arrays or ``;`` strings).
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from gateway.domain.phone import to_e164
from gateway.http.models import LeadIn
from gateway.store.leads import LeadRow

REQUIRED_COLUMNS = ("source", "primary_agent_id", "phones")
MAX_ROWS = 200_000
MAX_REPORTED_ERRORS = 1_000
_E164 = re.compile(r"^\+[1-9][0-9]{6,14}$")


class ImportRejected(Exception):
    """The upload as a whole cannot be read (status 400 or 415)."""

    def __init__(self, status: int, field: str, message: str) -> None:
        super().__init__(message)
        self.status, self.field, self.message = status, field, message


def parse(raw: bytes, content_type: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """(row number, fields) for each row; row 1 is the first data row."""
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ImportRejected(400, "body", "is not UTF-8") from None
    if content_type == "text/csv":
        reader = csv.DictReader(io.StringIO(text, newline=""))
        missing = [c for c in REQUIRED_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ImportRejected(400, "header", f"missing column(s): {', '.join(missing)}")
        number = 0
        try:
            for number, row in enumerate(reader, start=1):
                yield number, row
        except csv.Error as exc:  # e.g. a field past the csv module's 128 KiB limit
            raise ImportRejected(400, "body", f"row {number + 1} is not readable CSV: {exc}") from None
    elif content_type in ("application/x-ndjson", "application/ndjson"):
        for number, line in enumerate((line for line in text.splitlines() if line.strip()), start=1):
            try:
                value = json.loads(line)
            except (ValueError, RecursionError):  # also: integers past Python's digit limit, deep nesting
                value = None
            yield number, value if isinstance(value, dict) else {"__invalid__": True}
    else:
        raise ImportRejected(415, "Content-Type", "must be text/csv or application/x-ndjson")


def validate(
    rows: Iterator[tuple[int, dict[str, Any]]], agent_ids: set[int]
) -> tuple[list[LeadRow], list[dict[str, Any]], int]:
    """(valid leads, first errors, total error count). Each row is checked by
    ``LeadIn``, the model ``POST /v1/leads`` uses (one home for what a lead may
    be), after shaping a file's cells into its types: ``;``-separated phones and
    tags become lists, a CSV id an integer, a naive time UTC. Phones already
    in E.164 skip the full parser."""
    leads: list[LeadRow] = []
    errors: list[dict[str, Any]] = []
    count = 0

    def fail(row: int, field: str, message: str) -> None:
        nonlocal count
        count += 1
        if len(errors) < MAX_REPORTED_ERRORS:
            errors.append({"row": row, "field": field, "message": message})

    validate_lead = LeadIn.model_validate
    for number, row in rows:
        if number > MAX_ROWS:
            raise ImportRejected(400, "body", f"more than {MAX_ROWS} rows; split the file")
        if row.get("__invalid__"):
            fail(number, "row", "is not a JSON object")
            continue
        try:
            lead = validate_lead(_shaped(row))
        except ValidationError as exc:
            for error in exc.errors():
                fail(number, str(error["loc"][0]) if error["loc"] else "row", error["msg"])
            continue
        before = count
        agent = lead.primary_agent_id
        if agent is None or agent not in agent_ids:  # required here: an import has no caller to default to
            fail(number, "primary_agent_id", "must be the id of a user of this account")
        phones: list[str] = []
        for raw in lead.phones:
            e164 = raw if _E164.match(raw) else to_e164(raw)
            if e164 is None:
                fail(number, "phones", f"{raw[:40]!r} is not a phone number")
            elif e164 not in phones:
                phones.append(e164)
        if count == before and agent is not None:
            tags = tuple(dict.fromkeys(lead.tags))
            leads.append(LeadRow(lead.name, agent, lead.source, tuple(phones), tags, lead.created_at))
    return leads, errors, count


def _shaped(row: dict[str, Any]) -> dict[str, Any]:
    """A row's cells in LeadIn's types; what cannot be shaped is passed as it
    is, for the model to name."""
    agent = row.get("primary_agent_id")
    shaped = {
        "name": _text(row.get("name")),
        "source": _text(row.get("source")),
        "primary_agent_id": _int(agent) if isinstance(agent, str) else agent,
        "phones": _items(row.get("phones")),
        "tags": list(dict.fromkeys(_items(row.get("tags")))),
        "created_at": _aware(row.get("created_at")),
    }
    return shaped


def _text(value: Any) -> str:
    return value.strip() if isinstance(value, str) else ""


def _int(value: Any) -> Any:
    """A CSV id as an integer; anything else as it is, for the model to refuse."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    # ASCII digits only ("²" is a digit to str.isdigit, not to int), and few
    # enough that int() cannot refuse them.
    digits = value.strip() if isinstance(value, str) else ""
    if digits.isascii() and digits.isdigit() and len(digits) <= 19:
        return int(digits)
    return value


def _items(value: Any) -> list[str]:
    if isinstance(value, list):
        return [item.strip() for item in value if isinstance(item, str) and item.strip()]
    if isinstance(value, str):
        return [item.strip() for item in value.split(";") if item.strip()]
    return []


def _aware(value: Any) -> Any:
    """Empty: None. A naive ISO time: UTC (spreadsheets export them so).
    Anything else as it is, for the model to parse or refuse."""
    if value in (None, ""):
        return None
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.strip())
        except ValueError:
            return value
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    return value
