"""webhooks: every event (queue.events) POSTed to the application's endpoints, signed per
the Standard Webhooks specification, at least once, without ever holding up mail.

Endpoints come from `[[webhooks]]` in relay.toml and from `POST /v1/webhooks`. Each one
is served by one node at a time (its state's lease, queue.webhooks), in event order: a
batch of events is POSTed, `max_in_flight` at once, the cursor moves past the leading
ones the endpoint answered with 2xx, and the rest is sent again after a growing
delay (min_backoff doubling to max_backoff), so one event can arrive more than once,
always with the same `webhook-id` and body. An event that keeps failing for
`give_up_after` is dropped (logged, counted); an endpoint that answers nothing but
failures for `disable_after` is disabled (logged, a metric) until an operator enables it.
Delivery runs in tasks of its own and only reads the events: a dead endpoint costs the
mail nothing.

Signing (Standard Webhooks): `webhook-signature: v1,<base64 HMAC-SHA256 of
"{webhook-id}.{webhook-timestamp}.{body}">`, the key being the base64 part of the
endpoint's `whsec_...` secret.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import httpx

from relay.config import WebhookSection
from relay.core.errors import ConfigError
from relay.queue.events import Event, EventFilter, event_id
from relay.queue.roles import EventHistory, WebhookStore
from relay.queue.webhooks import WebhookEndpoint, WebhookState
from relay.runtime.metrics import Metrics
from relay.runtime.trouble import Trouble

log = logging.getLogger("relay.webhooks")

SECRET_PREFIX = "whsec_"
LEASE = 30.0  # seconds a node holds an endpoint without renewing
POLL_INTERVAL = 1.0  # seconds between looks for new events
REFRESH_INTERVAL = 5.0  # seconds between looks for endpoints added or removed by the API
REQUEST_TIMEOUT = 10.0  # seconds a POST may take
BATCH = 100  # events read at a time (sent max_in_flight at once)
PENDING_INTERVAL = 10.0  # seconds between counts of an endpoint's pending events
PENDING_CAP = 100_000  # counted up to this many


class Outbox(WebhookStore, EventHistory, Protocol):
    """The queue as webhooks use it: the endpoints' states and the events to send."""


@dataclass(frozen=True)
class Schedule:
    """How an endpoint's failures are retried (WebhookSection's durations)."""

    max_in_flight: int = 4
    min_backoff: float = 10.0
    max_backoff: float = 3600.0
    give_up_after: float = 86400.0
    disable_after: float = 3 * 86400.0


# -- signing ---------------------------------------------------------------------------

def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(24)).decode()


