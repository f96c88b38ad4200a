"""metrics: what `GET /metrics` exposes (prometheus-client), in one registry per relay.

Counters are bumped where things happen (intake, SMTP session end, delivery outcome);
queue depth, oldest message and spool space are read from the queue when Prometheus
scrapes. Ingest worker processes count their SMTP sessions and send the counts to the main
process (queue.local.handoff), which owns the registry. Destination domains are a label with
bounded cardinality: the first `DOMAIN_LABELS` domains seen keep their name, every later
one is counted as "other", so a bulk send to a million domains cannot blow up Prometheus.
"""

from __future__ import annotations

from collections.abc import Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from relay.core.mailstates import State

DOMAIN_LABELS = 200
CONTENT_TYPE = CONTENT_TYPE_LATEST
# Seconds from receipt to delivery: from a hop on loopback to a day of retries.
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 14400,
                   86400)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        registry = self.registry
        self.received = Counter(
            "relay_messages_received", "Messages accepted into the queue (SMTP, HTTP, DSNs).",
            registry=registry)
        self.outcomes = Counter(
            "relay_delivery_outcomes", "Delivery attempts per recipient, by result and "
            "destination domain.", ["result", "domain"], registry=registry)
        self.latency = Histogram(
            "relay_delivery_latency_seconds", "Time from receipt to delivery, per recipient.",
            buckets=LATENCY_BUCKETS, registry=registry)
        self.sessions = Counter(
            "relay_smtp_sessions", "SMTP sessions served, by whether they used TLS.",
            ["tls"], registry=registry)
        self.queue_depth = Gauge(
            "relay_queue_recipients", "Recipients in the queue, by state.", ["state"],
            registry=registry)
        self.oldest_age = Gauge(
            "relay_queue_oldest_message_age_seconds", "Age of the oldest queued message.",
            registry=registry)
        self.spool_free = Gauge(
            "relay_spool_free_bytes", "Free space on the spool's file system.",
            registry=registry)
        self.leased = Gauge(
            "relay_node_leased_recipients", "Recipients this node holds leases on (being "
            "delivered or about to be); relay_queue_recipients is the whole queue's, every "
            "node's with the postgres backend.", registry=registry)
        self.mta_sts_fetches = Counter(
            "relay_mta_sts_policy_fetches", "MTA-STS policy fetches, by result (ok, failed).",
            ["result"], registry=registry)
        self.webhook_requests = Counter(
            "relay_webhook_requests", "Webhook POSTs per endpoint, by result (delivered: a "
            "2xx answer; failed: anything else, retried).", ["endpoint", "result"],
            registry=registry)
        self.webhook_dropped = Counter(
            "relay_webhook_events_dropped", "Events given up on after failing for "
            "give_up_after, per endpoint.", ["endpoint"], registry=registry)
        self.webhook_pending = Gauge(
            "relay_webhook_pending_events", "Events waiting for an endpoint (counted every "
            "10 s, up to 100,000), per endpoint.", ["endpoint"], registry=registry)
        self.webhook_oldest = Gauge(
            "relay_webhook_oldest_pending_age_seconds", "Age of the oldest event waiting for "
            "an endpoint.", ["endpoint"], registry=registry)
        self.webhook_disabled = Gauge(
            "relay_webhook_disabled", "1 for an endpoint disabled after failing for "
            "disable_after.", ["endpoint"], registry=registry)
        self.feedback = Counter(
            "relay_feedback", "Mail that came back (relay.feedback), by what it was: "
            "bounced, complained, unsubscribed, or dropped (matched nothing).", ["kind"],
            registry=registry)
        self._domains: set[str] = set()

    def domain_label(self, domain: str) -> str:
        if domain in self._domains:
            return domain
        if len(self._domains) < DOMAIN_LABELS:
            self._domains.add(domain)
            return domain
        return "other"

    def delivery(self, result: State, domain: str, latency: float | None = None) -> None:
        self.outcomes.labels(result.value, self.domain_label(domain)).inc()
        if latency is not None:
            self.latency.observe(latency)

    def feedback_taken(self, kind: str) -> None:
        self.feedback.labels(kind).inc()

    def mta_sts_fetched(self, ok: bool) -> None:
        self.mta_sts_fetches.labels("ok" if ok else "failed").inc()

    def sessions_ended(self, plain: int, tls: int) -> None:
        if plain:
            self.sessions.labels("no").inc(plain)
        if tls:
            self.sessions.labels("yes").inc(tls)

    def queue_state(self, depth: Mapping[State, int], oldest_age: float,
                    spool_free: int | None, leased: int) -> None:
        for state in State:
            if state not in (State.DELIVERED, State.BOUNCED):
                self.queue_depth.labels(state.value).set(depth.get(state, 0))
        self.oldest_age.set(oldest_age)
        self.leased.set(leased)
        if spool_free is not None:
            self.spool_free.set(spool_free)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
