"""admin.errors: the API's error type and body, `{"error": {"code", "message", "field"}}`,
and the field named the way the request names it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fastapi import HTTPException

from relay.cleanup.compose import PATTERN_MEANINGS


class ApiError(HTTPException):
    def __init__(self, status: int, code: str, message: str, field: str | None = None):
        super().__init__(status, message)
        self.code = code
        self.field = field


def error_body(code: str, message: str, field: str | None = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "field": field}}


# Tags of the request bodies that come in more than one shape (admin.send_routes).
UNION_TAGS = frozenset({"structured", "raw"})


def validation_error(errors: Sequence[Any]) -> ApiError:
    """A 422 for the first of pydantic's errors, in words and naming the field."""
    first: dict[str, Any] = errors[0] if errors else {"loc": (), "msg": "invalid request"}
    location = tuple(first.get("loc", ()))
    kind, context = first.get("type"), first.get("ctx") or {}
    if kind == "json_invalid":  # the location is the offset, not a field
        at = f" at character {location[-1]}" if location and isinstance(location[-1], int) else ""
        return ApiError(422, "invalid", f"the body is not valid JSON: "
                        f"{context.get('error', 'cannot parse it')}{at}", "body")
    field = field_name(location)
    message = str(first.get("msg", "invalid request")).removeprefix("Value error, ")
    meaning = (PATTERN_MEANINGS.get(str(context.get("pattern")))
               if kind == "string_pattern_mismatch" else None)
    if meaning is not None:
        subject = "header values" if (field or "").startswith("headers.") else field
        message = f"{subject or 'the value'} {meaning}"
    return ApiError(422, "invalid", message, field)


def field_name(location: Sequence[Any]) -> str | None:
    """pydantic's error location as the request names it: ("body", "structured", "to", 2)
    is `to[2]`, ("header", "idempotency-key") is `Idempotency-Key`."""
    parts = list(location)
    if parts and parts[0] == "header" and len(parts) > 1:
        return "-".join(word.capitalize() for word in str(parts[1]).split("-"))
    if parts and parts[0] in ("body", "query", "path"):
        parts = parts[1:]
    if len(parts) > 1 and parts[0] in UNION_TAGS:
        parts = parts[1:]
    name = ""
    for part in parts:
        name += f"[{part}]" if isinstance(part, int) else f".{part}" if name else str(part)
    return name or None
