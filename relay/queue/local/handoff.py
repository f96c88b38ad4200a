"""queue.local.handoff: how an ingest worker process stores mail into the queue that the main
process owns.

The worker writes the queue file itself (envelope, message and completion mark, fsynced
under its final name: SpoolFiles.write); that is the one fsync its 250 waits for. Then it
tells the owner, over a socket, to index the message, and does not wait: the owner
commits the rows of every worker at once (group commit, no fsync of their own: the file is
the durable copy), retrying with a growing delay while it cannot (a full disk); if the
owner dies first, its successor's recovery indexes the file. One process writes the index,
so processes never wait on each other's SQLite locks (measured: two writing processes were
slower than one, bench/README.md).

Wire format, one JSON object per line. To index: {"id", "env"}, "env" the queue file's
envelope (queue.local.spoolfiles.Envelope, encoded once for both: no reply); with "body": N (a
message of up to queue.local.bodycache.MAX_BODY bytes), the message's N bytes follow the line, so
that its first delivery need not read the file back. A worker
announces that it listens with {"ready": true} (no reply), and asks for a rate-limit
slot with {"id", "rate_key", "count", "window"} (reply {"id", "ok"}): the main process
keeps the one window, so a user's limit holds across workers; with "peek": true it only
asks whether the limit allows one more. Every few seconds it
reports the SMTP sessions it served since the last report, {"sessions": [plain, tls]} (no
reply), for the main process's metrics.
EOF on the socket tells the worker that the owner is gone: it must stop taking mail.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from relay.core.errors import LocalFailure
from relay.core.ratelimit import SlidingWindow
from relay.core.units import Rate
from relay.queue.base import NewMessage
from relay.queue.local.bodycache import MAX_BODY
from relay.queue.local.spoolfiles import Envelope, SpoolFiles
from relay.queue.roles import Indexer
from relay.runtime.tasks import BackgroundTask
from relay.runtime.trouble import Trouble

log = logging.getLogger("relay.queue")

_LIMIT = 16 * 1024 * 1024  # a request line holds up to max_recipients addresses


class HandoffStore:
    """The worker's MessageStore: writes the file, has the owner index it."""

    def __init__(self, files: SpoolFiles, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter) -> None:
        self.files = files
        # Whether the worker serves one session only: then nobody waits while the file is
        # written on the event loop itself, which saves two thread hops on the way to 250.
        self.alone: Callable[[], bool] = lambda: False
        self._reader = reader
        self._writer = writer
        self._pending: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._requests = 0
        self._io = ThreadPoolExecutor(max_workers=8, thread_name_prefix="spool-io")
        self.owner_gone = asyncio.Event()
        self._replies = BackgroundTask("handoff-replies")
        self._replies.start(self._read_replies())

    @classmethod
    async def connect(cls, files: SpoolFiles, sock: socket.socket) -> HandoffStore:
        reader, writer = await asyncio.open_connection(sock=sock, limit=_LIMIT)
        return cls(files, reader, writer)

    async def take(self, key: str, rate: Rate) -> bool:
        """RateLimiter: the main process counts, for every worker at once."""
        return await self._ask_rate(key, rate, peek=False)

    async def peek(self, key: str, rate: Rate) -> bool:
        return await self._ask_rate(key, rate, peek=True)

    async def _ask_rate(self, key: str, rate: Rate, peek: bool) -> bool:
        self._requests += 1
        answer = await self._ask({"id": f"rate-{self._requests}", "rate_key": key,
                                  "count": rate.count, "window": rate.window, "peek": peek})
        return bool(answer["ok"])

    async def _ask(self, request: dict[str, Any]) -> dict[str, Any]:
        """Send a request and wait for its reply; LocalFailure once the owner is gone."""
        if self.owner_gone.is_set():
            raise LocalFailure("the queue owner is gone")
        reply: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[request["id"]] = reply
        self._writer.write(_encode(request))
        return await reply

    def announce_ready(self) -> None:
        self._writer.write(_encode({"ready": True}))

    def report_sessions(self, plain: int, tls: int) -> None:
        if not self.owner_gone.is_set():
            self._writer.write(_encode({"sessions": [plain, tls]}))

    async def store(self, message: NewMessage) -> None:
        if self.owner_gone.is_set():
            raise LocalFailure("the queue owner is gone")  # before writing a file for nobody
        envelope = Envelope.of(message, time.time())
        if self.alone():
            self.files.write(message.id, envelope, message.data)
        else:
            await asyncio.get_running_loop().run_in_executor(
                self._io, self.files.write, message.id, envelope, message.data)
        # Durable now: the 250 need not wait for the index (see the module's docstring).
        with_body = len(message.data) <= MAX_BODY
        body = b',"body":%d' % len(message.data) if with_body else b""
        line = b'{"id":%s%s,"env":%s}\n' % (json.dumps(message.id).encode(), body,
                                            envelope.json)
        self._writer.writelines([line, message.data] if with_body else [line])

    async def _read_replies(self) -> None:
        try:
            while line := await _read_line(self._reader):
                answer = json.loads(line)
                future = self._pending.pop(answer["id"], None)
                if future is not None and not future.done():
                    future.set_result(answer)
        finally:
            self.owner_gone.set()
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(LocalFailure("the queue owner is gone"))
            self._pending.clear()

    async def close(self) -> None:
        self._writer.close()
        with contextlib.suppress(Exception):
            await self._writer.wait_closed()
        await self._replies.stop()
        self._io.shutdown(wait=True)


