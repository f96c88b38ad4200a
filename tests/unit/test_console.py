"""The console's pure parts: sessions, the chart's geometry, the pages' escaping."""

from __future__ import annotations

from relay.console.chart import HEIGHT, WIDTH, delivery_chart
from relay.console.render import page
from relay.console.sessions import MAX_SESSIONS, Sessions
from relay.queue.overview import Activity


def test_sessions_expire_and_are_bounded() -> None:
    now = [1000.0]
    sessions = Sessions(clock=lambda: now[0], lifetime=60)
    first = sessions.open(b"token")
    assert sessions.find(first.id) == first and first.checks(first.csrf)
    assert not first.checks("") and not first.checks(first.csrf + "x")
    now[0] += 61
    assert sessions.find(first.id) is None  # expired
    opened = [sessions.open(b"token") for _ in range(MAX_SESSIONS + 5)]
    assert sessions.find(opened[0].id) is None and sessions.find(opened[-1].id) is not None
    sessions.close(opened[-1].id)
    assert sessions.find(opened[-1].id) is None


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
