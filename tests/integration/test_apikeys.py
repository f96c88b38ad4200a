"""Scoped API keys (admin.callers) against the running relay: every scope against a route of
each kind (allowed or 403), revocation, a key's rate limit, and which key sent a message
in its history and events."""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest

from relay.queue.apikeys import digest_of
from tests.integration.conftest import RunningRelay, StartRelay

MESSAGE = {"from": "app@sender.test", "to": ["x@example.test"], "text": "hi"}
BROADCAST = {"from": "news@sender.test", "subject": "Hi", "text": "Hi",
             "recipients": [{"email": "x@example.test"}]}

# (method, path, body, the scope it needs)
ROUTES: list[tuple[str, str, Any, str]] = [
    ("POST", "/v1/messages", MESSAGE, "send"),
    ("POST", "/v1/broadcasts", BROADCAST, "broadcast"),
    ("POST", "/v1/broadcasts/NOSUCH/cancel", None, "broadcast"),
    ("GET", "/v1/broadcasts", None, "read"),
    ("GET", "/v1/broadcasts/NOSUCH", None, "read"),
    ("GET", "/v1/broadcasts/NOSUCH/events", None, "read"),
    ("GET", "/v1/queue", None, "read"),
    ("GET", "/v1/queue/summary", None, "read"),
    ("GET", "/v1/queue/NOSUCH", None, "read"),
    ("GET", "/v1/messages/NOSUCH", None, "read"),
    ("GET", "/v1/events", None, "read"),
    ("GET", "/v1/suppressions", None, "read"),
    ("GET", "/v1/webhooks", None, "read"),
    ("GET", "/metrics", None, "read"),
    ("GET", "/v1/queue/NOSUCH/message", None, "admin"),
    ("POST", "/v1/queue/flush", {"all": True}, "admin"),
    ("POST", "/v1/queue/requeue", {"ids": ["NOSUCH"]}, "admin"),
    ("POST", "/v1/queue/hold", {"ids": ["NOSUCH"]}, "admin"),
    ("POST", "/v1/queue/release", {"ids": ["NOSUCH"]}, "admin"),
    ("POST", "/v1/queue/delete", {"ids": ["NOSUCH"]}, "admin"),
    ("POST", "/v1/queue/NOSUCH/hold", None, "admin"),
    ("POST", "/v1/queue/NOSUCH/release", None, "admin"),
    ("DELETE", "/v1/queue/NOSUCH", None, "admin"),
    ("POST", "/v1/suppressions", {"address": "s@example.test"}, "admin"),
    ("DELETE", "/v1/suppressions/NOSUCH", None, "admin"),
    ("POST", "/v1/webhooks", {"url": "http://127.0.0.1:9/"}, "admin"),
    ("DELETE", "/v1/webhooks/NOSUCH", None, "admin"),
    ("POST", "/v1/webhooks/NOSUCH/enable", None, "admin"),
    ("GET", "/v1/apikeys", None, "admin"),
    ("POST", "/v1/apikeys", {"name": "x", "scopes": ["read"]}, "admin"),
    ("DELETE", "/v1/apikeys/NOSUCH", None, "admin"),
]
OPEN_ROUTES = {("GET", "/healthz")}  # no token at all
SCOPES = ["send", "broadcast", "read", "admin"]


async def make_key(relay: RunningRelay, scopes: list[str], rate_limit: str = "") -> dict[str, Any]:
    async with relay.http() as client:
        made = await client.post("/v1/apikeys", json={"name": f"test {scopes}",
                                                      "scopes": scopes,
                                                      "rate_limit": rate_limit})
    assert made.status_code == 201, made.text
    answer: dict[str, Any] = made.json()
    return answer


def with_key(relay: RunningRelay, key: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=relay.admin.base_url, timeout=30,
                             headers={"Authorization": f"Bearer {key}"})


@pytest.fixture
async def relay(start_relay: StartRelay) -> RunningRelay:
    return await start_relay()


def templated(path: str) -> str:
    return re.sub(r"/NOSUCH(?=/|$)", "/{id}", path)


