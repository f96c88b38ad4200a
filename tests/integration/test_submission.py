"""SMTP submission: access policy, AUTH over TLS only, limits, enhanced status codes."""

from __future__ import annotations

import asyncio
import smtplib
import socket
import ssl
import time
from pathlib import Path

import pytest

from relay.passwords import hash_password
from relay.smtp.listeners import bind_tcp
from tests.integration.conftest import StartRelay
from tests.support.client import message, send
from tests.support.net import free_port
from tests.support.relayconf import write_access_policy

ACCESS_WITH_USER = f"""
trusted_networks = ["127.0.0.1/32"]

[[users]]
name = "app1"
password_hash = "{hash_password('s3cret-pass')}"
allowed_senders = ["@sender.test", "alerts@other.test"]
rate_limit = "3/h"  # counted at MAIL FROM, like Postfix's anvil
"""


def smtp_session(port: int, source: str | None = None) -> smtplib.SMTP:
    client = smtplib.SMTP("127.0.0.1", port, timeout=30,
                          source_address=(source, 0) if source else None)
    client.ehlo("client.test")
    return client


def client_tls(cafile: str) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=cafile)


async def in_thread(function, *args):  # type: ignore[no-untyped-def]
    return await asyncio.to_thread(function, *args)


async def test_untrusted_client_cannot_relay(start_relay: StartRelay) -> None:
    relay = await start_relay()

    def attempt() -> tuple[int, bytes]:
        with smtp_session(relay.smtp_port, source="127.0.0.9") as client:
            assert client.mail("app@sender.test")[0] == 250
            return client.rcpt("victim@example.test")

    code, text = await in_thread(attempt)
    assert code == 554 and text.startswith(b"5.7.1")
    assert await relay.relay.queue.list_messages() == []


async def test_auth_is_offered_and_accepted_only_under_tls(
        start_relay: StartRelay, tmp_path: Path, server_cert: tuple[str, str],
        ca) -> None:  # type: ignore[no-untyped-def]
    write_access_policy(tmp_path, ACCESS_WITH_USER)
    cert, key = server_cert
    relay = await start_relay(smtp={"tls_cert": cert, "tls_key": key})
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))

    def session() -> list[tuple[int, bytes]]:
        with smtp_session(relay.smtp_port, source="127.0.0.9") as client:
            offered_before = client.has_extn("auth")
            before = client.docmd("AUTH", "PLAIN AGFwcDEAczNjcmV0LXBhc3M=")
            client.starttls(context=client_tls(str(ca_file)))
            client.ehlo("client.test")
            assert not offered_before and client.has_extn("auth")
            with pytest.raises(smtplib.SMTPAuthenticationError) as wrong:
                client.login("app1", "wrong")
            client.login("app1", "s3cret-pass")
            mail = client.mail("app@sender.test")
            rcpt = client.rcpt("anyone@example.test")
            return [before, (wrong.value.smtp_code, wrong.value.smtp_error), mail, rcpt]

    before, wrong, mail, rcpt = await in_thread(session)
    assert before[0] == 538
    assert wrong[0] == 535 and wrong[1].startswith(b"5.7.8")
    assert mail[0] == 250 and rcpt[0] == 250


async def test_authenticated_user_is_held_to_allowed_senders(
        start_relay: StartRelay, tmp_path: Path, server_cert: tuple[str, str],
        ca) -> None:  # type: ignore[no-untyped-def]
    write_access_policy(tmp_path, ACCESS_WITH_USER)
    cert, key = server_cert
    tls_port = free_port()
    await start_relay(smtp={"tls_cert": cert, "tls_key": key,
                            "tls_listen": [f"127.0.0.1:{tls_port}"]})
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))

    def session() -> dict[str, tuple[int, bytes]]:
        replies = {}
        with smtplib.SMTP_SSL("127.0.0.1", tls_port, context=client_tls(str(ca_file)),
                              timeout=30, source_address=("127.0.0.9", 0)) as client:
            client.ehlo("client.test")
            client.login("app1", "s3cret-pass")
            replies["foreign envelope"] = client.mail("ceo@elsewhere.test")
            client.rset()
            client.mail("app@sender.test")
            client.rcpt("x@example.test")
            replies["foreign header"] = client.data(
                b"From: ceo@elsewhere.test\r\nSubject: x\r\n\r\nhi\r\n")
            for n in (1, 2, 3):
                client.rset()
                replies[f"mail {n}"] = client.mail("alerts@other.test")
                if replies[f"mail {n}"][0] == 250:
                    client.rcpt("x@example.test")
                    replies[f"data {n}"] = client.data(
                        b"From: alerts@other.test\r\nSubject: x\r\n\r\nhi\r\n")
        return replies

    replies = await in_thread(session)
    assert replies["foreign envelope"][0] == 553
    assert replies["foreign envelope"][1].startswith(b"5.7.1")
    assert replies["foreign header"][0] == 553
    assert replies["data 1"][0] == 250 and replies["data 2"][0] == 250
    assert replies["mail 3"][0] == 451 and replies["mail 3"][1].startswith(b"4.7.0")


