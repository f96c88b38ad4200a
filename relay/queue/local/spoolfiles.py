"""queue.local.spoolfiles: the local backend's queue files, Postfix's rule.

A queue file holds everything the relay acknowledged: a first line naming the format, the
envelope as one JSON line (sender, recipients, size, SMTPUTF8, arrival time), the message
as received, and a completion mark. It is written under its final name in `messages/` and
fsynced: that one fsync is what the 250 waits for. The index (SQLite) is derived from the
files and may be committed after the 250; recovery indexes again a complete file the
index lacks, and removes one without its mark (a write cut short, never acknowledged).
Files are never silently deleted otherwise: anything unexpected is moved to `orphans/`
and logged. (Spools from before this format hold the bare message; they are still read.)
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from relay.core.errors import LocalFailure, RelayError
from relay.core.reply import SPOOL_FULL
from relay.queue.base import NO_TRACKING, MessageMeta, NewMessage, Tracking

log = logging.getLogger("relay.queue")

PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600
FORMAT = b"RELAY-QUEUE-FILE 1\n"
COMPLETE = b"\nRELAY-QUEUE-FILE-COMPLETE\n"
_MAX_ENVELOPE = 16 * 1024 * 1024  # bytes: max_recipients addresses fit


@dataclass(frozen=True)
class Envelope:
    """What a queue file says besides the message: enough to index it again."""

    mail_from: str
    recipients: tuple[str, ...]
    size: int  # of the message, in bytes
    smtputf8: bool
    received_at: float
    broadcast: bool = False  # a broadcast's template: its recipients are in the index only
    tracking: Tracking = NO_TRACKING  # subject, metadata and tags, for the history

    @classmethod
    def of(cls, message: NewMessage, received_at: float, broadcast: bool = False) -> Envelope:
        return cls(message.mail_from, tuple(message.recipients), len(message.data),
                   message.smtputf8, received_at, broadcast, message.tracking)

    @functools.cached_property
    def json(self) -> bytes:
        """The fields as one JSON object: the queue file's envelope line, and what an ingest
        worker sends the owner to index (queue.local.handoff), encoded once for both."""
        fields = {"from": self.mail_from, "rcpts": list(self.recipients), "size": self.size,
                  "utf8": self.smtputf8, "at": self.received_at, **self.tracking.fields()}
        if self.broadcast:
            fields["broadcast"] = True
        return json.dumps(fields, ensure_ascii=False, separators=(",", ":")).encode()

    def encode(self) -> bytes:
        return FORMAT + self.json + b"\n"

    @classmethod
    def decode(cls, line: bytes) -> Envelope:
        return cls.of_fields(json.loads(line))

    @classmethod
    def of_fields(cls, fields: dict[str, Any]) -> Envelope:
        return cls(str(fields["from"]), tuple(map(str, fields["rcpts"])), int(fields["size"]),
                   bool(fields["utf8"]), float(fields["at"]), bool(fields.get("broadcast")),
                   Tracking.of_fields(fields))

    def meta(self, message_id: str) -> MessageMeta:
        """The index's view of the message this envelope is of."""
        return MessageMeta(message_id, self.mail_from, self.recipients, self.size,
                           self.smtputf8, tracking=self.tracking)


class SpoolInUse(RelayError):
    pass


