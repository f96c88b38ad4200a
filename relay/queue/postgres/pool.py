"""queue.postgres.pool: the PostgreSQL backend's connections: where the database is (the
DSN, from a file when given, never logged), and database failures as the relay's one
failure type, LocalFailure (451 4.3.0 to a client, a retry with a growing delay for the
scheduler), never a database exception escaping into SMTP or HTTP."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg

from relay.config import QueueSection
from relay.core.errors import ConfigError, LocalFailure
from relay.queue.dialect import DATABASE_NOW, POSTGRES, Statement, Written

# Every time in the queue is the database's, in seconds since the epoch (never a node's).
NOW = DATABASE_NOW
CONNECT_TIMEOUT = 5.0  # seconds: a database that is down is a quick 451, not a minute's wait
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


class DatabaseAccess:
    """What the cluster backend's mixins (queue.postgres.events, .feedback, .nodes) use of
    PostgresQueue: a connection, or one in a transaction, and the lease it gives."""

    _lease: float  # seconds a claim is leased for

    def _connection(self) -> Any:
        raise NotImplementedError

    def _transaction(self) -> Any:
        raise NotImplementedError


class DatabaseSql:
    """queue.dialect.Sql on the database: `:now` its clock, every write one transaction."""

    dialect = POSTGRES

    def __init__(self, connection: Callable[[], Any], transaction: Callable[[], Any]) -> None:
        self._connection = connection
        self._transaction = transaction

    async def read(self, sql: str, **values: Any) -> Sequence[Sequence[Any]]:
        query, params = POSTGRES.statement(sql, values)
        async with self._connection() as connection:
            return list(await connection.fetch(query, *params))

    async def write(self, *statements: Statement, durable: bool = True) -> list[Written]:
        written = []
        async with self._transaction() as connection:
            for statement in statements:
                query, params = POSTGRES.statement(statement.sql, statement.values)
                if " RETURNING " in query:
                    rows = await connection.fetch(query, *params)
                    written.append(Written(len(rows), rows))
                else:
                    written.append(Written(count_of(await connection.execute(query, *params))))
        return written


def count_of(status: str) -> int:
    """The row count of a command status such as "UPDATE 3"."""
    return int(status.rsplit(" ", 1)[-1]) if status[-1:].isdigit() else 0


def describe(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


def database_dsn(settings: QueueSection) -> str:
    """The DSN of `[queue]`, read from `dsn_file` when given (never logged)."""
    if not settings.dsn_file:
        return settings.dsn
    try:
        return Path(settings.dsn_file).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"queue.dsn_file: {settings.dsn_file}: {exc.strerror}") from exc


def where(dsn: str) -> str:
    """The database a DSN names, without its password, for log lines."""
    parts = urlsplit(dsn)
    host = parts.hostname or "localhost"
    return f"{host}:{parts.port or 5432}{parts.path or ''}"


@contextlib.asynccontextmanager
async def connected(dsn: str) -> AsyncIterator[asyncpg.Connection]:
    """A connection of its own, outside any pool (relayctl's look at the database);
    LocalFailure naming the database when it cannot be had."""
    try:
        connection = await asyncpg.connect(dsn, timeout=10)
    except DATABASE_ERRORS as exc:
        raise LocalFailure(f"queue database {where(dsn)}: {describe(exc)}") from exc
    try:
        yield connection
    finally:
        await connection.close()
