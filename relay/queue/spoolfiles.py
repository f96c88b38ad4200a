"""queue.spoolfiles: the local backend's message files and their durable write order.

A message file counts only once it is complete and on disk: it is written under `tmp/`,
fsynced, renamed into `messages/`, and the directory is fsynced (by the index writer, once
for a whole group of messages, while it commits the index rows). Files are never
silently deleted on recovery: anything unexpected is moved to `orphans/` and logged.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import time
from pathlib import Path

from relay.errors import LocalFailure, RelayError
from relay.reply import SPOOL_FULL

log = logging.getLogger("relay.queue")

PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600


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

    def write(self, message_id: str, data: bytes) -> None:
        """Write, fsync and rename into place; LocalFailure (452 4.3.1 for a full disk) when
        that fails. The caller fsyncs the directory afterwards."""
        try:
            self._write(message_id, data)
        except OSError as exc:
            raise storage_failure(exc, f"writing message file {message_id}") from exc

    def _write(self, message_id: str, data: bytes) -> None:
        temp = self.tmp / message_id
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            _unlink_quietly(temp)
            raise
        os.close(fd)
        os.rename(temp, self.path(message_id))

    def sync_messages_dir(self) -> None:
        fd = os.open(self.messages, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def read(self, message_id: str) -> bytes:
        return self.path(message_id).read_bytes()

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
