"""logsetup: process-wide logging and event-loop choice, shared by every relay process."""

from __future__ import annotations

import asyncio
import atexit
import collections
import json
import logging
import os
import sys
import threading
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from typing import Any

from relay.config import LogSection
from relay.core.addresses import printable

Runner = Callable[[Coroutine[Any, Any, None]], None]


WRITE_INTERVAL = 0.05  # seconds between two writes of what was logged meanwhile


class _Buffered(logging.Handler):
    """Appends the record, as it is, to a buffer that the writer thread drains every
    WRITE_INTERVAL: no lock and no thread wake-up per record (a wake-up each was a tenth
    of an ingest worker's CPU, bench/README.md)."""

    def __init__(self, buffer: collections.deque[logging.LogRecord]) -> None:
        super().__init__()
        self._buffer = buffer

    def handle(self, record: logging.LogRecord) -> bool:
        self._buffer.append(record)  # atomic: no lock needed
        return True

    def emit(self, record: logging.LogRecord) -> None:
        self._buffer.append(record)


class _Writer:
    """The thread that formats and writes what was logged, a batch at a time."""

    def __init__(self, buffer: collections.deque[logging.LogRecord],
                 handler: logging.StreamHandler[Any]) -> None:
        self._buffer = buffer
        self._handler = handler
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="log-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(WRITE_INTERVAL):
            self._write_out()
        self._write_out()

    def _write_out(self) -> None:
        lines = []
        while self._buffer:
            record = self._buffer.popleft()
            try:
                if self._handler.filter(record):
                    lines.append(self._handler.format(record))
            except Exception:
                self._handler.handleError(record)
        if lines:
            try:
                self._handler.stream.write("\n".join(lines) + "\n")
                self._handler.flush()
            except Exception:
                self._handler.handleError(record)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


class _ControlCharactersEscaped(logging.Filter):
    """One event, one line: control characters that came from a client (an address, a HELO
    name, a reply) are written escaped (\\r, \\x00), never raw."""

    def filter(self, record: logging.LogRecord) -> bool:
        # Formatted once here; the formatter then has no arguments left to apply.
        record.msg, record.args = printable(record.getMessage()), None
        return True


class _ThisProcess(logging.Filter):
    def __init__(self) -> None:
        super().__init__()
        self._pid = os.getpid()

    def filter(self, record: logging.LogRecord) -> bool:
        record.process = self._pid
        return True


class JsonFormatter(logging.Formatter):
    """`[log] format = "json"`: one JSON object per line with the same facts as a text line
    (time in UTC, level, logger, pid, message) and the traceback when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "pid": record.process,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def log_value(value: str) -> str:
    """A key=value log field's value: as it is, or in double quotes (quotes and
    backslashes escaped) when it holds a space, a quote or an `=`, or is empty, so that a log reader
    splitting on spaces gets each field whole (`tls="TLSv1.3 with cipher ..."`)."""
    if value and not any(c in value for c in ' "=\\\t'):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def configure_logging(settings: LogSection) -> Callable[[], None]:
    """Lines on stderr (journald keeps them when run by systemd): text by default, with the
    pid as in Postfix's `smtpd[1234]` so lines from ingest workers can be told apart, or
    JSON with `[log] format = "json"`.

    The event loop only buffers records; a thread formats and writes them, a batch every
    50 ms. A write to a slow stderr (a busy journald) then never stalls mail, and
    formatting and one flush per line stop costing the loop a quarter of its time when a
    message has ten recipients (bench/README.md). The function returned writes out what is
    buffered and stops the thread (at exit too): a one-line error printed after it comes
    after every log line."""
    # Record fields no format here uses: not computed for every record (the logging HOWTO,
    # "Optimization"); the caller lookup alone was a tenth of the cost of a log call. The
    # pid is used, but it is a system call per record (4% of the main process with ten
    # recipients a message): the writer thread fills in the one it read at start.
    logging._srcfile = None
    logging.logThreads = False
    logging.logMultiprocessing = False
    logging.logProcesses = False
    stream = logging.StreamHandler(sys.stderr)
    stream.setFormatter(JsonFormatter() if settings.format == "json" else logging.Formatter(
        "%(asctime)s %(name)s[%(process)d] %(levelname)s %(message)s"))
    stream.addFilter(_ControlCharactersEscaped())  # in the writer thread, off the loop
    stream.addFilter(_ThisProcess())
    records: collections.deque[logging.LogRecord] = collections.deque()
    writer = _Writer(records, stream)
    stopped = False

    def flush() -> None:
        nonlocal stopped
        if not stopped:
            stopped = True
            writer.stop()

    atexit.register(flush)
    root = logging.getLogger()
    root.addHandler(_Buffered(records))
    root.setLevel(settings.level.upper())
    logging.getLogger("mail.log").setLevel(logging.WARNING)  # aiosmtpd's per-command lines
    return flush


def event_loop_runner() -> Runner:
    """uvloop when it is installed (measurably faster, bench/README.md), else asyncio."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run
    runner: Runner = uvloop.run
    return runner
