"""The relay itself, started in the test's event loop on its own spool."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from relay import config as config_module
from relay.admin_client import AdminClient
from relay.config import Config, split_hostport
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

    async def api(self, method: str, path: str, body: Any = None) -> Any:
        return await asyncio.to_thread(self.admin.request, method, path, body)


StartRelay = Callable[..., Awaitable[RunningRelay]]


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
