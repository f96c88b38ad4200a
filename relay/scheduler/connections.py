"""connections: the `[delivery] max_connections` every destination shares, lent rather than
hoarded. A worker takes one before it connects and gives it back when it quits; while a
worker of another destination waits for one, the worker idle longest is woken to give its
own up, and busy workers know to lend theirs (Connections.others_wait). Waiting workers
get connections in the order they asked (asyncio's semaphore is first come, first served),
so a burst to one destination cannot starve the others.
"""

from __future__ import annotations

import asyncio
from collections import Counter


class Connections:
    def __init__(self, limit: int) -> None:
        self._free = asyncio.Semaphore(limit)
        self._waiting: Counter[str] = Counter()  # workers waiting, per destination
        # Every idle worker's wake-up, the one idle longest first.
        self._idle: dict[asyncio.Future[None], None] = {}

    async def take(self, destination: str) -> None:
        """One connection for a worker of `destination`; waits while none is free."""
        if not self._free.locked():
            await self._free.acquire()
            return
        self._waiting[destination] += 1
        try:
            for woken in self._idle:
                if not woken.done():
                    woken.set_result(None)
                    break
            await self._free.acquire()
        finally:
            self._waiting[destination] -= 1
            if not self._waiting[destination]:
                del self._waiting[destination]

    def give_back(self) -> None:
        self._free.release()

    def others_wait(self, destination: str) -> bool:
        """Whether a worker of another destination waits for a connection."""
        return any(name != destination for name in self._waiting)

    def resting(self, woken: asyncio.Future[None]) -> None:
        """An idle worker waits on `woken`: set it to have its connection given back."""
        self._idle[woken] = None

    def awake(self, woken: asyncio.Future[None]) -> None:
        self._idle.pop(woken, None)
