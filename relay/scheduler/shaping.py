"""shaping: the pace of delivery to one destination (policies/domains.toml).

`max_connections` caps the destination's delivery workers; `rate` ("3600/h") spaces its
messages evenly (one every window/count seconds, shared by all its workers), never in
bursts. A destination that answers 421, or keeps answering 4xx, is slowed down by itself:
its connections are halved (to one at least), and one comes back after every
RECOVER_AFTER messages it accepts, up to the configured cap. Each change is logged.

A destination none of whose hosts takes a connection or greets is dead for
`dead_backoff` seconds, as Postfix's queue manager marks a failed cohort: the scheduler
defers its mail at once, with the reason, without a connection each; when the period
ends one probe goes out (one connection), and only a host that answers brings the
destination back.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence

from relay.core.reply import Reply
from relay.delivery import Attempt
from relay.policy import DomainRule

log = logging.getLogger("relay.scheduler")

TEMPORARY_STREAK = 3  # jobs in a row with only 4xx replies: the destination is struggling
RECOVER_AFTER = 20  # accepted messages before one more connection is tried


class DestinationPace:
    def __init__(self, name: str, rule: DomainRule, default_connections: int,
                 dead_backoff: float = 60.0) -> None:
        self.name = name
        self._dead_backoff = dead_backoff
        self.dead_reason: Reply | None = None  # why, while the destination is dead or probed
        self._dead_until = 0.0  # monotonic
        self.ceiling = rule.max_connections or default_connections
        self.connections = self.ceiling  # what the destination is allowed now
        pace = rule.pace
        self._interval = pace.window / pace.count if pace else 0.0
        self._next_send = 0.0
        self._accepted = 0
        self._temporary_streak = 0

    @property
    def rated(self) -> bool:
        return self._interval > 0

    @property
    def dead(self) -> bool:
        """Unreachable a moment ago: its mail is deferred without trying."""
        return self.dead_reason is not None and time.monotonic() < self._dead_until

    @property
    def allowed(self) -> int:
        """Connections it may have now: one while it is probed after being dead."""
        return 1 if self.dead_reason is not None else self.connections

    async def wait_turn(self) -> None:
        """Until this destination's next message may go (nothing to wait without a rate)."""
        if not self._interval:
            return
        now = time.monotonic()
        turn = max(now, self._next_send)
        self._next_send = turn + self._interval
        if turn > now:
            await asyncio.sleep(turn - now)

    def observe(self, attempts: Sequence[Attempt]) -> None:
        """Adapt to how the destination answered one job."""
        if attempts and all(attempt.unreachable for attempt in attempts):
            if not self.dead:
                log.warning("destination %s unreachable: its mail is deferred for %.0fs, "
                            "then one probe (%s)", self.name, self._dead_backoff,
                            attempts[0].reply)
            self.dead_reason = attempts[0].reply
            self._dead_until = time.monotonic() + self._dead_backoff
            return
        if attempts and self.dead_reason is not None:
            self.dead_reason = None
            log.info("destination %s reachable again", self.name)
        codes = [attempt.reply.code for attempt in attempts]
        if any(200 <= code < 300 for code in codes):
            self._temporary_streak = 0
            self._accepted += 1
            if self._accepted >= RECOVER_AFTER and self.connections < self.ceiling:
                self._accepted = 0
                self.connections += 1
                log.info("destination %s recovering: %d connections", self.name,
                         self.connections)
            return
        throttled = 421 in codes
        if codes and all(400 <= code < 500 for code in codes):
            self._temporary_streak += 1
        if throttled or self._temporary_streak >= TEMPORARY_STREAK:
            self._temporary_streak = 0
            self._accepted = 0
            slower = max(1, self.connections // 2)
            if slower < self.connections:
                log.warning("destination %s slowing down: %d -> %d connections (%s)",
                            self.name, self.connections, slower,
                            "421" if throttled else "repeated 4xx")
                self.connections = slower
