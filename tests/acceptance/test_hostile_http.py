"""Hostile HTTP requests against the admin API of the relay process: the token is checked
before a body is read, bodies have limits (413 naming them), deeply nested JSON is a 400,
`max_message_size` holds for the API, and every error has the one documented shape."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from relay import config as config_module
from tests.support.dns_server import DnsServer
from tests.support.process import RelayProcess
from tests.support.relayconf import write_relay_config

DEEP = "[" * 100_000 + "]" * 100_000
MB = 1024 * 1024


@pytest.fixture(scope="module")
def relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RelayProcess]:
    directory: Path = tmp_path_factory.mktemp("hostile-http")
    dns = DnsServer()
    dns.start()
    config = write_relay_config(directory, dns.address, 25,
                                {"smtp": {"max_message_size": "1MB"}})
    process = RelayProcess(config, directory / "relay.log").start()
    yield process
    process.kill()
    dns.stop()


@pytest.fixture(scope="module")
def api(relay: RelayProcess) -> Iterator[httpx.Client]:
    loaded = config_module.load(relay.config)
    token = loaded.admin_token_path.read_text().strip()
    with httpx.Client(base_url=f"http://{loaded.admin.listen}", timeout=60,
                      headers={"Authorization": f"Bearer {token}"}) as client:
        yield client


def error_of(response: httpx.Response) -> dict[str, Any]:
    body = response.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"code", "message", "field"}, body
    error: dict[str, Any] = body["error"]
    return error


def raw(size: int) -> dict[str, Any]:
    return {"mail_from": "app@sender.test", "rcpt_to": ["a@example.test"],
            "raw": "Subject: big\r\n\r\n" + ("x" * 900 + "\r\n") * (size // 902)}


NDJSON = {"Content-Type": "application/x-ndjson"}
TEMPLATE = json.dumps({"from": "app@sender.test", "subject": "s", "text": "hi {{name}}"})


@pytest.mark.parametrize("method, path, kwargs, status, field", [
    ("POST", "/v1/broadcasts", {"content": DEEP, "headers": {
        "Content-Type": "application/json"}}, 400, None),
    ("POST", "/v1/broadcasts", {"content": DEEP + "\n", "headers": NDJSON}, 400, "template"),
    ("POST", "/v1/broadcasts", {"content": f"{TEMPLATE}\n{DEEP}\n", "headers": NDJSON},
     400, "recipients[0]"),
    ("POST", "/v1/broadcasts", {"content": TEMPLATE[:-1] + ', "recipients": [{"email": '
                                '"a@example.test", "fields": {"name": ' + DEEP + "}}]}",
                                "headers": {"Content-Type": "application/json"}}, 400, None),
    ("POST", "/v1/broadcasts", {"content": b"[" * (9 * MB), "headers": {
        "Content-Type": "application/json"}}, 413, "body"),
    ("POST", "/v1/messages", {"content": DEEP, "headers": {
        "Content-Type": "application/json"}}, 400, None),
    ("POST", "/v1/messages", {"json": raw(2 * MB)}, 413, "raw"),
    ("POST", "/v1/messages", {"json": raw(4 * MB)}, 413, "body"),
    ("POST", "/v1/suppressions", {"json": {"address": "a" * (2 * MB) + "@example.test"}},
     413, "body"),
    ("POST", "/v1/suppressions", {"json": {"address": "a" * 300 + "@example.test"}},
     422, "address"),
    ("POST", "/v1/queue/flush", {"content": b"x" * (2 * MB)}, 413, "body"),
    ("GET", "/v1/nowhere", {}, 404, None),
    ("PUT", "/v1/queue", {}, 405, None),
    ("POST", "/v1/queue/flush", {"content": b"{not json", "headers": {
        "Content-Type": "application/json"}}, 422, None),
])
def test_bad_requests_get_a_4xx_in_the_documented_shape(
        api: httpx.Client, method: str, path: str, kwargs: dict[str, Any], status: int,
        field: str | None) -> None:
    response = api.request(method, path, **kwargs)
    assert response.status_code == status, response.text[:300]
    error = error_of(response)
    if field is not None:
        assert error["field"] == field, error
    if status == 413:
        assert any(char.isdigit() for char in error["message"]), error  # the limit


def test_the_token_is_checked_before_the_body_is_read(relay: RelayProcess) -> None:
    """An unauthenticated 50 MB upload is refused at once with 401, not read and parsed."""
    host, port = config_module.load(relay.config).admin.listen.split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(b"POST /v1/messages HTTP/1.1\r\nHost: relay\r\n"
                     b"Content-Type: application/json\r\nContent-Length: 52428800\r\n\r\n"
                     b"{\"raw\": ")
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.endswith(b"}"):
            piece = sock.recv(65536)
            assert piece, answer
            answer += piece
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 401"), head
    assert json.loads(body)["error"]["code"] == "unauthorized"
    malformed = httpx.post(f"http://{host}:{port}/v1/messages", content=b"{not json",
                           headers={"Content-Type": "application/json"}, timeout=30)
    assert malformed.status_code == 401 and error_of(malformed)["code"] == "unauthorized"


def test_a_message_up_to_the_limit_is_taken(api: httpx.Client, relay: RelayProcess) -> None:
    response = api.post("/v1/messages", json=raw(MB // 2))
    assert response.status_code == 202, response.text
    assert "Traceback" not in relay.log()


def test_a_chunked_body_is_limited_while_it_is_read(api: httpx.Client) -> None:
    """No Content-Length (chunked): the limit holds as the body streams in."""
    chunks = iter([b'{"ids": ["' + b"x" * MB] + [b"x" * MB] * 3 + [b'"]}'])
    response = api.post("/v1/queue/flush", content=chunks,
                        headers={"Content-Type": "application/json"})
    assert response.status_code == 413
    assert error_of(response)["code"] == "too_large"
