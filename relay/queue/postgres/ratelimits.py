"""queue.postgres.ratelimits: "N per window" limits counted for every node at once
(relay.core.ratelimit.RateLimiter: users' rate limits, failed AUTH, anvil), as rows of
rate_events with the database's clock."""

from __future__ import annotations

import asyncpg

from relay.core.units import Rate
from relay.queue.postgres.pool import NOW, DatabaseAccess


class PostgresRateLimits(DatabaseAccess):
    """RateLimiter's methods, counted in the database for every node."""

    async def take(self, key: str, rate: Rate) -> bool:
        """Count one event for `key` if `rate` allows it, for every node at once (the key
        is locked for the transaction: two nodes cannot both take the last one)."""
        async with self._transaction() as connection:
            await connection.execute("SELECT pg_advisory_xact_lock(hashtext($1))", key)
            if not await _rate_allows(connection, key, rate):
                return False
            await connection.execute(f"INSERT INTO rate_events (key, at) VALUES ($1, {NOW})",
                                     key)
            return True

    async def peek(self, key: str, rate: Rate) -> bool:
        async with self._connection() as connection:
            return await _rate_allows(connection, key, rate)


async def _rate_allows(connection: asyncpg.Connection, key: str, rate: Rate) -> bool:
    """Events of `key` older than the window go; whether one more fits in it."""
    await connection.execute(f"DELETE FROM rate_events WHERE key = $1 AND at <= {NOW} - $2",
                             key, rate.window)
    recent = await connection.fetchval("SELECT COUNT(*) FROM rate_events WHERE key = $1", key)
    return int(recent) < rate.count
