"""sdnotify: the systemd notification protocol (sd_notify(3)) for `Type=notify` units.

The relay tells systemd READY=1 once it listens and its queue is recovered, STATUS= with the
queue depth, RELOADING=1/READY=1 around a SIGHUP reload, STOPPING=1 on shutdown, and pings
the watchdog (WATCHDOG=1) from its event loop, so a loop that hangs gets the service
restarted. Outside systemd (no NOTIFY_SOCKET) every call does nothing.

The protocol is one datagram per message on an AF_UNIX socket; a library would add nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Mapping

log = logging.getLogger("relay")


class Notifier:
    def __init__(self, environ: Mapping[str, str]) -> None:
        """`environ` is the process environment (the composition root passes it in)."""
        address = environ.get("NOTIFY_SOCKET", "")
        # "@name" is Linux's abstract namespace: a leading NUL byte on the wire.
        self._address = "\0" + address[1:] if address.startswith("@") else address
        self._watchdog = _watchdog_interval(environ)
        self._socket: socket.socket | None = None
        if self._address:
            self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    @property
    def enabled(self) -> bool:
        return self._socket is not None

    def ready(self, status: str = "") -> None:
        self._send("READY=1", f"STATUS={status}" if status else "")

    def reloading(self) -> None:
        # MONOTONIC_USEC lets systemd tell this reload from an earlier one (sd_notify(3)).
        self._send("RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}")

    def status(self, text: str) -> None:
        self._send(f"STATUS={text}")

    def stopping(self) -> None:
        self._send("STOPPING=1", "STATUS=stopping")

    async def watchdog(self) -> None:
        """Ping at half the interval systemd asked for, from the event loop itself: a loop
        that is stuck stops pinging. Runs until cancelled; returns at once without one."""
        if self._watchdog is None or self._socket is None:
            return
        while True:
            self._send("WATCHDOG=1")
            await asyncio.sleep(self._watchdog / 2)

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None

    def _send(self, *fields: str) -> None:
        if self._socket is None:
            return
        message = "\n".join(field for field in fields if field)
        try:
            self._socket.sendto(message.encode(), self._address)
        except OSError as exc:  # systemd gone or socket full: never a reason to stop mail
            log.warning("sd_notify to %s failed: %s", self._address.lstrip("\0"), exc)


def _watchdog_interval(environ: Mapping[str, str]) -> float | None:
    """WATCHDOG_USEC in seconds, if it is meant for this process (WATCHDOG_PID)."""
    with contextlib.suppress(ValueError):
        usec = int(environ.get("WATCHDOG_USEC", ""))
        pid = environ.get("WATCHDOG_PID")
        if usec > 0 and (pid is None or int(pid) == os.getpid()):
            return usec / 1_000_000
    return None
