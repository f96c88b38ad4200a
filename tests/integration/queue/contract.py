"""What the queue's contract suites share: a message, an outcome, and waiting for what a
backend's own clock decides."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from relay.queue import (
    Claimed,
    Idempotency,
    NewMessage,
    Outcome,
    State,
    new_queue_id,
)
from relay.queue.postgres import PostgresQueue

_T = TypeVar("_T")


def message(*recipients: str, idempotency: Idempotency | None = None) -> NewMessage:
    return NewMessage(new_queue_id(), "app@sender.test", recipients or ("a@example.test",),
                      b"Subject: contract\r\n\r\nbody\r\n", idempotency=idempotency)


async def eventually(probe: Callable[[], Awaitable[_T]], accept: Callable[[_T], bool],
                     timeout: float = 10.0) -> _T:
    """Probe until `accept` (a lease or a retry time, in the backend's own clock, passes)."""
    deadline = time.monotonic() + timeout
    while True:
        value = await probe()
        if accept(value):
            return value
        assert time.monotonic() < deadline, f"never accepted: {value!r}"
        await asyncio.sleep(0.05)


def outcome(claim: Claimed, state: State, reply: str = "250 2.0.0 ok", **kwargs: Any
            ) -> Outcome:
    return Outcome(claim.recipient_id, claim.attempts, state, reply, **kwargs)


async def until(condition: Callable[[], Awaitable[bool]], what: str,
                timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def heartbeat_after(queue: PostgresQueue, at: float) -> bool:
    return any(n.name == "n1" and n.heartbeat_at > at for n in await queue.nodes())


async def gone(queue: PostgresQueue, name: str) -> bool:
    return any(n.name == name and n.gone for n in await queue.nodes())


