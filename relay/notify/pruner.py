"""pruner: removes what the relay keeps of finished mail once `[history] retention` has
passed (queue.events: message histories and their events).

A pass every PRUNE_INTERVAL removes what is due in small transactions (queue.events
PRUNE_BATCH rows each), so it never holds the queue for long, and never touches a message
still queued. A failing pass (a full disk, a lost database) is logged by state change
(relay.runtime.trouble) and tried again at the next interval.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from relay.queue.events import PRUNE_BATCH
from relay.queue.roles import EventHistory
from relay.runtime.tasks import BackgroundTask
from relay.runtime.trouble import Trouble

log = logging.getLogger("relay.history")

PRUNE_INTERVAL = 60.0  # seconds


class HistoryPruner:
    def __init__(self, queue: EventHistory, retention: float,
                 clock: Callable[[], float] = time.time,
                 interval: float = PRUNE_INTERVAL) -> None:
        self._queue = queue
        self._retention = retention
        self._clock = clock
        self._interval = interval
        self._trouble = Trouble("pruning message history", log)
        self._task = BackgroundTask("history-pruner")

    def start(self) -> None:
        self._task.start(self._run())

    async def stop(self) -> None:
        await self._task.stop()

    async def prune_now(self) -> int:
        """Remove everything past its retention now; how many rows."""
        before = self._clock() - self._retention
        total = 0
        while (removed := await self._queue.prune_history(before)) > 0:
            total += removed
            if removed < PRUNE_BATCH:
                break
            await asyncio.sleep(0)  # let deliveries and sessions run between batches
        return total

    async def _run(self) -> None:
        while True:
            try:
                removed = await self.prune_now()
            except Exception as exc:
                self._trouble.failed(exc)
            else:
                self._trouble.succeeded()
                if removed:
                    log.info("history: %d events and message histories past their "
                             "retention removed", removed)
            await asyncio.sleep(self._interval)
