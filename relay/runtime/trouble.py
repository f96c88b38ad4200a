"""trouble: an operation of the relay's own that keeps failing (the queue cannot be read
or written: a full disk, a lost database), retried with a growing delay and logged by
state change rather than by failure.

The first failure is logged with its cause; while it goes on, only a change of cause is
logged, with how many failures went unlogged; the recovery is one more line. A thousand
failures a minute are then three lines, and a busy loop never happens.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

FIRST_DELAY = 0.1  # seconds before the first retry
MAX_DELAY = 5.0


class Trouble:
    def __init__(self, doing: str, log: logging.Logger, first_delay: float = FIRST_DELAY,
                 max_delay: float = MAX_DELAY) -> None:
        self._doing = doing  # "recording delivery outcomes"
        self._log = log
        self._first_delay = first_delay
        self._max_delay = max_delay
        self.failures = 0  # since the last success
        self._unlogged = 0
        self._cause = ""

    @property
    def ongoing(self) -> bool:
        return self.failures > 0

    def failed(self, exc: BaseException) -> float:
        """Note a failure; returns how long to wait before the next try."""
        cause = _describe(exc)
        if self.failures == 0:
            self._log.error("%s failed: %s; retrying with backoff", self._doing, cause)
        elif cause != self._cause:
            self._log.error("%s still failing, now: %s (%d failures not logged)",
                            self._doing, cause, self._unlogged)
            self._unlogged = 0
        else:
            self._unlogged += 1
        self._cause = cause
        self.failures += 1
        return min(self._max_delay, self._first_delay * 2.0 ** (self.failures - 1))

    async def until_done(self, operation: Callable[[], Awaitable[None]]) -> None:
        """Run `operation` until it succeeds, waiting the growing delay after each
        failure: for work that must not be given up (an outcome, acknowledged mail)."""
        while True:
            try:
                await operation()
            except Exception as exc:
                await asyncio.sleep(self.failed(exc))
            else:
                self.succeeded()
                return

    def succeeded(self) -> None:
        if self.failures:
            self._log.warning("%s works again after %d failures (%d not logged)",
                              self._doing, self.failures, self._unlogged)
        self.failures = self._unlogged = 0
        self._cause = ""


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
