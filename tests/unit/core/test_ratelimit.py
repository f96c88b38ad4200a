"""ratelimit.SlidingWindow: counts per key over a window, and forgets idle keys (a key
per client address of the internet must not grow without bound)."""

from __future__ import annotations

from relay.core import ratelimit
from relay.core.ratelimit import SlidingWindow
from relay.core.units import Rate


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_key_is_limited_within_its_window_only() -> None:
    clock = Clock()
    window = SlidingWindow(clock)
    rate = Rate(2, 60.0)
    assert [window.take_now("a", rate) for _ in range(3)] == [True, True, False]
    assert window.take_now("b", rate)  # another key, its own count
    clock.now += 61
    assert window.take_now("a", rate)


def test_idle_keys_are_forgotten_and_busy_ones_kept() -> None:
    clock = Clock()
    window = SlidingWindow(clock)
    rate = Rate(1, 60.0)
    for n in range(ratelimit.SWEEP_AT):
        window.hit(f"client-{n}", rate)
    clock.now += 61  # every one of them idle now
    assert window.take_now("busy", rate)  # a new key beyond SWEEP_AT: the idle ones go
    assert len(window) == 1
    assert not window.take_now("busy", rate)  # its own count is kept
