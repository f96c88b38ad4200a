"""console.chart: the overview's deliveries-per-minute chart, as geometry for an SVG that
the page draws without JavaScript (bars stacked delivered, deferred, bounced)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from relay.queue.overview import Activity

WIDTH, HEIGHT = 720, 160  # the plot area, in SVG units
KINDS = ("delivered", "deferred", "bounced")  # bottom to top


@dataclass(frozen=True)
class Bar:
    x: float
    width: float
    pieces: tuple[tuple[str, float, float], ...]  # (kind, y, height)
    title: str  # what a pointer over it shows


@dataclass(frozen=True)
class Chart:
    bars: tuple[Bar, ...]
    peak: int  # the top of the scale, per step
    totals: dict[str, int]
    width: int = WIDTH
    height: int = HEIGHT


def delivery_chart(buckets: Sequence[Activity], since: float, step: float,
                   steps: int) -> Chart:
    """Bars for `steps` buckets of `step` seconds from `since` (empty ones drawn as gaps)."""
    by_index = {index: b for b in buckets if 0 <= (index := int((b.start - since) // step))
                < steps}
    drawn = list(by_index.values())
    peak = max((b.delivered + b.deferred + b.bounced for b in drawn), default=0)
    scale = HEIGHT / peak if peak else 0.0
    width = WIDTH / steps
    bars = []
    for index, bucket in sorted(by_index.items()):
        y, pieces = float(HEIGHT), []
        for kind in KINDS:
            height = getattr(bucket, kind) * scale
            if height:
                y -= height
                pieces.append((kind, y, height))
        at = time.strftime("%H:%M UTC", time.gmtime(bucket.start))
        title = f"{at}: " + ", ".join(f"{getattr(bucket, kind)} {kind}" for kind in KINDS)
        bars.append(Bar(index * width, max(width - 1, 1), tuple(pieces), title))
    totals = {kind: sum(getattr(b, kind) for b in drawn) for kind in KINDS}
    return Chart(tuple(bars), peak, totals)
