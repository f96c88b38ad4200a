"""Delivery by MX against a real DNS server and SMTP sinks on 127.0.0.x."""

from __future__ import annotations

import asyncio
import email
import email.policy
from collections.abc import Callable

import pytest

from relay.queue import NewMessage, State, new_queue_id
from tests.integration.conftest import StartRelay
from tests.support.client import message, send
from tests.support.dns_server import DnsServer
from tests.support.sink import Sink


def wait(sink: Sink, count: int) -> asyncio.Future[list]:  # type: ignore[type-arg]
    return asyncio.ensure_future(asyncio.to_thread(sink.wait_for, count))


async def test_mx_preference_order(start_relay: StartRelay, dns_server: DnsServer,
                                   make_sink: Callable[..., Sink]) -> None:
    dns_server.add("example.test", "MX", "20 mx2.example.test.", "10 mx1.example.test.")
    dns_server.add("mx1.example.test", "A", "127.0.0.2")
    dns_server.add("mx2.example.test", "A", "127.0.0.3")
    best, backup = make_sink("127.0.0.2"), make_sink("127.0.0.3")
    relay = await start_relay()
    await send(relay.smtp_port, "app@sender.test", ["ann@example.test"], message())
    received = await wait(best, 1)
    assert received[0].rcpt_tos == ["ann@example.test"]
    assert backup.messages == []


async def test_dns_is_asked_once_per_ttl_not_once_per_message(
        start_relay: StartRelay, dns_server: DnsServer,
        make_sink: Callable[..., Sink]) -> None:
    """Ten domains hosted on one MX host, a message each: every delivery resolves its
    domain (a new destination, a new connection), and the host is asked for once."""
    dns_server.ttl = 300
    domains = [f"d{n}.test" for n in range(10)]
    for domain in domains:
        dns_server.add(domain, "MX", "10 mx1.example.test.")
    dns_server.add("mx1.example.test", "A", "127.0.0.2")
    sink = make_sink("127.0.0.2")
    relay = await start_relay()
    for n, domain in enumerate(domains):
        await send(relay.smtp_port, "app@sender.test", [f"ann@{domain}"], message())
        await wait(sink, n + 1)
    host = [dns_server.asked("mx1.example.test", kind) for kind in ("A", "AAAA")]
    assert host == [1, 1]  # without the cache: ten each (one per destination)
    assert {dns_server.asked(domain, "MX") for domain in domains} == {1}
    # Per message: its domain's MX and MTA-STS TXT, and the host's share of two.
    assert len(dns_server.queries) <= 2 * len(domains) + 2, dns_server.queries


async def test_falls_back_to_next_mx_when_first_refuses_connections(
        start_relay: StartRelay, dns_server: DnsServer,
        make_sink: Callable[..., Sink]) -> None:
    dns_server.add("example.test", "MX", "10 mx1.example.test.", "20 mx2.example.test.")
    dns_server.add("mx1.example.test", "A", "127.0.0.4")  # nothing listens there
    dns_server.add("mx2.example.test", "A", "127.0.0.3")
    backup = make_sink("127.0.0.3")
    relay = await start_relay()
    await send(relay.smtp_port, "app@sender.test", ["ann@example.test"], message())
    assert (await wait(backup, 1))[0].rcpt_tos == ["ann@example.test"]


async def test_a_refused_connection_is_deferred_with_the_reason_said_once(
        start_relay: StartRelay, dns_server: DnsServer) -> None:
    dns_server.add("example.test", "MX", "10 mx1.example.test.")
    dns_server.add("mx1.example.test", "A", "127.0.0.4")  # nothing listens there
    relay = await start_relay()
    reply = await send(relay.smtp_port, "app@sender.test", ["ann@example.test"], message())
    info = await relay.until_state(reply.split()[-1], State.DEFERRED)
    port = relay.config.delivery.port
    assert info.recipients[0].last_reply == (
        f"451 4.4.1 connect to mx1.example.test[127.0.0.4]:{port}: Connection refused")


