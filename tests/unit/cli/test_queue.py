from __future__ import annotations

from relay.cli.queue import format_mailq, format_qshape, still_queued


def test_empty_queue() -> None:
    assert format_mailq([]) == "Mail queue is empty"


def test_mailq_layout_marks_held_and_active() -> None:
    def rcpt(address: str, state: str, reply: str = "") -> dict[str, object]:
        return {"address": address, "state": state, "attempts": 1, "next_attempt_at": None,
                "last_reply": reply}

    messages = [
        {"id": "AAA", "from": "app@sender.test", "size": 2048, "received_at": 0,
         "recipients": [rcpt("a@x.test", "deferred", "451 4.2.0 later"),
                        rcpt("done@x.test", "delivered", "250 ok")]},
        {"id": "BBB", "from": "", "size": 1024, "received_at": 0,
         "recipients": [rcpt("b@y.test", "held")]},
        {"id": "CCC", "from": "c@sender.test", "size": 1024, "received_at": 0,
         "recipients": [rcpt("c@y.test", "active")]},
    ]
    lines = format_mailq(still_queued(messages)).splitlines()
    assert lines[0].startswith("-Queue ID-")
    assert lines[1].startswith("AAA ") and lines[1].endswith("app@sender.test")
    assert lines[2].strip() == "(451 4.2.0 later)" and lines[3].strip() == "a@x.test"
    assert "done@x.test" not in "\n".join(lines)
    assert any(line.startswith("BBB!") and line.endswith("MAILER-DAEMON") for line in lines)
    assert any(line.startswith("CCC*") for line in lines)
    assert lines[-1] == "-- 4 Kbytes in 3 Requests."


def test_qshape_layout() -> None:
    summary = {"age_buckets_minutes": [5, 10, 20],
               "domains": [{"domain": "gmail.example", "total": 120, "by_age": [100, 0, 15, 5]},
                           {"domain": "x.test", "total": 1, "by_age": [0, 1, 0, 0]}]}
    assert format_qshape(summary).splitlines() == [
        "                T   5 10 20 20+",
        "        TOTAL 121 100  1 15   5",
        "gmail.example 120 100  0 15   5",
        "       x.test   1   0  1  0   0",
    ]
