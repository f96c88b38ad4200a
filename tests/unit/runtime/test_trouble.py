"""relay.runtime.trouble: a failure that repeats is logged when it starts, when its cause changes
and when it ends, and retried after a growing, bounded delay."""

from __future__ import annotations

import logging

import pytest

from relay.runtime.trouble import Trouble


def test_lines_by_state_change_and_growing_delays(caplog: pytest.LogCaptureFixture) -> None:
    trouble = Trouble("claiming", logging.getLogger("test.trouble"), first_delay=0.1,
                      max_delay=1.0)
    full = OSError(28, "No space left on device")
    delays = [trouble.failed(full) for _ in range(6)]
    assert delays == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    trouble.failed(RuntimeError("locked"))
    assert trouble.ongoing
    trouble.succeeded()
    trouble.succeeded()  # nothing to say: it was not failing
    assert not trouble.ongoing
    assert trouble.failed(full) == 0.1  # a new episode starts over
    assert [r.getMessage() for r in caplog.records] == [
        "claiming failed: OSError: [Errno 28] No space left on device; retrying with backoff",
        "claiming still failing, now: RuntimeError: locked (5 failures not logged)",
        "claiming works again after 7 failures (0 not logged)",
        "claiming failed: OSError: [Errno 28] No space left on device; retrying with backoff",
    ]
