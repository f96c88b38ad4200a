"""Free ports on loopback addresses, chosen at run time.

Ports come from below the kernel's ephemeral range: a port the kernel hands out itself
(bind to port 0) may be given again as the local port of some client connection between
the moment it is chosen and the moment a test's server binds it. A port is handed out
once per test session: two ports chosen for one relay (SMTP and admin) are never the same,
though neither is bound yet."""

from __future__ import annotations

import random
import socket
import time
from collections.abc import Sequence
from pathlib import Path

_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_CHOOSER = random.SystemRandom()
_HANDED_OUT: set[int] = set()


def _outside_ephemeral() -> range:
    try:
        low = int(_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    return range(max(low - 12000, 1024), low)


def free_port(hosts: Sequence[str] = ("127.0.0.1",), kind: int = socket.SOCK_STREAM) -> int:
    """A port that is free on every one of `hosts` (sinks on 127.0.0.2, .3 share a port)."""
    candidates = _outside_ephemeral()
    for _ in range(200):
        port = _CHOOSER.choice(candidates)
        if port not in _HANDED_OUT and all(_is_free(host, port, kind) for host in hosts):
            _HANDED_OUT.add(port)
            return port
    raise RuntimeError(f"no common free port on {hosts}")


def _is_free(host: str, port: int, kind: int) -> bool:
    with socket.socket(socket.AF_INET, kind) as probe:
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def wait_for_port(host: str, port: int, timeout: float = 30) -> None:
    """Until a server of another process (which can tell us no other way) listens."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=1):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listens on {host}:{port}") from None
            time.sleep(0.05)
