"""queue.local.access: how the local backend's parts reach the index: IndexAccess, what
its mixins (queue.local.events, queue.local.feedback) use of LocalQueue, and IndexSql,
which runs the statements both backends share (queue.dialect, queue.tables) on it."""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from relay.queue.dialect import SQLITE, Statement, Written

Read = Callable[[str, Sequence[Any]], Awaitable[Sequence[Sequence[Any]]]]
Write = Callable[..., Awaitable[Any]]  # (op(db), durable=...) in the writer's transaction


class IndexAccess:
    """What the local backend's mixins (queue.local.events, .feedback) use of LocalQueue:
    its clock, its reader and its writer."""

    _clock: Callable[[], float]

    async def _write(self, op: Any, durable: bool = True, quick: bool = False) -> Any:
        raise NotImplementedError

    async def _read_all(self, sql: str, params: Sequence[Any]) -> list[sqlite3.Row]:
        raise NotImplementedError


class IndexSql:
    """queue.dialect.Sql on the index: reads on the reader connection, writes in the next
    group commit, `:now` the node's clock."""

    dialect = SQLITE

    def __init__(self, read: Read, write: Write, clock: Callable[[], float]) -> None:
        self._read = read
        self._write = write
        self._clock = clock

    async def read(self, sql: str, **values: Any) -> Sequence[Sequence[Any]]:
        return await self._read(*SQLITE.statement(sql, values, self._clock()))

    async def write(self, *statements: Statement, durable: bool = True) -> list[Written]:
        now = self._clock()

        def run(db: sqlite3.Connection) -> list[Written]:
            return [_written(db.execute(*SQLITE.statement(s.sql, s.values, now)))
                    for s in statements]

        written: list[Written] = await self._write(run, durable=durable)
        return written


def _written(cursor: sqlite3.Cursor) -> Written:
    if cursor.description is None:
        return Written(cursor.rowcount)
    rows = cursor.fetchall()  # RETURNING
    return Written(len(rows), rows)
