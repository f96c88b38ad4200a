"""queue.local.backend: the embedded backend, message files under the spool plus a
SQLite index.

A new message is durable once its queue file (envelope, message, completion mark) is
fsynced under its final name (queue.local.spoolfiles, Postfix's rule); its index rows follow in
the next group commit, and recovery indexes again a complete file the index lacks.
Every index write goes through one group-committing writer thread; ingest worker
processes write their files themselves and hand the rows to it (queue.local.handoff). Operator
queries read through a separate aiosqlite connection. Every change of a recipient's state
writes its event in the transaction that makes it (queue.local.events). What both
backends keep alike (keys, sessions, webhooks, listings) is queue.tables', on IndexSql.

The index's schema is queue.local.schema's; the recovery that reconciles it with the
files at start is in queue.local.index. Active recipients are leased (queue.base): for
them next_attempt_at is the lease's expiry.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite

from relay.core.errors import LocalFailure
from relay.queue.base import (
    CLAIMABLE,
    DEFAULT_LEASE,
    DELETABLE,
    HOLDABLE,
    NO_TRACKING,
    BroadcastStatus,
    Claimed,
    Idempotency,
    MessageMeta,
    NewMessage,
    Outcome,
    Selection,
    Tracking,
)
from relay.queue.events import EventType
from relay.queue.local import broadcasts
from relay.queue.local.access import IndexSql
from relay.queue.local.bodycache import BodyCache
from relay.queue.local.events import EventPages, add_events, add_outcome_events
from relay.queue.local.feedback import FeedbackWrites, keep_return_paths, suppressed_in
from relay.queue.local.groupcommit import GroupCommitter
from relay.queue.local.index import open_index, recover
from relay.queue.local.spoolfiles import Envelope, SpoolFiles, storage_failure
from relay.queue.local.sql import (
    IDS,
    delete_messages,
    delete_selected,
    finish_messages,
    insert_message,
)
from relay.queue.overview import LeaseHolder, NodeInfo
from relay.queue.roles import NewMailTaker
from relay.queue.tables import SharedTables

log = logging.getLogger("relay.queue")


_T = TypeVar("_T")
IO_THREADS = 8
PREVIOUS_WORKERS_TIMEOUT = 60.0


class LocalQueue(EventPages, FeedbackWrites, SharedTables):
    """Queue backend for one node: `spool/messages/<id>` files and `spool/index.sqlite3`."""

    _live = "done = 0"  # finished messages are marked, their rows go after their files

    def __init__(self, path: Path, clock: Callable[[], float] = time.time,
                 lease: float = DEFAULT_LEASE) -> None:
        self.files = SpoolFiles(path)
        self._clock = clock
        self._lease = lease
        self._db_path = path / "index.sqlite3"
        self._reader_db: aiosqlite.Connection | None = None  # operator queries
        self._committer: GroupCommitter | None = None  # every write
        # Finished messages whose files go after the next durable commit (_finished), and
        # those whose files are gone (_unlinked): their rows go with the next write.
        self._finished: list[str] = []
        self._unlinked: list[str] = []
        self._removals: set[asyncio.Task[None]] = set()  # files of finished messages
        # File I/O (writes, fsyncs, reads) runs on the queue's own threads, so a busy
        # default executor can never hold up a 250.
        self._io: ThreadPoolExecutor | None = None
        self._taker: NewMailTaker | None = None  # claims new mail as it is indexed
        self._bodies = BodyCache()  # of mail claimed as it was indexed, for its first read
        self._sql = IndexSql(self._read_all, self._write, clock)  # queue.tables'

    # -- lifecycle -------------------------------------------------------------------

    async def open(self) -> None:
        self.files.create_dirs()
        self.files.lock()
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self.files.wait_for_previous_workers,
                                   PREVIOUS_WORKERS_TIMEOUT)
        self._io = ThreadPoolExecutor(max_workers=IO_THREADS, thread_name_prefix="spool-io")
        writer = await loop.run_in_executor(
            None, open_index, self.files.create_private(self._db_path.name))
        self._committer = GroupCommitter(writer)
        await self._committer.run_now(partial(recover, self.files, self._clock()))
        self._reader_db = await aiosqlite.connect(self._db_path, isolation_level=None)
        await self._reader_db.execute("PRAGMA busy_timeout=10000")
        self._committer.start()

    async def close(self) -> None:
        if self._committer is not None:
            await self._committer.flush_durable()  # the finished messages' files go too
            if self._removals:
                await asyncio.wait(self._removals)
            if self._unlinked:
                await self._write(partial(delete_messages, self._take_unlinked()))
            await self._committer.close()
        if self._reader_db is not None:
            await self._reader_db.close()
        self._committer = self._reader_db = None
        if self._io is not None:
            self._io.shutdown(wait=True)
            self._io = None
        self.files.unlock()

    async def check(self) -> None:
        if self._committer is None:
            raise LocalFailure("queue is not open")

    # -- intake ----------------------------------------------------------------------

    async def store(self, message: NewMessage) -> None:
        envelope = self.envelope_of(message)
        await self.write_file(message.id, envelope, message.data)
        try:
            # Durable at once only with an Idempotency-Key, which lives in the index alone;
            # the rest is in the queue file.
            await self.index(message.meta, envelope.received_at,
                             durable=message.idempotency is not None, body=message.data)
        except asyncio.CancelledError:
            raise  # the client went away; the commit may still land, so the file stays
        except Exception as exc:
            # Not indexed, not acknowledged: no file left for recovery to index later.
            self.files.remove(message.id)
            raise storage_failure(exc, f"indexing message {message.id}") from exc

    def envelope_of(self, message: NewMessage, broadcast: bool = False) -> Envelope:
        return Envelope.of(message, self._clock(), broadcast)

    async def write_file(self, message_id: str, envelope: Envelope, data: bytes) -> None:
        """Step one of storing: the queue file, fsynced under its final name; once it is
        written the message may be acknowledged (LocalFailure if it was not)."""
        await self._in_io_thread(self.files.write, message_id, envelope, data)

    async def lease_holders(self) -> list[LeaseHolder]:
        return []  # one node: nobody else to tell apart

    async def nodes(self) -> list[NodeInfo]:
        return []

    # -- capabilities (queue.roles.Capabilities) -----------------------------------------

    owner = "local"  # one relay owns a spool (its lock): whatever it leased is its own

    def follow_new_mail(self, taker: NewMailTaker) -> None:
        """From now on new mail is claimed for `taker` (the scheduler) in the commit that
        indexes it, while it has room: no claim of its own, no wake-up (bench/README.md)."""
        self._taker = taker

    def shared_rate_limits(self) -> None:
        return None  # one node: its own count is the whole count

    def free_bytes(self) -> int:
        return self.files.free_bytes()

    def indexer(self) -> LocalQueue:
        return self  # ingest workers write the files, this process indexes them

    async def index(self, meta: MessageMeta, received_at: float, durable: bool = False,
                    body: bytes | None = None) -> None:
        """Step two (the owner only): the index rows, in the next group commit; not
        durable by themselves (the queue file is), so this costs no fsync. Raises what the
        commit raised. `body`, the message's, saves its first delivery reading the file."""
        taker = self._taker
        lease = (self._lease if taker is not None and taker.room() >= len(meta.recipients)
                 else None)
        claimed = await self._write(partial(_index_claiming, meta, received_at, self._clock(),
                                            lease), durable=durable, quick=True)
        if taker is not None:
            if claimed and body is not None:
                self._bodies.put(meta.id, body)
            taker.take_claimed(claimed) if claimed else taker.wake()

    # -- delivery --------------------------------------------------------------------

    async def claim_due(self, limit: int) -> list[Claimed]:
        # A claim lost to a power cut only forgets that an attempt was made.
        return list(await self._write(partial(_claim_due, limit, self._clock(), self._lease),
                                      durable=False, quick=True))

    async def renew_leases(self, claims: Sequence[tuple[int, int]]) -> None:
        if claims:
            await self._write(partial(_renew_leases, claims, self._clock() + self._lease),
                              durable=False, quick=True)

    async def take_slot(self, destination: str, limit: int) -> str | None:
        return "local"  # one node: the scheduler's own count is the whole relay's

    async def renew_slots(self) -> None:
        pass

    async def release_slot(self, token: str) -> None:
        pass

    async def return_leases(self, claims: Sequence[tuple[int, int]]) -> None:
        if claims:
            await self._write(partial(_return_leases, claims, self._clock()))

    async def next_due_at(self) -> float | None:
        row = await self._read_one(
            f"SELECT MIN(next_attempt_at) FROM recipients WHERE {CLAIMABLE}")
        return None if row is None or row[0] is None else float(row[0])

    async def read_body(self, message_id: str) -> bytes:
        body = self._bodies.take(message_id)
        return body if body is not None else await self._in_io_thread(self.files.read,
                                                                      message_id)

    async def record(self, outcomes: Sequence[Outcome]) -> None:
        if not outcomes:
            return
        # Not fsynced on its own: the next durable commit (new mail, usually) makes it
        # durable, and a power cut before that only means delivering again. A finished
        # message's file goes only once the commit that finished it is durable.
        finished = await self._write(partial(_record, outcomes, self._take_unlinked(),
                                             self._clock()), durable=False, quick=True)
        self._remove_when_durable(finished)

    def _remove_when_durable(self, finished: list[str]) -> None:
        if not finished or self._committer is None:
            return
        if not self._finished:
            self._committer.after_durable(self._remove_finished)
        self._finished += finished

    def _remove_finished(self) -> None:
        """Files after the durable commit, rows with a later write: a crash in between
        leaves `done` rows that recovery cleans up. Every message finished since the last
        durable commit goes in one trip to an I/O thread, not one trip each."""
        message_ids, self._finished = self._finished, []
        self._bodies.discard(message_ids)
        task = asyncio.create_task(self._in_io_thread(self.files.remove_all, message_ids))
        self._removals.add(task)

        def removed(task: asyncio.Task[None]) -> None:
            self._removals.discard(task)
            if not task.cancelled() and task.exception() is None:
                self._unlinked += message_ids

        task.add_done_callback(removed)

    def _take_unlinked(self) -> list[str]:
        taken, self._unlinked = self._unlinked, []
        return taken

    # -- operator commands -----------------------------------------------------------

    # -- broadcasts (queue.local.broadcasts) ------------------------------------------

    async def open_broadcast(self, broadcast_id: str, mail_from: str, template: bytes,
                             smtputf8: bool, tracking: Tracking = NO_TRACKING) -> None:
        template_file = NewMessage(broadcast_id, mail_from, (), template, smtputf8)
        await self.write_file(broadcast_id, self.envelope_of(template_file, broadcast=True),
                              template)
        await self._write(partial(broadcasts.open_broadcast, broadcast_id, mail_from,
                                  len(template), smtputf8, tracking, self._clock()))

    async def add_broadcast_recipients(self, broadcast_id: str,
                                       recipients: Sequence[tuple[str, str]]) -> int:
        # No fsync per chunk: accept_broadcast's durable commit covers them all.
        return int(await self._write(partial(broadcasts.add_recipients, broadcast_id,
                                             recipients, self._clock()), durable=False))

    async def accept_broadcast(self, broadcast_id: str, rejected: int,
                               idempotency: Idempotency | None,
                               answer: dict[str, Any]) -> None:
        finished = await self._write(partial(broadcasts.accept, broadcast_id, rejected,
                                             idempotency, answer, self._clock()))
        self._remove_when_durable(finished)

    async def abandon_broadcast(self, broadcast_id: str) -> None:
        await self._write(partial(broadcasts.abandon, broadcast_id))
        self.files.remove(broadcast_id)

    async def cancel_broadcast(self, broadcast_id: str) -> BroadcastStatus | None:
        finished = await self._write(partial(broadcasts.cancel, broadcast_id, self._clock()))
        if finished is None:
            return None
        self._remove_when_durable(finished)
        return await self.broadcast_status(broadcast_id)

    async def _queue_now(self, selection: Selection, which: str, event: EventType) -> int:
        """Recipients of `selection` that match `which` to `queued`, due now; how many."""
        return await self._update_selected(
            "UPDATE recipients SET state = 'queued', next_attempt_at = ?", [self._clock()],
            which, selection, event)

    async def hold(self, selection: Selection) -> int:
        return await self._update_selected("UPDATE recipients SET state = 'held'", [],
                                           HOLDABLE, selection, EventType.HELD)

    async def _update_selected(self, update: str, params: list[Any], which: str,
                               selection: Selection, event: EventType) -> int:
        where, selected = _selection_sql(selection)
        if where is None:
            return 0
        return int(await self._write(partial(
            _update_recording, f"{update} WHERE {which} AND ({where})", [*params, *selected],
            event, self._clock())))

    async def delete(self, selection: Selection) -> int:
        where, params = _selection_sql(selection)
        if where is None:
            return 0
        deleted = await self._write(partial(delete_selected, DELETABLE.format(where), params,
                                            self._clock()))
        self._bodies.discard(deleted)
        for message_id in deleted:
            self.files.remove(message_id)
        return len(deleted)

    async def missing(self, message_ids: Sequence[str]) -> list[str]:
        found = {row[0] for row in await self._read_all(
            f"SELECT id FROM messages WHERE id IN {IDS} AND done = 0",
            [json.dumps(list(message_ids))])}
        return [message_id for message_id in message_ids if message_id not in found]

    # -- plumbing --------------------------------------------------------------------

    async def _write(self, op: Any, durable: bool = True, quick: bool = False) -> Any:
        """`quick`: a few rows, the hot path's writes (groupcommit: on the event loop)."""
        if self._committer is None:
            raise LocalFailure("queue is not open")
        return await self._committer.submit(op, durable=durable, quick=quick)

    async def _in_io_thread(self, function: Callable[..., _T], *args: Any) -> _T:
        if self._io is None:
            raise LocalFailure("queue is not open")
        return await asyncio.get_running_loop().run_in_executor(self._io, function, *args)

    async def _read_all(self, sql: str, params: Sequence[Any]) -> list[sqlite3.Row]:
        if self._reader_db is None:
            raise LocalFailure("queue is not open")
        async with self._reader_db.execute(sql, params) as cursor:
            return list(await cursor.fetchall())

    async def _read_one(self, sql: str) -> sqlite3.Row | None:
        rows = await self._read_all(sql, [])
        return rows[0] if rows else None


