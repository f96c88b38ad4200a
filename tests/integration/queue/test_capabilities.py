"""What differs between the backends at start-up (queue.roles.Capabilities), asked the
same way of both: how new mail reaches the scheduler, rate limits shared or not, free
space, ingest workers' indexing, the owner of this node's leases."""

from __future__ import annotations

import asyncio

from relay.queue import Claimed, Queue
from relay.queue.local import LocalQueue
from tests.integration.queue.contract import message


class Taker:
    """A scheduler as the backend sees it, with room for `room` recipients."""

    def __init__(self, room: int) -> None:
        self._room = room
        self.claimed: list[Claimed] = []
        self.told = asyncio.Event()

    def room(self) -> int:
        return self._room

    def take_claimed(self, claimed: list[Claimed]) -> None:
        self.claimed += claimed
        self.told.set()

    def wake(self) -> None:
        self.told.set()


async def test_new_mail_reaches_the_taker_without_a_poll(queue: Queue) -> None:
    taker = Taker(room=0)  # no room: it is only woken
    queue.follow_new_mail(taker)
    await queue.store(message("a@example.test"))
    await asyncio.wait_for(taker.told.wait(), 10)
    assert taker.claimed == []
    assert [c.address for c in await queue.claim_due(10)] == ["a@example.test"]


async def test_new_mail_is_claimed_for_a_taker_with_room_or_due_for_it(queue: Queue) -> None:
    taker = Taker(room=10)
    queue.follow_new_mail(taker)
    await queue.store(message("a@example.test"))
    await asyncio.wait_for(taker.told.wait(), 10)
    # Claimed in the commit that indexed it (local), or due for the woken taker (cluster):
    # either way the recipient is worked on exactly once.
    claimed = taker.claimed + await queue.claim_due(10)
    assert [c.address for c in claimed] == ["a@example.test"]


async def test_what_each_backend_offers_at_start(queue: Queue) -> None:
    if isinstance(queue, LocalQueue):
        free = queue.free_bytes()
        assert free is not None and free > 0
        assert queue.shared_rate_limits() is None  # this node's count is the whole count
        assert queue.indexer() is queue  # ingest workers hand their mail to it
        assert queue.owner == "local"
    else:
        assert queue.free_bytes() is None  # the database's disk is not ours to measure
        assert queue.shared_rate_limits() is not None
        assert queue.indexer() is None  # SMTP in the main process
        assert queue.owner.startswith(queue.node + "/")
