"""queue.local.records: what the local backend keeps besides the mail itself, where its
SQL is its own: message histories and events (queue.local.events), feedback, the
overview. The tables both backends keep alike (keys, sessions, webhooks, suppressions,
pruning) are queue.tables'."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from functools import partial
from typing import Any

from relay.queue.base import EVERY_STREAM
from relay.queue.dialect import SQLITE, Params
from relay.queue.events import (
    EVENT_COLUMNS,
    EVENT_FROM,
    HISTORY_COLUMNS,
    MAX_PAGE,
    EventFilter,
    EventPage,
    Feedback,
    MessageHistory,
    event_of,
    filter_sql,
    history_of,
)
from relay.queue.local import feedback as local_feedback
from relay.queue.overview import LeaseHolder, NodeInfo
from relay.queue.tables import SharedTables


class LocalRecords(SharedTables):
    """The local backend's own ways with events, feedback and the overview; what both
    backends keep alike is queue.tables'. LocalQueue provides the plumbing."""

    _clock: Any
    _live = "done = 0"  # finished messages are marked, their rows go after their files

    async def _write(self, op: Any, durable: bool = True, quick: bool = False) -> Any:
        raise NotImplementedError

    async def _read_all(self, sql: str, params: Sequence[Any]) -> list[sqlite3.Row]:
        raise NotImplementedError

    # -- what happened (queue.events) ---------------------------------------------------

    async def history(self, message_id: str) -> MessageHistory | None:
        rows = await self._read_all(
            f"SELECT {HISTORY_COLUMNS} FROM history WHERE message_id = ?", [message_id])
        if not rows:
            return None
        events = await self._read_all(
            f"SELECT {EVENT_COLUMNS} FROM {EVENT_FROM} WHERE e.message_id = ? ORDER BY e.id",
            [message_id])
        return history_of(rows[0], [event_of(row) for row in events])

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

    # -- the operator's overview (queue.overview) ----------------------------------------

    async def lease_holders(self) -> list[LeaseHolder]:
        return []  # one node: nobody else to tell apart

    async def nodes(self) -> list[NodeInfo]:
        return []

    # -- the suppression list, and what comes back later (queue.local.feedback) ---------

    async def suppress(self, address: str, reason: str,
                       stream: str = EVERY_STREAM) -> bool:
        return bool(await self._write(partial(local_feedback.suppress, address, reason,
                                              stream, self._clock())))

    async def record_feedback(self, report: Feedback) -> bool:
        return bool(await self._write(partial(local_feedback.record, report,
                                              self._clock())))


def _event_where(wanted: EventFilter) -> tuple[str, list[Any]]:
    """One writer commits in id order: an id read is never followed by a smaller one, so
    the cursor is the last id."""
    if wanted.after and not (wanted.after.isdigit() and len(wanted.after) < 19):
        raise ValueError("not a cursor of this queue")
    params = Params(SQLITE)
    where = filter_sql(wanted, params, [f"e.id > {params(int(wanted.after or 0))}"])
    return where, params.values