# Write operations: run in the writer thread, inside the group committer's transaction.

def _index_claiming(meta: MessageMeta, received_at: float, now: float, lease: float | None,
                    db: sqlite3.Connection) -> list[Claimed]:
    """A new message's rows; with `lease`, its recipients claimed at once (active, the
    first attempt counted, leased), as claim_due would."""
    insert_message(meta, received_at, now, db, None if lease is None else now + lease)
    if lease is None:
        return []
    rows = db.execute("SELECT id, address, domain FROM recipients WHERE message_id = ?",
                      (meta.id,)).fetchall()
    stream = meta.tracking.stream
    suppressed = suppressed_in(db, [(address, stream) for _, address, _ in rows])
    return [Claimed(rid, meta.id, address, domain, 1, meta.mail_from, received_at,
                    meta.smtputf8, None, stream, suppressed.get((address, stream), ""))
            for rid, address, domain in sorted(rows)]


def _claim_due(limit: int, now: float, lease: float,
               db: sqlite3.Connection) -> list[Claimed]:
    rows = db.execute(
        "UPDATE recipients SET state = 'active', attempts = attempts + 1, last_attempt_at = ?, "
        "next_attempt_at = ? "
        f"WHERE id IN (SELECT id FROM recipients WHERE {CLAIMABLE} AND next_attempt_at <= ? "
        "ORDER BY next_attempt_at LIMIT ?) "
        "RETURNING id, message_id, address, domain, attempts, fields",
        (now, now + lease, now, limit)).fetchall()
    if not rows:
        return []
    ids = sorted({r[1] for r in rows})
    messages = {m[0]: m for m in db.execute(
        f"SELECT id, mail_from, received_at, smtputf8, stream FROM messages WHERE id IN {IDS}",
        (json.dumps(ids),))}
    suppressed = suppressed_in(db, [(r[2], messages[r[1]][4]) for r in rows])
    return [
        Claimed(r[0], r[1], r[2], r[3], r[4], messages[r[1]][1], messages[r[1]][2],
                bool(messages[r[1]][3]), r[5], messages[r[1]][4],
                suppressed.get((r[2], messages[r[1]][4]), ""))
        for r in sorted(rows, key=lambda r: r[0])
    ]


