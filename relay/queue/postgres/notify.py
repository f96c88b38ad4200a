"""queue.postgres.notify: new work wakes every node at once (LISTEN/NOTIFY).

Whatever makes recipients due now (new mail, an accepted broadcast, a flush, a requeue, a
release) sends a notification on CHANNEL in its own transaction, so it arrives when that
commits. Each node keeps one connection listening (outside the pool) and wakes its
scheduler; while that connection is down it reconnects with a growing delay, and wakes the
scheduler once it listens again (whatever came meanwhile). Without notifications
(`[queue] notify = false`, for a pooler in transaction mode) nodes find new work by
polling, as they find deferred mail that comes due.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import asyncpg

from relay.queue.postgres.pool import CONNECT_TIMEOUT, DATABASE_ERRORS
from relay.runtime.tasks import BackgroundTask
from relay.runtime.trouble import Trouble

log = logging.getLogger("relay.queue")

CHANNEL = "relay_queue"
NOTIFY = f"SELECT pg_notify('{CHANNEL}', '')"


class Listener:
    def __init__(self, dsn: str, wake: Callable[[], None]) -> None:
        self._dsn = dsn
        self._wake = wake
        self._task = BackgroundTask("queue-listen")

    def start(self) -> None:
        self._task.start(self._keep_listening())

    async def stop(self) -> None:
        await self._task.stop()

    async def _keep_listening(self) -> None:
        trouble = Trouble("listening for new mail (LISTEN)", log)
        while True:
            try:
                await self._listen_once(trouble)
            except DATABASE_ERRORS as exc:
                await asyncio.sleep(trouble.failed(exc))

    async def _listen_once(self, trouble: Trouble) -> None:
        """Listen on one connection until it is lost."""
        connection = await asyncpg.connect(self._dsn, timeout=CONNECT_TIMEOUT)
        try:
            lost = asyncio.Event()
            connection.add_termination_listener(lambda _: lost.set())
            await connection.add_listener(CHANNEL, self._notified)
            trouble.succeeded()
            self._wake()  # what was stored while nobody listened
            await lost.wait()
        finally:
            if not connection.is_closed():
                connection.terminate()

    def _notified(self, *_: Any) -> None:
        self._wake()
