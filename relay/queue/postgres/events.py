"""queue.postgres.events: events and message history in the PostgreSQL backend
(queue.events says what they are), written in the transaction of each change.

Reading in commit order: an event's id comes from a sequence when it is inserted, so a
transaction still open can commit a smaller id after a larger one was read. Each event
also records its transaction (`tx`); a page holds only events of transactions older than
every one still running (`pg_snapshot_xmin`), ordered by (tx, id), and the cursor is the
last (tx, id): no later commit can fall behind it. An event is readable once every
transaction that began before its own has ended: at once, unless one runs long.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import asyncpg

from relay.queue.base import Outcome, Tracking
from relay.queue.dialect import POSTGRES, Params
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
from relay.queue.postgres.pool import NOW, DatabaseAccess


async def add_events(connection: asyncpg.Connection, kind: EventType,
                     rows: Sequence[EventRow]) -> None:
    await _insert(connection, [(kind, m, r, d) for m, r, d in rows])


async def add_outcome_events(connection: asyncpg.Connection,
                             applied: Sequence[tuple[Outcome, str, str]]) -> None:
    """An event for each delivery outcome applied: (outcome, message id, address)."""
    await _insert(connection, [(outcome_event(o), m, r, outcome_data(o))
                               for o, m, r in applied])


async def _insert(connection: asyncpg.Connection,
                  rows: Sequence[tuple[EventType, str, str, str | None]]) -> None:
    if rows:
        await connection.execute(
            f"INSERT INTO events (type, at, message_id, recipient, data) SELECT t, {NOW}, "
            "m, r, d FROM unnest($1::text[], $2::text[], $3::text[], $4::text[]) "
            "AS x(t, m, r, d)", [r[0].value for r in rows], [r[1] for r in rows],
            [r[2] for r in rows], [r[3] for r in rows])


async def add_events_of(connection: asyncpg.Connection, kind: EventType, select: str,
                        *params: Any) -> int:
    """Events for the (message_id, address) rows of `select`, an UPDATE or DELETE ...
    RETURNING or a SELECT; how many."""
    return int(await connection.fetchval(
        f"WITH changed AS ({select}), added AS (INSERT INTO events (type, at, message_id, "
        f"recipient) SELECT '{kind.value}', {NOW}, message_id, address FROM changed "
        "RETURNING 1) SELECT COUNT(*) FROM added", *params))


async def open_histories(connection: asyncpg.Connection,
                         messages: Sequence[tuple[str, str, int, Tracking]]) -> None:
    """History rows of new messages: (id, sender, size, tracking) each."""
    await connection.execute(
        "INSERT INTO history (message_id, mail_from, subject, size, received_at, metadata, "
        f"tags, api_key) SELECT i, f, s, n, {NOW}, m, t, k FROM unnest($1::text[], "
        "$2::text[], $3::text[], $4::integer[], $5::text[], $6::text[], $7::text[]) "
        "AS x(i, f, s, n, m, t, k) ON CONFLICT DO NOTHING",
        [m[0] for m in messages], [m[1] for m in messages], [m[3].subject for m in messages],
        [m[2] for m in messages], [metadata_json(m[3].metadata) for m in messages],
        [tags_json(m[3].tags) for m in messages], [m[3].api_key for m in messages])


async def finish_history(connection: asyncpg.Connection, message_ids: Sequence[str]) -> None:
    """The messages left the queue: their history's retention starts now."""
    if message_ids:
        await connection.execute(f"UPDATE history SET finished_at = {NOW} WHERE "
                                 "message_id = ANY($1::text[]) AND finished_at IS NULL",
                                 list(message_ids))


async def page(connection: asyncpg.Connection, wanted: EventFilter) -> EventPage:
    where, params = _where(wanted)
    params.append(min(wanted.limit, MAX_PAGE))
    rows = await connection.fetch(
        f"SELECT {EVENT_COLUMNS}, e.tx::text FROM {EVENT_FROM} WHERE {where} "
        f"ORDER BY e.tx, e.id LIMIT ${len(params)}", *params)
    found = [event_of(row, f"{row[9]}.{row[0]}") for row in rows]
    return EventPage(found, found[-1].position if found else wanted.after)


async def count(connection: asyncpg.Connection, wanted: EventFilter, cap: int) -> int:
    """How many events `page` would go through, counting at most `cap`."""
    where, params = _where(wanted)
    return int(await connection.fetchval(
        f"SELECT COUNT(*) FROM (SELECT 1 FROM {EVENT_FROM} WHERE {where} "
        f"LIMIT ${len(params) + 1}) AS found", *params, cap))


def _where(wanted: EventFilter) -> tuple[str, list[Any]]:
    after_tx, after_id = _cursor(wanted.after)
    params = Params(POSTGRES)
    after = f"({params(after_tx)}::text::xid8, {params(after_id)}::bigint)"
    where = filter_sql(wanted, params, [f"(e.tx, e.id) > {after}",
                                        "e.tx < pg_snapshot_xmin(pg_current_snapshot())"])
    return where, params.values


def _cursor(text: str) -> tuple[str, int]:
    if not text:
        return "0", 0
    tx, _, number = text.partition(".")
    if not (tx.isdigit() and number.isdigit() and len(tx) < 20 and len(number) < 19):
        raise ValueError("not a cursor of this queue")
    return tx, int(number)


class EventPages(DatabaseAccess):
    """EventHistory's pages of events, in commit order."""

    async def events(self, wanted: EventFilter) -> EventPage:
        async with self._connection() as connection:
            return await page(connection, wanted)

    async def count_events(self, wanted: EventFilter, cap: int) -> int:
        async with self._connection() as connection:
            return await count(connection, wanted, cap)