def _record(outcomes: Sequence[Outcome], unlinked: list[str], now: float,
            db: sqlite3.Connection) -> list[str]:
    # The lease fences the update: a recipient claimed again since (its lease expired),
    # or deleted, requeued or held by an operator meanwhile, is left alone.
    applied: list[tuple[Outcome, str, str]] = []  # with the message id and address
    for o in outcomes:
        for message_id, address in db.execute(
                "UPDATE recipients SET state = ?, last_reply = ?, "
                "next_attempt_at = COALESCE(?, next_attempt_at) "
                "WHERE id = ? AND state = 'active' AND attempts = ? "
                "RETURNING message_id, address",
                (o.state.value, o.reply, o.next_attempt_at, o.recipient_id,
                 o.attempt)).fetchall():
            applied.append((o, message_id, address))
    if len(applied) < len(outcomes):
        log.warning("%d delivery outcomes were for recipients claimed again, requeued or "
                    "deleted meanwhile: not recorded", len(outcomes) - len(applied))
    add_outcome_events(db, now, applied)
    keep_return_paths(db, now, applied)
    broadcasts.record([o for o, _, _ in applied], now, db)
    finished = finish_messages(sorted({message_id for _, message_id, _ in applied}), now, db)
    if unlinked:
        delete_messages(unlinked, db)
    return finished


