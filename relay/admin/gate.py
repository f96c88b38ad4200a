"""admin.gate: what every request passes before any route sees it (an ASGI middleware).

1. The bearer token, checked before a byte of the body is read: a client without it gets
   401 whatever it sends, and cannot make the relay read or parse 50 MB first.
2. A limit on the body's size per route, checked on Content-Length and again while the
   body is read (chunked uploads): 413 naming the limit. One message may be up to twice
   `max_message_size` as JSON (escaping and base64 make it larger than the message; the
   message itself is held to `max_message_size` after it is built); a broadcast as one
   JSON document up to BROADCAST_JSON_LIMIT (larger lists go as NDJSON, streamed, whose
   lines have their own limit); anything else up to SMALL_BODY.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from relay.admin.errors import ApiError, error_body

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]

SMALL_BODY = 1024 * 1024  # ids to flush, a suppression, ...
# A JSON document is parsed whole: 8 MB of recipients is some 65 MB of Python objects.
BROADCAST_JSON_LIMIT = 8 * 1024 * 1024
NDJSON = "application/x-ndjson"
OPEN_PATHS = frozenset({("GET", "/healthz")})


class Gate:
    def __init__(self, app: App, token: str, max_message_size: int) -> None:
        self._app = app
        self._token = token.encode()
        self._max_message_size = max_message_size

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v for k, v in scope.get("headers", [])}
        method, path = scope["method"], scope["path"]
        if (method, path) not in OPEN_PATHS and not self._authorized(headers):
            await _answer(send, ApiError(401, "unauthorized", "missing or wrong bearer token"),
                          {"www-authenticate": "Bearer"})
            return
        limit = self.limit(method, path, headers.get("content-type", b"").decode("latin-1"))
        if limit is not None:
            declared = headers.get("content-length", b"0")
            if declared.isdigit() and int(declared) > limit:
                await _answer(send, _too_large(method, path, limit))
                return
            receive = _counted(receive, limit, method, path)
        await self._app(scope, receive, send)

    def _authorized(self, headers: dict[str, bytes]) -> bool:
        scheme, _, given = headers.get("authorization", b"").partition(b" ")
        return scheme.lower() == b"bearer" and hmac.compare_digest(given.strip(), self._token)

    def limit(self, method: str, path: str, content_type: str) -> int | None:
        """The most the body of this request may be; None: no limit (streamed)."""
        if (method, path) == ("POST", "/v1/messages"):
            return 2 * self._max_message_size + SMALL_BODY
        if (method, path) == ("POST", "/v1/broadcasts"):
            if content_type.split(";")[0].strip().lower() == NDJSON:
                return None  # read line by line, each line limited by the route
            return BROADCAST_JSON_LIMIT
        return SMALL_BODY


def _counted(receive: Receive, limit: int, method: str, path: str) -> Receive:
    received = 0

    async def counting() -> Message:
        nonlocal received
        message = await receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > limit:
                raise _too_large(method, path, limit)  # answered by the app's handler
        return message

    return counting


def _too_large(method: str, path: str, limit: int) -> ApiError:
    return ApiError(413, "too_large", f"the request body is over {limit} bytes, the limit "
                                      f"for {method} {path}", "body")


async def _answer(send: Send, error: ApiError, extra: dict[str, str] | None = None) -> None:
    body = json.dumps(error_body(error.code, str(error.detail), error.field)).encode()
    headers = [(b"content-type", b"application/json"),
               (b"content-length", str(len(body)).encode())]
    headers += [(k.encode(), v.encode()) for k, v in (extra or {}).items()]
    await send({"type": "http.response.start", "status": error.status_code,
                "headers": headers})
    await send({"type": "http.response.body", "body": body})