def signature(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    key = base64.b64decode(secret.removeprefix(SECRET_PREFIX))
    signed = f"{message_id}.{timestamp}.".encode() + body
    digest = hmac.new(key, signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def payload(event: Event) -> bytes:
    """The body for an event: the same bytes every time it is sent."""
    stamp = datetime.fromtimestamp(event.at, UTC).isoformat().replace("+00:00", "Z")
    return json.dumps({"type": event.type.value, "timestamp": stamp, "data": event.to_json()},
                      separators=(",", ":")).encode()


def read_secret(hook: WebhookSection) -> str:
    path = Path(hook.secret_file)
    try:
        secret = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"webhooks: {path}: {exc.strerror}") from exc
    try:
        valid = secret.startswith(SECRET_PREFIX) and bool(
            base64.b64decode(secret.removeprefix(SECRET_PREFIX), validate=True))
    except ValueError:
        valid = False
    if not valid:
        raise ConfigError(f"webhooks: {path}: not a secret of the form whsec_<base64> "
                          "(make one with `relayctl webhooks secret`)")
    return secret


def url_problem(url: str) -> str | None:
    """Why `url` cannot be POSTed to (as httpx parses it), or None."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, ValueError, TypeError) as exc:
        return f"not a URL: {exc}"
    if parsed.scheme not in ("http", "https") or not parsed.host:
        return "not an http or https URL with a host"
    return None


def configured_endpoints(hooks: list[WebhookSection]) -> list[tuple[WebhookEndpoint, Schedule]]:
    """[[webhooks]] of relay.toml; each is known by a digest of its URL, so its place in
    the events survives restarts and edits of its other keys."""
    found = []
    for hook in hooks:
        problem = url_problem(hook.url)
        if problem is not None:
            raise ConfigError(f"webhooks: url {hook.url!r}: {problem}")
        digest = hashlib.sha256(hook.url.encode()).hexdigest()[:16]
        endpoint = WebhookEndpoint(f"cfg_{digest}", hook.url, tuple(hook.events),
                                   read_secret(hook), from_config=True)
        found.append((endpoint, Schedule(hook.max_in_flight, hook.min_backoff,
                                         hook.max_backoff, hook.give_up_after,
                                         hook.disable_after)))
    return found


# -- what a batch's answers do to an endpoint's state (pure) -----------------------------

@dataclass(frozen=True)
class Advance:
    state: WebhookState
    dropped: Event | None = None  # given up on
    disabled: bool = False  # just now


def advance(state: WebhookState, sent: Sequence[Event], delivered: Sequence[bool],
            now: float, schedule: Schedule) -> Advance:
    """The state after POSTing `sent` (events after state.cursor, in order), of which
    `delivered` got a 2xx."""
    done = next((i for i, ok in enumerate(delivered) if not ok), len(sent))
    if done == len(sent):
        return Advance(replace(state, cursor=sent[-1].position, attempts=0,
                               head_failing_since=None, failing_since=None,
                               next_attempt_at=0.0))
    head_since = state.head_failing_since if done == 0 else None
    state = replace(state, cursor=sent[done - 1].position if done else state.cursor,
                    attempts=(state.attempts if done == 0 else 0) + 1,
                    head_failing_since=head_since if head_since is not None else now,
                    failing_since=(None if any(delivered) else state.failing_since or now))
    dropped = None
    if now - (state.head_failing_since or now) >= schedule.give_up_after:
        dropped = sent[done]
        state = replace(state, cursor=dropped.position, attempts=0, head_failing_since=None)
    delay = min(schedule.max_backoff, schedule.min_backoff * 2.0 ** max(state.attempts - 1, 0))
    state = replace(state, next_attempt_at=now + delay)
    if state.failing_since is not None and now - state.failing_since >= schedule.disable_after:
        return Advance(replace(state, disabled_at=now), dropped, disabled=True)
    return Advance(state, dropped)


# -- delivery ----------------------------------------------------------------------------

@dataclass
class _Held:
    """An endpoint's state as this node last leased or saved it."""

    state: WebhookState | None = None
    leased_at: float = 0.0  # time.monotonic() of the last lease


class WebhookDispatcher:
    def __init__(self, queue: Outbox, configured: list[tuple[WebhookEndpoint, Schedule]],
                 owner: str, metrics: Metrics, clock: Callable[[], float] = time.time,
                 poll_interval: float = POLL_INTERVAL) -> None:
        self._queue = queue
        self._configured = configured
        self._owner = owner
        self._metrics = metrics
        self._clock = clock
        self._poll = poll_interval
        self._serving: dict[str, asyncio.Task[None]] = {}
        self._supervisor: asyncio.Task[None] | None = None
        self._http: httpx.AsyncClient | None = None
        self._counted: dict[str, float] = {}  # endpoint: when its pending events were counted

    async def prepare(self) -> None:
        """Give every endpoint of relay.toml its place in the events, before mail flows:
        a new one gets every event from this start on."""
        for endpoint, _ in self._configured:
            await self._queue.start_webhook(endpoint.id)

    def start(self) -> None:
        self._http = httpx.AsyncClient(timeout=REQUEST_TIMEOUT, follow_redirects=False)
        self._supervisor = asyncio.create_task(self._supervise(), name="webhooks")

    async def stop(self) -> None:
        tasks = [t for t in (self._supervisor, *self._serving.values()) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._serving.clear()
        if self._http is not None:
            await self._http.aclose()

    async def _supervise(self) -> None:
        trouble = Trouble("reading webhook endpoints", log)
        while True:
            try:
                added = await self._queue.webhook_endpoints()
            except Exception as exc:
                await asyncio.sleep(trouble.failed(exc))
                continue
            trouble.succeeded()
            wanted = {e.id: (e, s) for e, s in self._configured}
            wanted.update((e.id, (e, Schedule())) for e in added)
            for gone in set(self._serving) - set(wanted):
                self._serving.pop(gone).cancel()
            for endpoint_id, (endpoint, schedule) in wanted.items():
                if endpoint_id not in self._serving:
                    self._serving[endpoint_id] = asyncio.create_task(
                        self._serve(endpoint, schedule), name=f"webhook-{endpoint_id}")
            await asyncio.sleep(REFRESH_INTERVAL)

    async def _serve(self, endpoint: WebhookEndpoint, schedule: Schedule) -> None:
        trouble = Trouble(f"delivering events to webhook {endpoint.id}", log)
        held = _Held()
        while True:
            try:
                pause = await self._round(endpoint, schedule, held)
                trouble.succeeded()
            except Exception as exc:  # the queue cannot be read or written now
                held.state = None  # read it again with the lease
                pause = trouble.failed(exc)
            await asyncio.sleep(pause)

    async def _round(self, endpoint: WebhookEndpoint, schedule: Schedule,
                     held: _Held) -> float:
        """Send the next batch if it is due; how long to wait before the next round."""
        label = endpoint.id
        if held.state is None or time.monotonic() - held.leased_at > LEASE / 3:
            held.state = await self._queue.lease_webhook(endpoint.id, self._owner, LEASE)
            held.leased_at = time.monotonic()
        state = held.state
        if state is None or state.disabled_at is not None:  # another node's, or disabled
            self._metrics.webhook_disabled.labels(label).set(state is not None)
            held.state = None
            return LEASE / 3
        self._metrics.webhook_disabled.labels(label).set(0)
        now = self._clock()
        if state.next_attempt_at > now:
            return min(state.next_attempt_at - now, LEASE / 3)
        wanted = EventFilter(types=endpoint.events, after=state.cursor, limit=BATCH)
        page = await self._queue.events(wanted)
        if now - self._counted.get(label, 0.0) >= PENDING_INTERVAL or not page.events:
            self._counted[label] = now
            self._metrics.webhook_pending.labels(label).set(
                await self._queue.count_events(wanted, PENDING_CAP) if page.events else 0)
        if not page.events:
            self._metrics.webhook_oldest.labels(label).set(0)
            return self._poll
        self._metrics.webhook_oldest.labels(label).set(max(0.0, now - page.events[0].at))
        in_flight = asyncio.Semaphore(schedule.max_in_flight)
        failures = await asyncio.gather(*(self._post(endpoint, e, in_flight)
                                          for e in page.events))
        delivered = [failure is None for failure in failures]
        result = advance(state, page.events, delivered, self._clock(), schedule)
        self._report(endpoint, schedule, state, result, failures)
        saved = await self._queue.save_webhook(result.state, self._owner)
        held.state = result.state if saved else None  # not saved: the lease went elsewhere
        return 0.0 if all(delivered) else self._poll

    def _report(self, endpoint: WebhookEndpoint, schedule: Schedule, before: WebhookState,
                result: Advance, failures: Sequence[str | None]) -> None:
        """Log lines and metrics for a change: failing, answering again, an event given
        up on, the endpoint disabled."""
        if before.failing_since is None and result.state.failing_since is not None:
            log.warning("webhook %s (%s) failing: %s; retrying with backoff", endpoint.id,
                        endpoint.url, next(f for f in failures if f is not None))
        elif before.failing_since is not None and result.state.failing_since is None:
            log.warning("webhook %s (%s) answers again", endpoint.id, endpoint.url)
        if result.dropped is not None:
            self._metrics.webhook_dropped.labels(endpoint.id).inc()
            log.error("webhook %s: event %s given up on after failing for %.0fs", endpoint.id,
                      event_id(result.dropped.id), schedule.give_up_after)
        if result.disabled:
            log.error("webhook %s (%s) disabled: no 2xx answer for %.0fs; enable it with "
                      "relayctl webhooks enable %s", endpoint.id, endpoint.url,
                      schedule.disable_after, endpoint.id)

    async def _post(self, endpoint: WebhookEndpoint, event: Event,
                    in_flight: asyncio.Semaphore) -> str | None:
        """POST one event; None when the endpoint took it (2xx), else why not."""
        assert self._http is not None
        body = payload(event)
        message_id = event_id(event.id)
        try:
            async with in_flight:
                stamp = int(self._clock())
                headers = {"content-type": "application/json", "webhook-id": message_id,
                           "webhook-timestamp": str(stamp), "user-agent": "relay-webhooks",
                           "webhook-signature": signature(endpoint.secret, message_id, stamp,
                                                          body)}
                response = await self._http.post(endpoint.url, content=body, headers=headers)
            failure = None if 200 <= response.status_code < 300 else (
                f"HTTP {response.status_code}")
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            failure = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        self._metrics.webhook_requests.labels(
            endpoint.id, "failed" if failure else "delivered").inc()
        return failure


def describe(endpoints: Sequence[WebhookEndpoint], states: Sequence[WebhookState]
             ) -> list[dict[str, Any]]:
    """GET /v1/webhooks: each endpoint with how its delivery stands."""
    by_endpoint = {s.endpoint: s for s in states}
    listed = []
    for endpoint in endpoints:
        state = by_endpoint.get(endpoint.id)
        listed.append({**endpoint.to_json(),
                       "disabled_at": state.disabled_at if state else None,
                       "failing_since": state.failing_since if state else None,
                       "attempts": state.attempts if state else 0})
    return listed

