"""The index writer: what waits for durability runs only after a durable commit."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path

import pytest

from relay.queue import Claimed, NewMessage, Outcome, Selection, State, new_queue_id
from relay.queue.local import LocalQueue
from relay.queue.local.groupcommit import GroupCommitter, connect
from relay.queue.local.spoolfiles import Envelope, SpoolFiles


def _insert(value: int, db: sqlite3.Connection) -> None:
    db.execute("INSERT INTO t VALUES (?)", (value,))


async def test_after_durable_waits_for_a_durable_commit(tmp_path: Path) -> None:
    committer = GroupCommitter(connect(tmp_path / "db"), sync_delay=3600)
    committer.start()
    await committer.submit(lambda db: db.execute("CREATE TABLE t (v)"))
    await committer.submit(lambda db: _insert(1, db), durable=False)
    covered = asyncio.Event()
    committer.after_durable(covered.set)
    await committer.submit(lambda db: _insert(2, db), durable=False)
    assert not covered.is_set()  # a commit without fsync covers nothing
    await committer.submit(lambda db: _insert(3, db))
    assert covered.is_set()  # settled together with the durable commit

    flushed = asyncio.Event()
    committer.after_durable(flushed.set)
    await committer.flush_durable()  # nothing to write: an fsync of the WAL
    assert flushed.is_set()
    await committer.close()


async def test_after_durable_makes_its_own_sync_when_no_commit_comes(tmp_path: Path) -> None:
    committer = GroupCommitter(connect(tmp_path / "db"), sync_delay=0.01)
    committer.start()
    await committer.submit(lambda db: db.execute("CREATE TABLE t (v)"), durable=False)
    covered = asyncio.Event()
    committer.after_durable(covered.set)
    await asyncio.wait_for(covered.wait(), 10)
    await committer.close()


async def test_after_durable_waits_for_a_durable_commit_after_quick_ones(
        tmp_path: Path) -> None:
    """Quick commits run on the event loop, beside the writer thread's: a callback waits
    for a durable commit made after every commit before it, whichever side made them."""
    committer = GroupCommitter(connect(tmp_path / "db"), sync_delay=3600)
    committer.start()
    await committer.submit(lambda db: db.execute("CREATE TABLE t (v)"))
    await committer.submit(lambda db: _insert(1, db), durable=False, quick=True)
    covered = asyncio.Event()
    committer.after_durable(covered.set)
    await committer.submit(lambda db: _insert(2, db), durable=False, quick=True)
    assert not covered.is_set()
    await committer.submit(lambda db: _insert(3, db))
    assert covered.is_set()
    await committer.close()
    with sqlite3.connect(tmp_path / "db") as db:
        assert [r[0] for r in db.execute("SELECT v FROM t ORDER BY v")] == [1, 2, 3]


async def test_quick_writes_never_wait_for_the_writer_thread(tmp_path: Path) -> None:
    """While the writer thread holds the connection, quick writes go to it: the event
    loop goes on (here: it is what lets the thread finish)."""
    committer = GroupCommitter(connect(tmp_path / "db"))
    committer.start()
    await committer.submit(lambda db: db.execute("CREATE TABLE t (v)"))
    in_thread, finish = threading.Event(), threading.Event()

    def slow(db: sqlite3.Connection) -> None:
        in_thread.set()
        finish.wait(30)
        _insert(1, db)

    slow_write = asyncio.create_task(committer.submit(slow))
    await asyncio.to_thread(in_thread.wait, 30)
    quick_write = asyncio.create_task(committer.submit(lambda db: _insert(2, db),
                                                       durable=False, quick=True))
    await asyncio.sleep(0)  # the quick write's turn on the loop: it must not block it
    await asyncio.sleep(0)
    assert not quick_write.done()
    finish.set()
    await asyncio.wait_for(asyncio.gather(slow_write, quick_write), 30)
    await committer.close()


async def test_quick_writes_are_checkpointed_by_the_writer_thread(tmp_path: Path) -> None:
    """SQLite's own checkpoints are off (one would fsync on the event loop): the writer
    thread's keep the WAL from growing without end."""
    committer = GroupCommitter(connect(tmp_path / "db"), checkpoint_changes=1,
                                checkpoint_interval=0)
    committer.start()
    await committer.submit(lambda db: db.execute("CREATE TABLE t (v)"))
    row = b"x" * 2000
    for _ in range(4):  # 2000 commits; unchecked, the WAL would hold every one
        for _ in range(500):
            await committer.submit(lambda db: db.execute("INSERT INTO t VALUES (?)", (row,)),
                                   durable=False, quick=True)
        await committer.submit(lambda db: None)  # in the thread, after its checkpoints
    # Unchecked: 16 MB (a page or two per commit); checkpointed: a round's worth or so.
    assert (tmp_path / "db-wal").stat().st_size < 6_000_000
    await committer.close()


