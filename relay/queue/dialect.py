"""queue.dialect: SQL written once for both backends, the one way they share it.

A statement names its values (`:name`) and says `:now` for the current time. Each
backend's Dialect writes it the way its driver and its clock want: SQLite's `?`, with the
node's own clock as a value; PostgreSQL's `$n`, with the database's clock, so that every
node of a cluster reads the same time. Builders that add conditions one at a time
(filters, pages) take a Params, which numbers them the same way.

Only the cold paths share SQL (keys, sessions, webhooks, suppressions, listings); the hot
ones (claim, record, index) are each backend's own, as measured (bench/README.md).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

_NAMED = re.compile(r"(?<![:\w]):([a-z_][a-z0-9_]*)")


@dataclass(frozen=True)
class Dialect:
    numbered: bool  # `$1, $2` (asyncpg) rather than `?` (sqlite3)
    now: str | None  # the SQL of the current time; None: the caller's clock, as a value
    # The events' cursor as of now (queue.events: a position in each backend's order).
    event_cursor: str
    integer: str  # the whole part of a number that is not negative, around {}
    ilike: str  # LIKE without regard to case (SQLite's LIKE folds ASCII case)
    no_limit: Any  # a LIMIT's value for none
    one_of: str  # `column <one_of>`: in the list of texts named {} (given as `listed`)
    listed: Callable[[Sequence[Any]], Any]

    def placeholder(self, n: int) -> str:
        """The n-th value (1-based)."""
        return f"${n}" if self.numbered else "?"

    def statement(self, sql: str, values: Mapping[str, Any], now: float | None = None
                  ) -> tuple[str, list[Any]]:
        """`sql` with its `:name`s as this dialect's placeholders, and their values in
        order; `:now` is the database's clock, or `now` where the caller keeps time."""
        params = Params(self)
        numbers: dict[str, str] = {}

        def written(match: re.Match[str]) -> str:
            name = match.group(1)
            if name == "now" and self.now is not None:
                return self.now
            if name not in numbers or not self.numbered:
                numbers[name] = params(now if name == "now" else values[name])
            return numbers[name]

        return _NAMED.sub(written, sql), params.values


@dataclass
class Params:
    """Values added one at a time, each returning its placeholder."""

    dialect: Dialect
    values: list[Any] = field(default_factory=list)

    def __call__(self, value: Any) -> str:
        self.values.append(value)
        return self.dialect.placeholder(len(self.values))


DATABASE_NOW = "extract(epoch from clock_timestamp())"  # PostgreSQL's clock, in seconds
SQLITE = Dialect(numbered=False, now=None,
                 event_cursor="(SELECT CAST(COALESCE(MAX(id), 0) AS TEXT) FROM events)",
                 integer="CAST({} AS INTEGER)", ilike="LIKE", no_limit=-1,
                 one_of="IN (SELECT value FROM json_each(:{}))", listed=json.dumps)
POSTGRES = Dialect(numbered=True, now=DATABASE_NOW,
                   event_cursor="pg_snapshot_xmin(pg_current_snapshot())::text || '.0'",
                   integer="floor({})::bigint",  # a cast would round
                   ilike="ILIKE", no_limit=None, one_of="= ANY(:{}::text[])", listed=list)


@dataclass(frozen=True)
class Statement:
    sql: str
    values: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Written:
    """What one statement of a write did: rows changed, and those it returned."""

    count: int
    rows: Sequence[Sequence[Any]] = ()


class Sql(Protocol):
    """A backend's way to run shared statements."""

    dialect: Dialect

    async def read(self, sql: str, **values: Any) -> Sequence[Sequence[Any]]: ...

    async def write(self, *statements: Statement, durable: bool = True) -> list[Written]:
        """The statements in one transaction; `durable=False`: what a power cut may lose
        (a lease, a sign-in) is not worth an fsync on the local backend."""