async def test_size_limit(start_relay: StartRelay) -> None:
    relay = await start_relay(smtp={"max_message_size": "10KB"})

    def session() -> tuple[tuple[int, bytes], tuple[int, bytes], bool]:
        with smtp_session(relay.smtp_port) as client:
            declared = client.mail("app@sender.test", ["SIZE=20000"])
            client.rset()
            client.mail("app@sender.test")
            client.rcpt("x@example.test")
            too_big = client.data(message(body="x" * 200 + ("\r\n" + "y" * 200) * 60))
            advertised = client.esmtp_features.get("size") == "10000"
            return declared, too_big, advertised

    declared, too_big, advertised = await in_thread(session)
    assert advertised
    assert declared[0] == 552 and declared[1].startswith(b"5.3.4")
    assert too_big[0] == 552 and too_big[1].startswith(b"5.3.4")


async def test_recipient_limit(start_relay: StartRelay) -> None:
    relay = await start_relay(smtp={"max_recipients": 2})

    def session() -> list[int]:
        with smtp_session(relay.smtp_port) as client:
            client.mail("app@sender.test")
            return [client.rcpt(f"r{n}@example.test")[0] for n in range(3)]

    assert await in_thread(session) == [250, 250, 452]


@pytest.mark.parametrize("body, reason", [
    (b"Subject: x\r\n\r\nnul \x00 byte\r\n", b"NUL"),
    (b"Subject: x\r\n\r\n" + b"z" * 999 + b"\r\n", b"longer than 998"),
])
async def test_malformed_messages_are_refused_with_5_6_0(
        start_relay: StartRelay, body: bytes, reason: bytes) -> None:
    relay = await start_relay()
    with pytest.raises(smtplib.SMTPDataError) as refused:
        await send(relay.smtp_port, "app@sender.test", ["x@example.test"], body)
    assert refused.value.smtp_code == 550
    assert refused.value.smtp_error.startswith(b"5.6.0") and reason in refused.value.smtp_error


async def test_a_998_character_line_is_accepted(start_relay: StartRelay) -> None:
    relay = await start_relay()
    reply = await send(relay.smtp_port, "app@sender.test", ["x@example.test"],
                       b"Subject: x\r\n\r\n" + b"z" * 998 + b"\r\n")
    assert reply.startswith("2.0.0 Ok: queued as ")


async def test_nearly_full_spool_refuses_with_452_4_3_1(start_relay: StartRelay) -> None:
    relay = await start_relay(smtp={"min_free_space": "1000000GB"})

    def session() -> tuple[int, bytes]:
        with smtp_session(relay.smtp_port) as client:
            return client.mail("app@sender.test")

    code, text = await in_thread(session)
    assert code == 452 and text.startswith(b"4.3.1")


async def test_every_reply_after_ehlo_has_an_enhanced_code(start_relay: StartRelay) -> None:
    relay = await start_relay()

    def session() -> list[tuple[int, bytes]]:
        with smtp_session(relay.smtp_port) as client:
            return [client.docmd("NOOP"), client.docmd("RCPT", "TO:<x@example.test>"),
                    client.docmd("BOGUS"), client.docmd("RSET"), client.docmd("VRFY", "x")]

    for code, text in await in_thread(session):
        assert text[:1] == str(code)[0].encode() and text[1:2] == b".", (code, text)


