"""Delivery transport: STARTTLS, relayhost with AUTH, connection limits and reuse."""

from __future__ import annotations

import asyncio
import ssl
import threading
from collections.abc import Callable
from pathlib import Path

from relay.queue import State
from tests.integration.conftest import RunningRelay, StartRelay
from tests.support.client import message, send
from tests.support.dns_server import DnsServer
from tests.support.sink import Sink


async def test_opportunistic_starttls_is_used_when_offered(
        start_relay: StartRelay, dns_server: DnsServer, make_sink: Callable[..., Sink],
        sink_tls: ssl.SSLContext) -> None:
    dns_server.add("example.test", "A", "127.0.0.2")
    sink = make_sink("127.0.0.2", tls_context=sink_tls)
    relay = await start_relay()
    await send(relay.smtp_port, "app@sender.test", ["a@example.test"], message())
    assert (await asyncio.to_thread(sink.wait_for, 1))[0].tls


async def test_tls_none_sends_in_clear(start_relay: StartRelay, dns_server: DnsServer,
                                       make_sink: Callable[..., Sink],
                                       sink_tls: ssl.SSLContext) -> None:
    dns_server.add("example.test", "A", "127.0.0.2")
    sink = make_sink("127.0.0.2", tls_context=sink_tls)
    relay = await start_relay(delivery={"tls": "none"})
    await send(relay.smtp_port, "app@sender.test", ["a@example.test"], message())
    assert not (await asyncio.to_thread(sink.wait_for, 1))[0].tls


async def test_tls_required_defers_when_not_offered(
        start_relay: StartRelay, dns_server: DnsServer, make_sink: Callable[..., Sink]) -> None:
    dns_server.add("example.test", "A", "127.0.0.2")
    sink = make_sink("127.0.0.2")
    relay = await start_relay(delivery={"tls": "required"})
    reply = await send(relay.smtp_port, "app@sender.test", ["a@example.test"], message())
    info = await relay.until_state(reply.split()[-1], State.DEFERRED)
    assert info.recipients[0].last_reply.startswith("451 4.7.5")
    assert sink.messages == []


async def relay_via_upstream(start_relay: StartRelay, tmp_path: Path, mx_port: int,
                             password: str) -> RunningRelay:
    """A relay whose relayhost is 127.0.0.3, logging in as relayuser with `password`."""
    password_file = tmp_path / "relayhost.password"
    password_file.write_text(password + "\n")
    return await start_relay(delivery={
        "relayhost": f"[127.0.0.3]:{mx_port}", "relayhost_username": "relayuser",
        "relayhost_password_file": str(password_file), "nameservers": []})


async def test_relayhost_with_auth_takes_every_message(
        start_relay: StartRelay, make_sink: Callable[..., Sink], sink_tls: ssl.SSLContext,
        tmp_path: Path, mx_port: int) -> None:
    upstream = make_sink("127.0.0.3", tls_context=sink_tls, users={"relayuser": "pa55word"})
    relay = await relay_via_upstream(start_relay, tmp_path, mx_port, "pa55word")
    await send(relay.smtp_port, "app@sender.test",
               ["a@example.test", "b@elsewhere.test"], message())
    received = (await asyncio.to_thread(upstream.wait_for, 1))[0]
    assert sorted(received.rcpt_tos) == ["a@example.test", "b@elsewhere.test"]
    assert received.login == "relayuser" and received.tls


async def test_wrong_relayhost_password_defers(
        start_relay: StartRelay, make_sink: Callable[..., Sink], sink_tls: ssl.SSLContext,
        tmp_path: Path, mx_port: int) -> None:
    upstream = make_sink("127.0.0.3", tls_context=sink_tls, users={"relayuser": "pa55word"})
    relay = await relay_via_upstream(start_relay, tmp_path, mx_port, "wrong")
    reply = await send(relay.smtp_port, "app@sender.test", ["a@example.test"], message())
    info = await relay.until_state(reply.split()[-1], State.DEFERRED)
    assert info.recipients[0].last_reply.startswith("454 4.7.0")
    assert upstream.messages == []


async def test_connections_are_limited_per_domain_and_reused(
        start_relay: StartRelay, dns_server: DnsServer, make_sink: Callable[..., Sink]) -> None:
    dns_server.add("example.test", "A", "127.0.0.2")
    sink = make_sink("127.0.0.2")
    relay = await start_relay(delivery={"max_connections_per_domain": 2})

    await asyncio.gather(*[
        send(relay.smtp_port, "app@sender.test", [f"r{n}@example.test"], message())
        for n in range(30)])
    received = await asyncio.to_thread(sink.wait_for, 30)
    connections = {m.session_id for m in received}
    assert 1 <= len(connections) <= 2, len(connections)


async def test_mail_one_at_a_time_keeps_to_one_of_the_open_connections(
        start_relay: StartRelay, dns_server: DnsServer, make_sink: Callable[..., Sink]) -> None:
    """After a burst opened several connections, messages that come one at a time go over
    the connection used last, not round the idle ones: the others are left to close."""
    dns_server.add("example.test", "A", "127.0.0.2")
    sink = make_sink("127.0.0.2")
    sink.data_gate = threading.Event()
    relay = await start_relay()
    burst = [asyncio.create_task(send(relay.smtp_port, "app@sender.test",
                                      [f"burst{n}@example.test"], message()))
             for n in range(3)]
    await asyncio.to_thread(sink.wait_at_gate, 3)  # three transactions: three connections
    sink.data_gate.set()
    await asyncio.gather(*burst)
    await asyncio.to_thread(sink.wait_for, 3)
    for n in range(4):
        await send(relay.smtp_port, "app@sender.test", [f"single{n}@example.test"], message())
        await asyncio.to_thread(sink.wait_for, 4 + n)
    singles = [m.session_id for m in sink.messages[3:]]
    assert len(set(singles)) == 1, singles
