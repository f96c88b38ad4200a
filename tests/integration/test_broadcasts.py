"""Broadcasts against the running relay and sinks: every recipient gets its own fields,
escaped and header-safe; NDJSON streaming; status, events, cancel, suppression,
idempotent retries."""

from __future__ import annotations

import asyncio
import email
import email.policy
import json
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from relay.queue.local import LocalQueue
from tests.integration.conftest import StartRelay, check_idempotency
from tests.support.dns_server import DnsServer
from tests.support.sink import Received, Sink

TEMPLATE = {
    "from": "{{team}} <news@sender.test>",
    "subject": "Hello {{name}}",
    "text": "Dear {{name}}, your code is {{code}}.",
    "html": "<p>Dear {{name}}</p>",
    "headers": {"X-Campaign": "c-{{code}}"},
    "unsubscribe_url": "https://sender.test/u?e={{email}}&c={{code}}",
}


def by_recipient(messages: list[Received]) -> dict[str, email.message.EmailMessage]:
    found = {}
    for received in messages:
        parsed = email.message_from_bytes(received.content, policy=email.policy.default)
        found[received.rcpt_tos[0]] = parsed
    return found  # type: ignore[return-value]


async def until_status(client: httpx.AsyncClient, broadcast_id: str, state: str
                       ) -> dict[str, Any]:
    for _ in range(500):
        status: dict[str, Any] = (await client.get(f"/v1/broadcasts/{broadcast_id}")).json()
        if status["state"] == state:
            return status
        await asyncio.sleep(0.02)
    raise AssertionError(f"broadcast never {state}: {status}")