async def test_accepted_connections_have_nagle_off() -> None:
    """asyncio sets TCP_NODELAY only on sockets whose protocol says TCP: with Nagle on, a
    reply written after a multi-line one waited for the client's delayed ACK (40 ms)."""
    loop = asyncio.get_running_loop()
    nodelay: asyncio.Future[int] = loop.create_future()

    class Probe(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            option = transport.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP,
                                                                   socket.TCP_NODELAY)
            nodelay.set_result(option)
            transport.close()

    server = await loop.create_server(Probe, sock=bind_tcp(f"127.0.0.1:{free_port()}", "test"))
    try:
        port = server.sockets[0].getsockname()[1]
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        assert await asyncio.wait_for(nodelay, 30) != 0
        writer.close()
    finally:
        server.close()
        await server.wait_closed()


async def test_a_multi_line_reply_is_one_write(start_relay: StartRelay) -> None:
    """EHLO's lines go out together, as Postfix's do: one segment for the client to read,
    not one per line."""
    relay = await start_relay()

    def ehlo_reply() -> bytes:
        with socket.create_connection(("127.0.0.1", relay.smtp_port), timeout=30) as sock:
            greeting = b""
            while not greeting.endswith(b"\r\n"):
                greeting += sock.recv(4096)
            sock.sendall(b"EHLO client.test\r\n")
            return sock.recv(65536)  # what the first segment brought

    lines = (await in_thread(ehlo_reply)).split(b"\r\n")
    assert len(lines) > 3 and lines[-1] == b"", lines
    assert all(line.startswith(b"250-") for line in lines[:-2]), lines
    assert lines[-2].startswith(b"250 "), lines


async def test_an_idle_session_is_closed_and_a_talking_one_is_not(
        start_relay: StartRelay) -> None:
    relay = await start_relay(smtp={"timeout": "2s"})

    def session() -> tuple[list[bytes], bytes]:
        with socket.create_connection(("127.0.0.1", relay.smtp_port), timeout=30) as sock:
            reader = sock.makefile("rb")
            reader.readline()  # the greeting
            replies = []
            for _ in range(6):  # 3 s of commands, each within 0.5 s of the one before
                sock.sendall(b"NOOP\r\n")
                replies.append(reader.readline())
                time.sleep(0.5)
            return replies, reader.read()  # until the relay hangs up

    replies, last = await in_thread(session)
    assert all(r.startswith(b"250 ") for r in replies), replies
    assert last.startswith(b"421 4.4.2 "), last


async def test_local_failure_answers_451_not_5xx(start_relay: StartRelay) -> None:
    relay = await start_relay()
    await relay.relay.queue.close()  # the index is gone: storing must fail temporarily
    with pytest.raises(smtplib.SMTPDataError) as failed:
        await send(relay.smtp_port, "app@sender.test", ["x@example.test"], message())
    assert failed.value.smtp_code == 451 and failed.value.smtp_error.startswith(b"4.3.0")
    await relay.relay.queue.open()


async def test_received_message_id_and_date_are_added(start_relay: StartRelay) -> None:
    relay = await start_relay()
    reply = await send(relay.smtp_port, "app@sender.test", ["x@example.test"],
                       b"Subject: bare\r\n\r\nbody\r\n")
    queue_id = reply.split()[-1]
    data = await relay.relay.queue.read_body(queue_id)
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"Received: from client.test ([127.0.0.1])\r\n\tby relay.test")
    assert f"with ESMTP id {queue_id}".encode() in head
    assert f"Message-ID: <{queue_id}@relay.test>".encode() in head
    assert b"\r\nDate: " in head and body == b"body\r\n"


async def test_reload_changes_who_may_relay_and_keeps_rules_when_broken(
        start_relay: StartRelay, tmp_path: Path) -> None:
    relay = await start_relay()

    def rcpt_from_9() -> int:
        with smtp_session(relay.smtp_port, source="127.0.0.9") as client:
            client.mail("app@sender.test")
            return client.rcpt("x@example.test")[0]

    assert await in_thread(rcpt_from_9) == 554
    write_access_policy(tmp_path, 'trusted_networks = ["127.0.0.0/8"]\n')
    relay.relay.reload()
    assert await in_thread(rcpt_from_9) == 250
    write_access_policy(tmp_path, 'trusted_networks = ["not a network"]\n')
    relay.relay.reload()
    assert await in_thread(rcpt_from_9) == 250
