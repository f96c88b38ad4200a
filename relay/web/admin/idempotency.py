"""admin.idempotency: the `Idempotency-Key` header of the POST endpoints.

The same key and the same body within 24 hours get the first answer again, and nothing is
queued twice: the key is committed in the same transaction as what the request stored, so
not even a crash between the two can split them. The same key with another body is a 409.
Two requests with one key at the same time are taken one after the other.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

from relay.queue import IdempotentAnswer
from relay.queue.roles import IdempotencyStore
from relay.web.admin.errors import ApiError

HEADER = "Idempotency-Key"


class IdempotencyKeys:
    def __init__(self, queue: IdempotencyStore) -> None:
        self._queue = queue
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}  # lock, requests using it

    @contextlib.asynccontextmanager
    async def held(self, key: str) -> AsyncIterator[None]:
        """One request per key at a time."""
        lock, users = self._locks.get(key, (asyncio.Lock(), 0))
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)

    async def earlier_answer(self, key: str, digest: str) -> dict[str, Any] | None:
        """The first answer for this key and body; ApiError 409 for another body."""
        earlier = await self._queue.idempotent_answer(key)
        return None if earlier is None else replay(earlier, digest)


def replay(earlier: IdempotentAnswer, digest: str) -> dict[str, Any]:
    """The first answer again, when the body is the same (ApiError 409 otherwise)."""
    if earlier.digest != digest:
        raise ApiError(409, "idempotency_conflict",
                       "this Idempotency-Key was used with another request body", HEADER)
    answer: dict[str, Any] = json.loads(earlier.answer)
    return answer
