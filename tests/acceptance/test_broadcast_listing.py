"""Broadcasts listed (GET /v1/broadcasts, `relayctl broadcast list`) and followed while
some of their recipients are deferred: `status --follow` ends once every recipient was
tried, saying when the deferred ones are tried next, instead of following them for up to
[retry] max_age; `queue list --json` shows only the recipients still in the queue."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import httpx

from relay import config as config_module
from tests.acceptance.conftest import MakeRelay
from tests.acceptance.test_relayctl import queue_json
from tests.support.dns_server import DnsServer
from tests.support.process import relayctl
from tests.support.sink import Sink

TEMPLATE = {"from": "news@sender.test", "subject": "Hi {{name}}", "text": "Hello {{name}}"}


def _submit(config: Path, directory: Path, name: str, addresses: list[str]) -> str:
    ndjson = directory / f"{name}.ndjson"
    ndjson.write_text("\n".join([json.dumps(TEMPLATE)] + [
        json.dumps({"email": a, "fields": {"name": name}}) for a in addresses]) + "\n")
    submitted = relayctl(config, "broadcast", "submit", str(ndjson))
    assert submitted.returncode == 0, submitted.stderr
    return submitted.stdout.split()[1].rstrip(":")


def test_broadcasts_listed_and_followed_while_some_are_deferred(
        relay_process: MakeRelay, dns_server: DnsServer, make_sink: Callable[..., Sink],
        tmp_path: Path) -> None:
    dns_server.add("example.test", "A", "127.0.0.2")
    sink = make_sink("127.0.0.2")
    sink.rcpt_replies["later@example.test"] = "451 4.2.0 greylisted"
    relay = relay_process().start()
    first = _submit(relay.config, tmp_path, "first", ["a@example.test", "later@example.test"])

    followed = relayctl(relay.config, "broadcast", "status", first, "--follow", timeout=60)
    assert followed.returncode == 0, followed.stderr
    lines = followed.stdout.splitlines()
    assert lines[-2].startswith(f"{first} sending: 2 total, 0 queued, 1 deferred, "
                                "1 delivered"), lines
    assert lines[-1].startswith("1 deferred, retried with backoff; the next attempt at 20")
    assert lines[-1].endswith("(--until final follows them)")

    # The broadcast's message holds a delivered recipient: the listing shows the other.
    [listed] = queue_json(relay.config)
    assert listed["id"] == first
    assert [r["address"] for r in listed["recipients"]] == ["later@example.test"]

    second = _submit(relay.config, tmp_path, "second", ["b@example.test"])
    sink.wait_for(2)
    settings = config_module.load(relay.config)
    api = httpx.Client(base_url=f"http://{settings.admin.listen}", timeout=30, headers={
        "Authorization": f"Bearer {settings.admin_token_path.read_text().strip()}"})
    with api:
        page = api.get("/v1/broadcasts", params={"limit": 1}).json()
        assert [b["id"] for b in page["broadcasts"]] == [second]  # newest first
        rest = api.get("/v1/broadcasts", params={"limit": 1, "cursor": page["next_cursor"]})
        assert [b["id"] for b in rest.json()["broadcasts"]] == [first]
        assert rest.json()["next_cursor"] is None
        sending = api.get("/v1/broadcasts", params={"state": "sending"}).json()
        assert [b["id"] for b in sending["broadcasts"]] == [first]
        bad = api.get("/v1/broadcasts", params={"cursor": "nonsense"})
        assert bad.status_code == 422 and bad.json()["error"]["field"] == "cursor"

    everything = relayctl(relay.config, "broadcast", "list").stdout.splitlines()
    assert [line.split()[0] for line in everything] == [second, first]
    assert everything[0].startswith(f"{second} done: 1 total")
    assert "(created 20" in everything[0]
    cancelled = relayctl(relay.config, "broadcast", "list", "--state", "cancelled")
    assert cancelled.stdout == "No broadcasts cancelled\n"
    newest = relayctl(relay.config, "broadcast", "list", "--limit", "1").stdout
    assert newest.split()[0] == second and newest.count("\n") == 1
    assert relay.stop() == 0