async def test_a_delivered_message_leaves_with_its_file(tmp_path: Path) -> None:
    queue = LocalQueue(tmp_path / "spool")
    await queue.open()
    message = NewMessage(new_queue_id(), "a@sender.test", ["b@example.test"], b"Subject: x\r\n")
    await queue.store(message)
    [claimed] = await queue.claim_due(10)
    await queue.record([Outcome(claimed.recipient_id, claimed.attempts, State.DELIVERED, "250 ok")])
    await queue.close()  # makes the outcome durable, then removes the file and the rows
    assert not (tmp_path / "spool" / "messages" / message.id).exists()

    await queue.open()
    assert await queue.list_messages() == []
    assert not list((tmp_path / "spool" / "orphans").iterdir())
    await queue.close()


async def test_recovery_drops_the_row_of_a_file_that_never_left_tmp(tmp_path: Path) -> None:
    """A spool from before the queue file format: a crash between the rename and the
    directory fsync left the row on disk and the file in tmp/ (no 250 went out). Recovery
    drops both, quietly; an acknowledged file that is gone goes to quarantine."""
    queue = LocalQueue(tmp_path / "spool")
    await queue.open()
    unrenamed = NewMessage(new_queue_id(), "a@sender.test", ["b@example.test"], b"x\r\n")
    (tmp_path / "spool" / "tmp" / unrenamed.id).write_bytes(unrenamed.data)
    await queue.index(unrenamed.meta, 1.0)
    lost = NewMessage(new_queue_id(), "a@sender.test", ["c@example.test"], b"y\r\n")
    await queue.store(lost)
    await queue.close()
    (tmp_path / "spool" / "messages" / lost.id).unlink()  # a file gone for no good reason

    await queue.open()
    assert await queue.list_messages() == []
    await queue.close()
    index = sqlite3.connect(tmp_path / "spool" / "index.sqlite3")
    quarantined = [r[0] for r in index.execute("SELECT message_id FROM quarantine")]
    index.close()
    assert quarantined == [lost.id]  # only the file that had been acknowledged
    assert not list((tmp_path / "spool" / "tmp").iterdir())


