"""portholders: who listens on an address, read from this machine's /proc."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from relay.runtime.portholders import listening_inodes, who_listens


def _listener(host: str, family: int = socket.AF_INET) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.bind((host, 0))
    sock.listen()
    return sock


def test_a_listener_is_named_by_its_pid_and_command_line() -> None:
    with _listener("127.0.0.1") as sock:
        port = sock.getsockname()[1]
        found = who_listens("127.0.0.1", port)
        assert len(found) == 1
        assert found[0].startswith(f"pid {os.getpid()} (")
        assert "python" in found[0]
        assert who_listens("127.0.0.1", port, besides=[os.getpid()]) == []


def test_a_wildcard_listener_holds_every_address_of_its_port() -> None:
    with _listener("0.0.0.0") as sock:
        port = sock.getsockname()[1]
        assert listening_inodes("127.0.0.3", port)
        assert listening_inodes("0.0.0.0", port)


def test_ipv6_loopback_is_read_in_its_byte_order() -> None:
    with _listener("::1", socket.AF_INET6) as sock:
        port = sock.getsockname()[1]
        assert listening_inodes("::1", port)
        assert not listening_inodes("127.0.0.1", port)


def test_without_proc_nobody_is_named(tmp_path: Path) -> None:
    assert listening_inodes("127.0.0.1", 25, proc=tmp_path) == set()
