"""tuning: process-wide settings for the relay's long-running processes (the main process
and the ingest workers), each measured in bench/README.md.

- The allocator. asyncio reads a socket with recv(256 KiB): Python allocates 256 KiB, the
  read fills a few bytes of it and the rest is given back. glibc serves an allocation that
  large with mmap() and the shrink with mremap(), then munmap()s it: three system calls
  around every read (and in a process with threads, munmap interrupts the other cores).
  With the mmap threshold above that size such buffers come from the heap.
- The garbage collector. What start-up made (modules, configuration, policies) lives as
  long as the process; gc.freeze() takes it out of the collector's sight, so a full
  collection no longer walks tens of thousands of objects every few hundred sessions.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc

_M_TRIM_THRESHOLD = -1  # glibc's mallopt parameters (malloc.h)
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 4 * 1024 * 1024
TRIM_THRESHOLD = 16 * 1024 * 1024  # free heap kept rather than returned at once


def tune_allocator() -> bool:
    """Raise glibc's mmap threshold (a fixed one also stops the heap being trimmed on
    every such free, hence the trim threshold); False where there is no glibc."""
    with contextlib.suppress(OSError, AttributeError, TypeError):
        libc = ctypes.CDLL(None)  # the process's own symbols: the C library's among them
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
                    and libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    return False


def started() -> None:
    """Call once the process has started: what exists now stays until it exits."""
    gc.freeze()
