"""queue.local.events: events and message history in the local backend's index
(queue.events says what they are). The functions run in the index writer thread, inside
the transaction of the state change they record; EventPages reads them back for the API,
in id order (one writer commits in id order: an id read is never followed by a smaller
one, so the cursor is the last id).

New mail's rows are committed after its 250 (queue.local), and so are its history row
and `accepted` events: a message indexed again by recovery gets them then.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from typing import Any

from relay.queue.base import MessageMeta, Outcome, Tracking
from relay.queue.dialect import SQLITE, Params
from relay.queue.events import (
    EVENT_COLUMNS,
    EVENT_FROM,
    MAX_PAGE,
    EventFilter,
    EventPage,
    EventRow,
    EventType,
    event_of,
    filter_sql,
    metadata_json,
    outcome_data,
    outcome_event,
    tags_json,
)
from relay.queue.local.access import IndexAccess


def add_events(db: sqlite3.Connection, kind: EventType, now: float,
               rows: Iterable[EventRow]) -> None:
    _insert(db, now, [(kind, m, r, d) for m, r, d in rows])


def add_outcome_events(db: sqlite3.Connection, now: float,
                       applied: Iterable[tuple[Outcome, str, str]]) -> None:
    """An event for each delivery outcome applied: (outcome, message id, address)."""
    _insert(db, now, [(outcome_event(o), m, r, outcome_data(o)) for o, m, r in applied])


def _insert(db: sqlite3.Connection, now: float,
            rows: list[tuple[EventType, str, str, str | None]]) -> None:
    db.executemany("INSERT INTO events (type, at, message_id, recipient, data) "
                   "VALUES (?, ?, ?, ?, ?)",
                   [(kind.value, now, m, r, d) for kind, m, r, d in rows])


def open_history(db: sqlite3.Connection, message_id: str, mail_from: str, size: int,
                 received_at: float, tracking: Tracking) -> None:
    db.execute("INSERT OR IGNORE INTO history (message_id, mail_from, subject, size, "
               "received_at, metadata, tags, api_key) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
               (message_id, mail_from, tracking.subject, size, received_at,
                metadata_json(tracking.metadata), tags_json(tracking.tags), tracking.api_key))


def message_accepted(db: sqlite3.Connection, meta: MessageMeta, received_at: float,
                     now: float) -> None:
    """A new message's history row and an `accepted` event per recipient."""
    open_history(db, meta.id, meta.mail_from, meta.size, received_at, meta.tracking)
    add_events(db, EventType.ACCEPTED, now, [(meta.id, r, None) for r in meta.recipients])


class EventPages(IndexAccess):
    """EventHistory's pages of events, on the index."""

    async def events(self, wanted: EventFilter) -> EventPage:
        where, params = _event_where(wanted)
        rows = await self._read_all(
            f"SELECT {EVENT_COLUMNS} FROM {EVENT_FROM} WHERE {where} ORDER BY e.id LIMIT ?",
            [*params, min(wanted.limit, MAX_PAGE)])
        found = [event_of(row) for row in rows]
        return EventPage(found, found[-1].position if found else str(params[0]))

    async def count_events(self, wanted: EventFilter, cap: int) -> int:
        where, params = _event_where(wanted)
        rows = await self._read_all(f"SELECT COUNT(*) FROM (SELECT 1 FROM {EVENT_FROM} "
                                    f"WHERE {where} LIMIT ?)", [*params, cap])
        return int(rows[0][0])


def _event_where(wanted: EventFilter) -> tuple[str, list[Any]]:
    if wanted.after and not (wanted.after.isdigit() and len(wanted.after) < 19):
        raise ValueError("not a cursor of this queue")
    params = Params(SQLITE)
    where = filter_sql(wanted, params, [f"e.id > {params(int(wanted.after or 0))}"])
    return where, params.values
