"""units: durations ("30s", "5m", "5d"), sizes ("25MB") and rates ("1000/h") as the
configuration, the policies and the API write them, and back.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_SIZE_UNITS = {"": 1, "B": 1, "KB": 1000, "K": 1000, "MB": 1000**2, "M": 1000**2,
               "GB": 1000**3, "G": 1000**3, "KIB": 1024, "MIB": 1024**2, "GIB": 1024**3}


def parse_duration(value: object) -> float:
    """Seconds from "30s", "5m", "1h30m", "5d" or a bare number of seconds."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, str):
        raise ValueError("expected a duration such as \"30s\", \"5m\" or \"5d\"")
    text = value.strip().lower()
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)", text)
    if not parts or re.sub(r"\s+", "", text) != "".join(n + u for n, u in parts):
        if re.fullmatch(r"\d+(\.\d+)?", text):
            return float(text)
        raise ValueError(f"invalid duration {value!r}; use e.g. \"30s\", \"5m\", \"5d\"")
    return sum(float(n) * _DURATION_UNITS[u] for n, u in parts)


def format_duration(seconds: float) -> str:
    """The other way: 300.0 is "5m", 5400.0 is "90m", 0.5 is "500ms"."""
    for unit, size in sorted(_DURATION_UNITS.items(), key=lambda item: -item[1]):
        if seconds >= size and (seconds / size).is_integer():
            return f"{int(seconds / size)}{unit}"
    return f"{seconds:g}s"


@dataclass(frozen=True)
class Rate:
    """At most `count` events per `window` seconds."""

    count: int
    window: float

    def __str__(self) -> str:
        return f"{self.count}/{format_duration(self.window)}"


def parse_rate(value: str) -> Rate | None:
    """"1000/h", "20000/h", "10/30s"; empty means no limit."""
    if not value:
        return None
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d*\s*[a-z]+)\s*", value)
    if not match or int(match.group(1)) < 1:
        raise ValueError(f"invalid rate {value!r}; use e.g. \"1000/h\"")
    window = match.group(2).strip()
    window = window if window[0].isdigit() else "1" + window  # "/h" means "/1h"
    return Rate(int(match.group(1)), parse_duration(window))


def parse_size(value: object) -> int:
    """Bytes from "25MB", "512KB", "1GiB" or a bare number of bytes."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if not isinstance(value, str):
        raise ValueError("expected a size such as \"25MB\"")
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", value)
    unit = match.group(2).upper() if match else None
    if match is None or unit not in _SIZE_UNITS:
        raise ValueError(f"invalid size {value!r}; use e.g. \"25MB\" or \"512KB\"")
    return int(float(match.group(1)) * _SIZE_UNITS[unit])
