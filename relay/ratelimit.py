"""ratelimit: a sliding-window counter for "N per window" limits (users' rate_limit)."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

from relay.policy import Rate


class SlidingWindow:
    """Counts events per key over the last `rate.window` seconds."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._events: dict[str, deque[float]] = {}
        self._clock = clock

    def allows(self, key: str, rate: Rate) -> bool:
        return len(self._recent(key, rate)) < rate.count

    def hit(self, key: str, rate: Rate) -> None:
        self._recent(key, rate).append(self._clock())

    def _recent(self, key: str, rate: Rate) -> deque[float]:
        events = self._events.setdefault(key, deque())
        horizon = self._clock() - rate.window
        while events and events[0] <= horizon:
            events.popleft()
        return events
