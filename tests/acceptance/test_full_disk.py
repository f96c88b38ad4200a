"""The spool's file system fills up while deliveries are in flight: the relay cannot record
that the remote server accepted them. Once space is freed, every message arrives exactly
once, without a restart, and while the disk is full the failures are a few log lines, not
a traceback per retry."""

from __future__ import annotations

import contextlib
import errno
import os
import re
import sqlite3
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.acceptance.conftest import MakeRelay
from tests.acceptance.test_relayctl import queue_json, smtp_port, until
from tests.support.client import send_blocking
from tests.support.dns_server import DnsServer
from tests.support.sink import Sink

MESSAGES = 10
_TEST_ID = re.compile(rb"X-Test-Id: (\d+)")


@pytest.fixture
def small_spool(tmp_path: Path) -> Iterator[Path]:
    """A 40 MB tmpfs where the relay's spool goes (needs root and mount; else skipped)."""
    spool = tmp_path / "spool"
    spool.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=40m,mode=0700", "tmpfs",
                              str(spool)], capture_output=True, text=True, check=False)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs for the spool: {mounted.stderr.strip()}")
    yield spool
    subprocess.run(["umount", "-l", str(spool)], capture_output=True, check=False)


def fill(directory: Path) -> Path:
    """Write a file until the file system has no byte left."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (1 << 20, 4096, 1):
            chunk = b"\0" * size
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, chunk)
    finally:
        os.close(fd)
    with pytest.raises(OSError) as full:
        (directory / "probe").write_bytes(b"\0" * 4096)
    assert full.value.errno == errno.ENOSPC
    return filler


def active_leases(spool: Path) -> list[float]:
    index = sqlite3.connect(f"file:{spool / 'index.sqlite3'}?mode=ro", uri=True)
    try:
        return [row[0] for row in index.execute(
            "SELECT next_attempt_at FROM recipients WHERE state = 'active'")]
    finally:
        index.close()


def test_outcomes_that_cannot_be_written_are_kept_until_they_can(
        small_spool: Path, relay_process: MakeRelay, dns_server: DnsServer,
        make_sink: Callable[..., Sink]) -> None:
    dns_server.add("example.test", "A", "127.0.0.2")
    sink = make_sink("127.0.0.2")
    sink.data_gate = threading.Event()
    relay = relay_process(queue={"lease": "2s"}).start()
    port = smtp_port(relay.config)
    for number in range(MESSAGES):
        send_blocking(port, "app@sender.test", [f"r{number}@example.test"],
                      f"Subject: {number}\r\nX-Test-Id: {number}\r\n\r\nbody\r\n".encode())
    sink.wait_at_gate(MESSAGES)

    filler = fill(small_spool)
    sink.data_gate.set()  # the remote server accepts every message now
    sink.wait_for(MESSAGES)
    relay.wait_for_lines("recording delivery outcomes failed")
    # The leases the relay could not renew run out while the disk stays full: the relay
    # must not take its own accepted recipients for lost work.
    until(lambda: all(lease < time.time() for lease in active_leases(small_spool)),
          "the leases to expire")
    relay.wait_for_lines("renewing delivery leases failed")

    os.unlink(filler)
    until(lambda: queue_json(relay.config) == [], "the queue to empty", timeout=60)
    numbers = [int(_TEST_ID.search(m.content).group(1))  # type: ignore[union-attr]
               for m in sink.messages]
    assert sorted(numbers) == list(range(MESSAGES))  # each exactly once
    relay.wait_for_lines("recording delivery outcomes works again")
    log = relay.log()
    assert "Traceback" not in log
    # A few lines for the whole episode, not one per retry.
    assert log.count("recording delivery outcomes") <= 4, log
    assert relay.stop() == 0
