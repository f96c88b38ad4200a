"""Log formats, metric labels and the sd_notify client, each against a real peer."""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from relay.queue import State
from relay.runtime.logsetup import JsonFormatter
from relay.runtime.metrics import DOMAIN_LABELS, Metrics
from relay.runtime.sdnotify import Notifier


def test_json_log_line_has_the_facts_of_a_text_line() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.LogRecord("relay.delivery", logging.ERROR, __file__, 1,
                                   "%s: to=<%s>, status=deferred", ("QID", "a\u00e9@x.test"),
                                   sys.exc_info())
    entry = json.loads(JsonFormatter().format(record))
    assert entry["level"] == "error" and entry["logger"] == "relay.delivery"
    assert entry["message"] == "QID: to=<a\u00e9@x.test>, status=deferred"
    assert entry["pid"] == os.getpid() and entry["time"].endswith("+00:00")
    assert "ValueError: boom" in entry["exception"]


def test_destination_domains_are_a_bounded_label() -> None:
    metrics = Metrics()
    for n in range(DOMAIN_LABELS + 50):
        metrics.delivery(State.DELIVERED, f"d{n}.test", latency=0.2)
    metrics.delivery(State.BOUNCED, "d0.test")
    families = {f.name: f for f in text_string_to_metric_families(
        metrics.exposition().decode())}
    outcomes = {(s.labels["result"], s.labels["domain"]): s.value
                for s in families["relay_delivery_outcomes"].samples
                if s.name.endswith("_total")}
    assert len({domain for _, domain in outcomes}) == DOMAIN_LABELS + 1  # and "other"
    assert outcomes[("delivered", "other")] == 50
    assert outcomes[("bounced", "d0.test")] == 1
    latency = {s.name: s.value for s in families["relay_delivery_latency_seconds"].samples}
    assert latency["relay_delivery_latency_seconds_count"] == DOMAIN_LABELS + 50


def test_notifier_sends_datagrams_to_the_notify_socket(tmp_path: Path) -> None:
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(tmp_path / "notify"))
    listener.settimeout(5)
    notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "notify")})
    notifier.ready()
    notifier.status("queue: 3 recipients waiting")
    notifier.stopping()
    assert listener.recv(256) == b"READY=1"
    assert listener.recv(256) == b"STATUS=queue: 3 recipients waiting"
    assert listener.recv(256) == b"STOPPING=1\nSTATUS=stopping"
    notifier.close()
    listener.close()


def test_notifier_reaches_an_abstract_socket_and_is_silent_without_one() -> None:
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    name = f"relay-test-{os.getpid()}"
    listener.bind("\0" + name)
    listener.settimeout(5)
    Notifier({"NOTIFY_SOCKET": "@" + name}).ready()
    assert listener.recv(256) == b"READY=1"
    listener.close()
    silent = Notifier({})
    assert not silent.enabled
    silent.ready()  # nothing to send to, nothing raised
