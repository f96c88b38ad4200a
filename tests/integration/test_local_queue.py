"""The index writer: what waits for durability runs only after a durable commit."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

from relay.queue import NewMessage, Outcome, Selection, State, new_queue_id
from relay.queue.groupcommit import GroupCommitter, connect
from relay.queue.local import LocalQueue


def _insert(value: int, db: sqlite3.Connection) -> None:
    db.execute("INSERT INTO t VALUES (?)", (value,))


async def test_after_durable_waits_for_a_durable_commit(tmp_path: Path) -> None:
    committer = GroupCommitter(connect(tmp_path / "db"), presync=lambda: None, sync_delay=3600)
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
    committer = GroupCommitter(connect(tmp_path / "db"), presync=lambda: None, sync_delay=0.01)
    committer.start()
    await committer.submit(lambda db: db.execute("CREATE TABLE t (v)"), durable=False)
    covered = asyncio.Event()
    committer.after_durable(covered.set)
    await asyncio.wait_for(covered.wait(), 10)
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
    """A crash between the rename and the directory fsync: the row may be on disk while
    the file is still in tmp/ (and no 250 went out). Recovery drops both, quietly."""
    queue = LocalQueue(tmp_path / "spool")
    await queue.open()
    unrenamed = NewMessage(new_queue_id(), "a@sender.test", ["b@example.test"], b"x\r\n")
    (tmp_path / "spool" / "tmp" / unrenamed.id).write_bytes(unrenamed.data)
    await queue.index(unrenamed.meta)
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
