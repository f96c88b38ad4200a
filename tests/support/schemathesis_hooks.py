"""Loaded by schemathesis (SCHEMATHESIS_HOOKS) in tests/acceptance/test_openapi_fuzz.py:
how to send a generated NDJSON body, one JSON value per line."""

from __future__ import annotations

import json
from typing import Any

import schemathesis


@schemathesis.serializer("application/x-ndjson")
def ndjson(context: Any, value: Any) -> bytes:
    items = value if isinstance(value, list) else [value]
    return b"".join(json.dumps(item).encode() + b"\n" for item in items)
