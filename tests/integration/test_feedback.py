"""Mail that comes back later (relay.feedback), against the running relay: a real Postfix
as the recipients' MX that accepts and then bounces through the relay's bounce listener,
ARF complaints and unsubscribes from clients the relay does not trust, streams.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import re
import smtplib
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from relay.feedback.tokens import FeedbackTokens
from tests.integration.conftest import RunningRelay, StartRelay, postgres_queue
from tests.support.dns_server import DnsServer
from tests.support.feedback_reports import arf_report
from tests.support.net import free_port
from tests.support.postfix import PrivatePostfix, postfix_available
from tests.support.sink import Received, Sink

BOUNCES = "bounces.test"
UNTRUSTED = "127.0.0.6"  # a client address outside the relay's trusted networks


def feedback_overrides(public: bool = False) -> dict[str, Any]:
    overrides: dict[str, Any] = {"bounces": {"domain": BOUNCES}}
    if public:
        port = free_port()
        overrides["public"] = {"listen": f"127.0.0.1:{port}",
                               "url": f"http://127.0.0.1:{port}"}
    return overrides


def send_from(relay: RunningRelay, mail_from: str, rcpt_to: str, data: bytes,
              source: str = UNTRUSTED) -> tuple[int, bytes]:
    """One message over SMTP from `source`; the RCPT reply when it is refused, else DATA's."""
    with smtplib.SMTP("127.0.0.1", relay.smtp_port, timeout=30,
                      source_address=(source, 0)) as client:
        client.ehlo("mx.provider.test")
        client.mail(mail_from)
        code, answer = client.rcpt(rcpt_to)
        if code != 250:
            return code, answer
        return client.data(data)


async def until_event(relay: RunningRelay, kind: str, timeout: float = 60,
                      **params: str) -> dict[str, Any]:
    """The first event of type `kind` (matching `params`), polled from the API."""
    deadline = time.monotonic() + timeout
    async with relay.http() as client:
        while True:
            found = (await client.get("/v1/events", params={"type": kind, **params})).json()
            if found["events"]:
                event: dict[str, Any] = found["events"][0]
                return event
            if time.monotonic() > deadline:
                raise AssertionError(f"no {kind} event within {timeout}s")
            await asyncio.sleep(0.05)


async def suppressions(relay: RunningRelay, **params: str) -> list[tuple[str, str]]:
    async with relay.http() as client:
        entries = (await client.get("/v1/suppressions", params=params)).json()["suppressions"]
    return [(e["address"], e["stream"]) for e in entries]


@pytest.fixture
def postfix_mx(mx_port: int) -> Iterator[Callable[[str, str], PrivatePostfix]]:
    if not postfix_available():
        pytest.skip("needs Debian's postfix (scripts/setup.sh --test installs it)")
    started: list[PrivatePostfix] = []

    def start(domain: str, relayhost: str) -> PrivatePostfix:
        started.append(PrivatePostfix("127.0.0.5", mx_port, domain, relayhost))
        return started[-1]

    yield start
    for server in started:
        server.stop()