class SpoolFiles:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.messages = root / "messages"
        self.tmp = root / "tmp"
        self.orphans = root / "orphans"
        self._lock_fd: int | None = None
        self._ingest_fd: int | None = None
        self._free = 0
        self._free_checked_at = -1e9

    def lock(self) -> None:
        """Take the spool for this process: two relays on one spool would each "recover"
        the other's work in progress."""
        fd = os.open(self.root / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise SpoolInUse(
                f"spool {self.root} is in use by another relay (pid {holder})") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd

    def share_ingest_lock(self) -> None:
        """Ingest workers hold `ingest.lock` shared for as long as they live, so that a new
        owner can tell when the last worker of a previous relay is gone."""
        self._ingest_fd = os.open(self.root / "ingest.lock", os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(self._ingest_fd, fcntl.LOCK_SH)

    def wait_for_previous_workers(self, timeout: float) -> None:
        """Before recovery: no ingest worker of a previous relay may still be storing mail,
        or recovery could move aside a file whose index row is about to be committed."""
        fd = os.open(self.root / "ingest.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    return
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise SpoolInUse(f"ingest workers of a previous relay still use "
                                         f"spool {self.root}") from None
                    time.sleep(0.05)
        finally:
            os.close(fd)  # releases the lock again

    def unlock(self) -> None:
        for fd in (self._lock_fd, self._ingest_fd):
            if fd is not None:
                os.close(fd)  # closing releases the flock
        self._lock_fd = self._ingest_fd = None

    def create_dirs(self) -> None:
        """The spool's directories, 0700, and every file already in its root 0600 (the
        index holds every envelope), whatever the umask they were made under."""
        for directory in (self.root, self.messages, self.tmp, self.orphans):
            directory.mkdir(parents=True, exist_ok=True)
            _make_private(directory, PRIVATE_DIR)
        for entry in os.scandir(self.root):
            if entry.is_file(follow_symlinks=False):
                _make_private(Path(entry.path), PRIVATE_FILE)

    def create_private(self, name: str) -> Path:
        """A file in the spool's root made 0600 before anything is written to it (SQLite
        gives its -wal and -shm files the mode of the database file)."""
        path = self.root / name
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT, PRIVATE_FILE))
        _make_private(path, PRIVATE_FILE)
        return path

    def path(self, message_id: str) -> Path:
        return self.messages / message_id

    def write(self, message_id: str, envelope: Envelope, data: bytes) -> None:
        """Write the queue file under its final name and fsync it: once this returns, the
        message may be acknowledged. LocalFailure (452 4.3.1 for a full disk) when not."""
        try:
            self._write(message_id, [envelope.encode(), data, COMPLETE])
        except OSError as exc:
            raise storage_failure(exc, f"writing message file {message_id}") from exc

    def _write(self, message_id: str, parts: list[bytes]) -> None:
        path = self.path(message_id)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            _write_all(fd, parts)
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            _unlink_quietly(path)  # no mark, never acknowledged: recovery would drop it
            raise
        os.close(fd)

    def read(self, message_id: str) -> bytes:
        """The message as received, without the envelope and the mark."""
        data = self.path(message_id).read_bytes()
        if not data.startswith(FORMAT):
            return data  # a file from before the format
        start = data.index(b"\n", len(FORMAT)) + 1
        return data[start:len(data) - len(COMPLETE)]

    def envelope(self, message_id: str) -> Envelope | None:
        """A complete queue file's envelope; None for one cut short before its mark.
        ValueError for a file that is not a queue file (or one from before the format)."""
        with self.path(message_id).open("rb") as file:
            if file.read(len(FORMAT)) != FORMAT:
                raise ValueError("not a queue file")
            line = file.readline(_MAX_ENVELOPE)
            if not line.endswith(b"\n"):
                return None
            envelope = Envelope.decode(line)
            end = file.seek(0, os.SEEK_END)
            if end != len(FORMAT) + len(line) + envelope.size + len(COMPLETE):
                return None
            file.seek(end - len(COMPLETE))
            return envelope if file.read() == COMPLETE else None

    def remove(self, message_id: str) -> None:
        _unlink_quietly(self.path(message_id))

    def remove_all(self, message_ids: list[str]) -> None:
        for message_id in message_ids:
            self.remove(message_id)

    def message_ids(self) -> set[str]:
        return {entry.name for entry in os.scandir(self.messages) if entry.is_file()}

    def clear_tmp(self) -> set[str]:
        """Partial writes from before a crash: never acknowledged, so safe to drop.
        Returns their message ids."""
        removed = set()
        for entry in os.scandir(self.tmp):
            log.warning("recovery: removing unacknowledged partial write tmp/%s", entry.name)
            _unlink_quietly(Path(entry.path))
            removed.add(entry.name)
        return removed

    def move_to_orphans(self, message_id: str) -> Path:
        target = self.orphans / message_id
        os.replace(self.path(message_id), target)
        return target

    def free_bytes(self) -> int:
        """Free space for the spool, re-read at most once a second."""
        now = time.monotonic()
        if now - self._free_checked_at >= 1.0:
            stats = os.statvfs(self.root)
            self._free, self._free_checked_at = stats.f_bavail * stats.f_frsize, now
        return self._free


def _write_all(fd: int, parts: list[bytes]) -> None:
    """os.writev until every byte is written (a write may be short)."""
    views = [memoryview(part) for part in parts if part]
    while views:
        written = os.writev(fd, views)
        while views and written >= len(views[0]):
            written -= len(views[0])
            views.pop(0)
        if views and written:
            views[0] = views[0][written:]


def _make_private(path: Path, mode: int) -> None:
    try:
        if path.stat().st_mode & 0o777 != mode:
            os.chmod(path, mode)
    except PermissionError as exc:  # someone else's directory: say so, it is not ours to fix
        log.warning("spool: cannot make %s mode %o: %s", path, mode, exc.strerror)


def _unlink_quietly(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def storage_failure(exc: BaseException, doing: str) -> LocalFailure:
    """The LocalFailure for a failed write: 452 4.3.1 when the disk is full, else 451."""
    log.error("queue: %s failed: %s", doing, exc)
    failure = LocalFailure(f"{doing}: {exc}")
    disk_full = isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)
    if disk_full or "database or disk is full" in str(exc):
        failure.reply = SPOOL_FULL
    return failure
