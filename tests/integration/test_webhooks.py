"""Webhooks (relay.notify.webhooks) against a real HTTP receiver on loopback that checks every
signature with the `standardwebhooks` package: through a receiver that answers 500 for a
while, every event arrives, at least once, with one body per id; both backends. The API's
endpoints (/v1/webhooks)."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from relay.notify.webhooks import new_secret
from tests.integration.conftest import RunningRelay, StartRelay, postgres_queue
from tests.support.dns_server import DnsServer
from tests.support.sink import Sink
from tests.support.webhook_receiver import WebhookReceiver


@pytest.fixture
def secret(tmp_path: Path) -> str:
    made = new_secret()
    (tmp_path / "webhook.secret").write_text(made + "\n")
    return made


@pytest.fixture
def receiver(secret: str) -> Iterator[WebhookReceiver]:
    started = WebhookReceiver(secret)
    yield started
    started.stop()


def hook(receiver: WebhookReceiver, **extra: Any) -> dict[str, Any]:
    return {"url": receiver.url, "secret_file": "webhook.secret", "min_backoff": "0.1s",
            "max_backoff": "0.3s", "max_in_flight": 3, **extra}


async def send(relay: RunningRelay, count: int) -> list[str]:
    ids = []
    async with relay.http() as client:
        for n in range(count):
            response = await client.post("/v1/messages", json={
                "from": "app@sender.test", "to": [f"user{n}@example.test"],
                "subject": f"n{n}", "text": "hi", "metadata": {"n": n}})
            assert response.status_code == 202, response.text
            ids.append(response.json()["id"])
    return ids


@pytest.mark.parametrize("backend", ["local", "postgres"])
async def test_every_event_arrives_signed_through_a_failing_receiver(
        backend: str, request: pytest.FixtureRequest, start_relay: StartRelay,
        dns_server: DnsServer, make_sink: Callable[..., Sink],
        receiver: WebhookReceiver) -> None:
    dns_server.add("example.test", "A", "127.0.0.2")
    sink = make_sink("127.0.0.2")
    overrides: dict[str, Any] = {"webhooks": [hook(receiver, events=["accepted",
                                                                    "delivered"])]}
    if backend == "postgres":
        overrides["queue"] = postgres_queue(request)
    receiver.failing = True
    relay = await start_relay(**overrides)
    ids = await send(relay, 5)
    await asyncio.to_thread(sink.wait_for, 5)  # mail goes out whatever the webhooks do
    await asyncio.to_thread(receiver.wait_for, lambda r: r.refused >= 3)
    async with relay.http() as client:
        waiting = (await client.get("/metrics")).text
    assert re.search(r'relay_webhook_pending_events\{endpoint="cfg_\w+"\} (\d+)', waiting)
    receiver.failing = False
    await asyncio.to_thread(receiver.wait_for, lambda r: len(r.bodies) >= 10)

    assert receiver.bad_signatures == 0
    assert all(len(bodies) == 1 for bodies in receiver.bodies.values())  # one body per id
    got = receiver.events()
    assert len(got) == 10 and {e["type"] for e in got} == {"accepted", "delivered"}
    for queue_id in ids:
        mine = sorted((e["data"] for e in got if e["data"]["message_id"] == queue_id),
                      key=lambda d: d["at"])
        assert [d["type"] for d in mine] == ["accepted", "delivered"]
        assert mine[0]["metadata"] == mine[1]["metadata"] and "n" in mine[0]["metadata"]
    async with relay.http() as client:
        exposition = (await client.get("/metrics")).text
        listed = (await client.get("/v1/webhooks")).json()["webhooks"]
    assert 'relay_webhook_requests_total{endpoint="cfg_' in exposition
    assert 'result="failed"' in exposition
    [configured] = listed
    assert configured["from_config"] and configured["failing_since"] is None
    assert "secret" not in configured


async def test_endpoints_added_through_the_api(start_relay: StartRelay, dns_server: DnsServer,
                                               make_sink: Callable[..., Sink]) -> None:
    dns_server.add("example.test", "A", "127.0.0.2")
    make_sink("127.0.0.2")
    relay = await start_relay()
    async with relay.http() as client:
        for url in ("ftp://x", "http://[::1", "http://:80/"):
            bad = await client.post("/v1/webhooks", json={"url": url, "events": []})
            assert bad.status_code == 422 and bad.json()["error"]["field"] == "url", url
        bad = await client.post("/v1/webhooks", json={"url": "http://127.0.0.1:1/",
                                                      "events": ["opened"]})
        assert bad.status_code == 422 and bad.json()["error"]["field"] == "events[0]"
        added = await client.post("/v1/webhooks", json={"url": "http://127.0.0.1:9/placeholder",
                                                        "events": ["delivered"]})
        assert added.status_code == 201, added.text
        created = added.json()
        receiver = WebhookReceiver(created["secret"])  # signed with the secret it answered
        try:
            removed = await client.delete(f"/v1/webhooks/{created['id']}")
            assert removed.status_code == 200
            again = await client.post("/v1/webhooks", json={"url": receiver.url,
                                                            "events": ["delivered"]})
            webhook = again.json()
            receiver.verifier = type(receiver.verifier)(webhook["secret"])
            listed = (await client.get("/v1/webhooks")).json()["webhooks"]
            assert [w["id"] for w in listed] == [webhook["id"]]
            assert "secret" not in listed[0]
            await send(relay, 2)
            await asyncio.to_thread(receiver.wait_for, lambda r: len(r.bodies) >= 2)
            assert {e["type"] for e in receiver.events()} == {"delivered"}
            assert receiver.bad_signatures == 0
        finally:
            receiver.stop()
        missing = await client.delete("/v1/webhooks/wh_nosuch")
        assert missing.status_code == 404 and missing.json()["error"]["field"] == "id"
        assert (await client.post("/v1/webhooks/wh_nosuch/enable")).status_code == 404

