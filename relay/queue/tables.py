"""queue.tables: the tables both backends keep alike, written once in queue.dialect's SQL
(the cold paths: the admin API's keys, the console's sessions, webhook endpoints and
their delivery state, the suppression list, VERP return paths, pruning). A backend mixes
SharedTables in and gives it its Sql; its migrations make the tables
(queue.local.schema, queue.postgres.schema).
"""

from __future__ import annotations

from collections.abc import Sequence
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
from relay.queue.base import (
    BROADCAST_STATUS_SELECT,
    FLUSHABLE,
    IDEMPOTENCY_WINDOW,
    LISTED,
    NOT_RECEIVING,
    RELEASABLE,
    REQUEUABLE,
    WAITING,
    BroadcastStatus,
    DomainShape,
    IdempotentAnswer,
    MessageInfo,
    QueueStats,
    ReturnPath,
    Selection,
    ShapeKey,
    State,
    Suppression,
    broadcast_status_of,
    broadcasts_page_sql,
    domain_shapes,
    like_pattern,
    messages_with_recipients,
    summary_sql,
)
from relay.queue.dialect import Sql, Statement
from relay.queue.events import (
    EVENT_COLUMNS,
    EVENT_FROM,
    HISTORY_COLUMNS,
    PRUNE_BATCH,
    EventType,
    MessageHistory,
    event_of,
    history_of,
)
from relay.queue.overview import Activity
from relay.queue.webhooks import (
    ENDPOINT_COLUMNS,
    STATE_COLUMNS,
    WebhookEndpoint,
    WebhookState,
    endpoint_of,
    events_json,
    state_of,
    state_values,
)

# Up to :batch rows of events, then of histories, of messages that left the queue before
# :before (a message still queued has finished_at NULL: never touched).
_PRUNE_EVENTS = ("DELETE FROM events WHERE id IN (SELECT e.id FROM events e JOIN history h "
                 "ON h.message_id = e.message_id WHERE h.finished_at < :before LIMIT :batch)")
_PRUNE_HISTORY = ("DELETE FROM history WHERE message_id IN (SELECT message_id FROM history h "
                  "WHERE finished_at < :before AND NOT EXISTS (SELECT 1 FROM events e "
                  "WHERE e.message_id = h.message_id) LIMIT :batch)")
_PRUNE_RETURN_PATHS = ("DELETE FROM return_paths WHERE token IN (SELECT token FROM "
                       "return_paths WHERE at < :before LIMIT :batch)")


