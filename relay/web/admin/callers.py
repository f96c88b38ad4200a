"""admin.callers: who is calling the admin API, and what they may do.

A caller is the admin token (every scope) or an API key (`rk_<id>_<secret>`, made by
`relayctl apikey create` or `POST /v1/apikeys`, stored as a digest by the queue) with its
scopes and an optional rate limit. Each route needs one scope (`required_scope`):
sending needs `send`, broadcasts `broadcast`, reading the queue, histories, events and
metrics `read`; a message's content, the keys, and everything that changes the queue,
webhooks, suppressions or keys `admin`; `admin` holds every other scope. Keys are looked
up by digest and cached for a moment, so a request costs no query; a revoked key is
refused within KEY_CACHE_SECONDS on every node.
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

from starlette.requests import Request

from relay.core.units import Rate, parse_rate
from relay.queue.apikeys import ApiKey, ApiScope, digest_of
from relay.queue.roles import ApiKeyStore

KEY_PREFIX = "rk_"
KEY_CACHE_SECONDS = 2.0
ADMIN_TOKEN_ID = "admin"  # what histories say of mail the admin token sent

# Routes every read-only caller may GET (besides /v1/broadcasts, whose POSTs need the
# broadcast scope).
_READABLE = ("/v1/queue", "/v1/messages/", "/v1/events", "/v1/suppressions",
             "/v1/webhooks", "/metrics", "/openapi.json")


@dataclass(frozen=True)
class Caller:
    key_id: str  # ADMIN_TOKEN_ID for the admin token
    scopes: frozenset[ApiScope]
    rate: Rate | None = None

    def allows(self, scope: ApiScope) -> bool:
        return ApiScope.ADMIN in self.scopes or scope in self.scopes


ADMIN = Caller(ADMIN_TOKEN_ID, frozenset({ApiScope.ADMIN}))


def caller_of(request: Request) -> Caller:
    """Who made this request (relay.web.gate put it there)."""
    caller = getattr(request.state, "caller", None)
    return caller if isinstance(caller, Caller) else ADMIN


def required_scope(method: str, path: str) -> ApiScope:
    if path == "/ui" or path.startswith("/ui/"):  # the console: pages read, forms act
        return ApiScope.READ if method == "GET" or path == "/ui/sign-out" else ApiScope.ADMIN
    if path == "/v1/messages" and method == "POST":
        return ApiScope.SEND
    if path.startswith("/v1/broadcasts"):
        return ApiScope.READ if method == "GET" else ApiScope.BROADCAST
    if method == "GET" and path.startswith("/v1/queue/") and path.endswith("/message"):
        return ApiScope.ADMIN  # a message's content (postcat) is for operators only
    if method == "GET" and path.startswith(_READABLE):
        return ApiScope.READ
    return ApiScope.ADMIN


def new_key(name: str, scopes: tuple[ApiScope, ...], rate_limit: str = "",
            now: float | None = None) -> tuple[ApiKey, str]:
    """A key record and the key itself (shown once, never stored)."""
    key_id = secrets.token_hex(6)
    key = f"{KEY_PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
    record = ApiKey(key_id, name, digest_of(key), scopes, rate_limit,
                    time.time() if now is None else now)
    return record, key


class KeyRing:
    """Turns a bearer token into a Caller (or None: 401)."""

    def __init__(self, queue: ApiKeyStore, admin_token: str,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._queue = queue
        self._admin_token = admin_token.encode()
        self._admin_digest = digest_of(admin_token)
        self._clock = clock
        self._cache: dict[str, tuple[float, Caller | None]] = {}

    async def caller(self, token: bytes) -> Caller | None:
        if hmac.compare_digest(token, self._admin_token):
            return ADMIN
        text = token.decode("latin-1")
        if not text.startswith(KEY_PREFIX) or len(text) > 200:
            return None
        return await self.caller_of_digest(digest_of(text))

    async def caller_of_digest(self, digest: str) -> Caller | None:
        """The caller of the token with this digest (a console session keeps only that)."""
        if hmac.compare_digest(digest, self._admin_digest):
            return ADMIN
        now = self._clock()
        cached = self._cache.get(digest)
        if cached is not None and now - cached[0] < KEY_CACHE_SECONDS:
            return cached[1]
        record = await self._queue.api_key(digest)  # LocalFailure: answered 503
        found = None
        if record is not None and record.revoked_at is None:
            found = Caller(record.id, frozenset(record.scopes),
                           parse_rate(record.rate_limit) if record.rate_limit else None)
        if len(self._cache) > 10_000:  # guessed keys must not grow it without bound
            self._cache.clear()
        self._cache[digest] = (now, found)
        return found

    def forget(self) -> None:
        """After a revocation here: no cached answer outlives it on this node."""
        self._cache.clear()
