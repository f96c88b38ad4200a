"""secretfiles: the relay's secret files: the admin token shared by the admin API and
relayctl, and the key of the bounce domain's tokens (relay.feedback).

Each is read from the file the configuration names, or made at first start (mode 0600)
where the relay keeps its own; never in argv or logs.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from relay.core.errors import ConfigError

MADE_AT_START = "the relay makes it at its first start (is it running with this configuration?)"


def how_to_make(path: Path) -> str:
    """The one command that makes a secret file by hand, for error messages and docs."""
    return f"(umask 077; head -c 32 /dev/urandom | base64 > {path})"


def shared_secret_missing(path: Path) -> str:
    """Why a cluster node does not make a missing secret itself, and what to do."""
    return (f"nodes that share a queue need the same one, so no node makes it: make it "
            f"once, {how_to_make(path)}, and give every node that file (Kubernetes: a Secret)")


def load_or_create_token(path: Path, create: bool, what: str = "admin token",
                         missing: str = MADE_AT_START) -> str:
    """Read the admin token (or another secret of the relay's: `what`); when `create`, make
    one (mode 0600) if the file is missing. `missing` says what to do when it is missing
    and not made."""
    if create and not path.exists():
        _create(path, what)
    try:
        token = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise ConfigError(f"{what} file {path} does not exist: {missing}") from None
    except OSError as exc:
        raise ConfigError(f"{what} file {path}: {exc.strerror or exc}") from exc
    if len(token) < 16:
        raise ConfigError(f"{what} file {path}: too short (16 characters minimum)")
    return token


def _create(path: Path, what: str) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return  # made meanwhile by another process: read below
    except OSError as exc:
        raise ConfigError(f"{what} file {path} does not exist and cannot be made "
                          f"({exc.strerror or exc}): make it with {how_to_make(path)}"
                          ) from exc
    with os.fdopen(fd, "w") as handle:
        handle.write(secrets.token_urlsafe(32) + "\n")
