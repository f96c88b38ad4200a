"""web.gate: what every request passes before any route sees it (an ASGI middleware).

1. The bearer token (the admin token or an API key, admin.callers), checked before a byte
   of the body is read: a client without one gets 401 whatever it sends, and cannot make
   the relay read or parse 50 MB first; a key without the route's scope gets 403, one
   over its rate limit 429. The caller goes to the route in `request.state.caller`.
2. A limit on the body's size per route, checked on Content-Length and again while the
   body is read (chunked uploads): 413 naming the limit. One message may be up to twice
   `max_message_size` as JSON (escaping and base64 make it larger than the message; the
   message itself is held to `max_message_size` after it is built); a broadcast as one
   JSON document up to BROADCAST_JSON_LIMIT (larger lists go as NDJSON, streamed, whose
   lines have their own limit); anything else up to SMALL_BODY.
"""

from __future__ import annotations

import json
from http.cookies import CookieError, SimpleCookie

from relay.core.errors import LocalFailure
from relay.core.ratelimit import RateLimiter
from relay.web import console
from relay.web.admin.asgi import App, Message, Receive, Scope, Send
from relay.web.admin.callers import KeyRing, required_scope
from relay.web.admin.errors import ApiError, error_body
from relay.web.admin.outage import RETRY_AFTER, QueueOutage

SMALL_BODY = 1024 * 1024  # ids to flush, a suppression, ...
# A JSON document is parsed whole: 8 MB of recipients is some 65 MB of Python objects.
BROADCAST_JSON_LIMIT = 8 * 1024 * 1024
NDJSON = "application/x-ndjson"
OPEN_PATHS = frozenset({("GET", "/healthz")}) | console.OPEN_PATHS


class Gate:
    def __init__(self, app: App, keys: KeyRing, rates: RateLimiter,
                 max_message_size: int, sessions: console.Sessions, outage: QueueOutage
                 ) -> None:
        self._app = app
        self._outage = outage
        self._keys = keys
        self._sessions = sessions
        self._rates = rates
        self._max_message_size = max_message_size

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v for k, v in scope.get("headers", [])}
        method, path = scope["method"], scope["path"]
        if (method, path) not in OPEN_PATHS:
            refusal = await self._admit(scope, headers, method, path)
            if refusal is not None:
                if (refusal[0].status_code == 401 and method == "GET"
                        and console.is_console(path)):
                    await _redirect(send, console.SIGN_IN)  # a browser: the sign-in page
                else:
                    await _answer(send, *refusal)
                return
        limit = self.limit(method, path, headers.get("content-type", b"").decode("latin-1"))
        if limit is not None:
            declared = headers.get("content-length", b"0")
            if declared.isdigit() and int(declared) > limit:
                await _answer(send, _too_large(method, path, limit))
                return
            receive = _counted(receive, limit, method, path)
        await self._app(scope, receive, self._outage.watching(send))

    async def _admit(self, scope: Scope, headers: dict[str, bytes], method: str, path: str
                     ) -> tuple[ApiError, dict[str, str]] | None:
        """None when the caller may go on (and is in the request's state), else why not."""
        scheme, _, given = headers.get("authorization", b"").partition(b" ")
        token = given.strip() if scheme.lower() == b"bearer" else None
        try:
            caller = None
            if token is not None:
                caller = await self._keys.caller(token)
            elif console.is_console(path):
                session = await self._session(headers)
                if session is not None:  # whoever signed in: checked again, now
                    scope.setdefault("state", {})["session"] = session
                    caller = await self._keys.caller_of_digest(session.token_digest)
            if caller is None:
                return (ApiError(401, "unauthorized", "missing or wrong bearer token"),
                        {"www-authenticate": "Bearer"})
            needed = required_scope(method, path)
            if not caller.allows(needed):
                return ApiError(403, "forbidden", f"this API key does not have the "
                                f"{needed.value} scope that {method} {path} needs"), {}
            if caller.rate is not None and not await self._rates.take(
                    f"apikey:{caller.key_id}", caller.rate):
                return (ApiError(429, "rate_limited", "this API key is over its rate limit "
                                 "of requests"), {"retry-after": str(int(caller.rate.window))})
        except LocalFailure as exc:  # the keys are in the queue, which cannot answer now
            return self._outage.answer(exc), {"retry-after": RETRY_AFTER}
        scope.setdefault("state", {})["caller"] = caller
        return None

    async def _session(self, headers: dict[str, bytes]) -> console.Session | None:
        """The console session named by the request's cookie, if it is open."""
        cookies = SimpleCookie()
        try:
            cookies.load(headers.get("cookie", b"").decode("latin-1"))
        except CookieError:
            return None
        morsel = cookies.get(console.COOKIE)
        return await self._sessions.find(morsel.value) if morsel is not None else None

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


async def _redirect(send: Send, to: str) -> None:
    await send({"type": "http.response.start", "status": 303,
                "headers": [(b"location", to.encode()), (b"content-length", b"0"),
                            (b"cache-control", b"no-store")]})
    await send({"type": "http.response.body", "body": b""})
