"""Acceptance fixtures: the relay as a subprocess, stopped by the test."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.dns_server import DnsServer
from tests.support.process import RelayProcess
from tests.support.relayconf import write_relay_config

MakeRelay = Callable[..., RelayProcess]


@pytest.fixture
def relay_process(tmp_path: Path, dns_server: DnsServer,
                  mx_port: int) -> Iterator[MakeRelay]:
    started: list[RelayProcess] = []

    def make(**overrides: dict[str, Any]) -> RelayProcess:
        # The shipped default: SMTP in worker processes, one per core (at least two here).
        overrides.setdefault("smtp", {}).setdefault("workers", 2)
        config = write_relay_config(tmp_path, dns_server.address, mx_port, overrides)
        process = RelayProcess(config, tmp_path / "relay.log")
        started.append(process)
        return process

    yield make
    for process in started:
        process.kill()
