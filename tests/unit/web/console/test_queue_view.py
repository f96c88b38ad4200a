"""console.queue_view: one filter for what the queue page shows and what its bulk
actions act on; a table of cases."""

from __future__ import annotations

import pytest

from relay.queue import MessageInfo, RecipientInfo, State
from relay.web.console.queue_view import RECIPIENTS_SHOWN, QueueFilter, rows_of, states_of


def recipient(address: str, state: State) -> RecipientInfo:
    return RecipientInfo(address, state, 1, None, "")


@pytest.mark.parametrize("fields, problem, empty, description", [
    ({}, "", True, "every message in the queue"),
    ({"state": "deferred"}, "", False, "every message with a recipient deferred"),
    ({"domain": " Slow.Test "}, "", False, "every message with a recipient at slow.test"),
    ({"sender": "app", "age": "5"}, "", False,
     "every message with a sender containing 'app', received over 5 minutes ago"),
    ({"state": "delivered"}, ("state: 'delivered' is not one of queued, active, deferred, "
     "held"), False, None),
    ({"age": "-1"}, "age: give whole minutes", False, None),
])
def test_filters(fields: dict[str, str], problem: str, empty: bool,
                 description: str | None) -> None:
    wanted = QueueFilter.of(fields)
    assert (wanted.problem, wanted.empty) == (problem, empty)
    if description is not None:
        assert wanted.description() == description


def test_the_query_and_the_form_carry_the_same_filter() -> None:
    wanted = QueueFilter.of({"state": "held", "domain": "x.test", "sender": "a&b",
                             "age": "2"})
    assert wanted.query(now=1000.0) == {"state": State.HELD, "domain": "x.test",
                                        "sender": "a&b", "received_before": 880.0}
    assert wanted.as_query_string() == "state=held&domain=x.test&sender=a%26b&age=2"
    assert QueueFilter.of(wanted.fields()) == wanted


def test_a_row_shows_the_recipients_the_filter_is_about_and_counts_the_rest() -> None:
    recipients = ([recipient(f"r{n}@slow.test", State.DEFERRED) for n in range(25)]
                  + [recipient("a@fast.test", State.DELIVERED),
                     recipient("b@slow.test", State.HELD)])
    message = MessageInfo("ID", "app@sender.test", 100, 0.0, recipients)
    [row] = rows_of([message], QueueFilter(state="deferred"))
    assert [r.address for r in row.shown] == [f"r{n}@slow.test"
                                              for n in range(RECIPIENTS_SHOWN)]
    assert row.hidden == 25 - RECIPIENTS_SHOWN and row.total == 27
    assert row.states == [("deferred", 25), ("held", 1), ("delivered", 1)]
    [by_domain] = rows_of([message], QueueFilter(domain="fast.test"))
    assert [r.address for r in by_domain.shown] == ["a@fast.test"]
    assert states_of([]) == []
