"""The operator's overview (queue.roles.Overview): activity on both backends; the nodes
and what they hold, a cluster's."""

from __future__ import annotations

import asyncio
import time

import pytest

from relay.core.errors import RelayError
from relay.queue import (
    Queue,
    State,
)
from relay.queue.postgres import PostgresQueue
from tests.integration.conftest import QUEUE_LEASE as LEASE
from tests.integration.queue.contract import (
    gone,
    heartbeat_after,
    message,
    outcome,
    until,
)


async def test_activity_counts_outcomes_per_step_since_a_time(queue: Queue) -> None:
    assert await queue.activity(0, 60) == []
    await queue.store(message("old@example.test"))
    [old] = await queue.claim_due(1)
    await queue.record([outcome(old, State.DELIVERED)])
    await asyncio.sleep(0.05)
    since = time.time()
    await asyncio.sleep(0.05)
    await queue.store(message("a@example.test", "b@example.test", "c@example.test"))
    a, b, c = sorted(await queue.claim_due(3), key=lambda claim: claim.address)
    await queue.record([outcome(a, State.DELIVERED), outcome(b, State.BOUNCED, "550 5.1.1 no"),
                        outcome(c, State.DEFERRED, "451 4.3.0 later",
                                next_attempt_at=time.time() + 60)])
    [bucket] = await queue.activity(since, 3600)
    assert (bucket.delivered, bucket.deferred, bucket.bounced) == (1, 1, 1)
    assert bucket.start <= time.time() < bucket.start + 3600
    everything = await queue.activity(0, 10 ** 10)
    assert sum(b.delivered for b in everything) == 2
    assert await queue.activity(time.time() + 60, 60) == []


async def test_lease_holders_name_the_nodes_and_what_they_hold(postgres_dsn: str) -> None:
    nodes = [PostgresQueue(postgres_dsn, lease=LEASE, node=f"node{n}") for n in (1, 2)]
    for node in nodes:
        await node.open()
    try:
        assert await nodes[0].lease_holders() == []
        await nodes[0].store(message("a@example.test", "b@example.test"))
        assert len(await nodes[1].claim_due(1)) == 1
        assert await nodes[0].take_slot("example.test", 2) is not None
        holders = {h.node: h for h in await nodes[0].lease_holders()}
        assert (holders["node2"].recipients, holders["node2"].connections) == (1, 0)
        assert (holders["node1"].recipients, holders["node1"].connections) == (0, 1)
    finally:
        for node in nodes:
            await node.close()


async def test_nodes_are_listed_by_name_and_gone_once_their_heartbeat_stops(
        postgres_dsn: str) -> None:
    """A node holds its name while it runs (a twin cannot open), beats every quarter
    lease, and is listed as gone once no heartbeat came within a lease."""
    node = PostgresQueue(postgres_dsn, lease=1.0, node="n1")
    observer = PostgresQueue(postgres_dsn, lease=1.0, node="observer")
    await node.open()
    await observer.open()
    try:
        twin = PostgresQueue(postgres_dsn, lease=1.0, node="n1")
        with pytest.raises(RelayError, match="another node named n1 is running"):
            await twin.open()
        first = {n.name: n for n in await observer.nodes()}["n1"]
        assert first.owner == node.owner and first.owner.startswith("n1/")
        assert not first.gone
        await until(lambda: heartbeat_after(observer, first.heartbeat_at), "a heartbeat")
        await node.close()
        await until(lambda: gone(observer, "n1"), "n1 listed as gone")
        again = PostgresQueue(postgres_dsn, lease=1.0, node="n1")  # its name is free
        await again.open()
        await again.close()
    finally:
        await observer.close()
