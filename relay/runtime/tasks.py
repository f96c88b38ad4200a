"""tasks: a component's long-running task (a pruner's loop, a LISTEN connection, a
heartbeat), started once and, on stop, cancelled and waited for, so that nothing of it
runs after its owner closed what it uses."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from typing import Any


class BackgroundTask:
    def __init__(self, name: str) -> None:
        self._name = name
        self._task: asyncio.Task[Any] | None = None

    def start(self, work: Coroutine[Any, Any, Any]) -> None:
        self._task = asyncio.create_task(work, name=self._name)

    async def stop(self) -> None:
        """Cancel the task and wait until it ended; nothing when it never started."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
