"""Free ports on loopback addresses, chosen at run time."""

from __future__ import annotations

import socket
from collections.abc import Sequence


def free_port(hosts: Sequence[str] = ("127.0.0.1",), kind: int = socket.SOCK_STREAM) -> int:
    """A port that is free on every one of `hosts` (sinks on 127.0.0.2, .3 share a port)."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, kind) as probe:
            probe.bind((hosts[0], 0))
            port = probe.getsockname()[1]
        if all(_is_free(host, port, kind) for host in hosts):
            return port
    raise RuntimeError(f"no common free port on {hosts}")


def _is_free(host: str, port: int, kind: int) -> bool:
    with socket.socket(socket.AF_INET, kind) as probe:
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True
