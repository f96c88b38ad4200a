"""The admin API: token required, queue operations, errors as JSON naming the field."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request

import pytest

from relay.cli.client import AdminClientError
from relay.queue import State
from tests.integration.conftest import StartRelay
from tests.support.client import message, send


def raw_request(url: str, method: str = "GET", token: str | None = None,
                body: bytes | None = None) -> tuple[int, dict]:  # type: ignore[type-arg]
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


async def test_requests_without_the_token_get_401(start_relay: StartRelay) -> None:
    relay = await start_relay()
    base = relay.admin.base_url
    token_file = relay.config.queue.path / "admin.token"
    assert token_file.stat().st_mode & 0o777 == 0o600
    for path in ("/v1/queue", "/openapi.json", "/docs"):
        status, body = await asyncio.to_thread(raw_request, base + path)
        assert status in (401, 404), path
        if path != "/docs":
            assert status == 401 and body["error"]["code"] == "unauthorized"
    status, body = await asyncio.to_thread(raw_request, base + "/v1/queue", "GET", "x" * 43)
    assert status == 401
    status, body = await asyncio.to_thread(raw_request, base + "/healthz")
    assert status == 200 and body == {"status": "ok"}
    status, spec = await asyncio.to_thread(raw_request, base + "/openapi.json", "GET",
                                           token_file.read_text().strip())
    assert status == 200 and "/v1/queue/flush" in spec["paths"]


async def test_hold_release_delete_and_errors(start_relay: StartRelay) -> None:
    # No DNS records: delivery would bounce, so hold the message while it is deferred.
    relay = await start_relay(delivery={"nameservers": ["127.0.0.1:9"],
                                        "connect_timeout": "1s"})
    reply = await send(relay.smtp_port, "app@sender.test", ["a@example.test"], message())
    queue_id = reply.split()[-1]
    await relay.until_state(queue_id, State.DEFERRED)
    info = await relay.api("GET", f"/v1/queue/{queue_id}")
    assert info["recipients"][0]["last_reply"].startswith("451 4.4.3")
    assert (await relay.api("POST", f"/v1/queue/{queue_id}/hold")) == {"held": 1}
    listed = await relay.api("GET", "/v1/queue?state=held")
    assert [m["id"] for m in listed["messages"]] == [queue_id]
    assert (await relay.api("GET", "/v1/queue?domain=elsewhere.test"))["messages"] == []
    assert (await relay.api("POST", f"/v1/queue/{queue_id}/hold")) == {"held": 0}
    assert (await relay.api("POST", f"/v1/queue/{queue_id}/release")) == {"released": 1}
    await relay.api("POST", f"/v1/queue/{queue_id}/hold")
    assert (await relay.api("DELETE", f"/v1/queue/{queue_id}")) == {"deleted": 1}
    assert not (relay.config.queue.path / "messages" / queue_id).exists()
    with pytest.raises(AdminClientError, match="no message"):
        await relay.api("GET", f"/v1/queue/{queue_id}")
    with pytest.raises(AdminClientError, match="give ids, domain or all"):
        await relay.api("POST", "/v1/queue/flush", {})
    with pytest.raises(AdminClientError, match=r"\(state\)"):
        await relay.api("GET", "/v1/queue?state=bogus")
