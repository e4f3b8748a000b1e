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

from gateway.domain.phone import to_e164
from gateway.store.leads import LeadRow

REQUIRED_COLUMNS = ("source", "primary_agent_id", "phones")
MAX_ROWS = 200_000
MAX_REPORTED_ERRORS = 1_000
_TEXT_FIELDS = ("source", "name", "phones", "tags")
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
    """(valid leads, first errors, total error count). Phones already in E.164
    skip the full parser, which keeps 100,000 rows to about a second."""
    leads: list[LeadRow] = []
    errors: list[dict[str, Any]] = []
    count = 0

    def fail(row: int, field: str, message: str) -> None:
        nonlocal count
        count += 1
        if len(errors) < MAX_REPORTED_ERRORS:
            errors.append({"row": row, "field": field, "message": message})

    for number, row in rows:
        if number > MAX_ROWS:
            raise ImportRejected(400, "body", f"more than {MAX_ROWS} rows; split the file")
        if row.get("__invalid__"):
            fail(number, "row", "is not a JSON object")
            continue
        before = count
        for field in _TEXT_FIELDS:
            if _has_nul(row.get(field)):  # Postgres text cannot hold U+0000
                fail(number, str(field), "must not contain the NUL character (U+0000)")
        source = _text(row.get("source"))
        if not source or len(source) > 200:
            fail(number, "source", "is required, at most 200 characters")
        agent = _int(row.get("primary_agent_id"))
        if agent is None or agent not in agent_ids:
            fail(number, "primary_agent_id", "must be the id of a user of this account")
        phones: list[str] = []
        for raw in _items(row.get("phones")):
            e164 = raw if _E164.match(raw) else to_e164(raw)
            if e164 is None:
                fail(number, "phones", f"{raw[:40]!r} is not a phone number")
            elif e164 not in phones:
                phones.append(e164)
        if not phones and count == before:
            fail(number, "phones", "at least one phone is required")
        tags = list(dict.fromkeys(_items(row.get("tags"))))
        if any(len(tag) > 200 for tag in tags):
            fail(number, "tags", "a tag has more than 200 characters")
        name = _text(row.get("name"))
        if len(name) > 200:
            fail(number, "name", "at most 200 characters")
        readable, created = _when(row.get("created_at"))
        if not readable:
            fail(number, "created_at", "must be an ISO 8601 time")
        if count == before and agent is not None:
            leads.append(LeadRow(name, agent, source, tuple(phones), tuple(tags), created))
    return leads, errors, count


def _text(value: Any) -> str:
    return value.strip() if isinstance(value, str) else ""


def _int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    # ASCII digits only ("²" is a digit to str.isdigit, not to int), and few
    # enough that int() cannot refuse them.
    digits = value.strip() if isinstance(value, str) else ""
    if digits.isascii() and digits.isdigit() and len(digits) <= 19:
        return int(digits)
    return None


def _has_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, list):
        return any(isinstance(item, str) and "\x00" in item for item in value)
    return False


def _items(value: Any) -> list[str]:
    if isinstance(value, list):
        return [item.strip() for item in value if isinstance(item, str) and item.strip()]
    if isinstance(value, str):
        return [item.strip() for item in value.split(";") if item.strip()]
    return []


def _when(value: Any) -> tuple[bool, datetime | None]:
    """(readable, time): absent is readable and None; naive times are UTC."""
    if value in (None, ""):
        return True, None
    if not isinstance(value, str):
        return False, None
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        return False, None
    try:  # stored as UTC: 0001-01-01T00:00+14:00 has no UTC time
        return True, parsed.astimezone(UTC) if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    except OverflowError:
        return False, None
