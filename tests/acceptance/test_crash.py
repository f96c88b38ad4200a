"""kill -9 of the relay under load: every message that got 250 is delivered after a
restart, and duplicates are bounded by what was in flight at the kill."""

from __future__ import annotations

import os
import re
import signal
import smtplib
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path

from tests.acceptance.conftest import MakeRelay
from tests.acceptance.test_relayctl import queue_json, smtp_port, until
from tests.support.dns_server import DnsServer
from tests.support.sink import Received, Sink

MESSAGES = 3000
CLIENTS = 8
KILL_AFTER = 1200
_TEST_ID = re.compile(rb"X-Test-Id: (\d+)")


class Load:
    """CLIENTS connections, each sending its share of messages until the relay dies, or,
    with `reconnect`, retrying a message on a new connection when its session broke."""

    def __init__(self, port: int, reconnect: bool = False) -> None:
        self.port = port
        self.reconnect = reconnect
        self.acked: set[int] = set()
        self.broken_sessions = 0
        self.lock = threading.Lock()
        self.enough = threading.Event()

    def run(self) -> None:
        threads = [threading.Thread(target=self._client, args=(n,)) for n in range(CLIENTS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        self.enough.set()  # all sent before the threshold: the test fails on the count

    def _client(self, index: int) -> None:
        todo = list(range(index, MESSAGES, CLIENTS))
        while todo:
            try:
                with smtplib.SMTP("127.0.0.1", self.port, timeout=30) as client:
                    while todo:
                        client.sendmail("load@sender.test", ["sink@example.test"],
                                        _message(todo[0]))
                        self._acked(todo.pop(0))
            except (smtplib.SMTPException, OSError):
                # The process serving this session was killed: this message got no 250.
                with self.lock:
                    self.broken_sessions += 1
                if not self.reconnect:
                    return

    def _acked(self, number: int) -> None:
        with self.lock:
            self.acked.add(number)
            if len(self.acked) >= KILL_AFTER:
                self.enough.set()


def test_kill_9_under_load_loses_nothing(relay_process: MakeRelay, dns_server: DnsServer,
                                         make_sink: Callable[..., Sink],
                                         tmp_path: Path) -> None:
    dns_server.add("example.test", "A", "127.0.0.2")
    sink = make_sink("127.0.0.2")
    relay = relay_process().start()
    load = Load(smtp_port(relay.config))
    sender = threading.Thread(target=load.run)
    sender.start()
    assert load.enough.wait(120)
    relay.kill()
    sender.join(120)
    acked = set(load.acked)
    assert len(acked) >= KILL_AFTER

    index = sqlite3.connect(tmp_path / "spool" / "index.sqlite3")
    in_flight = index.execute(
        "SELECT COUNT(*) FROM recipients WHERE state = 'active'").fetchone()[0]
    index.close()

    relay.start()

    def all_acked_arrived(messages: list[Received]) -> bool:
        return acked <= {_test_id(m) for m in messages}

    received = [_test_id(m) for m in sink.wait_until(all_acked_arrived, timeout=180)]
    relay.stop()
    duplicates = len(received) - len(set(received))
    assert duplicates <= in_flight, (duplicates, in_flight)
    assert "recovery" in relay.log() or in_flight == 0


def test_kill_9_of_ingest_workers_loses_nothing(
        relay_process: MakeRelay, dns_server: DnsServer, make_sink: Callable[..., Sink]) -> None:
    dns_server.add("example.test", "A", "127.0.0.2")
    sink = make_sink("127.0.0.2")
    relay = relay_process(smtp={"workers": 2}).start()
    load = Load(smtp_port(relay.config), reconnect=True)
    sender = threading.Thread(target=load.run)
    sender.start()
    assert load.enough.wait(120)
    assert relay.process is not None
    workers = [pid for pid in _children(relay.process.pid) if _is_ingest_worker(pid)]
    assert len(workers) == 2
    for pid in workers:  # both: the kernel may have handed every session to one of them
        os.kill(pid, signal.SIGKILL)
    sender.join(180)
    assert load.acked == set(range(MESSAGES))  # the clients retried what got no 250
    assert load.broken_sessions >= 1

    def every_message_arrived(messages: list[Received]) -> bool:
        return set(range(MESSAGES)) <= {_test_id(m) for m in messages}

    sink.wait_until(every_message_arrived, timeout=180)
    assert relay.stop() == 0
    assert "ingest worker 0 (pid" in relay.log() and "ingest worker 1 (pid" in relay.log()
    assert "exited with status -9; restarting" in relay.log()


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry))
    return found