async def test_falls_back_to_next_mx_on_4xx_before_data(
        start_relay: StartRelay, dns_server: DnsServer,
        make_sink: Callable[..., Sink]) -> None:
    dns_server.add("example.test", "MX", "10 mx1.example.test.", "20 mx2.example.test.")
    dns_server.add("mx1.example.test", "A", "127.0.0.2")
    dns_server.add("mx2.example.test", "A", "127.0.0.3")
    busy, backup = make_sink("127.0.0.2"), make_sink("127.0.0.3")
    busy.drop_on_rcpt.add("ann@example.test")
    relay = await start_relay()
    await send(relay.smtp_port, "app@sender.test", ["ann@example.test"], message())
    assert (await wait(backup, 1))[0].rcpt_tos == ["ann@example.test"]
    assert busy.messages == []


async def test_implicit_mx_uses_the_domain_address(
        start_relay: StartRelay, dns_server: DnsServer,
        make_sink: Callable[..., Sink]) -> None:
    dns_server.add("plain.test", "A", "127.0.0.2")
    sink = make_sink("127.0.0.2")
    relay = await start_relay()
    await send(relay.smtp_port, "app@sender.test", ["bob@plain.test"], message())
    assert (await wait(sink, 1))[0].rcpt_tos == ["bob@plain.test"]


@pytest.mark.parametrize("pipelining", [True, False])
async def test_one_transaction_per_domain_and_per_recipient_results(
        start_relay: StartRelay, dns_server: DnsServer,
        make_sink: Callable[..., Sink], pipelining: bool) -> None:
    dns_server.add("example.test", "MX", "10 mx1.example.test.")
    dns_server.add("mx1.example.test", "A", "127.0.0.2")
    dns_server.add("other.test", "MX", "10 mx.other.test.")
    dns_server.add("mx.other.test", "A", "127.0.0.3")
    dns_server.add("sender.test", "MX", "10 mx.sender.test.")
    dns_server.add("mx.sender.test", "A", "127.0.0.4")
    example, other, sender = (make_sink("127.0.0.2", pipelining=pipelining),
                              make_sink("127.0.0.3", pipelining=pipelining),
                              make_sink("127.0.0.4", pipelining=pipelining))
    example.rcpt_replies["gone@example.test"] = "550 5.1.1 No such user"
    relay = await start_relay()
    rcpts = ["a@example.test", "b@example.test", "gone@example.test", "c@other.test"]
    await send(relay.smtp_port, "app@sender.test", rcpts, message())
    assert sorted((await wait(example, 1))[0].rcpt_tos) == ["a@example.test", "b@example.test"]
    assert (await wait(other, 1))[0].rcpt_tos == ["c@other.test"]
    dsn = (await wait(sender, 1))[0]
    assert dsn.mail_from == "" and dsn.rcpt_tos == ["app@sender.test"]
    assert b"gone@example.test" in dsn.content and b"a@example.test" not in dsn.content.split(
        b"text/rfc822-headers")[0]


@pytest.mark.parametrize("pipelining", [True, False])
async def test_a_refused_recipient_bounces_alone(
        start_relay: StartRelay, dns_server: DnsServer,
        make_sink: Callable[..., Sink], pipelining: bool) -> None:
    """A 553 to one RCPT, and an address no RCPT can carry (queued before addresses were
    checked at submission), bounce those recipients only."""
    dns_server.add("example.test", "A", "127.0.0.2")
    dns_server.add("sender.test", "A", "127.0.0.3")
    remote = make_sink("127.0.0.2", pipelining=pipelining)
    sender = make_sink("127.0.0.3")
    remote.rcpt_replies["refused@example.test"] = "553 5.1.3 refused here"
    relay = await start_relay()
    planted = NewMessage(new_queue_id(), "app@sender.test",
                         ["ok@example.test", "refused@example.test",
                          '"unterminated@example.test', "a\x01b@example.test",
                          "a<b@example.test"],
                         message(subject="planted"))
    await relay.relay.queue.store(planted)
    relay.relay.wake_scheduler()
    assert (await wait(remote, 1))[0].rcpt_tos == ["ok@example.test"]
    dsn = (await wait(sender, 1))[0]
    report = dsn.content.split(b"text/rfc822-headers")[0]
    assert b"refused@example.test" in report and b'"unterminated@example.test' in report
    assert b"a\x01b@example.test" in report and b"a<b@example.test" in report
    assert b"ok@example.test" not in report
    await relay.until_queue_empty()
    assert len(remote.messages) == 1 and len(sender.messages) == 1