async def test_recovery_indexes_queue_files_the_index_lacks(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The index is derived from the queue files: a complete file without rows (its 250
    went out before its rows were committed) is indexed again; a file without its
    completion mark was never acknowledged and goes; anything else goes to orphans/."""
    spool = tmp_path / "spool"
    files = SpoolFiles(spool)
    files.create_dirs()
    acknowledged = NewMessage(new_queue_id(), "a@sender.test", ["b@x.test", "c@y.test"],
                              b"Subject: kept\r\n\r\nbody\r\n", smtputf8=True)
    files.write(acknowledged.id, Envelope(acknowledged.mail_from,
                                          tuple(acknowledged.recipients),
                                          len(acknowledged.data), True, 1234.5),
                acknowledged.data)
    cut_short = new_queue_id()
    files.write(cut_short, Envelope("a@sender.test", ("d@x.test",), 6, False, 1.0), b"whole\n")
    whole = files.path(cut_short).read_bytes()
    files.path(cut_short).write_bytes(whole[:-5])  # the last write never reached the disk
    template = new_queue_id()
    files.write(template, Envelope("n@sender.test", (), 2, False, 1.0, broadcast=True), b"{}")
    stranger = new_queue_id()
    files.path(stranger).write_bytes(b"not a queue file\r\n")

    queue = LocalQueue(spool)
    await queue.open()
    [info] = await queue.list_messages()
    assert (info.id, info.mail_from, info.size, info.received_at) == (
        acknowledged.id, "a@sender.test", len(acknowledged.data), 1234.5)
    assert [(r.address, r.state) for r in info.recipients] == [
        ("b@x.test", State.QUEUED), ("c@y.test", State.QUEUED)]
    assert await queue.read_body(acknowledged.id) == acknowledged.data
    claimed = await queue.claim_due(10)
    assert {c.address for c in claimed} == {"b@x.test", "c@y.test"}
    await queue.close()
    assert sorted(p.name for p in (spool / "messages").iterdir()) == [acknowledged.id]
    assert [p.name for p in (spool / "orphans").iterdir()] == [stranger]
    again = [r.getMessage() for r in caplog.records if "indexed again" in r.getMessage()]
    assert again == [(f"recovery: 1 queue files indexed again (acknowledged before their "
                     f"index rows were committed, or the index was lost): {acknowledged.id}")]


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


async def test_leases_expire_renew_and_fence_outcomes(tmp_path: Path) -> None:
    clock = Clock()
    queue = LocalQueue(tmp_path / "spool", clock=clock, lease=60)
    await queue.open()
    message = NewMessage(new_queue_id(), "a@sender.test", ["b@example.test"], b"x\r\n")
    await queue.store(message)
    [first] = await queue.claim_due(10)
    clock.now += 59
    assert await queue.claim_due(10) == []  # leased
    await queue.renew_leases([(first.recipient_id, first.attempts)])
    clock.now += 59
    assert await queue.claim_due(10) == []  # renewed for another 60 s
    clock.now += 2
    [second] = await queue.claim_due(10)  # expired: the work comes back, nothing deleted
    assert (second.recipient_id, second.attempts) == (first.recipient_id, first.attempts + 1)

    # The first claim's late outcome changes nothing; the second one's counts.
    await queue.record([Outcome(first.recipient_id, first.attempts, State.DELIVERED, "250")])
    info = await queue.get_message(message.id)
    assert info is not None and info.recipients[0].state is State.ACTIVE
    await queue.record([Outcome(second.recipient_id, second.attempts, State.DEFERRED,
                                "451 later", clock.now + 300)])
    info = await queue.get_message(message.id)
    assert info is not None and info.recipients[0].state is State.DEFERRED
    await queue.close()


async def test_requeue_puts_every_waiting_recipient_back(tmp_path: Path) -> None:
    clock = Clock()
    queue = LocalQueue(tmp_path / "spool", clock=clock)
    await queue.open()
    held = NewMessage(new_queue_id(), "a@sender.test", ["h@example.test"], b"x\r\n")
    active = NewMessage(new_queue_id(), "a@sender.test", ["a@example.test"], b"y\r\n")
    await queue.store(held)
    await queue.hold(Selection([held.id]))
    await queue.store(active)
    [claimed] = await queue.claim_due(10)
    assert await queue.requeue(Selection()) == 0  # nothing selected
    assert await queue.requeue(Selection(all=True)) == 2
    for message in (held, active):
        info = await queue.get_message(message.id)
        assert info is not None and [r.state for r in info.recipients] == [State.QUEUED]
    # The delivery in flight when it was requeued cannot settle it any more.
    await queue.record([Outcome(claimed.recipient_id, claimed.attempts, State.DELIVERED,
                                "250")])
    assert len(await queue.claim_due(10)) == 2
    await queue.close()


class _Taker:
    """Stands in for the scheduler: takes what is claimed for it while it has room."""

    def __init__(self, room: int) -> None:
        self.free = room
        self.taken: list[list[Claimed]] = []
        self.wakes = 0

    def room(self) -> int:
        return self.free

    def take_claimed(self, claimed: list[Claimed]) -> None:
        self.taken.append(claimed)

    def wake(self) -> None:
        self.wakes += 1


async def test_new_mail_is_claimed_in_the_commit_that_indexes_it(tmp_path: Path) -> None:
    queue = LocalQueue(tmp_path / "spool", lease=60.0)
    await queue.open()
    try:
        await queue.suppress("gone@example.test", "550 5.1.1 gone")
        taker = _Taker(room=2)
        queue.follow_new_mail(taker)
        first = NewMessage(new_queue_id(), "app@sender.test",
                           ["a@example.test", "gone@example.test"], b"Subject: x\r\n\r\nx\r\n")
        await queue.store(first)
        [claimed] = taker.taken
        assert [(c.message_id, c.address, c.attempts, c.suppressed) for c in claimed] == [
            (first.id, "a@example.test", 1, ""),
            (first.id, "gone@example.test", 1, "550 5.1.1 gone")]
        info = await queue.get_message(first.id)
        assert info is not None and {r.state for r in info.recipients} == {State.ACTIVE}
        assert await queue.claim_due(10) == []  # leased: nobody else gets them

        taker.free = 1  # less room than the next message has recipients: it stays due
        second = NewMessage(new_queue_id(), "app@sender.test",
                            ["b@example.test", "c@example.test"], b"Subject: y\r\n\r\ny\r\n")
        await queue.store(second)
        assert len(taker.taken) == 1 and taker.wakes == 1
        assert {c.address for c in await queue.claim_due(10)} == {"b@example.test",
                                                                  "c@example.test"}
        await queue.record([Outcome(c.recipient_id, c.attempts, State.DELIVERED, "250 ok")
                            for c in claimed])
        assert await queue.get_message(first.id) is None
    finally:
        await queue.close()


async def test_a_claim_of_more_addresses_than_one_lookup_takes_finds_every_suppression(
        tmp_path: Path) -> None:
    # The suppression list is read for a claim's addresses a chunk at a time.
    queue = LocalQueue(tmp_path / "spool", lease=60.0)
    await queue.open()
    try:
        recipients = [f"r{n:04}@example.test" for n in range(1100)]
        await queue.suppress("R0003@example.test", "550 5.1.1 gone")
        await queue.suppress("r1050@example.test", "unsubscribed", "transactional")
        await queue.suppress("r0600@example.test", "complained", "newsletter")  # elsewhere
        await queue.store(NewMessage(new_queue_id(), "app@sender.test", recipients,
                                     b"Subject: x\r\n\r\nx\r\n"))
        claimed = await queue.claim_due(2000)
        assert len(claimed) == 1100
        assert {c.address: c.suppressed for c in claimed if c.suppressed} == {
            "r0003@example.test": "550 5.1.1 gone", "r1050@example.test": "unsubscribed"}
    finally:
        await queue.close()


async def test_mail_claimed_as_it_was_indexed_comes_back_after_a_crash(tmp_path: Path) -> None:
    queue = LocalQueue(tmp_path / "spool", lease=60.0)
    await queue.open()
    taker = _Taker(room=10)
    queue.follow_new_mail(taker)
    stored = NewMessage(new_queue_id(), "app@sender.test", ["a@example.test"],
                        b"Subject: x\r\n\r\nx\r\n")
    await queue.store(stored)
    assert taker.taken
    await queue.close()  # as a crash would leave it: the recipient active, leased
    again = LocalQueue(tmp_path / "spool", lease=60.0)
    await again.open()
    try:
        [claim] = await again.claim_due(10)
        assert (claim.message_id, claim.attempts) == (stored.id, 2)
    finally:
        await again.close()
