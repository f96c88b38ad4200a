"""The console's sessions (queue.roles.ConsoleSessionStore), one suite for both backends."""

from __future__ import annotations

import asyncio
import time

from relay.queue import (
    Queue,
)


async def test_console_sessions_are_kept_found_closed_and_expire(queue: Queue) -> None:
    """The console's sessions live in the queue: every node finds them, a restart keeps
    them; signing out ends one, a revoked key every one it opened."""
    await queue.open_console_session("s1", "token-a", "csrf-1", 60)
    await queue.open_console_session("s2", "token-a", "csrf-2", 60)
    await queue.open_console_session("s3", "token-b", "csrf-3", 60)
    found = await queue.console_session("s1")
    assert found is not None and (found.token_digest, found.csrf) == ("token-a", "csrf-1")
    assert found.checks("csrf-1") and not found.checks("csrf-2")
    assert found.expires_at > time.time() + 50
    assert await queue.console_session("nosuch") is None
    assert await queue.close_console_sessions(id_digest="s3") == 1
    assert await queue.console_session("s3") is None
    assert await queue.close_console_sessions(token_digest="token-a") == 2
    assert await queue.console_session("s2") is None
    await queue.open_console_session("short", "token-c", "csrf-4", 0.2)
    deadline = time.monotonic() + 10
    while await queue.console_session("short") is not None:  # expired: gone
        assert time.monotonic() < deadline, "the session never expired"
        await asyncio.sleep(0.05)