@pytest.mark.parametrize("notify_sender", [False, True])
async def test_a_bounce_from_postfix_after_it_accepted_is_recorded_and_suppressed(
        notify_sender: bool, start_relay: StartRelay, dns_server: DnsServer,
        make_sink: Callable[..., Sink],
        postfix_mx: Callable[[str, str], PrivatePostfix]) -> None:
    dns_server.add("dest.test", "A", "127.0.0.5")
    dns_server.add("sender.test", "A", "127.0.0.2")
    sender = make_sink("127.0.0.2")  # the application's own mailbox, for DSNs
    relay = await start_relay(bounces={"domain": BOUNCES, "notify_sender": notify_sender})
    mx = postfix_mx("dest.test", f"127.0.0.1:{relay.smtp_port}")
    async with relay.http() as client:
        sent = await client.post("/v1/messages", json={
            "from": "app@sender.test", "to": ["no-such-user@dest.test"], "subject": "Welcome",
            "text": "hello", "metadata": {"user": 7}})
        assert sent.status_code == 202, sent.text
        message_id = sent.json()["id"]
        try:
            bounced = await until_event(relay, "bounced", message=message_id)
        except AssertionError:
            raise AssertionError(f"no late bounce; Postfix's log:\n{mx.log}") from None
        assert bounced["recipient"] == "no-such-user@dest.test"
        assert bounced["metadata"] == {"user": 7}
        data = bounced["data"]
        assert data["late"] is True and data["source"] == "dsn" and data["status"] == "5.1.1"
        assert "unknown user" in data["reply"] and data["dsn"] is notify_sender
        # It was delivered first, from a return path of its own.
        history = (await client.get(f"/v1/messages/{message_id}")).json()
        [timeline] = history["recipients"]
        assert [e["type"] for e in timeline["events"]] == ["accepted", "delivered", "bounced"]
        assert re.search(r"from=<b-[0-9a-f]+-[a-z2-7]{8}@bounces\.test>", mx.log)
        assert ("no-such-user@dest.test", "*") in await suppressions(relay)

        # Suppressed everywhere: the next message to it is not sent (and the sender hears
        # of it: no [bounces] notify_sender, so by its event only).
        again = await client.post("/v1/messages", json={
            "from": "app@sender.test", "to": ["no-such-user@dest.test"], "subject": "Reset",
            "text": "link", "stream": "password-reset"})
        skipped = await until_event(relay, "suppressed", message=again.json()["id"])
        assert skipped["data"]["reply"].startswith("550 5.7.1")
    assert mx.log.count("status=bounced") == 1  # Postfix saw only the first
    if notify_sender:  # the application's sender hears of both, by DSN
        dsns = await asyncio.to_thread(sender.wait_for, 2)
        assert all(m.mail_from == "" and m.rcpt_tos == ["app@sender.test"] for m in dsns)
        reports = [email.message_from_bytes(m.content) for m in dsns]
        assert {r.get_content_type() for r in reports} == {"multipart/report"}
        assert b"unknown user" in dsns[0].content + dsns[1].content
    else:  # events only: no DSN was even queued
        await relay.until_queue_empty()
        assert sender.messages == []


@pytest.mark.parametrize("backend", ["local", "postgres"])
async def test_a_complaint_suppresses_in_its_stream_only(
        backend: str, request: pytest.FixtureRequest, start_relay: StartRelay,
        dns_server: DnsServer, make_sink: Callable[..., Sink], tmp_path: Path) -> None:
    dns_server.add("example.test", "A", "127.0.0.2")
    sink = make_sink("127.0.0.2")
    overrides = feedback_overrides()
    if backend == "postgres":
        overrides["queue"] = postgres_queue(request)
        key = tmp_path / "feedback.key"  # what every node of a cluster shares
        key.write_text("a-key-of-at-least-sixteen-characters\n")
        overrides["bounces"]["secret_file"] = str(key)
    relay = await start_relay(**overrides)
    async with relay.http() as client:
        sent = await client.post("/v1/messages", json={
            "from": "news@sender.test", "to": ["ann@example.test"], "subject": "Offers",
            "text": "buy", "stream": "newsletter"})
        message_id = sent.json()["id"]
        [copy] = await asyncio.to_thread(sink.wait_for, 1)
        assert copy.mail_from.startswith("b-") and copy.mail_from.endswith(f"@{BOUNCES}")
        # The complaint comes after the delivery is recorded (one that overtakes it:
        # test_a_report_that_overtakes_the_outcome_is_matched_once_it_lands).
        await until_event(relay, "delivered", message=message_id)
        code, _ = await asyncio.to_thread(send_from, relay, "fbl@provider.test",
                                          f"fbl@{BOUNCES}", arf_report(copy, BOUNCES))
        assert code == 250
        complained = await until_event(relay, "complained", message=message_id)
        assert complained["recipient"] == "ann@example.test"
        assert complained["data"]["feedback_type"] == "abuse"
        assert await suppressions(relay) == [("ann@example.test", "newsletter")]
        assert await suppressions(relay, stream="newsletter") == [
            ("ann@example.test", "newsletter")]
        assert await suppressions(relay, stream="transactional") == []

        # Another stream still reaches her; the newsletter does not.
        receipt = await client.post("/v1/messages", json={
            "from": "shop@sender.test", "to": ["ann@example.test"], "subject": "Receipt",
            "text": "thanks"})
        await until_event(relay, "delivered", message=receipt.json()["id"])
        later = await client.post("/v1/messages", json={
            "from": "news@sender.test", "to": ["ann@example.test"], "subject": "More",
            "text": "buy", "stream": "newsletter"})
        await until_event(relay, "suppressed", message=later.json()["id"])
    assert len(sink.messages) == 2  # the first newsletter and the receipt


