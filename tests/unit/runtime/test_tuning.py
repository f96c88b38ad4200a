"""relay.runtime.tuning: the allocator and collector settings of the relay's processes."""

from __future__ import annotations

import gc
import platform

import pytest

from relay.runtime import tuning


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's mallopt")
def test_the_allocator_takes_the_thresholds() -> None:
    assert tuning.tune_allocator()


def test_start_up_objects_leave_the_collectors_sight() -> None:
    try:
        tuning.started()
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
