"""The handoff channel between an ingest worker and the queue owner, both ends real."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest

from relay.core.errors import LocalFailure
from relay.core.ratelimit import SlidingWindow
from relay.policy import Rate
from relay.queue import NewMessage, State, Tracking, new_queue_id
from relay.queue.local import LocalQueue
from relay.queue.local.handoff import HandoffStore, WorkerEvents, serve_handoff
from relay.queue.local.spoolfiles import SpoolFiles


async def test_worker_stores_through_the_owner_and_shares_rate_limits(tmp_path: Path) -> None:
    queue = LocalQueue(tmp_path / "spool")
    await queue.open()
    ours, theirs = socket.socketpair()
    stored, ready, sessions = asyncio.Event(), asyncio.Event(), asyncio.Queue()
    events = WorkerEvents(stored=stored.set, ready=ready.set,
                          sessions=lambda plain, tls: sessions.put_nowait((plain, tls)))
    owner = asyncio.create_task(serve_handoff(queue, ours, SlidingWindow(), events))
    store = await HandoffStore.connect(SpoolFiles(tmp_path / "spool"), theirs)
    store.announce_ready()
    await ready.wait()

    message = NewMessage(new_queue_id(), "a@sender.test", ["b@example.test"], b"Subject: x\r\n",
                         tracking=Tracking("x", {"user": 7}, ("t",)))
    await store.store(message)  # returns once the queue file is fsynced: the 250 may go
    assert (tmp_path / "spool" / "messages" / message.id).exists()
    await asyncio.wait_for(stored.wait(), 10)  # the owner indexes it after that
    info = await queue.get_message(message.id)
    assert info is not None and info.recipients[0].state is State.QUEUED
    assert await queue.read_body(message.id) == message.data
    history = await queue.history(message.id)  # what the history keeps came along
    assert history is not None and (history.subject, history.metadata, history.tags) == (
        "x", {"user": 7}, ("t",))
    assert [await store.take("app1", Rate(2, 60)) for _ in range(3)] == [True, True, False]
    store.report_sessions(3, 2)
    assert await sessions.get() == (3, 2)

    await store.close()
    await owner
    await queue.close()


async def test_a_worker_whose_owner_is_gone_refuses_to_store(tmp_path: Path) -> None:
    ours, theirs = socket.socketpair()
    store = await HandoffStore.connect(SpoolFiles(tmp_path), theirs)
    ours.close()  # the main process died
    await asyncio.wait_for(store.owner_gone.wait(), 10)
    with pytest.raises(LocalFailure):
        await store.store(NewMessage(new_queue_id(), "", ["b@example.test"], b"x\r\n"))
    with pytest.raises(LocalFailure):
        await store.take("app1", Rate(2, 60))
    assert not any(tmp_path.iterdir())  # no message file written for nobody
    await store.close()
