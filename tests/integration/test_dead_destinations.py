"""Dead destinations (scheduler.shaping): when no host of a destination takes a
connection or greets, its mail is deferred at once with the reason, not one connection
timeout after another, and one probe goes out when the backoff ends. And what an active
recipient is doing: waiting for a connection, or being delivered."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable

import pytest

from relay.queue import State
from tests.integration.conftest import RunningRelay, StartRelay
from tests.support.client import message, send
from tests.support.dns_server import DnsServer
from tests.support.sink import Sink

TARPIT = "127.0.0.5"
GREETING_TIMEOUT = "timed out while receiving the initial server greeting"


class Tarpit:
    """Takes TCP connections and never says a word, counting them."""

    def __init__(self) -> None:
        self.connections = 0
        self._held: list[asyncio.StreamWriter] = []
        self._server: asyncio.Server | None = None

    async def start(self, port: int) -> None:
        async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.connections += 1
            self._held.append(writer)

        self._server = await asyncio.start_server(hold, TARPIT, port)

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._held:
            writer.close()
        await self._server.wait_closed()


@pytest.fixture
async def tarpit(mx_port: int) -> AsyncIterator[Tarpit]:
    made = Tarpit()
    await made.start(mx_port)
    yield made
    await made.stop()


async def submit(relay: RunningRelay, count: int) -> list[str]:
    ids = []
    for n in range(count):
        answer = await send(relay.smtp_port, "app@sender.test", [f"r{n}@tarpit.test"],
                            message())
        ids.append(answer.split()[-1])
    return ids


async def test_a_tarpit_costs_one_connection_timeout_not_one_per_message(
        start_relay: StartRelay, dns_server: DnsServer, tarpit: Tarpit) -> None:
    dns_server.add("tarpit.test", "MX", "10 mx.tarpit.test.")
    dns_server.add("mx.tarpit.test", "A", TARPIT)
    relay = await start_relay(delivery={"connect_timeout": "1s",
                                        "max_connections_per_domain": 1,
                                        "dead_destination_backoff": "2s"})
    ids = await submit(relay, 6)
    for queue_id in ids:  # within a connect timeout and a little, not six of them
        info = await relay.until_state(queue_id, State.DEFERRED, timeout=10)
        assert GREETING_TIMEOUT in info.recipients[0].last_reply
    assert tarpit.connections == 1
    await asyncio.sleep(2.2)  # the backoff (2s from the failure) ends: next comes one probe
    ids = await submit(relay, 3)
    for queue_id in ids:
        info = await relay.until_state(queue_id, State.DEFERRED, timeout=10)
        assert GREETING_TIMEOUT in info.recipients[0].last_reply
    assert tarpit.connections == 2


async def test_a_refused_destination_is_deferred_at_once_with_the_reason(
        start_relay: StartRelay, dns_server: DnsServer) -> None:
    dns_server.add("tarpit.test", "MX", "10 mx.tarpit.test.")
    dns_server.add("mx.tarpit.test", "A", "127.0.0.4")  # nothing listens there
    relay = await start_relay(delivery={"max_connections_per_domain": 1})
    for queue_id in await submit(relay, 20):
        info = await relay.until_state(queue_id, State.DEFERRED, timeout=10)
        assert info.recipients[0].last_reply.endswith(": Connection refused")


async def test_an_active_recipient_says_what_it_waits_for(
        start_relay: StartRelay, dns_server: DnsServer,
        make_sink: Callable[..., Sink]) -> None:
    """One connection in all, busy with a.test's message held at DATA: b.test's recipient
    is active, waiting for a connection, and says so; a.test's is being delivered."""
    dns_server.add("a.test", "A", "127.0.0.2")
    dns_server.add("b.test", "A", "127.0.0.3")
    held = make_sink("127.0.0.2")
    held.data_gate = threading.Event()
    make_sink("127.0.0.3")
    relay = await start_relay(delivery={"max_connections": 1})
    try:
        first = (await send(relay.smtp_port, "app@sender.test", ["x@a.test"],
                            message())).split()[-1]
        await asyncio.to_thread(held.wait_at_gate, 1)
        second = (await send(relay.smtp_port, "app@sender.test", ["y@b.test"],
                             message())).split()[-1]
        await relay.until_state(second, State.ACTIVE)
        shown = await relay.api("GET", f"/v1/queue/{second}")
        assert shown["recipients"][0]["activity"] == "waiting for a connection to b.test"
        shown = await relay.api("GET", f"/v1/queue/{first}")
        assert shown["recipients"][0]["activity"] == "being delivered"
        listed = await relay.api("GET", "/v1/queue")
        assert all(r["activity"] for m in listed["messages"] for r in m["recipients"])
    finally:
        held.data_gate.set()


async def test_a_host_that_fails_again_and_again_is_skipped_for_the_next_mx(
        start_relay: StartRelay, dns_server: DnsServer, mx_port: int,
        make_sink: Callable[..., Sink]) -> None:
    """Six domains whose first MX hangs up before its greeting: after three failures in
    a row that host is not tried any more for the backoff; the second MX takes the mail."""
    hangups = 0

    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal hangups
        hangups += 1
        writer.close()

    closer = await asyncio.start_server(hang_up, TARPIT, mx_port)
    try:
        domains = [f"d{n}.test" for n in range(6)]
        for domain in domains:
            dns_server.add(domain, "MX", "10 closer.test.", "20 good.test.")
        dns_server.add("closer.test", "A", TARPIT)
        dns_server.add("good.test", "A", "127.0.0.2")
        sink = make_sink("127.0.0.2")
        relay = await start_relay()
        for n, domain in enumerate(domains):  # one at a time: a new destination each
            await send(relay.smtp_port, "app@sender.test", [f"ann@{domain}"], message())
            await asyncio.to_thread(sink.wait_for, n + 1)
        assert hangups == 3
    finally:
        closer.close()
        await closer.wait_closed()
