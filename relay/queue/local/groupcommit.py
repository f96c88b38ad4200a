"""queue.local.groupcommit: the one writer of the SQLite index, committing many requests at once.

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

Such a commit is an append to the WAL in the page cache, a few tens of microseconds, while
a trip to the writer thread and back costs two thread wake-ups and a contended GIL (about
0.1 ms of CPU each on a virtual machine, bench/README.md). So the small ones of them
(`quick`: new mail, outcomes, claims) are committed on the event loop itself, all that
came in one pass of the loop in one transaction, whenever the writer thread is not using
the connection; a lock says who has it. The event loop never waits for it, nor for an
fsync: automatic checkpoints are off (a checkpoint fsyncs the database), and the writer
thread checkpoints instead, after CHECKPOINT_CHANGES rows written and at most once every
CHECKPOINT_INTERVAL (a checkpoint per thousand rows was a dozen a second under load, each
with two fsyncs).
"""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("relay.queue")

WriteOp = Callable[[sqlite3.Connection], Any]
Result = tuple[bool, Any]  # (True, value) or (False, exception)
SYNC_DELAY = 0.05  # how long after_durable waits for a durable commit to come along
# Rows inserted, updated or deleted between two checkpoints: a row is a page or two of
# the WAL, so about SQLite's own default (1000 pages).
CHECKPOINT_CHANGES = 1000
CHECKPOINT_INTERVAL = 1.0  # seconds


def connect(path: Path) -> sqlite3.Connection:
    """A connection for the writer thread: WAL, synchronous=FULL, explicit transactions."""
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("PRAGMA busy_timeout=10000")
    db.execute("PRAGMA wal_autocheckpoint=0")  # GroupCommitter checkpoints in its thread
    return db


@dataclass
class _Request:
    op: WriteOp
    future: asyncio.Future[Any]
    durable: bool  # must survive a power loss once committed (new mail: yes)


def _checkpoint(db: sqlite3.Connection) -> None:
    """Not a write: the writer thread runs it outside a transaction (a marker op)."""