async def test_every_route_has_a_row_in_the_table(relay: RunningRelay) -> None:
    """A new route must be added to ROUTES, which says which scope it needs."""
    async with relay.http() as client:
        paths = (await client.get("/openapi.json")).json()["paths"]
    served = {(method.upper(), re.sub(r"\{[a-z_]+\}", "{id}", path))
              for path, methods in paths.items() for method in methods}
    listed = {(method, templated(path)) for method, path, _, _ in ROUTES}
    assert served - OPEN_ROUTES == listed


async def test_each_scope_reaches_its_routes_only(relay: RunningRelay) -> None:
    keys = {scope: (await make_key(relay, [scope]))["key"] for scope in SCOPES}
    outcomes = {}
    for scope, key in keys.items():
        async with with_key(relay, key) as client:
            for method, path, body, needed in ROUTES:
                response = await client.request(method, path, json=body)
                allowed = response.status_code not in (401, 403)
                outcomes[(scope, method, path)] = allowed
                if not allowed:
                    assert response.status_code == 403, (scope, path, response.text)
                    assert needed in response.json()["error"]["message"]
    expected = {(scope, method, path): scope in (needed, "admin")
                for scope in SCOPES for method, path, _, needed in ROUTES}
    assert outcomes == expected


async def test_revoked_unknown_and_rate_limited_keys(relay: RunningRelay) -> None:
    made = await make_key(relay, ["read"])  # it signs in to the console too
    async with httpx.AsyncClient(base_url=relay.admin.base_url, timeout=30) as browser:
        opened = await browser.post("/ui/sign-in", data={"token": made["key"]})
        assert opened.status_code == 303
        cookie = opened.cookies["relay_console"]
    session = await relay.relay.queue.console_session(digest_of(cookie))
    assert session is not None
    async with relay.http() as admin:
        listed = (await admin.get("/v1/apikeys")).json()["keys"]
        assert [k["id"] for k in listed] == [made["id"]] and "key" not in listed[0]
        assert "digest" not in listed[0]
        assert (await admin.delete(f"/v1/apikeys/{made['id']}")).status_code == 200
        assert (await admin.delete(f"/v1/apikeys/{made['id']}")).status_code == 404
        bad = await admin.post("/v1/apikeys", json={"name": "x", "scopes": ["everything"]})
        assert bad.status_code == 422 and bad.json()["error"]["field"] == "scopes[0]"
        bad = await admin.post("/v1/apikeys", json={"name": "x", "scopes": ["read"],
                                                    "rate_limit": "lots"})
        assert bad.status_code == 422 and bad.json()["error"]["field"] == "rate_limit"
    async with with_key(relay, made["key"]) as client:
        assert (await client.get("/v1/queue")).status_code == 401  # revoked
    assert await relay.relay.queue.console_session(digest_of(cookie)) is None  # ended
    async with with_key(relay, made["key"][:-2] + "xx") as client:
        assert (await client.get("/v1/queue")).status_code == 401  # not a key
    limited = await make_key(relay, ["read"], rate_limit="2/1m")
    async with with_key(relay, limited["key"]) as client:
        codes = [(await client.get("/v1/queue")).status_code for _ in range(3)]
        assert codes == [200, 200, 429]


async def test_history_and_events_name_the_key_that_sent(relay: RunningRelay) -> None:
    sender = await make_key(relay, ["send"])
    reader = await make_key(relay, ["read"])
    async with with_key(relay, sender["key"]) as client:
        sent = await client.post("/v1/messages", json=MESSAGE)
        assert sent.status_code == 202
        assert (await client.delete(f"/v1/queue/{sent.json()['id']}")).status_code == 403
    async with relay.http() as admin:
        other = (await admin.post("/v1/messages", json=MESSAGE)).json()["id"]
    async with with_key(relay, reader["key"]) as client:
        history = (await client.get(f"/v1/messages/{sent.json()['id']}")).json()
        assert history["api_key"] == sender["id"]
        mine = (await client.get("/v1/events", params={"key": sender["id"]})).json()
        assert {e["message_id"] for e in mine["events"]} == {sent.json()["id"]}
        assert all(e["api_key"] == sender["id"] for e in mine["events"])
        admins = (await client.get("/v1/events", params={"key": "admin"})).json()
        assert {e["message_id"] for e in admins["events"]} == {other}
