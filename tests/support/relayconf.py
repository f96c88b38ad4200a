"""Writing relay.toml and policy files for a test, from dicts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.support.net import free_port


def to_toml(sections: dict[str, Any]) -> str:
    """Sections from dicts; a list of dicts is an array of tables ([[webhooks]])."""
    lines = []
    for section, values in sections.items():
        tables = values if isinstance(values, list) else [values]
        for table in tables:
            lines.append(f"[[{section}]]" if isinstance(values, list) else f"[{section}]")
            lines += [f"{key} = {json.dumps(value)}" for key, value in table.items()]
            lines.append("")
    return "\n".join(lines)


def write_relay_config(directory: Path, dns_address: str, mx_port: int,
                       overrides: dict[str, Any] | None = None) -> Path:
    """A relay.toml for `directory`: free ports, spool and policies inside it."""
    sections: dict[str, dict[str, Any]] = {
        "server": {"hostname": "relay.test"},
        # In-process SMTP unless a test asks for worker processes (acceptance tests do).
        "smtp": {"listen": [f"127.0.0.1:{free_port()}"], "min_free_space": "1MB",
                 "workers": 0},
        "queue": {"path": "spool"},
        "delivery": {"port": mx_port, "nameservers": [dns_address],
                     "connect_timeout": "5s", "command_timeout": "10s"},
        "retry": {"min_backoff": "5m", "max_backoff": "1h", "max_age": "5d"},
        "admin": {"listen": f"127.0.0.1:{free_port()}"},
        "policies": {"path": "policies"},
    }
    for section, values in (overrides or {}).items():
        if isinstance(values, list):
            sections[section] = values
        else:
            sections.setdefault(section, {}).update(values)
    (directory / "policies").mkdir(exist_ok=True)
    path = directory / "relay.toml"
    path.write_text(to_toml(sections))
    return path


def write_access_policy(directory: Path, body: str) -> None:
    (directory / "policies").mkdir(exist_ok=True)
    (directory / "policies" / "access.toml").write_text(body)
