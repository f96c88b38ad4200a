"""POST /v1/messages against the running relay and a sink: MIME as mail clients expect it,
envelope from the fields, bad input as 4xx naming the field, idempotent retries."""

from __future__ import annotations

import asyncio
import base64
import email
import email.policy
from collections.abc import Callable
from email.message import EmailMessage
from typing import Any

import httpx

from tests.integration.conftest import StartRelay, check_idempotency
from tests.support.dns_server import DnsServer
from tests.support.sink import Sink


def parsed(raw: bytes) -> EmailMessage:
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


async def test_structured_message_with_html_and_attachment(
        start_relay: StartRelay, dns_server: DnsServer, make_sink: Callable[..., Sink]) -> None:
    dns_server.add("example.test", "A", "127.0.0.2")
    sink = make_sink("127.0.0.2")
    relay = await start_relay()
    pdf = b"%PDF-1.4 \x00\x01\x02 binary"
    async with relay.http() as client:
        response = await client.post("/v1/messages", json={
            "from": "Zo\u00eb App <app@sender.test>", "to": ["Ann <ann@example.test>"],
            "cc": ["cc@example.test"], "bcc": ["hidden@example.test"],
            "subject": "Caf\u00e9 r\u00e9sum\u00e9 \u2713", "text": "Hello \u00e9\nline 2",
            "html": "<p>Hello <b>\u00e9</b></p>", "headers": {"X-Tag": "t1"},
            "attachments": [{"filename": "a.pdf", "content_type": "application/pdf",
                             "content": base64.b64encode(pdf).decode()}]})
    assert response.status_code == 202, response.text
    answer = response.json()
    assert answer["recipients"] == 3 and answer["id"]

    arrived = (await asyncio.to_thread(sink.wait_for, 1))[0]
    assert sorted(arrived.rcpt_tos) == ["ann@example.test", "cc@example.test",
                                        "hidden@example.test"]
    assert arrived.mail_from == "app@sender.test"
    message = parsed(arrived.content)
    assert str(message["Subject"]) == "Caf\u00e9 r\u00e9sum\u00e9 \u2713"
    assert b"=?utf-8?" in arrived.content  # encoded words on the wire, no raw 8-bit header
    assert message["Bcc"] is None and message["X-Tag"] == "t1"
    assert message["Message-ID"] and message["Date"]
    assert message.get_content_type() == "multipart/mixed"
    alternative, attachment = message.iter_parts()
    assert alternative.get_content_type() == "multipart/alternative"
    text, html = alternative.iter_parts()
    assert text.get_content().replace("\r\n", "\n") == "Hello \u00e9\nline 2\n"
    assert html.get_content_type() == "text/html" and "<b>\u00e9</b>" in html.get_content()
    assert attachment.get_filename() == "a.pdf" and attachment.get_content() == pdf
    assert all(len(line) <= 998 for line in arrived.content.split(b"\r\n"))


async def test_raw_message_keeps_its_bytes(start_relay: StartRelay, dns_server: DnsServer,
                                           make_sink: Callable[..., Sink]) -> None:
    dns_server.add("example.test", "A", "127.0.0.2")
    sink = make_sink("127.0.0.2")
    relay = await start_relay()
    raw = "From: a@sender.test\nTo: b@example.test\nSubject: raw\n\nbody \u00e9\n"
    async with relay.http() as client:
        response = await client.post("/v1/messages", json={
            "mail_from": "bounce@sender.test", "rcpt_to": ["b@example.test"], "raw": raw})
    assert response.status_code == 202, response.text
    arrived = (await asyncio.to_thread(sink.wait_for, 1))[0]
    assert arrived.mail_from == "bounce@sender.test"
    assert b"\r\nSubject: raw\r\n" in arrived.content
    assert arrived.content.endswith("\r\n\r\nbody \u00e9\r\n".encode())
    assert "SMTPUTF8" not in arrived.mail_options  # an 8-bit body needs only 8BITMIME


async def _error(client: httpx.AsyncClient, body: dict[str, Any]) -> tuple[int, str, str]:
    response = await client.post("/v1/messages", json=body)
    error = response.json()["error"]
    return response.status_code, error["field"], error["message"]


async def test_bad_input_is_a_4xx_naming_the_field(start_relay: StartRelay) -> None:
    relay = await start_relay()
    good = {"from": "app@sender.test", "to": ["a@example.test"], "text": "x"}
    async with relay.http() as client:
        assert (await _error(client, {**good, "subject": "hi\r\nBcc: victim@x.test"}))[:2] == (
            422, "subject")
        assert await _error(client, {**good, "headers": {"X-A": "v\nBcc: v@x.test"}}) == (
            422, "headers.X-A", "header values cannot contain line breaks")
        assert (await _error(client, {**good, "attachments": [
            {"filename": "a", "content": "", "content_type": "text"}]}))[1:] == (
            "attachments[0].content_type", ("attachments[0].content_type is not a MIME type "
            "such as text/plain"))
        assert (await _error(client, {**good, "headers": {"Bad Name": "v"}}))[:2] == (
            422, "headers")
        assert (await _error(client, {**good, "to": ["a@example.test", "nobody"]}))[:2] == (
            422, "to[1]")
        assert (await _error(client, {**good, "attachments": [
            {"filename": "a", "content": "%%%"}]}))[:2] == (422, "attachments[0].content")
        assert (await _error(client, {"from": "app@sender.test", "text": "x"}))[:2] == (
            422, "to")
        assert (await _error(client, {**good, "unknown": 1}))[:2] == (422, "unknown")
        assert (await _error(client, {"mail_from": "", "rcpt_to": [], "raw": "x"}))[:2] == (
            422, "rcpt_to")
        long_line = "Subject: x\n\n" + "y" * 1200 + "\n"
        status, field, message = await _error(
            client, {"mail_from": "", "rcpt_to": ["a@example.test"], "raw": long_line})
        assert (status, field) == (422, "raw") and "5.6.0" in message
        response = await client.post("/v1/messages", content=b'{"from": "a@b.test",,}',
                                     headers={"Content-Type": "application/json"})
        assert response.status_code == 422 and response.json()["error"] == {
            "code": "invalid", "field": "body", "message": "the body is not valid JSON: "
            "Expecting property name enclosed in double quotes at character 20"}
    assert await relay.relay.queue.list_messages() == []
    async with httpx.AsyncClient(base_url=relay.admin.base_url) as anonymous:
        assert (await anonymous.post("/v1/messages", json=good)).status_code == 401


async def test_idempotency_key_queues_once(start_relay: StartRelay, dns_server: DnsServer,
                                           make_sink: Callable[..., Sink]) -> None:
    dns_server.add("example.test", "A", "127.0.0.2")
    sink = make_sink("127.0.0.2")
    relay = await start_relay()
    body = {"from": "app@sender.test", "to": ["a@example.test"], "subject": "once",
            "text": "x"}
    async with relay.http() as client:
        first = await check_idempotency(client, "/v1/messages", body, "order-1234")
        fresh = await client.post("/v1/messages", json=body,
                                  headers={"Idempotency-Key": "order-1235"})
        assert fresh.json()["id"] != first["id"]
    arrived = await asyncio.to_thread(sink.wait_for, 2)
    assert len(arrived) == 2
    await relay.until_queue_empty()
    assert len(sink.messages) == 2
