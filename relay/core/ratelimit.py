"""ratelimit: "N per window" limits, as Postfix's anvil keeps them: users' rate_limit,
counted when MAIL FROM is accepted, failed AUTH per client address, and the connections
and messages of clients outside trusted_networks (relay.smtp.anvil).

`RateLimiter` is what smtpd asks. In one process, a SlidingWindow answers; with ingest
workers, the main process keeps the one SlidingWindow and workers ask it over the handoff
channel, so a limit holds for the whole relay, not per process."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import Protocol

from relay.core.units import Rate

SWEEP_AT = 10_000  # keys; a new key beyond them first drops the idle ones


class RateLimiter(Protocol):
    async def take(self, key: str, rate: Rate) -> bool:
        """Count one event for `key` if `rate` allows it; False when over the limit."""

    async def peek(self, key: str, rate: Rate) -> bool:
        """Whether `rate` allows one more event for `key` (nothing is counted)."""


class SlidingWindow:
    """Counts events per key over the last `rate.window` seconds."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._events: dict[str, deque[float]] = {}
        self._clock = clock
        self._longest = 0.0  # the longest window asked for: older events count nowhere

    def __len__(self) -> int:
        """How many keys it holds."""
        return len(self._events)

    def allows(self, key: str, rate: Rate) -> bool:
        return len(self._recent(key, rate)) < rate.count

    def hit(self, key: str, rate: Rate) -> None:
        self._recent(key, rate).append(self._clock())

    def take_now(self, key: str, rate: Rate) -> bool:
        if not self.allows(key, rate):
            return False
        self.hit(key, rate)
        return True

    async def take(self, key: str, rate: Rate) -> bool:
        return self.take_now(key, rate)

    async def peek(self, key: str, rate: Rate) -> bool:
        return self.allows(key, rate)

    def _recent(self, key: str, rate: Rate) -> deque[float]:
        events = self._events.get(key)
        if events is None:
            if len(self._events) >= SWEEP_AT:
                self._sweep()
            events = self._events[key] = deque()
        self._longest = max(self._longest, rate.window)
        horizon = self._clock() - rate.window
        while events and events[0] <= horizon:
            events.popleft()
        return events

    def _sweep(self) -> None:
        """Forget the keys with nothing in any window: with a key per client address of
        the internet (relay.smtp.anvil), they would otherwise only grow."""
        horizon = self._clock() - self._longest
        self._events = {key: events for key, events in self._events.items()
                        if events and events[-1] > horizon}
