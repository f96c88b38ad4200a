"""The console's pure parts: the chart's geometry, the pages' escaping (its sessions:
tests/integration/queue/test_console_sessions.py)."""

from __future__ import annotations

from relay.queue.overview import Activity
from relay.web.console.chart import HEIGHT, WIDTH, delivery_chart
from relay.web.console.render import page


def test_the_chart_stacks_outcomes_in_their_minute() -> None:
    since = 6000.0
    chart = delivery_chart([Activity(since, delivered=3, deferred=1),
                            Activity(since + 120, bounced=2),
                            Activity(since - 60, delivered=9)],  # before the range: not drawn
                           since, 60, 3)
    assert [bar.x for bar in chart.bars] == [0, 2 * WIDTH / 3]
    first = chart.bars[0]
    assert [kind for kind, _, _ in first.pieces] == ["delivered", "deferred"]
    assert first.pieces[0][1] + first.pieces[0][2] == HEIGHT  # from the bottom up
    assert chart.peak == 4 and chart.totals == {"delivered": 3, "deferred": 1, "bounced": 2}
    assert delivery_chart([], since, 60, 3).bars == ()


def test_values_from_mail_are_text_on_the_page() -> None:
    html = page("missing.html", what="<script>alert(1)</script>").body.decode()
    assert "<script>alert(1)" not in html and "&lt;script&gt;alert(1)" in html