@dataclass(frozen=True)
class WorkerEvents:
    """What the owner does when a worker reports something."""

    stored: Callable[[], None]  # a message was indexed
    ready: Callable[[], None]  # the worker listens
    sessions: Callable[[int, int], None]  # SMTP sessions served: plain, TLS


async def serve_handoff(queue: Indexer, sock: socket.socket, rates: SlidingWindow,
                        events: WorkerEvents) -> None:
    """The owner's side for one worker connection, until the worker hangs up."""
    reader, writer = await asyncio.open_connection(sock=sock, limit=_LIMIT)
    tasks: set[asyncio.Task[None]] = set()
    trouble = Trouble("indexing new mail", log)

    async def index(message_id: str, envelope: Envelope, body: bytes | None) -> None:
        # Acknowledged already: retried until it is in (or, if this process stops first,
        # left to the next start's recovery, which indexes the file).
        meta = envelope.meta(message_id)
        await trouble.until_done(lambda: queue.index(meta, envelope.received_at, body=body))
        events.stored()

    try:
        while line := await _read_line(reader):
            request = json.loads(line)
            if request.get("ready"):
                events.ready()
                continue
            if "sessions" in request:
                events.sessions(*map(int, request["sessions"]))
                continue
            if "rate_key" in request:
                rate = Rate(int(request["count"]), float(request["window"]))
                check = rates.allows if request.get("peek") else rates.take_now
                allowed = check(request["rate_key"], rate)
                writer.write(_encode({"id": request["id"], "ok": allowed}))
                continue
            # A worker killed while a body was on the way has sent its line whole (the
            # line goes first): the message is indexed all the same, its body read later
            # from the file.
            body = await _read_body(reader, int(request["body"])) if "body" in request else None
            task = asyncio.create_task(index(request["id"], Envelope.of_fields(request["env"]),
                                             body))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            if "body" in request and body is None:
                break  # the worker is gone
        if tasks:
            await asyncio.wait(tasks)
    finally:
        for task in tasks:  # cancelled (a stop that cannot wait): recovery indexes the files
            task.cancel()
        writer.close()


async def _read_line(reader: asyncio.StreamReader) -> bytes:
    """The next line, or b"" once the peer is gone (closed, or reset when killed)."""
    try:
        return await reader.readline()
    except ConnectionError:
        return b""


async def _read_body(reader: asyncio.StreamReader, size: int) -> bytes | None:
    """The body that follows a line, or None once the peer is gone before it all came."""
    try:
        return await reader.readexactly(size)
    except (asyncio.IncompleteReadError, ConnectionError):
        return None


def _encode(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode() + b"\n"
