"""retry: when to try a deferred recipient again, and when to give up.

A pure function of the attempt count, the message's age, the time and the policy, so it is
tested with a table of cases. The schedule follows Postfix: the first retry after
`min_backoff` (5 minutes), doubling up to `max_backoff` (1 hour), with jitter so that
recipients deferred together do not return together; after `max_age` (5 days) the
recipient bounces.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from relay.config import RetrySection

JITTER = 0.1  # up to 10% either way


@dataclass(frozen=True)
class Retry:
    at: float  # next attempt time (epoch seconds)


@dataclass(frozen=True)
class GiveUp:
    reason: str


def backoff(attempts: int, policy: RetrySection) -> float:
    """Seconds to wait after the `attempts`-th failed attempt (1-based), before jitter."""
    exponent = max(attempts - 1, 0)
    if exponent > 60:  # 2**60 * anything is past every sane max_backoff
        return policy.max_backoff
    return float(min(policy.min_backoff * (2 ** exponent), policy.max_backoff))


def after_temporary_failure(attempts: int, received_at: float, now: float,
                            policy: RetrySection, rng: random.Random | None = None
                            ) -> Retry | GiveUp:
    """Decide the fate of a recipient whose attempt failed temporarily."""
    age = now - received_at
    if age >= policy.max_age:
        return GiveUp(f"message older than max_age after {attempts} attempts")
    delay = backoff(attempts, policy)
    delay *= 1 + (rng or random).uniform(-JITTER, JITTER)
    next_at = now + delay
    # One last attempt at the deadline rather than giving up early with time left.
    deadline = received_at + policy.max_age
    return Retry(at=min(next_at, deadline))
