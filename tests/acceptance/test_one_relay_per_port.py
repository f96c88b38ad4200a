"""One relay per address: a second `relayctl serve` (another spool, the same SMTP listen)
refuses to start, naming the address and the process that has it, and the first relay
keeps every message. SO_REUSEPORT would otherwise let any process of the same user join
the first relay's listening sockets and take part of its mail."""

from __future__ import annotations

import os
import smtplib
import socket
import subprocess
from collections.abc import Callable
from email.message import EmailMessage
from pathlib import Path

import pytest

from tests.acceptance.conftest import MakeRelay
from tests.acceptance.test_relayctl import smtp_port
from tests.support.dns_server import DnsServer
from tests.support.net import free_port
from tests.support.process import relayctl_path
from tests.support.relayconf import write_relay_config
from tests.support.sink import Sink

MESSAGES = 10


def _serve(config: Path) -> subprocess.CompletedProcess[str]:
    """`relayctl serve` that is expected to refuse: it exits on its own."""
    return subprocess.run([relayctl_path(), "serve", "-c", str(config)], capture_output=True,
                          text=True, timeout=60, check=False)


def _spooled(directory: Path) -> list[Path]:
    messages = directory / "spool" / "messages"
    return list(messages.iterdir()) if messages.exists() else []


def _message(number: int) -> EmailMessage:
    message = EmailMessage()
    message["From"] = "app@sender.test"
    message["To"] = "sink@example.test"
    message["Subject"] = f"message {number}"
    message.set_content("body\n")
    return message


def test_a_second_relay_on_the_same_smtp_address_refuses_to_start(
        relay_process: MakeRelay, dns_server: DnsServer, make_sink: Callable[..., Sink],
        mx_port: int, tmp_path: Path) -> None:
    dns_server.add("example.test", "A", "127.0.0.2")
    sink = make_sink("127.0.0.2")
    first = relay_process().start()
    port = smtp_port(first.config)
    assert first.process is not None

    other = tmp_path / "second"
    other.mkdir()
    second_config = write_relay_config(other, dns_server.address, mx_port, {
        "smtp": {"listen": [f"127.0.0.1:{port}"], "workers": 2}})
    refused = _serve(second_config)

    assert refused.returncode == 2, refused.stderr
    last = refused.stderr.strip().splitlines()[-1]
    assert f"smtp cannot listen on 127.0.0.1:{port}" in last
    assert f"pid {first.process.pid}" in last  # the first relay, by its main process
    assert "Traceback" not in refused.stderr

    for number in range(MESSAGES):  # a connection each: the kernel spreads connections
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
            client.send_message(_message(number))
    sink.wait_for(MESSAGES)
    assert len(sink.messages) == MESSAGES
    assert _spooled(other) == []


@pytest.mark.parametrize("where", ["bounces", "public"])
def test_a_relay_refuses_an_address_that_another_process_listens_on(
        where: str, dns_server: DnsServer, mx_port: int, tmp_path: Path) -> None:
    """The bounce and public listeners too, whoever has them: here this test's process,
    listening with SO_REUSEPORT as a relay's ingest worker would."""
    port = free_port()
    taken = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    taken.bind(("127.0.0.1", port))
    taken.listen()
    bounces = {"domain": "bounces.test", "listen": [f"127.0.0.1:{free_port()}"]}
    public: dict[str, str] = {}
    if where == "bounces":
        bounces["listen"] = [f"127.0.0.1:{port}"]
    else:
        public = {"listen": f"127.0.0.1:{port}", "url": "https://relay.test"}
    config = write_relay_config(tmp_path, dns_server.address, mx_port, {
        "smtp": {"workers": 2}, "bounces": bounces, **({"public": public} if public else {})})
    try:
        refused = _serve(config)
    finally:
        taken.close()
    assert refused.returncode == 2, refused.stderr
    last = refused.stderr.strip().splitlines()[-1]
    assert f"listen on 127.0.0.1:{port}" in last
    assert f"pid {os.getpid()}" in last
    assert _spooled(tmp_path) == []
