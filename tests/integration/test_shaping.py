"""Destination shaping (policies/domains.toml) against sinks that count sessions and
arrival times: connections per domain, a smoothed rate, TLS required, and slowing down
by itself when a destination answers 421."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from relay.queue import State
from tests.integration.conftest import RunningRelay, StartRelay
from tests.support.client import message, send
from tests.support.dns_server import DnsServer
from tests.support.sink import Sink


def write_domains(directory: Path, body: str) -> None:
    (directory / "policies").mkdir(exist_ok=True)
    (directory / "policies" / "domains.toml").write_text(body)


async def send_each(relay: RunningRelay, domain: str, count: int) -> list[str]:
    """`count` messages, one recipient each, submitted at once."""
    replies = await asyncio.gather(*(
        send(relay.smtp_port, "app@sender.test", [f"r{n}@{domain}"], message())
        for n in range(count)))
    return [reply.split()[-1] for reply in replies]


async def test_max_connections_per_domain(start_relay: StartRelay, dns_server: DnsServer,
                                          make_sink: Callable[..., Sink],
                                          tmp_path: Path) -> None:
    dns_server.add("example.test", "A", "127.0.0.2")
    dns_server.add("other.test", "A", "127.0.0.3")
    capped, free = make_sink("127.0.0.2"), make_sink("127.0.0.3")
    capped.data_delay = free.data_delay = 0.1
    write_domains(tmp_path, '[domains."example.test"]\nmax_connections = 1\n'
                            '[domains."*"]\nmax_connections = 4\n')
    relay = await start_relay()
    await send_each(relay, "example.test", 6)
    await send_each(relay, "other.test", 6)
    await asyncio.to_thread(capped.wait_for, 6)
    await asyncio.to_thread(free.wait_for, 6)
    assert capped.max_concurrent == 1
    assert 1 < free.max_concurrent <= 4  # the "*" rule, not [delivery]'s 10


async def test_rate_is_smoothed(start_relay: StartRelay, dns_server: DnsServer,
                                make_sink: Callable[..., Sink], tmp_path: Path) -> None:
    dns_server.add("example.test", "A", "127.0.0.2")
    sink = make_sink("127.0.0.2")
    write_domains(tmp_path, '[domains."example.test"]\nrate = "10/s"\n')
    relay = await start_relay()
    arrivals: list[float] = []
    await send_each(relay, "example.test", 6)
    for count in range(1, 7):
        await asyncio.to_thread(sink.wait_for, count)
        arrivals.append(time.monotonic())
    # six messages at 10/s: one every 0.1 s, so the last comes at least 0.5 s after the first
    assert arrivals[-1] - arrivals[0] >= 0.4


async def test_tls_required_defers_instead_of_sending_in_clear(
        start_relay: StartRelay, dns_server: DnsServer, make_sink: Callable[..., Sink],
        tmp_path: Path) -> None:
    dns_server.add("example.test", "A", "127.0.0.2")
    sink = make_sink("127.0.0.2")  # offers no STARTTLS
    write_domains(tmp_path, '[domains."example.test"]\ntls = "required"\n')
    relay = await start_relay()
    [queue_id] = await send_each(relay, "example.test", 1)
    info = await relay.until_state(queue_id, State.DEFERRED)
    assert info.recipients[0].last_reply.startswith("451 4.7.5")
    assert sink.messages == []


async def test_a_421_halves_the_connections(start_relay: StartRelay, dns_server: DnsServer,
                                            make_sink: Callable[..., Sink], tmp_path: Path,
                                            caplog: pytest.LogCaptureFixture) -> None:
    dns_server.add("example.test", "A", "127.0.0.2")
    sink = make_sink("127.0.0.2")
    sink.default_rcpt_reply = "421 4.7.0 Too many connections, slow down"
    write_domains(tmp_path, '[domains."example.test"]\nmax_connections = 8\n')
    relay = await start_relay()
    caplog.set_level(logging.INFO, logger="relay.scheduler")
    [queue_id] = await send_each(relay, "example.test", 1)
    await relay.until_state(queue_id, State.DEFERRED)
    assert ("destination example.test slowing down: 8 -> 4 connections (421)"
            in caplog.text)
