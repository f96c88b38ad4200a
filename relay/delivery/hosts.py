"""delivery.hosts: connections per MX host, whatever recipient domains they carry.

Domains hosted together (one provider's MX for many customer domains) share the host's
limit: the per-domain limits of the scheduler (scheduler.shaping) would let each domain
open its own connections to it. A host has no limit of its own until it refuses a
connection with 421 at the greeting or EHLO (`421 4.7.0 too many connections`): from then
on the relay keeps no more than it had established then (one at least), and gives one back
after every RECOVER_AFTER messages the host accepts. A connection that would go over the
limit waits its turn, up to `wait` seconds, then counts as a 4xx for that host (its next
MX, if any, is tried); meanwhile an idle connection to the host, kept for its next message
by another destination, is closed for it.

A host that fails to take a connection or greet DEAD_AFTER times in a row is not tried for
`dead_backoff` seconds (its destinations' other MX hosts are), then tried again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable

log = logging.getLogger("relay.delivery")

RECOVER_AFTER = 20  # messages a limited host accepts before one more connection is tried
DEAD_AFTER = 3  # connections in a row a host failed to take or greet: then it is skipped
KEPT_HOSTS = 10_000  # hosts whose limits are remembered while no connection is open


class _Host:
    def __init__(self) -> None:
        self.open = 0  # connections counted, established or being opened
        self.established = 0  # of those, the ones the host greeted
        self.limit: int | None = None  # None: none learned
        self.accepted = 0
        self.failures = 0  # connections in a row it did not take or greet
        self.dead_until = 0.0  # monotonic
        self.waiting: deque[asyncio.Future[None]] = deque()  # first come, first served
        self.idle: dict[int, Callable[[], None]] = {}  # kept connections: how to close each

    @property
    def full(self) -> bool:
        return self.limit is not None and self.open >= self.limit

    def next_turn(self) -> None:
        while self.waiting and not self.full:
            waiter = self.waiting.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return


class HostLimits:
    def __init__(self, wait: float, dead_backoff: float = 60.0) -> None:
        self._wait = wait
        self._dead_backoff = dead_backoff
        self._hosts: dict[str, _Host] = {}

    def dead(self, host: str) -> bool:
        """Whether `host` failed DEAD_AFTER connections in a row a moment ago."""
        state = self._hosts.get(host)
        return state is not None and time.monotonic() < state.dead_until

    def unreachable(self, host: str) -> None:
        """`host` did not take a connection, or never greeted."""
        state = self._hosts.setdefault(host, _Host())
        if len(self._hosts) > KEPT_HOSTS:
            self._forget_one()
        state.failures += 1
        if state.failures >= DEAD_AFTER:
            if not state.dead_until:
                log.warning("host %s unreachable %d times in a row: not tried for %.0fs",
                            host, state.failures, self._dead_backoff)
            state.dead_until = time.monotonic() + self._dead_backoff

    def reached(self, host: str) -> None:
        state = self._hosts.get(host)
        if state is not None and state.failures:
            if state.dead_until:
                log.info("host %s reachable again", host)
            state.failures, state.dead_until = 0, 0.0

    async def enter(self, host: str) -> bool:
        """Count one more connection to `host`; False when its limit held for `wait`."""
        state = self._hosts.setdefault(host, _Host())
        try:
            async with asyncio.timeout(self._wait):
                while state.full:
                    if state.idle:  # the one idle longest makes room
                        state.idle.pop(next(iter(state.idle)))()
                        continue
                    turn = asyncio.get_running_loop().create_future()
                    state.waiting.append(turn)
                    try:
                        await turn
                    finally:
                        if not turn.done():
                            turn.cancel()
        except TimeoutError:
            state.next_turn()  # a turn it may have been given goes on
            return False
        state.open += 1
        return True

    def established(self, host: str) -> None:
        """A connection counted by `enter` was greeted and is open (so it is reached)."""
        state = self._hosts.get(host)
        if state is not None:
            state.established += 1
        self.reached(host)

    def kept(self, host: str, connection: int, close: Callable[[], None]) -> None:
        """An open connection to `host` waits for its next message; closed at once when
        another connection waits for the host."""
        state = self._hosts.get(host)
        if state is None:
            return
        if any(not waiter.done() for waiter in state.waiting):
            close()
        else:
            state.idle[connection] = close

    def used(self, host: str, connection: int) -> None:
        """A kept connection carries a message again."""
        state = self._hosts.get(host)
        if state is not None:
            state.idle.pop(connection, None)

    def leave(self, host: str, established: bool = False, connection: int = 0) -> None:
        """A connection to `host` closed (or could not be opened)."""
        state = self._hosts.get(host)
        if state is None:
            return
        state.idle.pop(connection, None)
        state.open = max(state.open - 1, 0)
        if established:
            state.established = max(state.established - 1, 0)
        state.next_turn()
        if (not state.open and state.limit is None and not state.waiting
                and not state.failures):
            del self._hosts[host]

    def refused(self, host: str, said: str) -> None:
        """`host` refused a connection with 421 (the refused one still counted)."""
        state = self._hosts.setdefault(host, _Host())
        limit = max(state.established, 1)
        if state.limit is None or limit < state.limit:
            log.warning("host %s refused a connection (%s): at most %d from now on", host,
                        said, limit)
            state.limit = limit
        state.accepted = 0
        if len(self._hosts) > KEPT_HOSTS:
            self._forget_one()

    def accepted(self, host: str) -> None:
        """`host` accepted a message: a limited host gets a connection back now and then."""
        state = self._hosts.get(host)
        if state is None or state.limit is None:
            return
        state.accepted += 1
        if state.accepted >= RECOVER_AFTER:
            state.accepted = 0
            state.limit += 1
            log.info("host %s recovering: at most %d connections", host, state.limit)
            state.next_turn()

    def limit(self, host: str) -> int | None:
        state = self._hosts.get(host)
        return None if state is None else state.limit

    def _forget_one(self) -> None:
        for host, state in self._hosts.items():
            if not state.open:
                del self._hosts[host]
                return
