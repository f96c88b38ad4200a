"""queue.dialect: one statement, written for each backend's driver and clock."""

from __future__ import annotations

import pytest

from relay.queue.dialect import POSTGRES, SQLITE, Params

STATEMENT = ("UPDATE webhook_state SET owner = :owner, lease_until = :now + :seconds "
             "WHERE endpoint = :id::text AND (owner = :owner OR lease_until < :now)")


def test_sqlite_takes_every_value_in_order_and_the_callers_clock() -> None:
    sql, params = SQLITE.statement(STATEMENT, {"owner": "n1", "seconds": 30, "id": "e"},
                                   now=100.0)
    assert sql == ("UPDATE webhook_state SET owner = ?, lease_until = ? + ? "
                   "WHERE endpoint = ?::text AND (owner = ? OR lease_until < ?)")
    assert params == ["n1", 100.0, 30, "e", "n1", 100.0]


def test_postgres_numbers_each_name_once_and_reads_its_own_clock() -> None:
    sql, params = POSTGRES.statement(STATEMENT, {"owner": "n1", "seconds": 30, "id": "e"})
    assert sql == (f"UPDATE webhook_state SET owner = $1, lease_until = {POSTGRES.now} + $2 "
                   f"WHERE endpoint = $3::text AND (owner = $1 OR lease_until < {POSTGRES.now})")
    assert params == ["n1", 30, "e"]


def test_a_value_the_statement_names_but_nobody_gave_is_an_error() -> None:
    with pytest.raises(KeyError):
        SQLITE.statement("SELECT 1 WHERE a = :missing", {})


def test_params_added_one_by_one_are_numbered_in_turn() -> None:
    params = Params(POSTGRES)
    assert [params("a"), params("b")] == ["$1", "$2"]
    assert params.values == ["a", "b"]
    assert Params(SQLITE)("a") == "?"