async def test_a_report_that_overtakes_the_outcome_is_matched_once_it_lands(
        start_relay: StartRelay, dns_server: DnsServer,
        make_sink: Callable[..., Sink]) -> None:
    """A provider can send its complaint before the relay has recorded the delivery it is
    about (whose commit stores the return path the report is matched by): the report is
    deferred, not dropped, and matched on a later try once the outcome is there."""
    dns_server.add("example.test", "A", "127.0.0.2")
    sink = make_sink("127.0.0.2")
    sink.data_gate = threading.Event()  # the delivery waits for its DATA reply
    relay = await start_relay(**feedback_overrides(),
                              retry={"min_backoff": "1s", "max_backoff": "1s"})
    async with relay.http() as client:
        sent = await client.post("/v1/messages", json={
            "from": "news@sender.test", "to": ["ann@example.test"], "subject": "Offers",
            "text": "buy", "stream": "newsletter"})
        message_id = sent.json()["id"]
        await asyncio.to_thread(sink.wait_at_gate, 1)
        # The copy as the provider has it: sent from its own return path.
        tokens = FeedbackTokens(relay.config.feedback_key_path.read_bytes().strip(), BOUNCES)
        return_path = tokens.return_path(message_id, "ann@example.test")[1]
        copy = Received(return_path, ["ann@example.test"],
                        f"From: news@sender.test\r\nSubject: Offers\r\n"
                        f"Message-ID: <{message_id}@relay.test>\r\n\r\nbuy\r\n".encode(),
                        [], False, None, 0)
        code, answer = await asyncio.to_thread(send_from, relay, "fbl@provider.test",
                                               f"fbl@{BOUNCES}", arf_report(copy, BOUNCES))
        assert code == 250
        report_id = answer.decode().rsplit(" ", 1)[-1]
        deferred = await until_event(relay, "deferred", message=report_id)
        assert deferred["data"]["reply"].startswith("451 4.3.0 About a delivery not recorded")
        sink.data_gate.set()
        await until_event(relay, "delivered", message=message_id)
        complained = await until_event(relay, "complained", message=message_id)
        assert complained["recipient"] == "ann@example.test"
        assert await suppressions(relay) == [("ann@example.test", "newsletter")]
        await relay.until_queue_empty()


async def test_one_click_unsubscribe_and_its_mailto_form(
        start_relay: StartRelay, dns_server: DnsServer,
        make_sink: Callable[..., Sink]) -> None:
    dns_server.add("example.test", "A", "127.0.0.2")
    sink = make_sink("127.0.0.2")
    relay = await start_relay(**feedback_overrides(public=True))
    template = {"from": "news@sender.test", "subject": "Hello {{name}}", "text": "Hi {{name}}",
                "recipients": [{"email": "ann@example.test", "fields": {"name": "Ann"}},
                               {"email": "bob@example.test", "fields": {"name": "Bob"}}]}
    async with relay.http() as client:
        first = await client.post("/v1/broadcasts", json=template)
        assert first.status_code == 202, first.text
        copies = await asyncio.to_thread(sink.wait_for, 2)
        links = {}
        for copy in copies:
            message = email.message_from_bytes(copy.content, policy=email.policy.default)
            assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
            https, mailto = re.findall(r"<([^>]+)>", str(message["List-Unsubscribe"]))
            links[copy.rcpt_tos[0]] = (https, mailto.removeprefix("mailto:"))

    ann_url, _ = links["ann@example.test"]
    async with httpx.AsyncClient(timeout=30) as public:
        page = await public.get(ann_url)  # a person's click: a page, nothing recorded
        assert page.status_code == 200 and "<form method=\"post\"" in page.text
        for _ in range(2):  # as a mailbox provider does it; again is the same answer
            clicked = await public.post(ann_url, content="List-Unsubscribe=One-Click",
                                        headers={"Content-Type":
                                                 "application/x-www-form-urlencoded"})
            assert clicked.status_code == 200, clicked.text
        forged = await public.post(ann_url[:-3] + "aaa", content="List-Unsubscribe=One-Click")
        assert forged.status_code == 404
        huge = await public.post(ann_url, content=b"x" * 100_000)
        assert huge.status_code == 413
        assert (await public.post(ann_url.split("/u/")[0] + "/u/" + "a" * 5000)
                ).status_code == 404
        for other in ("/", "/v1/queue", "/metrics", "/openapi.json", "/docs"):
            assert (await public.get(ann_url.split("/u/")[0] + other)).status_code == 404
    unsubscribed = await until_event(relay, "unsubscribed", recipient="ann@example.test")
    assert unsubscribed["data"]["method"] == "one-click"
    assert unsubscribed["message_id"] == first.json()["id"]

    _, bob_mailto = links["bob@example.test"]
    code, _ = await asyncio.to_thread(send_from, relay, "bob@example.test", bob_mailto,
                                      b"Subject: unsubscribe\r\n\r\n\r\n")
    assert code == 250
    await until_event(relay, "unsubscribed", recipient="bob@example.test")
    assert sorted(await suppressions(relay)) == [("ann@example.test", "broadcast"),
                                                 ("bob@example.test", "broadcast")]
    async with relay.http() as client:
        events = (await client.get("/v1/events", params={"type": "unsubscribed"})).json()
        assert len(events["events"]) == 2  # the second click recorded nothing more
        second = await client.post("/v1/broadcasts", json=template)
        assert second.json()["accepted"] == 0 and second.json()["suppressed"] == 2
        reset = await client.post("/v1/messages", json={
            "from": "app@sender.test", "to": ["ann@example.test"], "subject": "Reset",
            "text": "link"})
        await until_event(relay, "delivered", message=reset.json()["id"])
        metrics = (await client.get("/metrics")).text
    assert 'relay_feedback_total{kind="unsubscribed"} 3.0' in metrics  # two clicks, a mail
    assert len(sink.messages) == 3