def _renew_leases(claims: Sequence[tuple[int, int]], until: float,
                  db: sqlite3.Connection) -> None:
    db.executemany("UPDATE recipients SET next_attempt_at = ? "
                   "WHERE id = ? AND state = 'active' AND attempts = ?",
                   [(until, recipient_id, attempt) for recipient_id, attempt in claims])


def _return_leases(claims: Sequence[tuple[int, int]], now: float,
                   db: sqlite3.Connection) -> None:
    db.executemany("UPDATE recipients SET state = 'queued', next_attempt_at = ? "
                   "WHERE id = ? AND state = 'active' AND attempts = ?",
                   [(now, recipient_id, attempt) for recipient_id, attempt in claims])


def _update_recording(sql: str, params: Sequence[Any], event: EventType, now: float,
                      db: sqlite3.Connection) -> int:
    """An operator's UPDATE of recipients, with an event for each it changed."""
    changed = db.execute(f"{sql} RETURNING message_id, address", params).fetchall()
    add_events(db, event, now, [(message_id, address, None) for message_id, address in changed])
    return len(changed)


def _selection_sql(selection: Selection) -> tuple[str | None, list[Any]]:
    if selection.all:
        return "1 = 1", []
    if selection.domain:
        return "domain = ?", [selection.domain.lower()]
    if selection.ids:
        return f"message_id IN {IDS}", [json.dumps(list(selection.ids))]
    return None, []
