"""scheduler: picks due recipients and hands them to delivery workers, per destination.

Like Postfix's queue manager it keeps a bounded active set (`max_active` recipients
claimed at once), so a large queue never sits in memory. Claimed recipients are grouped
into jobs (one message, one destination), queued on their destination, and served by up
to `max_connections_per_domain` workers per destination and `max_connections` in all.
Each worker holds one connection and reuses it for the destination's next jobs; it quits
after `idle_timeout` with nothing to do, and at once when another destination waits for a
connection: an idle worker never holds one of the `max_connections` from mail that could
go (scheduler.connections).

Every claimed recipient is leased (queue.base): the scheduler renews the leases of what it
holds every `lease_renewal` seconds, before it claims anything more, so its own work never
expires under it while a worker waits to write an outcome; a job that ends without one
(a bug) lets its lease run out and comes back. A claim or renewal that fails (a full disk)
is retried with a growing delay and logged once (relay.runtime.trouble). A worker holds a
connection slot of its destination (Queue.take_slot), so that with several nodes on one
queue the destination's connection limit holds for them all.

Stopping: no new claims; workers finish the jobs in hand (up to a timeout) while their
leases are renewed; whatever was claimed but not settled is then returned to the queue,
due now (or, if that fails, when its lease expires).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from relay.core import reply
from relay.core.errors import LocalFailure
from relay.core.reply import Reply
from relay.delivery import RELAYHOST, Attempt, DeliveryAgent, Job, Transport
from relay.delivery.transform import Transform
from relay.outcomes.recorder import OutcomeRecorder
from relay.policy import DomainRule
from relay.queue import Claimed
from relay.queue.roles import DeliveryQueue
from relay.runtime.trouble import Trouble
from relay.scheduler.connections import Connections
from relay.scheduler.shaping import DestinationPace

log = logging.getLogger("relay.scheduler")

CLAIM_BATCH = 500
KEPT_PACES = 10_000
MAX_SLEEP = 30.0
BUSY_SLEEP = 1.0
SLOT_RETRY = 0.1  # seconds before asking again for a destination's connection slot
MAX_SLOT_RETRY = 2.0


@dataclass
class _Destination:
    name: str
    pace: DestinationPace  # connections allowed now, rate, adaptive slow-down
    jobs: deque[Job] = field(default_factory=deque)
    workers: set[asyncio.Task[None]] = field(default_factory=set)
    # The idle workers' wake-ups, the one idle last at the end.
    idle: list[asyncio.Future[None]] = field(default_factory=list)

    def wake_one(self) -> bool:
        """Wake the worker that went idle last, for a new job: one wake-up per job (waking
        every idle worker cost each of them a pass through its wait, per message), and
        the ones idle longest stay asleep and, if the load does not need them, quit after
        idle_timeout with their connection. False when no worker is idle."""
        while self.idle:
            waiter = self.idle.pop()
            if not waiter.done():
                waiter.set_result(None)
                return True
        return False

    def wake_all(self) -> None:
        while self.wake_one():
            pass


def group_into_jobs(claimed: Iterable[Claimed], destination_of: Callable[[str], str],
                    own_copy: Callable[[Claimed], bool] = lambda r: r.fields is not None
                    ) -> list[Job]:
    """One job per (message, destination), recipients in claim order; a recipient with a
    message of its own (a broadcast's, or a PGP-encrypted copy) gets a job of its own."""
    groups: dict[tuple[str, str, int], list[Claimed]] = {}
    for recipient in claimed:
        single = recipient.recipient_id if own_copy(recipient) else 0
        key = (recipient.message_id, destination_of(recipient.domain), single)
        groups.setdefault(key, []).append(recipient)
    return [
        Job(message_id, rcpts[0].mail_from, rcpts[0].received_at, rcpts[0].smtputf8,
            destination, tuple(rcpts), rcpts[0].fields)
        for (message_id, destination, _), rcpts in groups.items()
    ]


class Scheduler:
    def __init__(self, queue: DeliveryQueue, agent: DeliveryAgent, recorder: OutcomeRecorder,
                 transform: Transform, *,
                 max_connections: int, max_connections_per_domain: int,
                 lease_renewal: float = 30.0, max_active: int = 10_000,
                 idle_timeout: float = 2.0, dead_backoff: float = 60.0,
                 clock: Callable[[], float] = time.time) -> None:
        self._queue = queue
        self._agent = agent
        self._transform = transform
        self._recorder = recorder
        self._per_destination = max_connections_per_domain
        self._connections = Connections(max_connections)
        self._max_active = max_active
        self._idle_timeout = idle_timeout
        self._dead_backoff = dead_backoff
        self._settling: set[asyncio.Task[None]] = set()  # a dead destination's deferrals
        self._clock = clock
        self._lease_renewal = lease_renewal
        self._renew_at = 0.0  # monotonic
        self._held: set[tuple[int, int]] = set()  # (recipient id, attempt) leased by us
        self._claims = Trouble("claiming due recipients", log)
        self._renewals = Trouble("renewing delivery leases", log)
        self._stopped = asyncio.Event()
        self._paces: dict[str, DestinationPace] = {}  # kept while their destination rests
        self._full = False  # the active set is full: a finished job makes room to claim
        self._destinations: dict[str, _Destination] = {}
        self._wakeup = asyncio.Event()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self._look_again: asyncio.TimerHandle | None = None  # see take_claimed

    @property
    def leased(self) -> int:
        """Recipients this node holds leases on."""
        return len(self._held)

    def wake(self) -> None:
        """New or released mail: look for due work now."""
        self._wakeup.set()

    def waiting(self) -> dict[tuple[str, str], str]:
        """The recipients claimed here and not being delivered yet, as (message id,
        address), each with the destination whose connection it waits for."""
        return {(job.message_id, recipient.address): name
                for name, destination in self._destinations.items()
                for job in destination.jobs for recipient in job.recipients}

    def room(self) -> int:
        """How many more recipients it would take now (queue.local claims new mail for
        the scheduler as it indexes it: LocalQueue.follow_new_mail)."""
        if self._stopping or self._task is None:
            return 0
        return max(self._max_active - len(self._held), 0)

    def take_claimed(self, claimed: list[Claimed]) -> None:
        """Recipients claimed for us elsewhere (in the commit that indexed them)."""
        if self._look_again is None:
            # As after a claim of its own, the loop looks at the queue again within
            # BUSY_SLEEP (what was deferred, leases to renew), once however many come.
            self._look_again = asyncio.get_running_loop().call_later(BUSY_SLEEP,
                                                                     self._looked_again)
        self._held.update((r.recipient_id, r.attempts) for r in claimed)
        if self._stopping:
            return  # returned with the rest at the end of stop(), or by recovery
        for job in group_into_jobs(claimed, self._agent.destination_of,
                                   self._transform.needs_own_copy):
            self._dispatch(job)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="scheduler")

    def _looked_again(self) -> None:
        self._look_again = None
        self._wakeup.set()

    async def stop(self, timeout: float = 30.0) -> None:
        """Claim nothing more; let workers finish their job in hand for `timeout` seconds."""
        self._stopping = True
        self._stopped.set()
        if self._look_again is not None:
            self._look_again.cancel()
        self._wakeup.set()
        for destination in self._destinations.values():
            destination.wake_all()
        if self._task is not None:
            # Bounded: a claim stuck on an unanswered queue must not hold the stop.
            done, _ = await asyncio.wait({self._task}, timeout=timeout)
            if done:
                await self._task
            else:
                self._task.cancel()
                await asyncio.gather(self._task, return_exceptions=True)
        workers = [t for d in self._destinations.values() for t in d.workers]
        workers += self._settling
        if workers:
            # The leases of what is in hand are renewed until it is done.
            renewing = asyncio.create_task(self._renew_while_draining())
            _, pending = await asyncio.wait(workers, timeout=timeout)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            renewing.cancel()
            await asyncio.gather(renewing, return_exceptions=True)
        await self._return_leases()

    async def _renew_while_draining(self) -> None:
        while True:
            await asyncio.sleep(self._lease_renewal)
            try:
                await self._queue.renew_leases(sorted(self._held))
                await self._queue.renew_slots()
            except Exception as exc:
                self._renewals.failed(exc)

    async def _return_leases(self) -> None:
        """What was claimed and not settled (not started, or cut off at the timeout) is due
        again now, for another node, instead of when its lease would expire."""
        if not self._held:
            return
        try:
            await self._queue.return_leases(sorted(self._held))
        except Exception as exc:
            log.warning("returning %d claimed recipients failed (%s): they come back when "
                        "their leases expire", len(self._held), exc)

    async def _run(self) -> None:
        while not self._stopping:
            self._wakeup.clear()
            room = min(self._max_active - len(self._held), CLAIM_BATCH)
            self._full = room <= 0
            try:
                # Renewing first: a lease of ours that expired while the queue could not be
                # written must not be claimed as someone else's lost work.
                await self._renew_leases()
            except Exception as exc:
                await self._back_off(self._renewals.failed(exc))
                continue
            try:
                claimed = await self._queue.claim_due(room) if room > 0 else []
            except Exception as exc:
                await self._back_off(self._claims.failed(exc))
                continue
            self._claims.succeeded()
            self._held.update((r.recipient_id, r.attempts) for r in claimed)
            for job in group_into_jobs(claimed, self._agent.destination_of,
                                       self._transform.needs_own_copy):
                self._dispatch(job)
            if claimed and len(claimed) == room:
                continue  # there may be more due right now
            await self._sleep(room > 0, busy=bool(claimed))

    async def _renew_leases(self) -> None:
        if time.monotonic() < self._renew_at:
            return
        await self._queue.renew_leases(sorted(self._held))
        await self._queue.renew_slots()
        self._renewals.succeeded()
        self._renew_at = time.monotonic() + self._lease_renewal

    async def _back_off(self, delay: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopped.wait(), delay)

    async def _sleep(self, has_room: bool, busy: bool) -> None:
        """Until woken (new mail, a job done), the next deferred recipient is due or our
        leases need renewing. While mail keeps coming, wakeups come anyway: the index is
        not asked each time."""
        timeout: float | None = None
        if busy:
            timeout = BUSY_SLEEP
        elif has_room:
            try:
                due = await self._queue.next_due_at()
            except Exception:
                due = None
            timeout = MAX_SLEEP if due is None else min(max(due - self._clock(), 0.01),
                                                        MAX_SLEEP)
        if self._held:
            renewal = max(self._renew_at - time.monotonic(), 0.01)
            timeout = renewal if timeout is None else min(timeout, renewal)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wakeup.wait(), timeout)

    def _dispatch(self, job: Job) -> None:
        destination = self._destinations.get(job.destination)
        if destination is None:
            destination = _Destination(job.destination, self._pace_of(job.destination))
            self._destinations[job.destination] = destination
        if destination.pace.dead:
            self._defer_unreachable(job, destination.pace)
            self._rest_if_idle(destination)
            return
        destination.jobs.append(job)
        if destination.wake_one():
            return
        if len(destination.workers) < destination.pace.allowed:
            task = asyncio.create_task(self._work(destination),
                                       name=f"delivery {destination.name}")
            destination.workers.add(task)
            task.add_done_callback(lambda t: self._worker_done(destination, t))

    def _worker_done(self, destination: _Destination, task: asyncio.Task[None]) -> None:
        destination.workers.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("delivery worker for %s failed", destination.name,
                      exc_info=task.exception())
        if self._rest_if_idle(destination):
            return
        if destination.jobs and not self._stopping and not destination.workers:
            # Jobs left behind by a failed worker: put a new worker on them.
            self._dispatch(destination.jobs.popleft())

    async def _work(self, destination: _Destination) -> None:
        slot = await self._take_slot(destination)
        if slot is None:
            return  # stopping, or the jobs went to other workers meanwhile
        try:
            await self._work_with_slot(destination)
        finally:
            try:
                await self._queue.release_slot(slot)
            except Exception as exc:  # it expires with its lease
                log.warning("releasing a connection slot for %s failed: %s",
                            destination.name, exc)

    async def _take_slot(self, destination: _Destination) -> str | None:
        """A connection slot counted across every node sharing the queue: the cluster's
        connections to a destination stay within its limit. Waits while all are taken."""
        delay = SLOT_RETRY
        while not self._stopping and destination.jobs:
            try:
                slot = await self._queue.take_slot(destination.name,
                                                   destination.pace.connections)
            except Exception as exc:
                slot = None
                await self._back_off(self._claims.failed(exc))
            if slot is not None:
                return slot
            await self._back_off(delay)
            delay = min(delay * 2, MAX_SLOT_RETRY)
        return None

    async def _work_with_slot(self, destination: _Destination) -> None:
        await self._connections.take(destination.name)
        try:
            session = self._agent.session(destination.name)
            try:
                while (job := await self._next_job(destination)) is not None:
                    if destination.pace.dead:  # found dead by another worker meanwhile
                        self._defer_unreachable(job, destination.pace)
                        continue
                    try:
                        await destination.pace.wait_turn()
                        attempts = await self._deliver(session, job)
                    except Exception:
                        log.exception("%s: delivery failed locally", job.message_id)
                        attempts = await self._defer_after_failure(job)
                    finally:
                        self._release(job)
                    destination.pace.observe(attempts)
                    if destination.pace.dead:
                        while destination.jobs:  # what waits for it goes back at once
                            self._defer_unreachable(destination.jobs.popleft(),
                                                    destination.pace)
                        return
                    if len(destination.workers) > destination.pace.allowed:
                        return  # slowed down: this connection goes
                    if (len(destination.workers) > 1
                            and self._connections.others_wait(destination.name)):
                        return  # a busy destination lends one connection to a waiting one
            finally:
                await session.close()
        finally:
            self._connections.give_back()

    def _release(self, job: Job) -> None:
        """`job` is settled, or left to its lease's expiry: no longer ours."""
        self._held.difference_update((r.recipient_id, r.attempts) for r in job.recipients)
        if self._full:
            # Only then: otherwise new mail wakes the scheduler anyway, and a claim per
            # finished job would cost a transaction each.
            self._wakeup.set()

    async def _next_job(self, destination: _Destination) -> Job | None:
        deadline = time.monotonic() + self._idle_timeout
        while not destination.jobs:
            if self._stopping or self._connections.others_wait(destination.name):
                return None  # (another destination's mail waits for this connection)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            woken = asyncio.get_running_loop().create_future()
            destination.idle.append(woken)
            self._connections.resting(woken)
            try:
                # (a timeout scope, not wait_for: no task of its own for every wait)
                async with asyncio.timeout(remaining):
                    await woken
            except TimeoutError:
                pass  # (woken just before: the loop takes the job, however late)
            finally:
                self._connections.awake(woken)
                with contextlib.suppress(ValueError):  # (gone if wake_one took it)
                    destination.idle.remove(woken)
        return destination.jobs.popleft()

    def _rest_if_idle(self, destination: _Destination) -> bool:
        """A destination with no worker and no job is forgotten, keeping its pace if it
        has one worth keeping; whether it was."""
        if destination.workers or destination.jobs:
            return False
        self._destinations.pop(destination.name, None)
        self._remember_pace(destination.pace)
        return True

    def _pace_of(self, destination: str) -> DestinationPace:
        kept = self._paces.pop(destination, None)
        if kept is not None:
            return kept
        rule = (DomainRule() if destination == RELAYHOST
                else self._agent.domains().rule_for(destination))
        return DestinationPace(destination, rule, self._per_destination, self._dead_backoff)

    def _remember_pace(self, pace: DestinationPace) -> None:
        """A slowed-down, rate-limited or dead destination keeps its pace between bursts."""
        if pace.connections < pace.ceiling or pace.rated or pace.dead_reason is not None:
            self._paces[pace.name] = pace
            if len(self._paces) > KEPT_PACES:
                self._paces.pop(next(iter(self._paces)))

    def _defer_unreachable(self, job: Job, pace: DestinationPace) -> None:
        """Defer a dead destination's job with the reason it is dead, without trying."""
        reason = pace.dead_reason or reply.NO_ROUTE
        task = asyncio.create_task(self._settle_unreachable(job, reason),
                                   name=f"deferring {job.destination}")
        self._settling.add(task)
        task.add_done_callback(self._settling.discard)

    async def _settle_unreachable(self, job: Job, reason: Reply) -> None:
        try:
            await self._settle_all(job, reason, b"")
        except Exception:
            log.exception("%s: left active until its lease expires", job.message_id)
        finally:
            self._release(job)

    async def _defer_after_failure(self, job: Job) -> list[Attempt]:
        """A failure of our own (a bug, not the remote side): the recipients are deferred
        and retried after the backoff rather than left active until the next start."""
        try:
            await self._settle_all(job, reply.LOCAL_ERROR, b"")
        except Exception:
            log.exception("%s: left active until its lease expires", job.message_id)
        return []

    async def _deliver(self, session: Transport, job: Job) -> list[Attempt]:
        try:
            body = (await self._queue.read_body(job.message_id)
                    if self._transform.needs_stored_body(job) else b"")
        except FileNotFoundError:
            log.info("%s: deleted while queued for delivery", job.message_id)
            return []
        if any(r.suppressed for r in job.recipients):
            rest = await self._settle_suppressed(job, body)
            if rest is None:
                return []
            job = rest
        try:
            job, body = await self._transform.prepare(job, body)
        except LocalFailure as exc:  # signing failed: deferred, never sent unsigned
            await self._settle_all(job, exc.reply, body)
            return []
        except (ValueError, KeyError) as exc:  # checked at submission: should not happen
            log.error("%s: rendering for %s failed: %s", job.message_id,
                      job.recipients[0].address, exc)
            await self._settle_all(job, reply.UNRENDERABLE, b"")
            return []
        attempts = await session.deliver(job, body)
        await self._recorder.settle(job, attempts, body)
        return attempts

    async def _settle_suppressed(self, job: Job, body: bytes) -> Job | None:
        """Recipients on the suppression list of their message's stream are not sent to:
        they bounce as suppressed (event `suppressed`). The job of the others, if any."""
        suppressed = tuple(r for r in job.recipients if r.suppressed)
        await self._recorder.settle(
            dataclasses.replace(job, recipients=suppressed),
            [Attempt(r, reply.SUPPRESSED, "none", suppressed=True) for r in suppressed], body)
        rest = tuple(r for r in job.recipients if not r.suppressed)
        return dataclasses.replace(job, recipients=rest) if rest else None

    async def _settle_all(self, job: Job, verdict: Reply, body: bytes) -> None:
        """Every recipient of `job` settled with one local reply; no connection was made."""
        await self._recorder.settle(job, [Attempt(r, verdict, "none") for r in job.recipients],
                                    body)
