from __future__ import annotations

import random

import pytest

from relay.config import RetrySection
from relay.outcomes.retry import GiveUp, Retry, after_temporary_failure, backoff

POLICY = RetrySection()  # Postfix defaults: 5m doubling to 1h, 5 days


@pytest.mark.parametrize("attempts, seconds", [
    (1, 300), (2, 600), (3, 1200), (4, 2400), (5, 3600), (6, 3600), (100, 3600), (0, 300),
])
def test_backoff_doubles_up_to_the_maximum(attempts: int, seconds: float) -> None:
    assert backoff(attempts, POLICY) == seconds


@pytest.mark.parametrize("attempts, age, expected", [
    (1, 0, Retry(at=1000 + 300)),
    (3, 3600, Retry(at=1000 + 1200)),
    (50, 5 * 86400 - 60, Retry(at=1000 + 60)),  # one last try exactly at the deadline
    (50, 5 * 86400, GiveUp),
    (2, 6 * 86400, GiveUp),
])
def test_decisions(attempts: int, age: float, expected: object) -> None:
    now = 1000.0
    rng = random.Random(0)
    rng.uniform = lambda a, b: 0.0  # type: ignore[method-assign] - no jitter for the table
    decision = after_temporary_failure(attempts, now - age, now, POLICY, rng)
    if expected is GiveUp:
        assert isinstance(decision, GiveUp)
    else:
        assert decision == expected


def test_jitter_stays_within_ten_percent_and_varies() -> None:
    rng = random.Random(42)
    times = {after_temporary_failure(1, 0, 0, POLICY, rng).at  # type: ignore[union-attr]
             for _ in range(50)}
    assert len(times) > 40
    assert all(270 <= t <= 330 for t in times)
