"""admin.token: the bearer token shared by the admin API and relayctl.

From `[admin] token_file`, or made at first start as `<queue path>/admin.token` with mode
0600. It never appears in argv or logs.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from relay.errors import ConfigError


def load_or_create_token(path: Path, create: bool, what: str = "admin token") -> str:
    """Read the admin token (or another secret of the relay's: `what`); when `create`, make
    one (mode 0600) if the file is missing."""
    if create and not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_urlsafe(32) + "\n")
    try:
        token = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise ConfigError(f"{what} file {path} does not exist: the relay makes it at "
                          "its first start (is it running with this configuration?)") from None
    except OSError as exc:
        raise ConfigError(f"{what} file {path}: {exc.strerror or exc}") from exc
    if len(token) < 16:
        raise ConfigError(f"{what} file {path}: too short (16 characters minimum)")
    return token