async def test_5xx_bounces_with_a_well_formed_dsn(
        start_relay: StartRelay, dns_server: DnsServer,
        make_sink: Callable[..., Sink]) -> None:
    dns_server.add("example.test", "MX", "10 mx1.example.test.")
    dns_server.add("mx1.example.test", "A", "127.0.0.2")
    dns_server.add("sender.test", "A", "127.0.0.3")
    remote, sender = make_sink("127.0.0.2"), make_sink("127.0.0.3")
    remote.rcpt_replies["gone@example.test"] = "550 5.1.1 <gone@example.test>: no such user"
    relay = await start_relay()
    await send(relay.smtp_port, "app@sender.test", ["gone@example.test"],
               message(subject="original subject"))
    dsn = (await wait(sender, 1))[0]
    assert dsn.mail_from == ""
    parsed = email.message_from_bytes(dsn.content, policy=email.policy.default)
    assert parsed.get_content_type() == "multipart/report"
    assert parsed.get_param("report-type") == "delivery-status"
    human, status, headers = parsed.get_payload()
    assert human.get_content_type() == "text/plain"
    assert status.get_content_type() == "message/delivery-status"
    per_message, per_recipient = status.get_payload()
    assert per_message["Reporting-MTA"] == "dns; relay.test"
    assert per_recipient["Final-Recipient"] == "rfc822; gone@example.test"
    assert per_recipient["Action"] == "failed"
    assert per_recipient["Status"] == "5.1.1"
    assert per_recipient["Remote-MTA"] == "dns; mx1.example.test"
    assert "550 5.1.1" in per_recipient["Diagnostic-Code"]
    assert headers.get_content_type() == "text/rfc822-headers"
    assert b"Subject: original subject" in dsn.content
    await relay.until_queue_empty()


async def test_null_mx_bounces_at_once(start_relay: StartRelay, dns_server: DnsServer,
                                       make_sink: Callable[..., Sink]) -> None:
    dns_server.add("nomail.test", "MX", "0 .")
    dns_server.add("sender.test", "A", "127.0.0.3")
    sender = make_sink("127.0.0.3")
    relay = await start_relay()
    await send(relay.smtp_port, "app@sender.test", ["x@nomail.test"], message())
    dsn = (await wait(sender, 1))[0]
    assert b"Status: 5.1.10" in dsn.content


async def test_missing_domain_bounces(start_relay: StartRelay, dns_server: DnsServer,
                                      make_sink: Callable[..., Sink]) -> None:
    dns_server.add("sender.test", "A", "127.0.0.3")
    sender = make_sink("127.0.0.3")
    relay = await start_relay()
    await send(relay.smtp_port, "app@sender.test", ["x@nowhere.test"], message())
    assert b"Status: 5.1.2" in (await wait(sender, 1))[0].content


async def test_bounce_of_a_bounce_is_dropped(start_relay: StartRelay,
                                             dns_server: DnsServer) -> None:
    dns_server.add("nomail.test", "MX", "0 .")
    relay = await start_relay()
    await send(relay.smtp_port, "<>", ["x@nomail.test"], message())
    await relay.until_queue_empty()


@pytest.mark.parametrize("pipelining", [True, False])
async def test_4xx_defers_then_flush_delivers(start_relay: StartRelay, dns_server: DnsServer,
                                              make_sink: Callable[..., Sink],
                                              pipelining: bool) -> None:
    dns_server.add("example.test", "A", "127.0.0.2")
    sink = make_sink("127.0.0.2", pipelining=pipelining)
    sink.rcpt_replies["ann@example.test"] = "451 4.2.0 try again later"
    relay = await start_relay()
    reply = await send(relay.smtp_port, "app@sender.test", ["ann@example.test"], message())
    queue_id = reply.split()[-1]
    deferred = await relay.until_state(queue_id, State.DEFERRED)
    assert deferred.recipients[0].last_reply.startswith("451 4.2.0")
    assert deferred.recipients[0].attempts == 1
    del sink.rcpt_replies["ann@example.test"]
    assert (await relay.api("POST", "/v1/queue/flush", {"ids": [queue_id]}))["flushed"] == 1
    assert (await wait(sink, 1))[0].rcpt_tos == ["ann@example.test"]


