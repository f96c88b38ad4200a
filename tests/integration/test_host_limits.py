"""Connections per MX host (delivery.hosts): domains hosted together share the host's
limit, learned from its first `421 too many connections`."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from tests.integration.conftest import RunningRelay, StartRelay
from tests.support.client import message, send
from tests.support.dns_server import DnsServer
from tests.support.throttling_mx import ThrottlingMx

SHARED_MX = "127.0.0.6"
DOMAINS = [f"r{n}.test" for n in range(1, 5)]


@pytest.fixture
async def throttling(mx_port: int) -> AsyncIterator[ThrottlingMx]:
    server = await ThrottlingMx(SHARED_MX, mx_port, sessions=2, data_delay=0.2).start()
    yield server
    await server.stop()


async def wave(relay: RunningRelay, per_domain: int, tag: str) -> None:
    sends = [send(relay.smtp_port, "app@sender.test", [f"{tag}{n}@{domain}"], message())
             for domain in DOMAINS for n in range(per_domain)]
    await asyncio.gather(*sends)


async def test_domains_on_one_host_share_the_limit_it_says(
        start_relay: StartRelay, dns_server: DnsServer, throttling: ThrottlingMx) -> None:
    for domain in DOMAINS:
        dns_server.add(domain, "MX", "10 mx.shared.test.")
    dns_server.add("mx.shared.test", "A", SHARED_MX)
    # Each domain may have two connections: eight at once to a host that takes two.
    relay = await start_relay(delivery={"max_connections_per_domain": 2},
                              retry={"min_backoff": "1s", "max_backoff": "2s"})
    await wave(relay, 3, "first")
    await throttling.until_delivered(12)  # the refused ones deferred, then sent
    assert throttling.refused > 0
    refused = throttling.refused
    await wave(relay, 1, "second")  # the limit is known now: nobody is turned away
    await throttling.until_delivered(16)
    assert throttling.refused == refused
