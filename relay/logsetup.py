"""logsetup: process-wide logging and event-loop choice, shared by every relay process."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Callable, Coroutine
from typing import Any

from relay.config import Config

Runner = Callable[[Coroutine[Any, Any, None]], None]


def configure_logging(config: Config) -> None:
    """Text lines on stderr (journald adds the time when run by systemd), with the pid as
    in Postfix's `smtpd[1234]` so lines from ingest workers can be told apart."""
    logging.basicConfig(level=config.log.level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(name)s[%(process)d] %(levelname)s %(message)s")
    logging.getLogger("mail.log").setLevel(logging.WARNING)  # aiosmtpd's per-command lines


def event_loop_runner() -> Runner:
    """uvloop when it is installed (measurably faster, bench/README.md), else asyncio."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run
    return uvloop.run
