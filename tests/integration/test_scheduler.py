"""The scheduler on a real spool when delivery itself fails with a bug: the recipients are
deferred with 451 4.3.0 and retried later, not left active until the next start."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from relay.cleanup import Cleanup, Origin
from relay.config import DeliverySection, RetrySection
from relay.delivery import Attempt, DeliveryAgent, DestinationSession, Job, NextHops
from relay.delivery.transform import Transform
from relay.metrics import Metrics
from relay.outcomes import OutcomeRecorder
from relay.policy import DkimPolicy, PgpPolicy
from relay.queue import State
from relay.queue.local import LocalQueue
from relay.scheduler import Scheduler


class BrokenSession(DestinationSession):
    async def deliver(self, job: Job, body: bytes) -> list[Attempt]:
        raise RuntimeError("a bug in delivery")


class BrokenAgent(DeliveryAgent):
    def session(self, destination: str) -> DestinationSession:
        return BrokenSession(self, destination)


async def test_a_bug_in_delivery_defers_instead_of_stalling(tmp_path: Path) -> None:
    queue = LocalQueue(tmp_path / "spool")
    await queue.open()
    cleanup = Cleanup(queue, "relay.test")
    agent = BrokenAgent(DeliverySection(), "relay.test", NextHops(["127.0.0.1:9"], 25))
    scheduler = Scheduler(
        queue, agent, OutcomeRecorder(queue, cleanup, "relay.test", RetrySection(), Metrics()),
        Transform("relay.test", time.time, DkimPolicy, PgpPolicy),
        max_connections=2, max_connections_per_domain=1)
    queue_id = await cleanup.submit("a@sender.test", ["b@example.test"],
                                    b"Subject: x\r\n\r\nbody\r\n", Origin("ESMTP", "127.0.0.1"))
    scheduler.start()
    try:
        deadline = time.monotonic() + 20
        while True:
            info = await queue.get_message(queue_id)
            assert info is not None
            if info.recipients[0].state is State.DEFERRED:
                break
            assert time.monotonic() < deadline, info
            await asyncio.sleep(0.02)
        assert info.recipients[0].last_reply.startswith("451 4.3.0")
    finally:
        await scheduler.stop(timeout=5)
        await queue.close()
