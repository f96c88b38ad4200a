"""queue.postgres.groupcommit: writes committed many to a transaction.

Each SMTP session waits for its message to be committed before it answers 250, and each
delivery worker for its outcomes to be recorded. While one transaction is in flight, the
writes that arrive queue up; the next transaction takes all of them (group commit): a few
round trips and one WAL flush for a whole group rather than for every message. A group
that fails is tried again one write at a time, so one bad write fails alone; a database
that is down fails them all with LocalFailure (451 4.3.0 to a client, which tries again
later; a retry with a growing delay for outcomes).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Generic, TypeVar

import asyncpg

from relay.core.errors import LocalFailure
from relay.queue.base import IDEMPOTENCY_WINDOW, Idempotency, NewMessage, domain_of
from relay.queue.events import EventType
from relay.queue.postgres.events import add_events, open_histories
from relay.queue.postgres.notify import NOTIFY
from relay.queue.postgres.pool import NOW, describe

MAX_BATCH = 500
_Write = TypeVar("_Write")


class GroupCommit(Generic[_Write]):
    """Writes of one kind, committed together by `commit` (one transaction for a list)."""

    def __init__(self, commit: Callable[[list[_Write]], Awaitable[None]]) -> None:
        self._commit = commit
        self._waiting: list[tuple[_Write, asyncio.Future[None]]] = []
        self._running: asyncio.Task[None] | None = None

    async def submit(self, write: _Write) -> None:
        """Return once `write` is committed; LocalFailure if it could not be."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append((write, future))
        if self._running is None:
            self._running = asyncio.create_task(self._drain(), name="queue-group-commit")
        await future  # a caller that goes away cancels only its wait: the commit may land

    async def close(self) -> None:
        if self._running is not None:
            await self._running

    async def _drain(self) -> None:
        try:
            while self._waiting:
                batch, self._waiting = self._waiting[:MAX_BATCH], self._waiting[MAX_BATCH:]
                writes = [write for write, _ in batch]
                try:
                    await self._commit(writes)
                    failures: list[BaseException | None] = [None] * len(batch)
                except Exception as exc:
                    failures = [exc] if len(batch) == 1 else await self._singly(writes)
                for (_, future), failure in zip(batch, failures, strict=True):
                    if future.done():
                        continue
                    if failure is None:
                        future.set_result(None)
                    else:
                        future.set_exception(_local_failure(failure))
        finally:
            self._running = None

    async def _singly(self, writes: list[_Write]) -> list[BaseException | None]:
        failures: list[BaseException | None] = []
        for write in writes:
            try:
                await self._commit([write])
                failures.append(None)
            except Exception as exc:
                failures.append(exc)
        return failures


def message_commits(pool: asyncpg.Pool) -> GroupCommit[NewMessage]:
    """New messages, their recipients, history and `accepted` events, and Idempotency-Keys,
    many to a transaction."""

    async def commit(messages: list[NewMessage]) -> None:
        async with pool.acquire() as connection, connection.transaction():
            await connection.execute(
                "INSERT INTO messages (id, mail_from, size, received_at, smtputf8, body, "
                f"stream) SELECT id, mail_from, size, {NOW}, smtputf8, body, stream FROM "
                "unnest($1::text[], $2::text[], $3::integer[], $4::boolean[], $5::bytea[], "
                "$6::text[]) AS m(id, mail_from, size, smtputf8, body, stream)",
                [m.id for m in messages], [m.mail_from for m in messages],
                [len(m.data) for m in messages], [m.smtputf8 for m in messages],
                [m.data for m in messages], [m.tracking.stream for m in messages])
            owners = [(m.id, rcpt) for m in messages for rcpt in m.recipients]
            await connection.execute(
                "INSERT INTO recipients (message_id, address, domain, state, next_attempt_at) "
                f"SELECT message_id, address, domain, 'queued', {NOW} FROM unnest("
                "$1::text[], $2::text[], $3::text[]) AS r(message_id, address, domain)",
                [o[0] for o in owners], [o[1] for o in owners],
                [domain_of(o[1]) for o in owners])
            await open_histories(connection, [(m.id, m.mail_from, len(m.data), m.tracking)
                                              for m in messages])
            await add_events(connection, EventType.ACCEPTED, [(o[0], o[1], None) for o in owners])
            await connection.execute(NOTIFY)  # every node: new mail (on commit)
            keyed = [(m.idempotency, {"id": m.id, "recipients": len(m.recipients)})
                     for m in messages if m.idempotency is not None]
            if keyed:
                await remember_answer(connection, keyed)

    return GroupCommit(commit)



async def remember_answer(connection: asyncpg.Connection,
                          answers: Sequence[tuple[Idempotency, dict[str, Any]]]) -> None:
    """API answers kept for their Idempotency-Key, in the transaction of what they stored;
    keys older than the window go at the same time."""
    await connection.execute(f"DELETE FROM idempotency WHERE created_at < {NOW} - $1",
                             IDEMPOTENCY_WINDOW)
    await connection.executemany(
        f"INSERT INTO idempotency (key, digest, answer, created_at) VALUES ($1, $2, $3, {NOW})",
        [(key.key, key.digest, json.dumps(answer)) for key, answer in answers])


def _local_failure(exc: BaseException) -> LocalFailure:
    if isinstance(exc, LocalFailure):
        return exc
    return LocalFailure(f"queue database: {describe(exc)}")
