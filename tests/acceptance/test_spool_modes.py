"""The spool is the relay's alone: every directory 0700 and every file 0600 whatever the
umask the relay is started under, and an older spool made under a looser umask is fixed."""

from __future__ import annotations

import os
import sqlite3
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.acceptance.conftest import MakeRelay
from tests.acceptance.test_relayctl import smtp_port
from tests.support.client import message, send_blocking
from tests.support.dns_server import DnsServer
from tests.support.sink import Sink


@pytest.fixture
def loose_umask() -> Iterator[None]:
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def modes(root: Path) -> dict[str, int]:
    found = {str(root): stat.S_IMODE(root.stat().st_mode)}
    for path in root.rglob("*"):
        found[str(path.relative_to(root))] = stat.S_IMODE(path.lstat().st_mode)
    return found


def test_spool_files_are_private_whatever_the_umask(
        relay_process: MakeRelay, dns_server: DnsServer, make_sink: Callable[..., Sink],
        tmp_path: Path, loose_umask: None) -> None:
    spool = tmp_path / "spool"
    spool.mkdir(mode=0o755)  # a spool from an older version, made under umask 022
    sqlite3.connect(spool / "index.sqlite3").close()
    os.chmod(spool / "index.sqlite3", 0o644)
    dns_server.add("example.test", "A", "127.0.0.2")
    sink = make_sink("127.0.0.2")
    sink.default_rcpt_reply = "451 4.2.0 not now"  # the message stays in the spool
    relay = relay_process().start()
    send_blocking(smtp_port(relay.config), "app@sender.test", ["a@example.test"], message())
    relay.wait_for_lines("status=deferred")
    found = modes(spool)
    assert any(name.startswith("messages/") for name in found)
    assert {"index.sqlite3", "index.sqlite3-wal", "index.sqlite3-shm"} <= set(found)
    loose = {name: oct(mode) for name, mode in found.items()
             if mode != (0o700 if Path(spool, name).is_dir() else 0o600)}
    assert loose == {}
    assert relay.stop() == 0
