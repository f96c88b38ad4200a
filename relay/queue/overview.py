"""queue.overview: what an operator's overview reads from the queue, for both backends:
delivery outcomes per minute (from the events), and which nodes hold leases.

The events table has no index on time (queue.local.events says why), so the first event
of a time range is found by a binary search over ids, whose order is the order of their
commits: a chart of the last hours reads those hours' events, not the whole retention.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from relay.queue.dialect import Sql
from relay.queue.events import EventType

# The outcomes a delivery chart counts, in the order it stacks them.
CHARTED = (EventType.DELIVERED, EventType.DEFERRED, EventType.BOUNCED)
CHARTED_SQL = ", ".join(f"'{kind.value}'" for kind in CHARTED)


@dataclass(frozen=True)
class Activity:
    """Delivery outcomes in one time bucket, from `start` for the chart's step."""

    start: float
    delivered: int = 0
    deferred: int = 0
    bounced: int = 0


@dataclass(frozen=True)
class LeaseHolder:
    """A node of a cluster and what it holds now: recipients being delivered, connection
    slots to destinations, webhook endpoints it delivers to."""

    node: str
    recipients: int
    connections: int
    webhooks: int


@dataclass(frozen=True)
class NodeInfo:
    """A node of a cluster by its stable name: the owner of its leases in its latest run
    ("name/incarnation"), when that run started, its last heartbeat, and whether that is
    older than a lease (the node is gone: stopped, crashed or cut off)."""

    name: str
    owner: str
    started_at: float
    heartbeat_at: float
    gone: bool


EVENT_AT = "SELECT id, at FROM events WHERE id >= :id ORDER BY id LIMIT 1"
BOUNDS = "SELECT MIN(id), MAX(id) FROM events"


async def activity(sql: Sql, since: float, step: float) -> list[Activity]:
    """Queue.activity, on either backend's Sql."""

    async def event_at(event_id: int) -> tuple[int, float] | None:
        rows = await sql.read(EVENT_AT, id=event_id)
        return (int(rows[0][0]), float(rows[0][1])) if rows else None

    [(low, high)] = await sql.read(BOUNDS)
    first = await first_event_from(since, None if low is None else (int(low), int(high)),
                                   event_at)
    if first is None:
        return []
    bucket = sql.dialect.integer.format("at / :step")
    return activity_of(await sql.read(
        f"SELECT {bucket}, type, COUNT(*) FROM events WHERE id >= :first AND at >= :since "
        f"AND type IN ({CHARTED_SQL}) GROUP BY 1, 2", step=step, first=first, since=since),
        step)


async def first_event_from(since: float, bounds: tuple[int, int] | None,
                           event_at: Callable[[int], Awaitable[tuple[int, float] | None]]
                           ) -> int | None:
    """The id of the first event at or after `since`, or None when there is none.
    `bounds` is (lowest id, highest id); `event_at(i)` gives the first event with an id
    of at least i, as (id, at)."""
    if bounds is None:
        return None
    low, high = bounds
    last = await event_at(high)
    if last is None or last[1] < since:
        return None
    # The smallest id i whose first event (id >= i) is at or after `since`.
    while low < high:
        middle = (low + high) // 2
        found = await event_at(middle)
        if found is not None and found[1] < since:
            low = found[0] + 1  # every id up to found's leads to an event before `since`
        else:
            high = middle
    first = await event_at(low)
    return None if first is None else first[0]


def activity_of(rows: Sequence[Sequence[Any]], step: float) -> list[Activity]:
    """Rows of (bucket number, event type, count) as Activity, oldest first."""
    counts: dict[int, dict[str, int]] = {}
    for bucket, kind, count in rows:
        counts.setdefault(int(bucket), {})[kind] = int(count)
    return [Activity(bucket * step, **by_type) for bucket, by_type in sorted(counts.items())]


def lease_holders_of(rows: Sequence[Sequence[Any]]) -> list[LeaseHolder]:
    return [LeaseHolder(str(node), int(r), int(c), int(w)) for node, r, c, w in rows]
