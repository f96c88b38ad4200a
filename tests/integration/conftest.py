"""The relay itself, started in the test's event loop on its own spool."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from relay import config as config_module
from relay.cli.client import AdminClient
from relay.config import Config, split_hostport
from relay.queue import MessageInfo, Queue, State
from relay.queue.local import LocalQueue
from relay.queue.postgres import PostgresQueue
from relay.server import Relay
from tests.support.dns_server import DnsServer
from tests.support.relayconf import write_relay_config


@dataclass
class RunningRelay:
    relay: Relay
    config: Config
    directory: Path

    @property
    def smtp_port(self) -> int:
        return split_hostport(self.config.smtp.listen[0])[1]

    @property
    def admin(self) -> AdminClient:
        return AdminClient.from_config(self.config)

    def http(self) -> httpx.AsyncClient:
        """An HTTP client on the admin API with the token, for status codes and headers."""
        token = self.config.admin_token_path.read_text().strip()
        return httpx.AsyncClient(base_url=self.admin.base_url, timeout=30,
                                 headers={"Authorization": f"Bearer {token}"})

    async def api(self, method: str, path: str, body: Any = None) -> Any:
        return await asyncio.to_thread(self.admin.request, method, path, body)

    async def until_state(self, queue_id: str, state: State, timeout: float = 20) -> MessageInfo:
        """Poll the queue until every recipient of `queue_id` is in `state`."""
        deadline = time.monotonic() + timeout
        while True:
            info = await self.relay.queue.get_message(queue_id)
            if info is not None and all(r.state is state for r in info.recipients):
                return info
            if time.monotonic() > deadline:
                raise AssertionError(f"{queue_id} never reached {state}: {info}")
            await asyncio.sleep(0.02)

    async def until_queue_empty(self, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while await self.relay.queue.list_messages():
            if time.monotonic() > deadline:
                raise AssertionError("the queue never emptied")
            await asyncio.sleep(0.02)


StartRelay = Callable[..., Awaitable[RunningRelay]]
QUEUE_LEASE = 1.0  # seconds: short, so that expiry is seen within a test


@pytest.fixture(params=["local", "postgres"])
async def queue(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Queue]:
    """Each backend in turn, open: the queue contract's tests run on both."""
    made: Queue
    if request.param == "local":
        made = LocalQueue(tmp_path / "spool", lease=QUEUE_LEASE)
    else:
        made = PostgresQueue(request.getfixturevalue("postgres_dsn"), lease=QUEUE_LEASE)
    await made.open()
    yield made
    await made.close()


def postgres_queue(request: pytest.FixtureRequest) -> dict[str, Any]:
    """The `[queue]` overrides of a relay on the test database (start_relay(queue=...))."""
    return {"backend": "postgres", "dsn": request.getfixturevalue("postgres_dsn")}


@pytest.fixture
async def start_relay(tmp_path: Path, dns_server: DnsServer,
                      mx_port: int) -> AsyncIterator[StartRelay]:
    running: list[RunningRelay] = []

    async def start(**overrides: dict[str, Any]) -> RunningRelay:
        path = write_relay_config(tmp_path, dns_server.address, mx_port, overrides)
        config = config_module.load(path)
        relay = Relay(config, shutdown_timeout=5)
        await relay.start()
        handle = RunningRelay(relay, config, tmp_path)
        running.append(handle)
        return handle

    yield start
    for handle in running:
        await handle.relay.stop()


async def check_idempotency(client: httpx.AsyncClient, path: str, body: dict[str, Any],
                            key: str) -> dict[str, Any]:
    """POST `body` twice with one Idempotency-Key (the first answer comes again), then
    another body with it (409 naming the header); the first answer."""
    headers = {"Idempotency-Key": key}
    first = await client.post(path, json=body, headers=headers)
    again = await client.post(path, json=body, headers=headers)
    assert first.status_code == again.status_code == 202
    assert first.json() == again.json()
    other = await client.post(path, json={**body, "subject": "another"}, headers=headers)
    assert other.status_code == 409 and other.json()["error"]["field"] == "Idempotency-Key"
    answer: dict[str, Any] = first.json()
    return answer
