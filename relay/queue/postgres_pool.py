"""queue.postgres_pool: the PostgreSQL backend's connections, and their failures as the
relay's one failure type: LocalFailure (451 4.3.0 to a client, a retry with a growing delay
for the scheduler), never a database exception escaping into SMTP or HTTP."""

from __future__ import annotations

from typing import Any

import asyncpg

from relay.errors import LocalFailure

# Every time in the queue is the database's, in seconds since the epoch (never a node's).
NOW = "extract(epoch from clock_timestamp())"
# PostgreSQL or the connection failed: the caller answers 451 / retries.
DATABASE_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError)


class Failing:
    """A pooled connection (in a transaction, if asked) whose database errors become
    LocalFailure: the callers' one failure type (451 4.3.0 to a client, a retry with
    backoff for the scheduler)."""

    def __init__(self, acquiring: Any, transaction: bool = False) -> None:
        self._acquiring = acquiring
        self._transaction = transaction
        self._open: Any = None

    async def __aenter__(self) -> asyncpg.Connection:
        try:
            connection = await self._acquiring.__aenter__()
        except DATABASE_ERRORS as exc:
            raise LocalFailure(f"queue database: {describe(exc)}") from exc
        if self._transaction:
            try:
                self._open = connection.transaction()
                await self._open.__aenter__()
            except DATABASE_ERRORS as exc:
                await self._acquiring.__aexit__(type(exc), exc, None)
                raise LocalFailure(f"queue database: {describe(exc)}") from exc
        return connection

    async def __aexit__(self, kind: Any, exc: BaseException | None, tb: Any) -> None:
        try:
            if self._open is not None:
                await self._open.__aexit__(kind, exc, tb)
        except DATABASE_ERRORS as failed:
            exc = exc or failed
        finally:
            await self._acquiring.__aexit__(kind, exc, tb)
        if isinstance(exc, DATABASE_ERRORS):
            raise LocalFailure(f"queue database: {describe(exc)}") from exc


def count_of(status: str) -> int:
    """The row count of a command status such as "UPDATE 3"."""
    return int(status.rsplit(" ", 1)[-1]) if status[-1:].isdigit() else 0


def describe(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__

