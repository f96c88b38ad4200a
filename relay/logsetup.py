"""logsetup: process-wide logging and event-loop choice, shared by every relay process."""

from __future__ import annotations

import asyncio
import atexit
import logging
import logging.handlers
import queue
import sys
from collections.abc import Callable, Coroutine
from typing import Any

from relay.config import Config

Runner = Callable[[Coroutine[Any, Any, None]], None]


class _DeferredFormatting(logging.handlers.QueueHandler):
    """Queues the record as it is; the writer thread formats it."""

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        return record


def configure_logging(config: Config) -> None:
    """Text lines on stderr (journald adds the time when run by systemd), with the pid as
    in Postfix's `smtpd[1234]` so lines from ingest workers can be told apart.

    The event loop only queues records; a thread formats and writes them. A write to a
    slow stderr (a busy journald) then never stalls mail, and formatting and one flush per
    line stop costing the loop a quarter of its time when a message has ten recipients
    (bench/README.md). At exit the thread writes what is queued."""
    # Record fields no format here uses: not computed for every record (the logging HOWTO,
    # "Optimization"); the caller lookup alone was a tenth of the cost of a log call.
    logging._srcfile = None
    logging.logThreads = False
    logging.logMultiprocessing = False
    stream = logging.StreamHandler(sys.stderr)
    stream.setFormatter(logging.Formatter(
        "%(asctime)s %(name)s[%(process)d] %(levelname)s %(message)s"))
    records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    listener = logging.handlers.QueueListener(records, stream)
    listener.start()
    atexit.register(listener.stop)
    root = logging.getLogger()
    root.addHandler(_DeferredFormatting(records))
    root.setLevel(config.log.level.upper())
    logging.getLogger("mail.log").setLevel(logging.WARNING)  # aiosmtpd's per-command lines


def event_loop_runner() -> Runner:
    """uvloop when it is installed (measurably faster, bench/README.md), else asyncio."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run
    return uvloop.run
