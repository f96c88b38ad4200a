"""The console as a script uses it (bearer token), on both backends: the overview (a
failing webhook endpoint, the busiest deferred destination, the delivery chart, on
PostgreSQL the node that holds leases) and actions on every message of a domain. The
browser tests are tests/acceptance/test_console.py."""

from __future__ import annotations

import asyncio
import html
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from relay.notify.webhooks import new_secret
from relay.queue import State
from tests.integration.conftest import RunningRelay, StartRelay, postgres_queue
from tests.support.dns_server import DnsServer
from tests.support.sink import Sink
from tests.support.webhook_receiver import WebhookReceiver


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[WebhookReceiver]:
    secret = new_secret()
    (tmp_path / "webhook.secret").write_text(secret + "\n")
    started = WebhookReceiver(secret)
    started.failing = True
    yield started
    started.stop()


async def send(relay: RunningRelay, to: str) -> str:
    async with relay.http() as client:
        answer = await client.post("/v1/messages", json={
            "from": "app@sender.test", "to": [to], "subject": "s", "text": "hi"})
    assert answer.status_code == 202, answer.text
    queue_id: str = answer.json()["id"]
    return queue_id


@pytest.mark.parametrize("backend", ["local", "postgres"])
async def test_the_overview_shows_what_needs_a_look(
        backend: str, request: pytest.FixtureRequest, start_relay: StartRelay,
        dns_server: DnsServer, make_sink: Callable[..., Sink],
        receiver: WebhookReceiver) -> None:
    dns_server.add("example.test", "A", "127.0.0.2")
    dns_server.add("slow.test", "A", "127.0.0.2")
    sink = make_sink("127.0.0.2")
    sink.rcpt_replies["later@slow.test"] = "451 4.3.0 later"
    overrides: dict[str, Any] = {"webhooks": [{
        "url": receiver.url, "secret_file": "webhook.secret", "min_backoff": "0.1s",
        "max_backoff": "0.3s"}]}
    if backend == "postgres":
        overrides["queue"] = postgres_queue(request)
    relay = await start_relay(**overrides)
    await send(relay, "ok@example.test")
    deferred = await send(relay, "later@slow.test")
    await relay.until_state(deferred, State.DEFERRED)
    await asyncio.to_thread(receiver.wait_for, lambda r: r.refused >= 1)

    async def overview() -> str:
        async with relay.http() as client:
            answer = await client.get("/ui/")
        assert answer.status_code == 200
        assert "script-src 'self'" in answer.headers["content-security-policy"]
        return html.unescape(answer.text)

    page = await overview()
    while "retrying" not in page:  # the endpoint's failure is saved a moment after it
        await asyncio.sleep(0.05)
        page = await overview()
    assert receiver.url in page
    assert re.search(r"<td>slow\.test</td><td class=\"n\">1</td>", page)
    assert re.search(r"delivered (\d+)", page).group(1) == "1"  # type: ignore[union-attr]
    assert re.search(r"deferred (\d+)", page).group(1) == "1"  # type: ignore[union-attr]
    if backend == "postgres":  # the node by its name, alive, and what it holds
        assert "<h2>Nodes</h2>" in page
        node = relay.config.queue.node_name
        row = re.search(rf"<tr><td>{re.escape(node)}</td>(.*?)</tr>", page, re.S)
        assert row is not None, page
        assert "gone" not in row.group(1) and " UTC</td>" in row.group(1)
        webhooks = re.findall(r'<td class="n">(\d+)</td>', row.group(1))[-1]
        assert webhooks == "1"  # its webhook endpoint's lease
    else:
        assert "<h2>Nodes</h2>" not in page