async def test_deferred_mail_bounces_after_max_age(
        start_relay: StartRelay, dns_server: DnsServer,
        make_sink: Callable[..., Sink]) -> None:
    dns_server.add("example.test", "A", "127.0.0.2")
    dns_server.add("sender.test", "A", "127.0.0.3")
    remote, sender = make_sink("127.0.0.2"), make_sink("127.0.0.3")
    remote.default_rcpt_reply = "451 4.3.0 always busy"
    relay = await start_relay(retry={"min_backoff": "1s", "max_backoff": "1s",
                                     "max_age": "2s"})
    await send(relay.smtp_port, "app@sender.test", ["ann@example.test"], message())
    dsn = (await asyncio.to_thread(sender.wait_for, 1, 30))[0]
    assert b"Status: 5.4.7" in dsn.content
    assert b"451 4.3.0 always busy" in dsn.content
    assert remote.messages == []


async def test_8bit_and_smtputf8_bodies_arrive_byte_exact(
        start_relay: StartRelay, dns_server: DnsServer,
        make_sink: Callable[..., Sink]) -> None:
    dns_server.add("example.test", "A", "127.0.0.2")
    sink = make_sink("127.0.0.2")
    relay = await start_relay()
    original = ("From: Jörg <jörg@sender.test>\r\nTo: ünï@example.test\r\n"
                "Subject: =?utf-8?q?gr=C3=BC=C3=9Fe?=\r\nMessage-ID: <x@sender.test>\r\n"
                "Date: Sat, 28 Nov 2026 00:00:00 +0000\r\n\r\n"
                "Grüße, ünïcödé ✓\r\n\x80 raw 8-bit byte line\r\n..leading dot\r\n"
                ).encode("utf-8", "surrogateescape")
    original = original.replace(b"\xc2\x80", b"\x80")
    await send(relay.smtp_port, "jörg@sender.test", ["ünï@example.test"], original,
               options=["SMTPUTF8", "BODY=8BITMIME"])
    received = (await wait(sink, 1))[0]
    assert received.content.endswith(original)
    assert received.content.startswith(b"Received: from client.test")
    assert received.rcpt_tos == ["ünï@example.test"]
    assert "SMTPUTF8" in received.mail_options and "BODY=8BITMIME" in received.mail_options


@pytest.mark.parametrize("pipelining", [True, False])
async def test_data_5xx_bounces_and_data_4xx_defers(
        start_relay: StartRelay, dns_server: DnsServer,
        make_sink: Callable[..., Sink], pipelining: bool) -> None:
    dns_server.add("example.test", "A", "127.0.0.2")
    dns_server.add("sender.test", "A", "127.0.0.3")
    remote = make_sink("127.0.0.2", pipelining=pipelining)
    sender = make_sink("127.0.0.3", pipelining=pipelining)
    remote.data_reply = "554 5.7.1 message refused as spam"
    relay = await start_relay()
    await send(relay.smtp_port, "app@sender.test", ["a@example.test", "b@example.test"],
               message())
    dsn = (await wait(sender, 1))[0]
    assert dsn.content.count(b"Diagnostic-Code: smtp; 554 5.7.1 message refused") == 2
    remote.data_reply = "452 4.3.1 out of disk"
    reply = await send(relay.smtp_port, "app@sender.test", ["c@example.test"], message())
    deferred = await relay.until_state(reply.split()[-1], State.DEFERRED)
    assert deferred.recipients[0].last_reply == "452 4.3.1 out of disk"


async def test_smtputf8_mail_to_a_server_without_smtputf8_bounces(
        start_relay: StartRelay, dns_server: DnsServer,
        make_sink: Callable[..., Sink]) -> None:
    dns_server.add("example.test", "A", "127.0.0.2")
    dns_server.add("sender.test", "A", "127.0.0.3")
    remote = make_sink("127.0.0.2", smtputf8=False)
    sender = make_sink("127.0.0.3")
    relay = await start_relay()
    await send(relay.smtp_port, "app@sender.test", ["ünï@example.test"],
               "Subject: ü\r\n\r\nü\r\n".encode(), options=["SMTPUTF8"])
    dsn = (await wait(sender, 1))[0]
    assert b"Status: 5.6.7" in dsn.content
    assert "Final-Recipient: utf-8; ünï@example.test".encode() in dsn.content
    assert remote.messages == []
