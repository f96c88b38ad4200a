"""scheduler.shaping.DestinationPace: how a destination's answers change the connections
it is allowed, and how a rate spaces its messages."""

from __future__ import annotations

import asyncio
import time

from relay.core.reply import Reply
from relay.delivery import Attempt
from relay.policy import DomainRule
from relay.queue import Claimed
from relay.scheduler.shaping import RECOVER_AFTER, TEMPORARY_STREAK, DestinationPace

CLAIM = Claimed(1, "Q1", "a@example.test", "example.test", 1, "app@sender.test", 0.0, False)


def answered(*codes: int) -> list[Attempt]:
    return [Attempt(CLAIM, Reply(code, f"{code // 100}.0.0", "text"), "mx[127.0.0.2]:25")
            for code in codes]


def test_421_halves_the_connections_down_to_one() -> None:
    pace = DestinationPace("example.test", DomainRule(max_connections=8), 20)
    seen = []
    for _ in range(4):
        pace.observe(answered(421))
        seen.append(pace.connections)
    assert seen == [4, 2, 1, 1]


def test_repeated_4xx_slow_down_once_the_streak_is_long_enough() -> None:
    pace = DestinationPace("example.test", DomainRule(max_connections=8), 20)
    for _ in range(TEMPORARY_STREAK - 1):
        pace.observe(answered(451, 450))
    assert pace.connections == 8
    pace.observe(answered(452))
    assert pace.connections == 4


def test_an_accepted_message_breaks_the_streak() -> None:
    pace = DestinationPace("example.test", DomainRule(max_connections=8), 20)
    for _ in range(TEMPORARY_STREAK - 1):
        pace.observe(answered(451))
    pace.observe(answered(451, 250))  # one recipient taken: the destination is working
    for _ in range(TEMPORARY_STREAK - 1):
        pace.observe(answered(451))
    assert pace.connections == 8


def test_a_permanent_refusal_says_nothing_of_the_destinations_load() -> None:
    pace = DestinationPace("example.test", DomainRule(max_connections=8), 20)
    for _ in range(TEMPORARY_STREAK * 2):
        pace.observe(answered(550))
        pace.observe(answered(451, 550))  # not all temporary: no streak either
    assert pace.connections == 8


def test_connections_come_back_one_per_accepted_batch_up_to_the_ceiling() -> None:
    pace = DestinationPace("example.test", DomainRule(), 4)  # [delivery]'s default
    assert pace.ceiling == 4
    pace.observe(answered(421))
    pace.observe(answered(421))
    assert pace.connections == 1
    for expected in (2, 3, 4, 4):
        for _ in range(RECOVER_AFTER):
            pace.observe(answered(250))
        assert pace.connections == expected


async def test_a_rate_spaces_messages_evenly_rather_than_in_bursts() -> None:
    pace = DestinationPace("example.test", DomainRule(rate="20/s"), 4)
    assert pace.rated
    started = time.monotonic()
    await asyncio.gather(*(pace.wait_turn() for _ in range(4)))
    # Four turns at 50 ms apart: the last waits three intervals, however many wait at once.
    assert time.monotonic() - started >= 3 * 0.05 - 0.01
    assert not DestinationPace("example.test", DomainRule(), 4).rated
