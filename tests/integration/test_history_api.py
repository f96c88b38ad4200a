"""GET /v1/messages/{id} and GET /v1/events against the running relay, a real DNS server
and sinks: the application's metadata over SMTP (X-Relay-Metadata, never sent on) and
over the API, timelines after the message left the queue, filters, cursor and bad input."""

from __future__ import annotations

import asyncio
import smtplib
from collections.abc import Callable

from tests.integration.conftest import StartRelay
from tests.support.dns_server import DnsServer
from tests.support.sink import Sink


def send_over_smtp(port: int, data: bytes) -> str:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.ehlo("app.test")
        _, answer = client.docmd("MAIL FROM:<app@sender.test>")
        client.rcpt("ann@example.test")
        code, answer = client.data(data)
        assert code == 250, answer
    return answer.decode().rsplit(" ", 1)[-1]  # "2.0.0 Ok: queued as ID"


async def test_history_of_smtp_and_api_mail_after_delivery(
        start_relay: StartRelay, dns_server: DnsServer, make_sink: Callable[..., Sink]) -> None:
    dns_server.add("example.test", "A", "127.0.0.2")
    sink = make_sink("127.0.0.2")
    relay = await start_relay()
    smtp_id = await asyncio.to_thread(send_over_smtp, relay.smtp_port, (
        b"From: app@sender.test\r\nTo: ann@example.test\r\nSubject: Your order\r\n"
        b"X-Relay-Metadata: {\"order\": 1234,\r\n \"shop\": \"eu\"}\r\n\r\nThanks\r\n"))
    async with relay.http() as client:
        response = await client.post("/v1/messages", json={
            "from": "app@sender.test", "to": ["bob@example.test"], "subject": "Reset",
            "text": "link", "metadata": {"user": 7}, "tags": ["password-reset"]})
        assert response.status_code == 202, response.text
        api_id = response.json()["id"]
        arrived = await asyncio.to_thread(sink.wait_for, 2)
        assert all(b"X-Relay-Metadata" not in m.content for m in arrived)  # removed
        await relay.until_queue_empty()

        smtp_history = (await client.get(f"/v1/messages/{smtp_id}")).json()
        assert smtp_history["subject"] == "Your order" and not smtp_history["in_queue"]
        assert smtp_history["metadata"] == {"order": 1234, "shop": "eu"}
        [ann] = smtp_history["recipients"]
        assert ann["address"] == "ann@example.test" and ann["state"] == "delivered"
        assert [e["type"] for e in ann["events"]] == ["accepted", "delivered"]
        assert ann["events"][1]["data"]["relay"].startswith("example.test[127.0.0.2]")

        api_history = (await client.get(f"/v1/messages/{api_id}")).json()
        assert api_history["tags"] == ["password-reset"]
        assert api_history["metadata"] == {"user": 7}

        delivered = (await client.get("/v1/events", params={"type": "delivered"})).json()
        assert [(e["message_id"], e["metadata"]) for e in delivered["events"]] == [
            (smtp_id, {"order": 1234, "shop": "eu"}), (api_id, {"user": 7})]
        first = (await client.get("/v1/events", params={"limit": 1})).json()
        rest = (await client.get("/v1/events", params={"after": first["next"]})).json()
        assert len(first["events"]) + len(rest["events"]) == 4  # two accepted, two delivered
        assert first["events"][0]["id"] not in {e["id"] for e in rest["events"]}
        assert (await client.get("/v1/events", params={"after": rest["next"]})).json()[
            "events"] == []

        missing = await client.get("/v1/messages/nosuchid")
        assert missing.status_code == 404 and missing.json()["error"]["field"] == "id"
        for params, field in (({"after": "x.y"}, "after"), ({"after": "9" * 40}, "after"),
                              ({"type": "opened"}, "type[0]"),
                              ({"limit": "0"}, "limit")):
            bad = await client.get("/v1/events", params=params)
            assert bad.status_code == 422 and bad.json()["error"]["field"] == field, bad.text
        bad_tags = await client.post("/v1/messages", json={
            "from": "app@sender.test", "to": ["bob@example.test"], "text": "x",
            "tags": ["has space"]})
        assert bad_tags.status_code == 422 and bad_tags.json()["error"]["field"] == "tags[0]"


async def test_bad_metadata_over_smtp_is_refused(start_relay: StartRelay) -> None:
    relay = await start_relay()

    def send() -> tuple[int, bytes]:
        with smtplib.SMTP("127.0.0.1", relay.smtp_port, timeout=30) as client:
            client.ehlo("app.test")
            client.mail("app@sender.test")
            client.rcpt("ann@example.test")
            client.putcmd("DATA")
            client.getreply()
            client.send(b"Subject: x\r\nX-Relay-Metadata: [1, 2]\r\n\r\nbody\r\n.\r\n")
            return client.getreply()

    code, text = await asyncio.to_thread(send)
    assert code == 550 and b"X-Relay-Metadata must be a JSON object" in text
