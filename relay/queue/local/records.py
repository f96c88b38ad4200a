"""queue.local.records: what the local backend keeps besides the mail itself, for
LocalQueue: message histories and events (queue.local.events), webhook endpoints and
their delivery state (queue.local.webhooks), and the admin API's keys."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from functools import partial
from typing import Any

from relay.queue import overview
from relay.queue.apikeys import COLUMNS as KEY_COLUMNS
from relay.queue.apikeys import (
    SESSION_COLUMNS,
    ApiKey,
    ConsoleSession,
    key_of,
    key_values,
    session_of,
)
from relay.queue.base import EVERY_STREAM, ReturnPath, Suppression
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
from relay.queue.local import events as local_events
from relay.queue.local import feedback as local_feedback
from relay.queue.local import webhooks as local_webhooks
from relay.queue.overview import Activity, LeaseHolder, NodeInfo
from relay.queue.webhooks import (
    ENDPOINT_COLUMNS,
    STATE_COLUMNS,
    WebhookEndpoint,
    WebhookState,
    endpoint_of,
    state_of,
)


class LocalRecords:
    """The Queue methods of this module; LocalQueue provides the plumbing."""

    _clock: Any

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

    async def prune_history(self, before: float) -> int:
        return int(await self._write(partial(_prune, before), durable=False))

    # -- the operator's overview (queue.overview) ----------------------------------------

    async def activity(self, since: float, step: float) -> list[Activity]:
        return await overview.activity(self._read_all, overview.LOCAL, since, step)

    async def lease_holders(self) -> list[LeaseHolder]:
        return []  # one node: nobody else to tell apart

    async def nodes(self) -> list[NodeInfo]:
        return []

    # -- the suppression list, and what comes back later (queue.local.feedback) ---------

    async def suppressions(self, stream: str | None = None) -> list[Suppression]:
        where, params = ("", []) if stream is None else ("WHERE stream = ?", [stream])
        rows = await self._read_all(f"SELECT address, reason, created_at, stream FROM "
                                    f"suppressions {where} ORDER BY address, stream", params)
        return [Suppression(*row) for row in rows]

    async def suppress(self, address: str, reason: str,
                       stream: str = EVERY_STREAM) -> bool:
        return bool(await self._write(partial(local_feedback.suppress, address, reason,
                                              stream, self._clock())))

    async def unsuppress(self, address: str, stream: str | None = None) -> int:
        return int(await self._write(partial(local_feedback.unsuppress, address, stream)))

    async def return_path(self, token: str) -> ReturnPath | None:
        rows = await self._read_all("SELECT token, message_id, recipient, stream FROM "
                                    "return_paths WHERE token = ?", [token])
        return ReturnPath(*rows[0]) if rows else None

    async def record_feedback(self, report: Feedback) -> bool:
        return bool(await self._write(partial(local_feedback.record, report,
                                              self._clock())))

    # -- webhooks (queue.local.webhooks) -----------------------------------------------

    async def webhook_endpoints(self) -> list[WebhookEndpoint]:
        return [endpoint_of(row) for row in await self._read_all(
            f"SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints ORDER BY created_at, id", [])]

    async def add_webhook_endpoint(self, endpoint: WebhookEndpoint) -> None:
        await self._write(partial(local_webhooks.add_endpoint, endpoint))

    async def remove_webhook_endpoint(self, endpoint_id: str) -> bool:
        return bool(await self._write(partial(local_webhooks.remove_endpoint, endpoint_id)))

    async def webhook_states(self) -> list[WebhookState]:
        return [state_of(row) for row in await self._read_all(
            f"SELECT {STATE_COLUMNS} FROM webhook_state ORDER BY endpoint", [])]

    async def start_webhook(self, endpoint_id: str) -> None:
        await self._write(partial(local_webhooks.start, endpoint_id), durable=False)

    async def lease_webhook(self, endpoint_id: str, owner: str,
                            seconds: float) -> WebhookState | None:
        # Not fsynced: a cursor lost to a power cut only means sending events again.
        now = self._clock()
        leased: WebhookState | None = await self._write(
            partial(local_webhooks.lease, endpoint_id, owner, now, now + seconds),
            durable=False)
        return leased

    async def save_webhook(self, state: WebhookState, owner: str) -> bool:
        return bool(await self._write(partial(local_webhooks.save, state, owner),
                                      durable=False))

    async def enable_webhook(self, endpoint_id: str) -> bool:
        return bool(await self._write(partial(local_webhooks.enable, endpoint_id)))

    # -- the admin API's keys (queue.apikeys) -------------------------------------------

    async def api_keys(self) -> list[ApiKey]:
        return [key_of(row) for row in await self._read_all(
            f"SELECT {KEY_COLUMNS} FROM api_keys ORDER BY created_at, id", [])]

    async def api_key(self, digest: str) -> ApiKey | None:
        rows = await self._read_all(f"SELECT {KEY_COLUMNS} FROM api_keys WHERE digest = ?",
                                    [digest])
        return key_of(rows[0]) if rows else None

    async def add_api_key(self, key: ApiKey) -> None:
        await self._write(partial(_execute, f"INSERT INTO api_keys ({KEY_COLUMNS}) "
                                  "VALUES (?, ?, ?, ?, ?, ?, ?)", key_values(key)))

    async def revoke_api_key(self, key_id: str) -> bool:
        return bool(await self._write(partial(
            _execute, "UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
            (self._clock(), key_id))))

    # -- the console's sessions (queue.apikeys) ----------------------------------------

    async def open_console_session(self, id_digest: str, token_digest: str, csrf: str,
                                   lifetime: float) -> None:
        now = self._clock()  # a sign-in lost in a power cut is only a sign-in: no fsync
        await self._write(partial(_open_session, (id_digest, token_digest, csrf,
                                                  now + lifetime), now), durable=False)

    async def console_session(self, id_digest: str) -> ConsoleSession | None:
        rows = await self._read_all(f"SELECT {SESSION_COLUMNS} FROM console_sessions "
                                    "WHERE id = ? AND expires_at > ?", [id_digest, self._clock()])
        return session_of(rows[0]) if rows else None

    async def close_console_sessions(self, id_digest: str = "", token_digest: str = ""
                                     ) -> int:
        return int(await self._write(partial(
            _execute, "DELETE FROM console_sessions WHERE id = ? OR token = ?",
            (id_digest, token_digest)), durable=False))


def _event_where(wanted: EventFilter) -> tuple[str, list[Any]]:
    """One writer commits in id order: an id read is never followed by a smaller one, so
    the cursor is the last id."""
    if wanted.after and not (wanted.after.isdigit() and len(wanted.after) < 19):
        raise ValueError("not a cursor of this queue")
    return filter_sql(wanted, lambda _: "?", ["e.id > ?"], [int(wanted.after or 0)])


def _execute(sql: str, params: Sequence[Any], db: sqlite3.Connection) -> int:
    return db.execute(sql, params).rowcount


def _open_session(values: tuple[str, str, str, float], now: float,
                  db: sqlite3.Connection) -> None:
    db.execute("DELETE FROM console_sessions WHERE expires_at <= ?", (now,))
    db.execute(f"INSERT INTO console_sessions ({SESSION_COLUMNS}) VALUES (?, ?, ?, ?)", values)


def _prune(before: float, db: sqlite3.Connection) -> int:
    return local_events.prune(before, db) + local_feedback.prune_return_paths(before, db)