def refused_but_for_the_bounce_domain(port: int) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=30, source_address=(UNTRUSTED, 0)) as client:
        client.ehlo("mx.provider.test")
        client.mail("someone@provider.test")
        code, answer = client.rcpt("victim@other.test")
        assert (code, answer[:5]) == (554, b"5.7.1"), answer
        assert client.rcpt(f"b-{'0' * 19}-aaaaaaaa@{BOUNCES}")[0] == 250
        assert client.rcpt(f"postmaster@{BOUNCES.upper()}")[0] == 250
        code, _ = client.data(b"Subject: hello\r\n\r\nnot a bounce\r\n")
        assert code == 250


async def test_the_bounce_listener_is_not_an_open_relay(
        start_relay: StartRelay, dns_server: DnsServer,
        make_sink: Callable[..., Sink]) -> None:
    dns_server.add("other.test", "A", "127.0.0.2")
    dns_server.add("sender.test", "A", "127.0.0.2")
    sink = make_sink("127.0.0.2")
    listen = f"127.0.0.1:{free_port()}"
    relay = await start_relay(bounces={"domain": BOUNCES, "listen": [listen]})
    for port in (relay.smtp_port, int(listen.rpartition(":")[2])):
        await asyncio.to_thread(refused_but_for_the_bounce_domain, port)
    await relay.until_queue_empty()
    async with relay.http() as client:
        delivered = (await client.get("/v1/events", params={"type": "delivered"})).json()
    replies = {e["data"]["reply"] for e in delivered["events"]}
    assert replies == {"250 2.0.0 Matched no message sent from here: dropped"}
    assert sink.messages == []  # dropped, never bounced to the sender


def send_trusted(relay: RunningRelay, data: bytes) -> tuple[int, bytes]:
    return send_from(relay, "news@sender.test", "ann@example.test", data, source="127.0.0.1")


async def test_smtp_mail_names_its_stream_in_a_header_the_relay_removes(
        start_relay: StartRelay, dns_server: DnsServer,
        make_sink: Callable[..., Sink]) -> None:
    dns_server.add("example.test", "A", "127.0.0.2")
    sink = make_sink("127.0.0.2")
    relay = await start_relay()
    async with relay.http() as client:
        await client.post("/v1/suppressions", json={"address": "ann@example.test",
                                                    "stream": "newsletter"})
    news = b"Subject: News\r\nX-Relay-Stream: Newsletter\r\n\r\nbuy\r\n"
    code, answer = await asyncio.to_thread(send_trusted, relay, news)
    assert code == 250
    await until_event(relay, "suppressed", message=answer.decode().rsplit(" ", 1)[-1])
    receipt = b"Subject: Receipt\r\n\r\nthanks\r\n"
    code, _ = await asyncio.to_thread(send_trusted, relay, receipt)
    [delivered] = await asyncio.to_thread(sink.wait_for, 1)
    assert b"Subject: Receipt" in delivered.content
    bad = b"Subject: x\r\nX-Relay-Stream: not a stream!\r\n\r\nx\r\n"
    code, answer = await asyncio.to_thread(send_trusted, relay, bad)
    assert code == 550 and b"5.6.0 Message rejected: X-Relay-Stream" in answer, answer
    tagged = b"Subject: Tagged\r\nX-Relay-Stream: alerts\r\n\r\nx\r\n"
    await asyncio.to_thread(send_trusted, relay, tagged)
    messages = await asyncio.to_thread(sink.wait_for, 2)
    assert all(b"X-Relay-Stream" not in m.content for m in messages)