async def test_an_action_applies_to_every_message_of_a_domain(
        start_relay: StartRelay, dns_server: DnsServer,
        make_sink: Callable[..., Sink]) -> None:
    dns_server.add("slow.test", "A", "127.0.0.2")
    dns_server.add("other.test", "A", "127.0.0.2")
    sink = make_sink("127.0.0.2")
    for address in ("a@slow.test", "b@slow.test", "c@other.test"):
        sink.rcpt_replies[address] = "451 4.3.0 later"
    relay = await start_relay()
    ids = [await send(relay, to) for to in ("a@slow.test", "b@slow.test", "c@other.test")]
    for queue_id in ids:
        await relay.until_state(queue_id, State.DEFERRED)
    async with relay.http() as client:
        held = await client.post("/ui/queue", data={"action": "hold", "domain": "Slow.test"})
        assert held.status_code == 303
        assert held.headers["location"] == "/ui/queue?domain=slow.test&done=hold&count=2"
        page = html.unescape((await client.get(held.headers["location"])).text)
        assert "2 recipient(s) held." in page
        unknown = await client.post("/ui/queue", data={"action": "explode"})
        assert unknown.status_code == 404 and unknown.json()["error"]["field"] == "action"
        for origin in ("http://[::1", "null", "http://evil.test"):
            refused = await client.post("/ui/queue", data={"action": "flush"},
                                        headers={"Origin": origin})
            assert refused.status_code == 403, origin
        proxied = await client.post("/ui/queue", data={"action": "flush", "domain": "x.test"},
                                    headers={"Origin": "https://relay.example",
                                             "X-Forwarded-Host": "relay.example"})
        assert proxied.status_code == 303
        junk = await client.get("/ui/queue?state=%00&age=-1", headers={"Cookie": "a=\"\x7f"})
        assert junk.status_code == 200 and "is not one of" in junk.text
    states = [(await relay.relay.queue.get_message(i)).recipients[0].state  # type: ignore[union-attr]
              for i in ids]
    assert states == [State.HELD, State.HELD, State.DEFERRED]


async def test_the_queue_page_shows_what_the_filter_picks_and_acts_on_that_only(
        start_relay: StartRelay, dns_server: DnsServer,
        make_sink: Callable[..., Sink]) -> None:
    """A message of many recipients shows, under a state filter, only its recipients in
    that state, the first few and a count of the rest; a bulk action says how many
    messages the filter picks (state, sender and age included), asks, and acts on them
    alone."""
    dns_server.add("slow.test", "A", "127.0.0.2")
    dns_server.add("fast.test", "A", "127.0.0.2")
    sink = make_sink("127.0.0.2")
    slow = [f"r{n}@slow.test" for n in range(25)]
    for address in [*slow, "other@slow.test"]:
        sink.rcpt_replies[address] = "451 4.3.0 later"
    relay = await start_relay()
    async with relay.http() as client:
        many = (await client.post("/v1/messages", json={
            "from": "app@sender.test", "to": [*slow, "a@fast.test", "b@fast.test"],
            "subject": "s", "text": "hi"})).json()["id"]
        other = (await client.post("/v1/messages", json={
            "from": "shop@shop.test", "to": ["other@slow.test"], "subject": "s",
            "text": "hi"})).json()["id"]
        await relay.until_state(other, State.DEFERRED)
        for _ in range(400):
            info = await relay.relay.queue.get_message(many)
            assert info is not None
            if {r.state for r in info.recipients} == {State.DEFERRED, State.DELIVERED}:
                break
            await asyncio.sleep(0.05)

        page = html.unescape((await client.get("/ui/queue?state=deferred&sender=app")).text)
        assert "27 recipients: 25 deferred, 2 delivered" in page
        assert page.count('<span class="state deferred">') == 10  # the first ten
        assert "and 15 more…" in page and "a@fast.test" not in page
        assert other not in page  # another sender's

        asked = html.unescape((await client.get(
            "/ui/queue/act?action=hold&state=deferred&sender=app&age=0")).text)
        assert "Hold 1 message?" in asked
        said = ("every message with a recipient deferred, a sender containing 'app', "
                "received over 0 minutes ago: 1 now")
        assert said in " ".join(asked.split())
        held = await client.post("/ui/queue", data={
            "action": "hold", "state": "deferred", "sender": "app", "age": "0"})
        assert held.headers["location"] == (
            "/ui/queue?state=deferred&sender=app&age=0&done=hold&count=25")
        nothing = html.unescape((await client.get(
            "/ui/queue/act?action=flush&sender=nobody")).text)
        assert "Flush 0 messages?" in nothing and 'name="action"' not in nothing
    states = {r.state for r in (await relay.relay.queue.get_message(other)).recipients}  # type: ignore[union-attr]
    assert states == {State.DEFERRED}  # not picked: left alone
    held_now = await relay.relay.queue.get_message(many)
    assert held_now is not None
    assert sorted({r.state for r in held_now.recipients}) == [State.DELIVERED, State.HELD]


async def test_a_console_address_that_leads_nowhere_is_a_page(
        start_relay: StartRelay) -> None:
    relay = await start_relay()
    async with relay.http() as client:
        for path in ("/ui/nowhere", "/ui/queue/ID/nonsense", "/ui/sign-out"):
            answer = await client.get(path)
            assert answer.status_code == 404, path
            assert answer.headers["content-type"].startswith("text/html"), path
            assert "<h1>Not found</h1>" in answer.text and 'href="/ui/queue"' in answer.text
        assert (await client.get("/v1/nowhere")).json()["error"]["code"] == "not_found"
