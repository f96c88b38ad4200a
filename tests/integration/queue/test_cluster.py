"""What the cluster's backend offers beyond the roles (queue.roles.Capabilities and the
PostgreSQL queue's own): connection slots, rate limits and wake-ups shared by the nodes,
migrations run once."""

from __future__ import annotations

import asyncio

import pytest

from relay.core.units import Rate
from relay.queue import (
    Selection,
)
from relay.queue.postgres import PostgresQueue
from relay.queue.postgres.nodes import cluster_status
from relay.queue.postgres.schema import MIGRATIONS
from tests.integration.conftest import QUEUE_LEASE as LEASE
from tests.integration.queue.contract import (
    eventually,
    message,
)


async def test_destination_slots_are_limited_leased_and_released(postgres_dsn: str) -> None:
    """Two nodes on one database share a destination's connection limit."""
    nodes = [PostgresQueue(postgres_dsn, lease=LEASE, node=f"node{n}") for n in (1, 2)]
    for node in nodes:
        await node.open()
    try:
        first = await nodes[0].take_slot("example.test", 2)
        second = await nodes[1].take_slot("example.test", 2)
        assert first and second and first != second
        assert await nodes[0].take_slot("example.test", 2) is None  # the cluster's limit
        assert await nodes[1].take_slot("other.test", 2) is not None  # per destination
        await nodes[1].release_slot(second)
        third = await nodes[0].take_slot("example.test", 2)
        assert third is not None
        for _ in range(3):  # renewed: still held after more than a lease
            await asyncio.sleep(LEASE / 2)
            await nodes[0].renew_slots()
        assert await nodes[1].take_slot("example.test", 2) is None
        # Node 1 stops renewing (it died): its slots come free once their lease expires.
        assert await eventually(lambda: nodes[1].take_slot("example.test", 2),
                                lambda slot: slot is not None) is not None
    finally:
        for node in nodes:
            await node.close()


async def test_rate_limits_hold_for_the_cluster(postgres_dsn: str) -> None:
    nodes = [PostgresQueue(postgres_dsn, node=f"node{n}") for n in (1, 2)]
    for node in nodes:
        await node.open()
    try:
        three_an_hour, short = Rate(3, 3600.0), Rate(1, 0.5)
        taken = [await nodes[n % 2].take("user app1", three_an_hour) for n in range(4)]
        assert taken == [True, True, True, False]
        assert await nodes[1].peek("user app1", three_an_hour) is False
        assert await nodes[0].peek("user other", three_an_hour) is True
        # Both nodes at once for the last one: exactly one gets it.
        results = await asyncio.gather(*(node.take("user burst", Rate(1, 3600.0))
                                         for node in nodes))
        assert sorted(results) == [False, True]
        assert await nodes[0].take("auth 127.0.0.9", short) is True
        assert await eventually(lambda: nodes[1].take("auth 127.0.0.9", short), bool)
    finally:
        for node in nodes:
            await node.close()


@pytest.mark.parametrize("notify", [True, False])
async def test_new_work_wakes_the_other_nodes(postgres_dsn: str, notify: bool) -> None:
    """LISTEN/NOTIFY: mail stored, released or flushed on one node wakes the others;
    with notify = false nobody is woken (nodes poll)."""
    storing, idle = (PostgresQueue(postgres_dsn, node=name, notify=notify)
                     for name in ("storing", "idle"))
    await storing.open()
    await idle.open()
    woken = asyncio.Event()
    idle.listen(woken.set)
    try:
        if notify:
            await asyncio.wait_for(woken.wait(), 10)  # once at first: it listens now
        woken.clear()
        stored = message()
        await storing.store(stored)
        if notify:
            await asyncio.wait_for(woken.wait(), 10)
            woken.clear()
            await storing.hold(Selection([stored.id]))
            await storing.release(Selection([stored.id]))
            await asyncio.wait_for(woken.wait(), 10)
        else:
            await asyncio.sleep(0.5)
            assert not woken.is_set()
    finally:
        await storing.close()
        await idle.close()


async def test_nodes_that_start_together_migrate_once(postgres_dsn: str) -> None:
    """The schema is made under an advisory lock: five nodes starting at once all start."""
    nodes = [PostgresQueue(postgres_dsn, node=f"node{n}") for n in range(5)]
    await asyncio.gather(*(node.open() for node in nodes))
    try:
        current, newest, _ = await cluster_status(postgres_dsn, LEASE)
        assert (current, newest) == (len(MIGRATIONS), len(MIGRATIONS))
        await nodes[0].store(message())
        assert len(await nodes[4].list_messages()) == 1
    finally:
        await asyncio.gather(*(node.close() for node in nodes))
