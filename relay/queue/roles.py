"""queue.roles: what the queue offers, as Protocols, one per consumer's need: each stage
is typed by the role it uses (cleanup a MessageStore, the scheduler a DeliveryQueue, the
notify stage a WebhookStore...), so a fake of just that role can stand in for it.
`Queue` is their union, what a backend implements (queue.local, queue.postgres), checked
by the contract suites for both, one per role (tests/integration/queue/). What differs
between backends at start-up is asked as Capabilities. The contract is
docs/architecture.md's "The queue contract"; the records are queue.base's and its
siblings'."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from relay.core.ratelimit import RateLimiter
from relay.queue.apikeys import ApiKey, ConsoleSession
from relay.queue.base import (
    EVERY_STREAM,
    NO_TRACKING,
    BroadcastStatus,
    Claimed,
    DomainShape,
    Idempotency,
    IdempotentAnswer,
    MessageInfo,
    MessageMeta,
    NewMessage,
    Outcome,
    QueueStats,
    ReturnPath,
    Selection,
    ShapeKey,
    State,
    Suppression,
    Tracking,
)
from relay.queue.events import EventFilter, EventPage, Feedback, MessageHistory
from relay.queue.overview import Activity, LeaseHolder, NodeInfo
from relay.queue.webhooks import WebhookEndpoint, WebhookState


class MessageStore(Protocol):
    """What cleanup needs to store a new message."""

    async def store(self, message: NewMessage) -> None:
        """Durably store a message; raise LocalFailure if it could not be."""


class NewMailTaker(Protocol):
    """What the backend tells of new mail (the scheduler)."""

    def room(self) -> int:
        """How many more recipients it would take now."""

    def take_claimed(self, claimed: list[Claimed]) -> None: ...

    def wake(self) -> None:
        """Look for due work now."""


class Indexer(Protocol):
    """A backend whose new mail other processes may write, to be indexed by this one
    (the local backend's ingest workers: queue.local.handoff)."""

    async def index(self, meta: MessageMeta, received_at: float, durable: bool = False,
                    body: bytes | None = None) -> None: ...


class Capabilities(Protocol):
    """What differs between the backends when the relay starts, asked for by the
    composition root instead of asking which backend it has."""

    owner: str  # who holds this node's leases (a cluster node's name and run)

    def follow_new_mail(self, taker: NewMailTaker) -> None:
        """From now on tell `taker` of new work: the local backend claims new mail for it
        in the commit that indexes it; the cluster's wakes it when any node makes work
        due (LISTEN/NOTIFY) and when this node stores mail."""

    def shared_rate_limits(self) -> RateLimiter | None:
        """Rate limits counted for every node that shares the queue; None when this
        node's own count is the whole count."""

    def free_bytes(self) -> int | None:
        """Free space where new mail is written, when the relay can tell (not for a
        database on another host)."""

    def indexer(self) -> Indexer | None:
        """Where ingest worker processes have their new mail indexed; None when the
        backend takes mail in the main process only."""


class QueueLifecycle(Protocol):
    """The store's life, the composition root's: open (and recover), readiness, close."""

    async def open(self) -> None:
        """Create or recover the store; in-flight recipients return to the queue."""

    async def close(self) -> None: ...

    async def check(self) -> None:
        """Raise LocalFailure when the store cannot be used now (a database that cannot be
        reached): what readiness probes ask."""


class BodyReader(Protocol):
    """A queued message's content, as it was received."""

    async def read_body(self, message_id: str) -> bytes: ...


class DeliveryQueue(BodyReader, Protocol):
    """What the scheduler and delivery need: due work leased, leases and connection
    slots kept, the body to send."""

    async def claim_due(self, limit: int) -> list[Claimed]:
        """Lease up to `limit` due recipients and count the attempt."""

    async def renew_leases(self, claims: Sequence[tuple[int, int]]) -> None:
        """Extend the leases of (recipient_id, attempt) claims still being worked on."""

    async def return_leases(self, claims: Sequence[tuple[int, int]]) -> None:
        """Give (recipient_id, attempt) claims back unworked: due again now."""

    async def take_slot(self, destination: str, limit: int) -> str | None:
        """A connection slot for `destination`, counted across every node that shares the
        queue (at most `limit` at once), leased like recipients; its token, or None when
        all are taken. A single node's backend needs none: its scheduler counts."""

    async def renew_slots(self) -> None:
        """Extend the leases of the slots this node holds."""

    async def release_slot(self, token: str) -> None: ...

    async def next_due_at(self) -> float | None:
        """When the earliest queued or deferred recipient (or lease) becomes due."""


class OutcomeStore(Protocol):
    """Where the outcomes of delivery attempts are written (outcomes)."""

    async def record(self, outcomes: Sequence[Outcome]) -> None:
        """Apply outcomes; messages with only final recipients leave the queue."""


class QueueCommands(Protocol):
    """The operator's commands and views (relayctl queue, the API's /v1/queue, the
    console): list, look, act on a selection."""

    async def list_messages(
        self, state: State | None = None, domain: str | None = None, sender: str = "",
        received_before: float | None = None, limit: int | None = None
    ) -> list[MessageInfo]:
        """Messages in the queue, oldest first: with a recipient in `state` or at `domain`,
        a sender containing `sender` (any case), received at or before `received_before`;
        at most `limit`."""

    async def get_message(self, message_id: str) -> MessageInfo | None: ...

    async def stats(self) -> QueueStats: ...

    async def summary(self, state: State | None = None,
                      by: ShapeKey = "recipient") -> list[DomainShape]:
        """Waiting recipients per destination domain and age bucket, busiest first; with
        `by="sender"`, messages per sender domain (qshape -s)."""

    async def flush(self, selection: Selection) -> int:
        """Make deferred (and queued) recipients due now; return how many."""

    async def requeue(self, selection: Selection) -> int:
        """Put every recipient not yet final back to `queued`, due now, whatever its state
        (Postfix's `postsuper -r`); an outcome still due from a delivery in flight is then
        ignored. Returns how many."""

    async def hold(self, selection: Selection) -> int:
        """Hold the waiting (queued, deferred) recipients; return how many."""

    async def release(self, selection: Selection) -> int:
        """Held recipients back to `queued`, due now; return how many."""

    async def delete(self, selection: Selection) -> int:
        """Remove messages and all their recipients (not broadcasts: those are cancelled);
        return how many messages."""

    async def missing(self, message_ids: Sequence[str]) -> list[str]:
        """Those of `message_ids` that are not in the queue, in their order."""


class IdempotencyStore(Protocol):
    """The answers kept for `Idempotency-Key` (the admin API)."""

    async def idempotent_answer(self, key: str) -> IdempotentAnswer | None:
        """The answer stored with `key` within IDEMPOTENCY_WINDOW, if any."""


class BroadcastStore(Protocol):
    """Broadcasts, stored once: a template and a row per recipient."""

    async def open_broadcast(self, broadcast_id: str, mail_from: str, template: bytes,
                             smtputf8: bool, tracking: Tracking = NO_TRACKING) -> None:
        """Store the template; recipients follow with add_broadcast_recipients."""

    async def add_broadcast_recipients(self, broadcast_id: str,
                                       recipients: Sequence[tuple[str, str]]) -> int:
        """Add (address, fields JSON) pairs, not yet due; return how many were suppressed."""

    async def accept_broadcast(self, broadcast_id: str, rejected: int,
                               idempotency: Idempotency | None,
                               answer: dict[str, Any]) -> None:
        """Durably make the broadcast's recipients due (then the API may answer 202)."""

    async def abandon_broadcast(self, broadcast_id: str) -> None: ...

    async def broadcast_status(self, broadcast_id: str) -> BroadcastStatus | None: ...

    async def broadcasts(self, limit: int = 100, state: str | None = None,
                         after: tuple[float, str] | None = None) -> list[BroadcastStatus]:
        """The newest `limit` broadcasts in `state` (any when None), newest first; `after`:
        those after the one created then with that id (the previous page's last)."""

    async def cancel_broadcast(self, broadcast_id: str) -> BroadcastStatus | None:
        """Drop what has not been sent; None if there is no such broadcast."""


class SuppressionStore(Protocol):
    """Addresses not sent to, per stream."""

    async def suppressions(self, stream: str | None = None) -> list[Suppression]:
        """The suppression list, or the entries of one stream."""

    async def suppress(self, address: str, reason: str, stream: str = EVERY_STREAM) -> bool:
        """False when the address was on the stream's list already."""

    async def unsuppress(self, address: str, stream: str | None = None) -> int:
        """Take the address off one stream's list, or off every one; how many entries."""


class FeedbackStore(Protocol):
    """What comes back later (relay.feedback): the copy a token names, and the report
    written with its suppression."""

    async def return_path(self, token: str) -> ReturnPath | None:
        """The delivered copy a VERP token was sent with, while its history is kept."""

    async def record_feedback(self, report: Feedback) -> bool:
        """Durably write a late bounce, complaint or unsubscribe: its event (when the
        message's history is still kept) and its suppression. False when the suppression
        was there already (then an unsubscribe writes no second event)."""


class EventHistory(Protocol):
    """What happened (queue.events): a message's history, the events, and their pruning."""

    async def history(self, message_id: str) -> MessageHistory | None:
        """A message's envelope, subject, metadata and every recipient's timeline, while
        it is queued and for the retention time after it left; None when unknown."""

    async def events(self, wanted: EventFilter) -> EventPage:
        """Events matching `wanted`, oldest first, at most `wanted.limit`."""

    async def count_events(self, wanted: EventFilter, cap: int) -> int:
        """How many events match `wanted` (its limit aside), counting up to `cap`."""

    async def prune_history(self, before: float) -> int:
        """Remove up to PRUNE_BATCH rows of history and events of messages that left the
        queue before `before`; never anything of a message still queued. How many."""


class Overview(Protocol):
    """The operator's overview (queue.overview)."""

    async def activity(self, since: float, step: float) -> list[Activity]:
        """Delivery outcomes (delivered, deferred, bounced events) since `since`, counted
        per `step` seconds, oldest first; buckets without any are left out."""

    async def lease_holders(self) -> list[LeaseHolder]:
        """The nodes that hold leases now (recipients, connection slots, webhook
        endpoints); the local backend, a single node, has none to show."""

    async def nodes(self) -> list[NodeInfo]:
        """The nodes of a cluster by name, with their last heartbeat; none for local."""


class WebhookStore(Protocol):
    """Webhook endpoints and each one's delivery state, leased to one node at a time
    (queue.webhooks)."""

    async def webhook_endpoints(self) -> list[WebhookEndpoint]:
        """The endpoints added through the API."""

    async def add_webhook_endpoint(self, endpoint: WebhookEndpoint) -> None: ...

    async def remove_webhook_endpoint(self, endpoint_id: str) -> bool: ...

    async def webhook_states(self) -> list[WebhookState]: ...

    async def start_webhook(self, endpoint_id: str) -> None:
        """Give an endpoint of relay.toml its delivery state, if it has none: its events
        are those that come after now (add_webhook_endpoint does this for the API's)."""

    async def lease_webhook(self, endpoint_id: str, owner: str,
                            seconds: float) -> WebhookState | None:
        """The endpoint's delivery state, leased to `owner` for `seconds`; None while
        another owner holds it, or when it has none."""

    async def save_webhook(self, state: WebhookState, owner: str) -> bool:
        """Write the state while `owner` holds its lease; False when it does not."""

    async def enable_webhook(self, endpoint_id: str) -> bool: ...


class ApiKeyStore(Protocol):
    """The admin API's keys (queue.apikeys)."""

    async def api_keys(self) -> list[ApiKey]: ...

    async def api_key(self, digest: str) -> ApiKey | None:
        """The key with this SHA-256 digest (revoked ones too)."""

    async def add_api_key(self, key: ApiKey) -> None: ...

    async def revoke_api_key(self, key_id: str) -> bool: ...


class ConsoleSessionStore(Protocol):
    """The console's sessions, kept so that every node knows them (queue.apikeys)."""

    async def open_console_session(self, id_digest: str, token_digest: str, csrf: str,
                                   lifetime: float) -> None:
        """Keep a session for `lifetime` seconds (and drop the ones that expired)."""

    async def console_session(self, id_digest: str) -> ConsoleSession | None:
        """The session, while it has not expired."""

    async def close_console_sessions(self, id_digest: str = "", token_digest: str = ""
                                     ) -> int:
        """End one session (signing out), or every one signed in with a token (its key
        revoked); how many."""


class Queue(MessageStore, Capabilities, QueueLifecycle, DeliveryQueue, OutcomeStore,
            QueueCommands, IdempotencyStore, BroadcastStore, SuppressionStore, FeedbackStore,
            EventHistory, Overview, WebhookStore, ApiKeyStore, ConsoleSessionStore, Protocol):
    """Every role: what a backend implements (queue.local, queue.postgres)."""
