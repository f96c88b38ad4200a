"""The scheduler on a real spool when something of ours fails: a bug in delivery defers the
recipients with 451 4.3.0 (they are not left active until the next start); claims that
fail are retried with a growing delay and logged by state change, not per retry."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from relay.cleanup.cleanup import Cleanup, Origin
from relay.config import DeliverySection, RetrySection
from relay.delivery import Attempt, DeliveryAgent, DestinationSession, Job, NextHops
from relay.delivery.transform import Transform
from relay.outcomes.recorder import OutcomeRecorder
from relay.policy import DkimPolicy, PgpPolicy
from relay.queue import Claimed, State
from relay.queue.local import LocalQueue
from relay.runtime.metrics import Metrics
from relay.scheduler.scheduler import Scheduler
from tests.support.dns_server import DnsServer
from tests.support.sink import Sink


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


class FailingClaims:
    """The real queue, except that its first `failures` claims fail as a full disk does."""

    def __init__(self, queue: LocalQueue, failures: int) -> None:
        self._queue = queue
        self.failures = failures

    def __getattr__(self, name: str) -> object:
        return getattr(self._queue, name)

    async def claim_due(self, limit: int) -> list[Claimed]:
        if self.failures:
            self.failures -= 1
            raise sqlite3.OperationalError("database or disk is full")
        return await self._queue.claim_due(limit)


async def test_failing_claims_back_off_and_are_logged_by_state_change(
        tmp_path: Path, make_sink: Callable[..., Sink], dns_server: DnsServer, mx_port: int,
        caplog: pytest.LogCaptureFixture) -> None:
    dns_server.add("example.test", "A", "127.0.0.2")
    sink = make_sink("127.0.0.2")
    queue = LocalQueue(tmp_path / "spool")
    await queue.open()
    failing = FailingClaims(queue, failures=4)
    cleanup = Cleanup(queue, "relay.test")
    agent = DeliveryAgent(DeliverySection(port=mx_port), "relay.test",
                          NextHops([dns_server.address], mx_port))
    scheduler = Scheduler(
        failing, agent,  # type: ignore[arg-type]
        OutcomeRecorder(queue, cleanup, "relay.test", RetrySection(), Metrics()),
        Transform("relay.test", time.time, DkimPolicy, PgpPolicy),
        max_connections=2, max_connections_per_domain=1)
    await cleanup.submit("a@sender.test", ["b@example.test"], b"Subject: x\r\n\r\nbody\r\n",
                         Origin("ESMTP", "127.0.0.1"))
    scheduler.start()
    try:
        await asyncio.to_thread(sink.wait_for, 1)
    finally:
        await scheduler.stop(timeout=5)
        await queue.close()
    lines = [r.getMessage() for r in caplog.records if "claiming" in r.getMessage()]
    assert lines == [
        ("claiming due recipients failed: OperationalError: database or disk is full; "
         "retrying with backoff"),
        "claiming due recipients works again after 4 failures (3 not logged)"]
    assert not any(r.exc_info for r in caplog.records)


def delivering(queue: LocalQueue, cleanup: Cleanup, dns_server: DnsServer, mx_port: int,
               **limits: Any) -> Scheduler:
    """A scheduler delivering `queue`'s mail to the tests' MX hosts, with `limits`."""
    agent = DeliveryAgent(DeliverySection(port=mx_port), "relay.test",
                          NextHops([dns_server.address], mx_port))
    return Scheduler(
        queue, agent, OutcomeRecorder(queue, cleanup, "relay.test", RetrySection(), Metrics()),
        Transform("relay.test", time.time, DkimPolicy, PgpPolicy), **limits)


async def test_an_idle_connection_is_given_up_for_mail_that_waits_for_one(
        tmp_path: Path, make_sink: Callable[..., Sink], dns_server: DnsServer,
        mx_port: int) -> None:
    """One connection in all, kept an hour when idle: the worker that delivered to
    a.test and has nothing more to send gives it up at once for b.test's mail, instead of
    holding it for its idle time."""
    dns_server.add("a.test", "A", "127.0.0.2")
    dns_server.add("b.test", "A", "127.0.0.3")
    first, second = make_sink("127.0.0.2"), make_sink("127.0.0.3")
    queue = LocalQueue(tmp_path / "spool")
    await queue.open()
    cleanup = Cleanup(queue, "relay.test")
    scheduler = delivering(queue, cleanup, dns_server, mx_port, max_connections=1,
                           max_connections_per_domain=1, idle_timeout=3600)
    queue.follow_new_mail(scheduler)
    scheduler.start()
    try:
        origin = Origin("ESMTP", "127.0.0.1")
        await cleanup.submit("a@sender.test", ["x@a.test"], b"Subject: 1\r\n\r\nbody\r\n", origin)
        await asyncio.to_thread(first.wait_for, 1)
        await cleanup.submit("a@sender.test", ["y@b.test"], b"Subject: 2\r\n\r\nbody\r\n", origin)
        await asyncio.to_thread(second.wait_for, 1)  # not after the hour the idle one had
    finally:
        await scheduler.stop(timeout=5)
        await queue.close()


async def test_a_burst_to_one_destination_lends_a_connection_to_another(
        tmp_path: Path, make_sink: Callable[..., Sink], dns_server: DnsServer,
        mx_port: int) -> None:
    """Two connections in all, both busy with a burst to a.test (a tenth of a second a
    message): b.test's message waits only until one of them finishes a message, not
    until the burst is over."""
    dns_server.add("a.test", "A", "127.0.0.2")
    dns_server.add("b.test", "A", "127.0.0.3")
    busy, other = make_sink("127.0.0.2"), make_sink("127.0.0.3")
    busy.data_delay = 0.1
    queue = LocalQueue(tmp_path / "spool")
    await queue.open()
    cleanup = Cleanup(queue, "relay.test")
    scheduler = delivering(queue, cleanup, dns_server, mx_port, max_connections=2,
                           max_connections_per_domain=2)
    origin = Origin("ESMTP", "127.0.0.1")
    burst = 40
    for n in range(burst):
        await cleanup.submit("a@sender.test", [f"r{n}@a.test"], b"Subject: a\r\n\r\nx\r\n",
                             origin)
    scheduler.start()
    try:
        await asyncio.to_thread(busy.wait_for, 2)  # the burst holds both connections
        await cleanup.submit("a@sender.test", ["y@b.test"], b"Subject: b\r\n\r\nx\r\n", origin)
        scheduler.wake()
        await asyncio.to_thread(other.wait_for, 1)
        assert len(busy.messages) < burst  # b.test did not wait for the whole burst
        await asyncio.to_thread(busy.wait_for, burst)
    finally:
        await scheduler.stop(timeout=5)
        await queue.close()