async def test_every_recipient_gets_its_own_fields(
        start_relay: StartRelay, dns_server: DnsServer, make_sink: Callable[..., Sink]) -> None:
    dns_server.add("example.test", "A", "127.0.0.2")
    sink = make_sink("127.0.0.2")
    relay = await start_relay()
    recipients = [
        {"email": "ann@example.test", "fields": {"name": "Ann", "code": 1, "team": "Team"}},
        {"email": "bob+tag@example.test", "fields": {"name": "<b>Bob</b> & co",
                                                    "code": "2 & B=C+d", "team": "Team"}},
        {"email": "eve@example.test", "fields": {"name": "Eve\r\nBcc: victim@example.test",
                                                 "code": "3", "team": "T\nX-Evil: 1"}},
        {"email": "not an address", "fields": {"name": "x", "code": "4", "team": "T"}},
        {"email": "nofields@example.test", "fields": {"name": "x"}},
    ]
    async with relay.http() as client:
        response = await client.post("/v1/broadcasts",
                                     json={**TEMPLATE, "recipients": recipients})
        assert response.status_code == 202, response.text
        answer = response.json()
        assert answer["accepted"] == 3 and answer["rejected_total"] == 2
        assert [(r["index"], r["email"]) for r in answer["rejected"]] == [
            (3, "not an address"), (4, "nofields@example.test")]
        assert "code" in answer["rejected"][1]["reason"] and "team" in \
            answer["rejected"][1]["reason"]

        arrived = by_recipient(await asyncio.to_thread(sink.wait_for, 3))
        status = await until_status(client, answer["id"], "done")
    assert (status["total"], status["delivered"], status["queued"], status["rejected"]) == (
        3, 3, 0, 2)

    ann, bob, eve = (arrived[f"{n}@example.test"] for n in ("ann", "bob+tag", "eve"))
    assert ann["Subject"] == "Hello Ann" and ann["To"] == "ann@example.test"
    assert ann["From"] == "Team <news@sender.test>" and ann["X-Campaign"] == "c-1"
    assert ann["List-Unsubscribe"] == "<https://sender.test/u?e=ann@example.test&c=1>"
    assert ann["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    # Values in the URL are URL-encoded: a '+' would read as a space, '&' and '=' would
    # end the parameter.
    assert bob["List-Unsubscribe"].strip() == \
        "<https://sender.test/u?e=bob%2Btag@example.test&c=2%20%26%20B%3DC%2Bd>"
    assert ann["Message-ID"] != bob["Message-ID"]
    text, html = (part.get_content() for part in bob.iter_parts())
    assert "Dear <b>Bob</b> & co, your code is 2 & B=C+d." in text
    assert "<p>Dear &lt;b&gt;Bob&lt;/b&gt; &amp; co</p>" in html
    assert eve["Bcc"] is None and eve["X-Evil"] is None
    assert eve["Subject"] == "Hello Eve Bcc: victim@example.test"
    assert {r for m in sink.messages for r in m.rcpt_tos} == {
        "ann@example.test", "bob+tag@example.test", "eve@example.test"}


async def _ndjson(template: dict[str, Any], count: int) -> AsyncIterator[bytes]:
    yield json.dumps(template).encode() + b"\n"
    for n in range(count):
        line = {"email": f"r{n}@example.test", "fields": {"name": f"N{n}", "code": n,
                                                          "team": "T"}}
        yield json.dumps(line).encode() + b"\n"
    yield b"not json\n"


async def test_ndjson_upload_and_its_events(start_relay: StartRelay, dns_server: DnsServer,
                                            make_sink: Callable[..., Sink]) -> None:
    dns_server.add("example.test", "A", "127.0.0.2")
    sink = make_sink("127.0.0.2")
    relay = await start_relay()
    count = 300
    async with relay.http() as client:
        response = await client.post("/v1/broadcasts", content=_ndjson(TEMPLATE, count),
                                     headers={"Content-Type": "application/x-ndjson"})
        assert response.status_code == 202, response.text
        answer = response.json()
        assert answer["accepted"] == count
        assert answer["rejected"] == [{"index": count, "email": None,
                                       "reason": "not a JSON object"}]
        events = []
        async with client.stream("GET", f"/v1/broadcasts/{answer['id']}/events") as stream:
            assert stream.headers["content-type"].startswith("text/event-stream")
            async for line in stream.aiter_lines():
                if line.startswith("data: "):
                    events.append(json.loads(line.removeprefix("data: ")))
    assert events[-1]["state"] == "done" and events[-1]["delivered"] == count
    messages = await asyncio.to_thread(sink.wait_for, count)
    subjects = {m.rcpt_tos[0]: email.message_from_bytes(m.content)["Subject"]
                for m in messages}
    assert subjects["r17@example.test"] == "Hello N17" and len(subjects) == count


async def test_hard_bounces_are_suppressed_in_later_broadcasts(
        start_relay: StartRelay, dns_server: DnsServer, make_sink: Callable[..., Sink]) -> None:
    dns_server.add("example.test", "A", "127.0.0.2")
    sink = make_sink("127.0.0.2")
    sink.rcpt_replies["Gone@example.test"] = "550 5.1.1 No such user"
    relay = await start_relay()
    fields = {"name": "x", "code": "1", "team": "T"}
    recipients = [{"email": "Gone@example.test", "fields": fields},
                  {"email": "here@example.test", "fields": fields}]
    async with relay.http() as client:
        first = (await client.post("/v1/broadcasts",
                                   json={**TEMPLATE, "recipients": recipients})).json()
        status = await until_status(client, first["id"], "done")
        assert (status["delivered"], status["bounced"]) == (1, 1)
        listed = (await client.get("/v1/suppressions")).json()["suppressions"]
        assert [s["address"] for s in listed] == ["gone@example.test"]
        assert listed[0]["reason"].startswith("550 5.1.1")

        second = (await client.post("/v1/broadcasts",
                                    json={**TEMPLATE, "recipients": recipients})).json()
        assert (second["accepted"], second["suppressed"]) == (1, 1)
        assert (await until_status(client, second["id"], "done"))["suppressed"] == 1

        added = await client.post("/v1/suppressions", json={"address": "here@example.test"})
        assert added.status_code == 201 and added.json() == {"added": True}
        removed = await client.delete("/v1/suppressions/gone@example.test")
        assert removed.json() == {"removed": True}
        third = (await client.post("/v1/broadcasts",
                                   json={**TEMPLATE, "recipients": recipients})).json()
        assert (third["accepted"], third["suppressed"]) == (1, 1)
        assert (await client.delete("/v1/suppressions/nobody@example.test")).status_code == 404
    await asyncio.to_thread(sink.wait_for, 2)
    assert sorted(r for m in sink.messages for r in m.rcpt_tos) == [
        "here@example.test", "here@example.test"]


async def test_cancel_stops_what_was_not_sent(start_relay: StartRelay, dns_server: DnsServer,
                                              make_sink: Callable[..., Sink]) -> None:
    dns_server.add("example.test", "A", "127.0.0.2")
    sink = make_sink("127.0.0.2")
    sink.default_rcpt_reply = "451 4.3.0 Try later"
    relay = await start_relay()
    recipients = [{"email": f"r{n}@example.test", "fields": {"name": "x", "code": n,
                                                             "team": "T"}} for n in range(5)]
    async with relay.http() as client:
        answer = (await client.post("/v1/broadcasts",
                                    json={**TEMPLATE, "recipients": recipients})).json()
        for _ in range(500):
            status = (await client.get(f"/v1/broadcasts/{answer['id']}")).json()
            if status["deferred"] == 5:
                break
            await asyncio.sleep(0.02)
        assert status["deferred"] == 5
        cancelled = (await client.post(f"/v1/broadcasts/{answer['id']}/cancel")).json()
        assert (cancelled["state"], cancelled["cancelled"], cancelled["queued"],
                cancelled["deferred"]) == ("cancelled", 5, 0, 0)
        assert cancelled["cancelled_at"] is not None
        missing = await client.post("/v1/broadcasts/NOSUCH/cancel")
        assert missing.status_code == 404 and missing.json()["error"]["field"] == "id"
    await relay.until_queue_empty()
    assert sink.messages == []


async def test_idempotent_broadcast_and_bad_templates(start_relay: StartRelay) -> None:
    relay = await start_relay(delivery={"nameservers": ["127.0.0.1:9"]})
    body = {**TEMPLATE, "recipients": [
        {"email": "a@example.test", "fields": {"name": "x", "code": "1", "team": "T"}}]}
    async with relay.http() as client:
        await check_idempotency(client, "/v1/broadcasts", body, "campaign-7")

        async def error(payload: Any, **kwargs: Any) -> tuple[int, str | None]:
            response = await client.post("/v1/broadcasts", json=payload, **kwargs)
            return response.status_code, response.json()["error"]["field"]

        assert await error({**TEMPLATE, "subject": "a\r\nb"}) == (422, "subject")
        unclosed = await client.post("/v1/broadcasts", json={**TEMPLATE, "text": "Hi {{name"})
        assert unclosed.status_code == 422 and unclosed.json()["error"] == {
            "code": "invalid", "field": "text", "message": "'{{name' is not a placeholder: "
            "write {{field}}, a field name of letters, digits, '_', '.' or '-'"}
        empty = await client.post("/v1/broadcasts", json={**TEMPLATE, "recipients": []})
        assert empty.status_code == 422 and empty.json()["error"] == {
            "code": "invalid", "field": "recipients",
            "message": "a broadcast needs at least one recipient"}
        assert await error({**TEMPLATE, "from": "{{who}}@sender.test"}) == (422, "from")
        assert await error({**TEMPLATE, "recipients": {"a": 1}}) == (422, "recipients")
        assert await error([1, 2]) == (422, "body")
        response = await client.post("/v1/broadcasts", content=b"[1]\n",
                                     headers={"Content-Type": "application/x-ndjson"})
        assert response.status_code == 422 and response.json()["error"]["field"] == "template"
        assert (await client.get("/v1/broadcasts/NOSUCH")).status_code == 404
    async with httpx.AsyncClient(base_url=relay.admin.base_url) as anonymous:
        for method, path in (("POST", "/v1/broadcasts"), ("GET", "/v1/suppressions"),
                             ("GET", "/v1/broadcasts/X/events")):
            assert (await anonymous.request(method, path, json=body)).status_code == 401
    messages = await relay.relay.queue.list_messages()
    assert len(messages) == 1  # the one broadcast, once


async def test_a_client_that_ends_its_upload_early_is_one_log_line(
        start_relay: StartRelay, caplog: pytest.LogCaptureFixture) -> None:
    relay = await start_relay()
    token = relay.config.admin_token_path.read_text().strip()
    host, port = relay.admin.base_url.removeprefix("http://").split(":")
    _reader, writer = await asyncio.open_connection(host, int(port))
    start = "\n".join(json.dumps(line) for line in [TEMPLATE] + [
        {"email": f"r{n}@example.test", "fields": {"name": "N", "code": "1", "team": "T"}}
        for n in range(50)]).encode() + b"\n"
    writer.write(b"POST /v1/broadcasts HTTP/1.1\r\nHost: relay\r\n"
                 b"Authorization: Bearer " + token.encode() + b"\r\n"
                 b"Content-Type: application/x-ndjson\r\nTransfer-Encoding: chunked\r\n\r\n"
                 + f"{len(start):x}\r\n".encode() + start + b"\r\n")
    await writer.drain()
    writer.close()  # mid-upload: no last chunk
    await writer.wait_closed()
    deadline = asyncio.get_running_loop().time() + 10
    while not any("ended by the client" in r.getMessage() for r in caplog.records):
        assert asyncio.get_running_loop().time() < deadline, caplog.text
        await asyncio.sleep(0.02)
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == [
        (f"broadcast upload from [127.0.0.1] ended by the client after {len(start)} bytes: "
        "nothing stored")]
    assert not any(r.exc_info for r in caplog.records)
    assert await relay.relay.queue.list_messages() == []


async def test_an_upload_cut_short_is_removed_at_the_next_start(tmp_path: Path) -> None:
    queue = LocalQueue(tmp_path / "spool")
    await queue.open()
    await queue.open_broadcast("B1", "news@sender.test", b"{}", False)
    await queue.add_broadcast_recipients("B1", [("a@example.test", "{}")])
    await queue.close()  # as if the relay had died before accept_broadcast

    await queue.open()
    assert await queue.broadcast_status("B1") is None
    assert await queue.list_messages() == []
    assert not (tmp_path / "spool" / "messages" / "B1").exists()
    await queue.close()
