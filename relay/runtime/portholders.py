"""portholders: which processes listen on a TCP address, read from Linux's /proc.

A port that cannot be had is a start-up error, and the operator's next question is who
has it: the answer names the process (its pid and command line), as `ss -ltnp` would.
It also lets a relay check, once its ingest workers listen, that nobody else joined its
SO_REUSEPORT group in the moment between its own bind and theirs (two relays started at
once). Everything here is best effort: where /proc cannot be read (the systemd unit's
ProcSubset=pid hides /proc/net), nobody is named and that second check finds nobody; the
first line of defence, the main process's bind without SO_REUSEPORT (relay.smtp.listeners),
does not need /proc.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import socket
import sys
from collections.abc import Iterable
from pathlib import Path

LISTEN = "0A"  # TCP_LISTEN in /proc/net/tcp's `st` column
COMMAND_LINE_MAX = 120
INGEST_WORKER = "-m relay.smtp.worker"  # how relay.smtp.ingest starts its workers


def listening_inodes(host: str, port: int, proc: Path = Path("/proc")) -> set[int]:
    """The socket inodes listening on (host, port), a wildcard listener included."""
    wanted = _address(host)
    found: set[int] = set()
    for table in ("net/tcp", "net/tcp6"):
        with contextlib.suppress(OSError):
            for line in (proc / table).read_text().splitlines()[1:]:
                fields = line.split()
                if len(fields) < 10 or fields[3] != LISTEN:
                    continue
                address, _, hex_port = fields[1].partition(":")
                if int(hex_port, 16) == port and _overlaps(_decode(address), wanted):
                    found.add(int(fields[9]))
    return found


def holders(inodes: Iterable[int], pids: Iterable[int] | None = None,
            proc: Path = Path("/proc")) -> dict[int, int]:
    """{inode: pid} for the `inodes` held by `pids` (every process when None)."""
    links = {f"socket:[{inode}]": inode for inode in inodes}
    found: dict[int, int] = {}
    if not links:
        return found
    candidates = pids if pids is not None else (
        int(entry.name) for entry in _entries(proc) if entry.name.isdigit())
    for pid in candidates:
        for fd in _entries(proc / str(pid) / "fd"):
            with contextlib.suppress(OSError):
                inode = links.get(os.readlink(fd))
                if inode is not None:
                    found[inode] = pid
    return found


def describe(pid: int, proc: Path = Path("/proc")) -> str:
    """"pid 123 (relayctl serve -c /etc/relay/relay.toml)", or "pid 123"."""
    command = _command_line(pid, proc)
    if len(command) > COMMAND_LINE_MAX:
        command = command[:COMMAND_LINE_MAX - 3] + "..."
    return f"pid {pid} ({command})" if command else f"pid {pid}"


def who_listens(host: str, port: int, besides: Iterable[int] = ()) -> list[str]:
    """The processes other than `besides` that listen on (host, port), described; a
    relay's ingest worker is named by its relay, the main process that started it."""
    own = set(besides)
    inodes = listening_inodes(host, port)
    inodes -= set(holders(inodes, own))  # ours are found quickly, among few fds
    pids = {_relay_of(pid) for pid in holders(inodes).values()} - own
    return [describe(pid) for pid in sorted(pids)]


def _relay_of(pid: int, proc: Path = Path("/proc")) -> int:
    if INGEST_WORKER not in _command_line(pid, proc):
        return pid
    try:
        status = (proc / str(pid) / "status").read_text()
    except OSError:
        return pid
    for line in status.splitlines():
        if line.startswith("PPid:"):
            return int(line.split()[1])
    return pid


def _command_line(pid: int, proc: Path) -> str:
    try:
        words = (proc / str(pid) / "cmdline").read_bytes().split(b"\0")
    except OSError:
        return ""
    return " ".join(w.decode(errors="replace") for w in words if w)


def _entries(directory: Path) -> list[Path]:
    try:
        return list(directory.iterdir())
    except OSError:
        return []


def _address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host or "0.0.0.0")
    except ValueError:
        with contextlib.suppress(OSError, IndexError):
            return ipaddress.ip_address(socket.getaddrinfo(host, None)[0][4][0])
    return None


def _decode(hex_address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """/proc/net/tcp{,6} print addresses as 32-bit words in the host's byte order."""
    raw = bytes.fromhex(hex_address)
    if sys.byteorder == "little":
        raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    address = ipaddress.ip_address(raw)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _overlaps(listener: ipaddress.IPv4Address | ipaddress.IPv6Address,
              wanted: ipaddress.IPv4Address | ipaddress.IPv6Address | None) -> bool:
    """A listener on the same address, or either of them a wildcard, shares the port."""
    if wanted is None:
        return True
    return listener == wanted or listener.is_unspecified or wanted.is_unspecified