class GroupCommitter:
    def __init__(self, db: sqlite3.Connection, max_batch: int = 1024,
                 sync_delay: float = SYNC_DELAY,
                 checkpoint_changes: int = CHECKPOINT_CHANGES,
                 checkpoint_interval: float = CHECKPOINT_INTERVAL) -> None:
        self._db = db
        self._sync_delay = sync_delay
        self._checkpoint_changes = checkpoint_changes
        self._checkpoint_interval = checkpoint_interval
        self._max_batch = max_batch
        self._requests: queue.SimpleQueue[_Request | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="queue-writer", daemon=True)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closing = False
        self._durable = True  # connect() sets synchronous=FULL
        # Callbacks with the number of the commit that must be durable before they run.
        self._after_durable: list[tuple[int, Callable[[], None]]] = []
        self._sync_timer: asyncio.TimerHandle | None = None
        self._in_use = threading.Lock()  # the connection: the writer thread or the loop
        self._commits = 0  # made so far, on either side
        self._synced_upto = 0  # the last commit made with an fsync (all before it are safe)
        self._durable_commits = 0  # of which the loop has heard
        # The connection's total_changes and the time at the last checkpoint.
        self._checkpointed = (0, time.monotonic())
        self._here: list[_Request] = []  # quick requests of this pass of the loop

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._thread.start()

    async def submit(self, op: WriteOp, durable: bool = True, quick: bool = False) -> Any:
        """Run `op` in the next group commit. `durable=False` lets the commit skip its fsync:
        the WAL is sequential, so the next durable commit makes it durable too, and a crash
        of the process loses nothing either way; only a power cut can forget it. `quick`
        (with durable=False): a few rows, which may be committed on the event loop."""
        if self._closing or self._loop is None:
            raise RuntimeError("queue is closed")
        future: asyncio.Future[Any] = self._loop.create_future()
        request = _Request(op, future, durable)
        if quick and not durable:
            if not self._here:
                self._loop.call_soon(self._commit_here)
            self._here.append(request)
        else:
            self._requests.put(request)
        return await future

    def _commit_here(self) -> None:
        """On the event loop: this pass's quick requests as one transaction, unless the
        writer thread has the connection (then they go to it; the loop does not wait)."""
        batch, self._here = self._here, []
        if not batch:
            return  # close() committed them already
        if not self._in_use.acquire(blocking=False):
            for request in batch:
                self._requests.put(request)
            return
        try:
            results = self._commit_statements(batch)
            if self._checkpoint_due():
                self._checkpoint_in_thread()
        finally:
            self._in_use.release()
        self._settle(batch, results, None)

    def _checkpoint_due(self) -> bool:
        """Under the lock: enough rows written since the last checkpoint, long enough ago."""
        changes, at = self._checkpointed
        return (self._db.total_changes - changes >= self._checkpoint_changes
                and time.monotonic() - at >= self._checkpoint_interval)

    def _checkpoint_in_thread(self) -> None:
        """From the loop: the writer thread checkpoints (it may fsync; the loop must not)."""
        assert self._loop is not None
        self._checkpointed = (self._db.total_changes, time.monotonic())
        done: asyncio.Future[Any] = self._loop.create_future()
        done.add_done_callback(lambda future: future.exception())  # logged by the thread
        self._requests.put(_Request(_checkpoint, done, durable=False))

    def after_durable(self, callback: Callable[[], None]) -> None:
        """Call `callback` (on the event loop) once every commit made so far is durable."""
        self._after_durable.append((self._commits, callback))
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
        if self._here:
            self._commit_here()
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
            with self._in_use:
                try:
                    results = self._commit_batch(batch)
                except BaseException as exc:  # the waiting sessions must hear of it
                    results = [(False, exc)] * len(batch)
                if self._checkpoint_due():
                    self._checkpoint()
                synced_upto = self._synced_upto
            assert self._loop is not None
            self._loop.call_soon_threadsafe(self._settle, batch, results, synced_upto)
            if stop:
                return

    def _commit_batch(self, batch: list[_Request]) -> list[Result]:
        """The thread's batch: its writes as one transaction, then one checkpoint for every
        checkpoint request in it."""
        writes = [request for request in batch if request.op is not _checkpoint]
        written = iter(self._commit_statements(writes) if writes else [])
        checkpointed = self._checkpoint() if len(writes) < len(batch) else (True, None)
        return [checkpointed if request.op is _checkpoint else next(written)
                for request in batch]

    def _checkpoint(self) -> Result:
        self._checkpointed = (self._db.total_changes, time.monotonic())
        try:
            self._db.execute("PRAGMA wal_checkpoint(PASSIVE)")
        except sqlite3.Error as exc:  # the next one may do better; the WAL only grows
            log.warning("checkpoint of the queue index failed: %s", exc)
            return False, exc
        return True, None

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
                # each caller hears of it (and logs it once, relay.runtime.trouble)
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
            self._commits += 1
            if self._durable:  # synchronous=FULL: the WAL was fsynced up to here
                self._synced_upto = self._commits
        except BaseException:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise
        return results

    def _settle(self, batch: list[_Request], results: list[Result],
                synced_upto: int | None) -> None:
        """On the event loop: wake every request of a committed batch (unless it gave up),
        and whoever waited for commits that are durable now (up to `synced_upto`)."""
        for request, (ok, value) in zip(batch, results, strict=True):
            if request.future.done():
                continue
            if ok:
                request.future.set_result(value)
            else:
                request.future.set_exception(value)
        if synced_upto is not None and synced_upto > self._durable_commits:
            self._durable_commits = synced_upto
            due = [c for upto, c in self._after_durable if upto <= self._durable_commits]
            if due:
                self._after_durable = [(upto, c) for upto, c in self._after_durable
                                       if upto > self._durable_commits]
                for callback in due:
                    callback()
        if self._after_durable:
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
