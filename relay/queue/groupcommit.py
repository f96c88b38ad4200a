"""queue.groupcommit: the one writer of the SQLite index, committing many requests at once.

Many requests come at once (new messages to index, claims, outcomes). One commit (and
fsync) each would cap throughput, so requests queue here and a single writer thread runs
whatever has accumulated as one transaction (group commit): every request's statements,
then COMMIT. The thread takes requests straight from a thread-safe
queue and hands the results back to the event loop in one callback per batch: going
through aiosqlite statement by statement, or through an executor and an asyncio queue per
batch, cost more than the SQL itself (bench/README.md). A failing batch is rolled back and
retried one request at a time, so one bad request fails alone.

Commits that need not be durable at once (new messages, whose queue files are; delivery
outcomes; claims) skip the fsync; the WAL is sequential, so the next durable commit makes
them durable too. `after_durable` runs a callback once that has happened (or after
`sync_delay`, with an fsync of its own): the local queue removes a delivered message's
file only then.
"""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("relay.queue")

WriteOp = Callable[[sqlite3.Connection], Any]
Result = tuple[bool, Any]  # (True, value) or (False, exception)
SYNC_DELAY = 0.05  # how long after_durable waits for a durable commit to come along


def connect(path: Path) -> sqlite3.Connection:
    """A connection for the writer thread: WAL, synchronous=FULL, explicit transactions."""
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("PRAGMA busy_timeout=10000")
    return db


@dataclass
class _Request:
    op: WriteOp
    future: asyncio.Future[Any]
    durable: bool  # must survive a power loss once committed (new mail: yes)


class GroupCommitter:
    def __init__(self, db: sqlite3.Connection, max_batch: int = 1024,
                 sync_delay: float = SYNC_DELAY) -> None:
        self._db = db
        self._sync_delay = sync_delay
        self._max_batch = max_batch
        self._requests: queue.SimpleQueue[_Request | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="queue-writer", daemon=True)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closing = False
        self._durable = True  # connect() sets synchronous=FULL
        self._after_durable: list[Callable[[], None]] = []
        self._sync_timer: asyncio.TimerHandle | None = None

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._thread.start()

    async def submit(self, op: WriteOp, durable: bool = True) -> Any:
        """Run `op` in the next group commit. `durable=False` lets the commit skip its fsync:
        the WAL is sequential, so the next durable commit makes it durable too, and a crash
        of the process loses nothing either way; only a power cut can forget it."""
        if self._closing or self._loop is None:
            raise RuntimeError("queue is closed")
        future: asyncio.Future[Any] = self._loop.create_future()
        self._requests.put(_Request(op, future, durable))
        return await future

    def after_durable(self, callback: Callable[[], None]) -> None:
        """Call `callback` (on the event loop) once every commit made so far is durable."""
        self._after_durable.append(callback)
        self._arm_sync()

    def _arm_sync(self) -> None:
        if self._sync_timer is None and self._loop is not None and not self._closing:
            self._sync_timer = self._loop.call_later(self._sync_delay, self._sync_soon)

    def _sync_soon(self) -> None:
        """No durable commit came along: make one (an fsync of the WAL)."""
        self._sync_timer = None
        if self._after_durable and not self._closing and self._loop is not None:
            done: asyncio.Future[Any] = self._loop.create_future()
            # A failed sync is logged by the writer; the timer is armed again in _settle.
            done.add_done_callback(lambda future: future.exception())
            self._requests.put(_Request(_sync_wal, done, durable=True))

    async def run_now(self, op: WriteOp) -> Any:
        """Run `op` in its own transaction before start() (start-up, recovery)."""
        return (await asyncio.to_thread(self._transaction, [op]))[0]

    async def flush_durable(self) -> None:
        """Make every commit so far durable now, and run what waited for that."""
        if self._after_durable:
            await self.submit(_sync_wal)

    async def close(self) -> None:
        """Commit what is pending, make it durable, then stop."""
        if self._thread.is_alive():
            await self.flush_durable()
        self._closing = True
        if self._thread.is_alive():
            self._requests.put(None)
            await asyncio.to_thread(self._thread.join)
        if self._sync_timer is not None:
            self._sync_timer.cancel()
        self._db.close()

    def _run(self) -> None:
        """The writer thread: block for a request, take whatever else is waiting, commit."""
        while (first := self._requests.get()) is not None:
            batch, stop = [first], False
            while len(batch) < self._max_batch:
                try:
                    request = self._requests.get_nowait()
                except queue.Empty:
                    break
                if request is None:
                    stop = True
                    break
                batch.append(request)
            try:
                results = self._commit_statements(batch)
            except BaseException as exc:  # the waiting sessions must hear of it
                results = [(False, exc)] * len(batch)
            assert self._loop is not None
            durable = any(r.durable and ok for r, (ok, _) in zip(batch, results, strict=True))
            self._loop.call_soon_threadsafe(self._settle, batch, results, durable)
            if stop:
                return

    def _commit_statements(self, batch: list[_Request]) -> list[Result]:
        """The batch as one transaction, or singly if that fails."""
        try:
            self._set_synchronous(any(request.durable for request in batch))
            return [(True, result) for result in self._transaction([r.op for r in batch])]
        except Exception as exc:
            if len(batch) == 1:
                return [(False, exc)]
            singly = [self._commit_statements([request])[0] for request in batch]
            failed = sum(not ok for ok, _ in singly)
            if failed < len(batch):  # one bad request; a full disk fails them all, and
                # each caller hears of it (and logs it once, relay.trouble)
                log.warning("group commit of %d requests failed (%s); %d failed alone",
                            len(batch), exc, failed)
            return singly

    def _set_synchronous(self, durable: bool) -> None:
        if durable != self._durable:
            self._db.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
            self._durable = durable

    def _transaction(self, ops: list[WriteOp]) -> list[Any]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            results = [op(self._db) for op in ops]
            self._db.execute("COMMIT")
        except BaseException:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise
        return results

    def _settle(self, batch: list[_Request], results: list[Result], durable: bool) -> None:
        """On the event loop: wake every request of a committed batch (unless it gave up);
        after a durable one, whoever waited for durability."""
        for request, (ok, value) in zip(batch, results, strict=True):
            if request.future.done():
                continue
            if ok:
                request.future.set_result(value)
            else:
                request.future.set_exception(value)
        if durable and self._after_durable:
            callbacks, self._after_durable = self._after_durable, []
            for callback in callbacks:
                callback()
        elif self._after_durable:
            self._arm_sync()


def _sync_wal(db: sqlite3.Connection) -> None:
    """A durable commit with nothing to write: SQLite skips the fsync of an empty
    transaction, so the WAL file is fsynced directly."""
    path = db.execute("PRAGMA database_list").fetchone()[2] + "-wal"
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