def _is_ingest_worker(pid: int) -> bool:
    try:
        return b"relay.smtp.worker" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def _message(number: int) -> bytes:
    return (f"From: load@sender.test\r\nTo: sink@example.test\r\n"
            f"Subject: load {number}\r\nX-Test-Id: {number}\r\n\r\n"
            + ("x" * 76 + "\r\n") * 26).encode()


def _test_id(message: Received) -> int:
    match = _TEST_ID.search(message.content)
    assert match is not None
    return int(match.group(1))


def test_a_kill_between_the_250_and_the_index_commit_loses_nothing(
        relay_process: MakeRelay, dns_server: DnsServer, make_sink: Callable[..., Sink],
        tmp_path: Path) -> None:
    """The 250 waits for the queue file's fsync only; the index rows follow. With the
    main process (the index's writer) stopped, the ingest workers still answer 250; then
    everything is killed before a single row is committed. Recovery indexes the files."""
    dns_server.add("example.test", "A", "127.0.0.2")
    sink = make_sink("127.0.0.2")
    relay = relay_process(smtp={"workers": 2}).start()
    assert relay.process is not None
    main = relay.process.pid
    workers = [pid for pid in _children(main) if _is_ingest_worker(pid)]
    os.kill(main, signal.SIGSTOP)
    count = 40
    with smtplib.SMTP("127.0.0.1", smtp_port(relay.config), timeout=30) as client:
        for number in range(count):
            client.sendmail("load@sender.test", ["sink@example.test"], _message(number))
    for pid in [main, *workers]:
        os.kill(pid, signal.SIGKILL)
    relay.kill()
    index = sqlite3.connect(tmp_path / "spool" / "index.sqlite3")
    indexed = index.execute("SELECT COUNT(*) FROM messages").fetchone()[0]
    index.close()
    assert indexed == 0  # every 250 went out before its rows were committed

    relay.start()
    received = sink.wait_until(lambda messages: len(messages) >= count, timeout=120)
    assert sorted(_test_id(m) for m in received) == list(range(count))
    assert relay.stop() == 0
    assert f"recovery: {count} queue files indexed again" in relay.log()


def test_the_queue_comes_back_from_its_files_alone(
        relay_process: MakeRelay, dns_server: DnsServer, make_sink: Callable[..., Sink],
        tmp_path: Path) -> None:
    """The index is derived: deleted, it is rebuilt from the queue files at start, and
    every message still in the spool is delivered."""
    dns_server.add("example.test", "A", "127.0.0.2")
    sink = make_sink("127.0.0.2")
    sink.default_rcpt_reply = "451 4.3.0 not now"
    relay = relay_process().start()
    count = 20
    with smtplib.SMTP("127.0.0.1", smtp_port(relay.config), timeout=30) as client:
        for number in range(count):
            client.sendmail("load@sender.test", ["sink@example.test"], _message(number))
    until(lambda: [r["state"] for m in queue_json(relay.config) for r in m["recipients"]]
          == ["deferred"] * count, "every message deferred")
    assert relay.stop() == 0
    for path in (tmp_path / "spool").glob("index.sqlite3*"):
        path.unlink()

    sink.default_rcpt_reply = "250 2.1.5 Ok"
    relay.start()
    received = sink.wait_until(lambda messages: len(messages) >= count, timeout=120)
    assert sorted(_test_id(m) for m in received) == list(range(count))
    assert relay.stop() == 0
