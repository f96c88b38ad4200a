"""ingest: SMTP submission in worker processes, so that every core takes mail.

One Python process cannot both accept and deliver at the rate of Postfix (bench/README.md),
so, like Postfix's master and its smtpd processes, the main process starts `[smtp] workers`
processes (`python -m relay.smtp.worker`). Each listens on sockets of its own bound with
SO_REUSEPORT, so the kernel spreads connections over them (one shared socket would wake
every worker for every connection); the main process binds the same addresses first,
without listening, so that a busy port is its error at start. Each worker runs smtpd and
cleanup, writes message files into the spool and has the main process index them
(queue.local.handoff): the main process stays the only writer of the index, and wakes its
scheduler on every new message. Delivery, the admin API and recovery stay in the main
process. The main process says it has started only once every worker listens.

The main process restarts a worker that dies, forwards SIGHUP (policy reload), and on
stop sends SIGTERM and waits: a worker stops accepting, lets its sessions finish and exits.
When the main process dies, its workers see the handoff socket close and stop at once;
they hold `ingest.lock` shared while they live, so a new main process starts only after
they are gone. A worker killed outright loses only messages it had not acknowledged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable

from relay.config import NO_FILE
from relay.core.errors import RelayError
from relay.core.ratelimit import SlidingWindow
from relay.queue.local.handoff import WorkerEvents, serve_handoff
from relay.queue.roles import Indexer

log = logging.getLogger("relay.ingest")

RESTART_DELAY = 1.0
INDEX_GRACE = 5.0  # seconds a stop waits for the index to take what workers stored


class IngestWorkers:
    """The main process's side: start, supervise, reload and stop the worker processes,
    and index what they store (queue.local.handoff)."""

    def __init__(self, config_source: str, queue: Indexer, count: int,
                 on_stored: Callable[[], None], on_sessions: Callable[[int, int], None],
                 shutdown_timeout: float) -> None:
        self._config_source = config_source  # the file the workers read, or NO_FILE
        self._queue = queue
        self._count = count
        self._on_stored = on_stored
        self._on_sessions = on_sessions
        self._shutdown_timeout = shutdown_timeout
        self._processes: dict[int, asyncio.subprocess.Process] = {}
        self._supervisors: list[asyncio.Task[None]] = []
        self._stopping = False
        self._ready: set[int] = set()  # slots whose worker announced that it listens
        self._all_ready = asyncio.Event()
        self._start_failed = asyncio.Event()
        self._start_error = ""
        self._rates = SlidingWindow()  # users' rate limits, for every worker at once

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self._processes.values() if p.returncode is None]

    async def start(self, timeout: float = 60.0) -> None:
        """Start the workers and return once every one of them listens."""
        self._supervisors = [asyncio.create_task(self._supervise(slot), name=f"ingest-{slot}")
                             for slot in range(self._count)]
        ready = asyncio.create_task(self._all_ready.wait())
        failed = asyncio.create_task(self._start_failed.wait())
        await asyncio.wait([ready, failed], timeout=timeout,
                           return_when=asyncio.FIRST_COMPLETED)
        ready.cancel()
        failed.cancel()
        if not self._all_ready.is_set():
            await self.stop()
            raise RelayError(self._start_error or
                             f"ingest workers did not start within {timeout:.0f}s")

    def _worker_ready(self, slot: int) -> None:
        self._ready.add(slot)
        if len(self._ready) == self._count:
            self._all_ready.set()

    async def _supervise(self, slot: int) -> None:
        while not self._stopping:
            ours, theirs = socket.socketpair()
            try:
                process = await self._spawn(theirs)
            finally:
                theirs.close()
            self._processes[slot] = process
            events = WorkerEvents(self._on_stored, lambda: self._worker_ready(slot),
                                  self._on_sessions)
            handoff = asyncio.create_task(serve_handoff(self._queue, ours, self._rates, events))
            code = await process.wait()
            try:
                await handoff  # the worker's socket closed with it: every request answered
            except Exception:
                log.exception("ingest worker %d: handoff failed", slot)
            if self._stopping:
                return
            if not self._all_ready.is_set():  # it could not start: neither will the relay
                self._start_error = f"ingest worker exited with status {code} before it listened"
                self._start_failed.set()
                return
            log.error("ingest worker %d (pid %d) exited with status %s; restarting",
                      slot, process.pid, code)
            await asyncio.sleep(RESTART_DELAY)  # no tight loop if it dies at start

    async def _spawn(self, handoff: socket.socket) -> asyncio.subprocess.Process:
        fds = [handoff.fileno()]
        command = [sys.executable, "-m", "relay.smtp.worker",
                   "--handoff-fd", str(handoff.fileno()),
                   "--shutdown-timeout", str(self._shutdown_timeout)]
        if self._config_source != NO_FILE:
            command += ["--config", self._config_source]
        return await asyncio.create_subprocess_exec(*command, pass_fds=fds)

    def reload(self) -> None:
        for pid in self.pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGHUP)

    async def stop(self) -> None:
        """SIGTERM to every worker; they finish their sessions and exit."""
        self._stopping = True
        for process in self._processes.values():
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signal.SIGTERM)
        _, pending = await asyncio.wait(self._supervisors,
                                           timeout=self._shutdown_timeout + 10)
        for process in self._processes.values():
            if process.returncode is None:
                log.error("ingest worker pid %d did not stop; killing it", process.pid)
                process.kill()
        # What is left is new mail the index could not take yet (a full disk): its queue
        # files are on disk, and the next start's recovery indexes them.
        if pending:
            _, pending = await asyncio.wait(pending, timeout=INDEX_GRACE)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