class SharedTables:
    """ApiKeyStore, ConsoleSessionStore, WebhookStore, the operator's listings, the
    suppression list's reading and removal, return paths and pruning, on the backend's
    Sql."""

    _sql: Sql
    _live: str  # which rows of messages are still queued (the local backend marks first)

    # -- the operator's listings (queue.base) -------------------------------------------

    async def list_messages(
        self, state: State | None = None, domain: str | None = None, sender: str = "",
        received_before: float | None = None, limit: int | None = None
    ) -> list[MessageInfo]:
        dialect = self._sql.dialect
        conditions = [self._live, LISTED]
        if state is not None:
            conditions.append("id IN (SELECT message_id FROM recipients WHERE state = :state)")
        if domain is not None:
            conditions.append("id IN (SELECT message_id FROM recipients "
                              "WHERE domain = :domain)")
        if sender:
            conditions.append(f"mail_from {dialect.ilike} :sender ESCAPE '\\'")
        if received_before is not None:
            conditions.append("received_at <= :before")
        rows = await self._sql.read(
            f"SELECT id, mail_from, size, received_at FROM messages "
            f"WHERE {' AND '.join(conditions)} ORDER BY received_at, id LIMIT :limit",
            state=None if state is None else state.value,
            domain=None if domain is None else domain.lower(), sender=like_pattern(sender),
            before=received_before, limit=dialect.no_limit if limit is None else limit)
        return await self._with_recipients(rows)

    async def get_message(self, message_id: str) -> MessageInfo | None:
        rows = await self._sql.read(f"SELECT id, mail_from, size, received_at FROM messages "
                                    f"WHERE id = :id AND {self._live} AND {LISTED}",
                                    id=message_id)
        found = await self._with_recipients(rows)
        return found[0] if found else None

    async def _with_recipients(self, rows: Sequence[Sequence[Any]]) -> list[MessageInfo]:
        if not rows:
            return []
        dialect = self._sql.dialect
        recipients = await self._sql.read(
            "SELECT message_id, address, state, attempts, next_attempt_at, last_reply "
            f"FROM recipients WHERE message_id {dialect.one_of.format('ids')} ORDER BY id",
            ids=dialect.listed([row[0] for row in rows]))
        return messages_with_recipients(rows, recipients)

    async def stats(self) -> QueueStats:
        depth = {State(row[0]): int(row[1]) for row in await self._sql.read(
            f"SELECT state, COUNT(*) FROM recipients WHERE {WAITING} AND {NOT_RECEIVING} "
            "GROUP BY state")}
        [(oldest,)] = await self._sql.read(
            f"SELECT MIN(received_at) FROM messages WHERE {self._live} AND {LISTED}")
        return QueueStats(depth, None if oldest is None else float(oldest))

    async def summary(self, state: State | None = None,
                      by: ShapeKey = "recipient") -> list[DomainShape]:
        condition = f"r.{WAITING}" if state is None else "r.state = :state"
        rows = await self._sql.read(summary_sql(by, f"{condition} AND r.{NOT_RECEIVING}"),
                                    state=None if state is None else state.value)
        return domain_shapes(rows, by)

    # -- the admin API's keys (queue.apikeys) -------------------------------------------

    async def api_keys(self) -> list[ApiKey]:
        return [key_of(row) for row in await self._sql.read(
            f"SELECT {KEY_COLUMNS} FROM api_keys ORDER BY created_at, id")]

    async def api_key(self, digest: str) -> ApiKey | None:
        rows = await self._sql.read(f"SELECT {KEY_COLUMNS} FROM api_keys "
                                    "WHERE digest = :digest", digest=digest)
        return key_of(rows[0]) if rows else None

    async def add_api_key(self, key: ApiKey) -> None:
        names = KEY_COLUMNS.split(", ")
        await self._sql.write(Statement(
            f"INSERT INTO api_keys ({KEY_COLUMNS}) VALUES "
            f"({', '.join(':' + name for name in names)})",
            dict(zip(names, key_values(key), strict=True))))

    async def revoke_api_key(self, key_id: str) -> bool:
        [revoked] = await self._sql.write(Statement(
            "UPDATE api_keys SET revoked_at = :now WHERE id = :id AND revoked_at IS NULL",
            {"id": key_id}))
        return revoked.count > 0

    # -- the console's sessions (queue.apikeys) ----------------------------------------

    async def open_console_session(self, id_digest: str, token_digest: str, csrf: str,
                                   lifetime: float) -> None:
        # A sign-in lost in a power cut is only a sign-in: no fsync.
        await self._sql.write(
            Statement("DELETE FROM console_sessions WHERE expires_at <= :now"),
            Statement(f"INSERT INTO console_sessions ({SESSION_COLUMNS}) "
                      "VALUES (:id, :token, :csrf, :now + :lifetime)",
                      {"id": id_digest, "token": token_digest, "csrf": csrf,
                       "lifetime": lifetime}),
            durable=False)

    async def console_session(self, id_digest: str) -> ConsoleSession | None:
        rows = await self._sql.read(f"SELECT {SESSION_COLUMNS} FROM console_sessions "
                                    "WHERE id = :id AND expires_at > :now", id=id_digest)
        return session_of(rows[0]) if rows else None

    async def close_console_sessions(self, id_digest: str = "", token_digest: str = ""
                                     ) -> int:
        [closed] = await self._sql.write(Statement(
            "DELETE FROM console_sessions WHERE id = :id OR token = :token",
            {"id": id_digest, "token": token_digest}), durable=False)
        return closed.count

    # -- webhooks (queue.webhooks) -------------------------------------------------------

    async def webhook_endpoints(self) -> list[WebhookEndpoint]:
        return [endpoint_of(row) for row in await self._sql.read(
            f"SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints ORDER BY created_at, id")]

    async def add_webhook_endpoint(self, endpoint: WebhookEndpoint) -> None:
        await self._sql.write(
            Statement(f"INSERT INTO webhook_endpoints ({ENDPOINT_COLUMNS}) "
                      "VALUES (:id, :url, :events, :secret, :created_at)",
                      {"id": endpoint.id, "url": endpoint.url,
                       "events": events_json(endpoint.events), "secret": endpoint.secret,
                       "created_at": endpoint.created_at}),
            self._webhook_start(endpoint.id))

    async def remove_webhook_endpoint(self, endpoint_id: str) -> bool:
        _, removed = await self._sql.write(
            Statement("DELETE FROM webhook_state WHERE endpoint = :id", {"id": endpoint_id}),
            Statement("DELETE FROM webhook_endpoints WHERE id = :id", {"id": endpoint_id}))
        return removed.count > 0

    async def webhook_states(self) -> list[WebhookState]:
        return [state_of(row) for row in await self._sql.read(
            f"SELECT {STATE_COLUMNS} FROM webhook_state ORDER BY endpoint")]

    async def start_webhook(self, endpoint_id: str) -> None:
        await self._sql.write(self._webhook_start(endpoint_id), durable=False)

    def _webhook_start(self, endpoint_id: str) -> Statement:
        """An endpoint's state, if it has none: its events are those after the ones
        visible now (the events' cursor is each backend's: queue.dialect)."""
        return Statement("INSERT INTO webhook_state (endpoint, cursor) VALUES "
                         f"(:id, {self._sql.dialect.event_cursor}) ON CONFLICT DO NOTHING",
                         {"id": endpoint_id})

    async def lease_webhook(self, endpoint_id: str, owner: str,
                            seconds: float) -> WebhookState | None:
        """None while another owner's lease runs, or when the endpoint has no state
        (removed: its last round must not bring the row back). Not fsynced: a cursor
        lost to a power cut only means sending events again."""
        [leased] = await self._sql.write(Statement(
            "UPDATE webhook_state SET owner = :owner, lease_until = :now + :seconds "
            "WHERE endpoint = :id AND (owner = :owner OR lease_until < :now) "
            f"RETURNING {STATE_COLUMNS}",
            {"id": endpoint_id, "owner": owner, "seconds": seconds}), durable=False)
        return state_of(leased.rows[0]) if leased.rows else None

    async def save_webhook(self, state: WebhookState, owner: str) -> bool:
        names = STATE_COLUMNS.split(", ")[1:]  # state_values' order, after the endpoint
        [saved] = await self._sql.write(Statement(
            f"UPDATE webhook_state SET {', '.join(f'{n} = :{n}' for n in names)} "
            "WHERE endpoint = :endpoint AND owner = :owner",
            {**dict(zip(names, state_values(state), strict=True)),
             "endpoint": state.endpoint, "owner": owner}), durable=False)
        return saved.count > 0

    async def enable_webhook(self, endpoint_id: str) -> bool:
        """Deliver to a disabled endpoint again, from where it stopped."""
        [enabled] = await self._sql.write(Statement(
            "UPDATE webhook_state SET disabled_at = NULL, failing_since = NULL, "
            "attempts = 0, head_failing_since = NULL, next_attempt_at = 0 "
            "WHERE endpoint = :id", {"id": endpoint_id}))
        return enabled.count > 0

    async def flush(self, selection: Selection) -> int:
        return await self._queue_now(selection, FLUSHABLE, EventType.REQUEUED)

    async def requeue(self, selection: Selection) -> int:
        return await self._queue_now(selection, REQUEUABLE, EventType.REQUEUED)

    async def release(self, selection: Selection) -> int:
        return await self._queue_now(selection, RELEASABLE, EventType.RELEASED)

    async def _queue_now(self, selection: Selection, which: str, event: EventType) -> int:
        """Recipients of `selection` that match `which` to `queued`, due now, with `event`
        each; how many (each backend's own: the hot tables)."""
        raise NotImplementedError

    async def idempotent_answer(self, key: str) -> IdempotentAnswer | None:
        rows = await self._sql.read("SELECT digest, answer FROM idempotency WHERE key = :key "
                                    "AND created_at > :now - :window", key=key,
                                    window=IDEMPOTENCY_WINDOW)
        return IdempotentAnswer(rows[0][0], rows[0][1]) if rows else None

    # -- a message's history (queue.events) ---------------------------------------------

    async def history(self, message_id: str) -> MessageHistory | None:
        rows = await self._sql.read(
            f"SELECT {HISTORY_COLUMNS} FROM history WHERE message_id = :id", id=message_id)
        if not rows:
            return None
        events = await self._sql.read(f"SELECT {EVENT_COLUMNS} FROM {EVENT_FROM} "
                                      "WHERE e.message_id = :id ORDER BY e.id", id=message_id)
        return history_of(rows[0], [event_of(row) for row in events])

    # -- the operator's overview (queue.overview) ----------------------------------------

    async def activity(self, since: float, step: float) -> list[Activity]:
        return await overview.activity(self._sql, since, step)

    # -- broadcasts' listings (queue.base) ------------------------------------------------

    async def broadcast_status(self, broadcast_id: str) -> BroadcastStatus | None:
        found = await self._sql.read(f"{BROADCAST_STATUS_SELECT} WHERE b.id = :id",
                                     id=broadcast_id)
        return broadcast_status_of(found[0]) if found else None

    async def broadcasts(self, limit: int = 100, state: str | None = None,
                         after: tuple[float, str] | None = None) -> list[BroadcastStatus]:
        created, after_id = after if after is not None else (None, None)
        rows = await self._sql.read(broadcasts_page_sql(state, after), state=state,
                                    created=created, after_id=after_id, limit=limit)
        return [broadcast_status_of(row) for row in rows]

    # -- the suppression list and return paths (queue.base) ------------------------------

    async def suppressions(self, stream: str | None = None) -> list[Suppression]:
        where = "" if stream is None else "WHERE stream = :stream"
        rows = await self._sql.read(f"SELECT address, reason, created_at, stream FROM "
                                    f"suppressions {where} ORDER BY address, stream",
                                    stream=stream)
        return [Suppression(*row) for row in rows]

    async def unsuppress(self, address: str, stream: str | None = None) -> int:
        where = "" if stream is None else " AND stream = :stream"
        [removed] = await self._sql.write(Statement(
            f"DELETE FROM suppressions WHERE address = :address{where}",
            {"address": address.lower(), "stream": stream}))
        return removed.count

    async def return_path(self, token: str) -> ReturnPath | None:
        rows = await self._sql.read("SELECT token, message_id, recipient, stream FROM "
                                    "return_paths WHERE token = :token", token=token)
        return ReturnPath(*rows[0]) if rows else None

    # -- pruning (queue.events) ---------------------------------------------------------

    async def prune_history(self, before: float) -> int:
        removed = await self._prune(_PRUNE_EVENTS, before, PRUNE_BATCH)
        if removed < PRUNE_BATCH:
            removed += await self._prune(_PRUNE_HISTORY, before, PRUNE_BATCH - removed)
        return removed + await self._prune(_PRUNE_RETURN_PATHS, before, PRUNE_BATCH)

    async def _prune(self, sql: str, before: float, batch: int) -> int:
        # Not fsynced: what a power cut brings back is pruned again.
        [pruned] = await self._sql.write(Statement(sql, {"before": before, "batch": batch}),
                                         durable=False)
        return pruned.count

