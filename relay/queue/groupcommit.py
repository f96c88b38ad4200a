"""queue.groupcommit: one writer for the SQLite index, committing many requests at once.

Concurrent SMTP sessions each need their message committed before they answer 250. One
fsync per message would cap throughput at the disk's fsync rate, so requests queue here
and a single task commits whatever has accumulated in one transaction (group commit).
A failing batch is rolled back and retried one request at a time, so one bad request
fails alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiosqlite

log = logging.getLogger("relay.queue")

WriteOp = Callable[[aiosqlite.Connection], Awaitable[Any]]


@dataclass
class _Request:
    op: WriteOp
    future: asyncio.Future[Any]
    # Called (in a thread) before the transaction, once per batch: the spool directory fsync.
    presync: bool = False


@dataclass
class GroupCommitter:
    db: aiosqlite.Connection
    presync: Callable[[], Awaitable[None]]
    max_batch: int = 512
    _pending: asyncio.Queue[_Request] = field(default_factory=asyncio.Queue)
    _task: asyncio.Task[None] | None = None
    _closing: bool = False

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="queue-writer")

    async def submit(self, op: WriteOp, presync: bool = False) -> Any:
        if self._closing:
            raise RuntimeError("queue is closed")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending.put_nowait(_Request(op, future, presync))
        return await future

    async def close(self) -> None:
        """Commit what is pending, then stop."""
        self._closing = True
        if self._task is None:
            return
        await self._pending.join()
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def _run(self) -> None:
        while True:
            batch = [await self._pending.get()]
            while not self._pending.empty() and len(batch) < self.max_batch:
                batch.append(self._pending.get_nowait())
            try:
                await self._commit(batch)
            finally:
                for _ in batch:
                    self._pending.task_done()

    async def _commit(self, batch: list[_Request]) -> None:
        try:
            if any(request.presync for request in batch):
                await self.presync()
            results = await self._transaction([r.op for r in batch])
        except Exception as exc:
            if len(batch) == 1:
                _settle(batch[0].future, exc=exc)
                return
            log.warning("group commit of %d requests failed (%s); retrying singly",
                        len(batch), exc)
            for request in batch:
                await self._commit([request])
            return
        for request, result in zip(batch, results, strict=False):
            _settle(request.future, result=result)

    async def _transaction(self, ops: list[WriteOp]) -> list[Any]:
        await self.db.execute("BEGIN IMMEDIATE")
        try:
            results = [await op(self.db) for op in ops]
            await self.db.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(Exception):
                await self.db.execute("ROLLBACK")
            raise
        return results


def _settle(future: asyncio.Future[Any], result: Any = None,
            exc: BaseException | None = None) -> None:
    if future.done():
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)
