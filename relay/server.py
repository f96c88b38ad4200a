"""server: the composition root. Builds every stage from the configuration and owns
start-up, shutdown and signals.

Start order: policies, queue (with recovery), admin token, delivery, SMTP listeners,
admin API, scheduler; then systemd hears READY=1 (relay.runtime.sdnotify). SIGTERM/SIGINT stop
gracefully: STOPPING=1, listeners close, SMTP sessions get `shutdown_timeout` to finish,
deliveries in hand finish (or stay queued), then the queue closes. SIGHUP reloads the
policies and the TLS certificate (relay.smtp.reload); a broken file keeps the old ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import time

from relay.cleanup.cleanup import Cleanup
from relay.config import Config
from relay.core.ratelimit import SlidingWindow
from relay.delivery import Credentials, DeliveryAgent, NextHops, relayhost_credentials
from relay.delivery.mta_sts import StrictTransport
from relay.delivery.transform import Transform
from relay.feedback import configured_tokens
from relay.feedback.intake import FeedbackIntake
from relay.feedback.tokens import FeedbackTokens
from relay.feedback.unsubscribe import create_public_app
from relay.notify.pruner import HistoryPruner
from relay.notify.webhooks import WebhookDispatcher, configured_endpoints
from relay.outcomes.recorder import OutcomeRecorder
from relay.policy import Policies, load_policies
from relay.queue import Queue, QueueStats, State
from relay.queue.local import LocalQueue
from relay.queue.postgres import PostgresQueue
from relay.queue.postgres.pool import database_dsn, where
from relay.runtime import tuning
from relay.runtime.metrics import Metrics
from relay.runtime.sdnotify import Notifier
from relay.scheduler.scheduler import Scheduler
from relay.secretfiles import load_or_create_token, shared_secret_missing
from relay.smtp.ingest import IngestWorkers
from relay.smtp.listeners import (
    ListenSockets,
    ServerTls,
    bind_listeners,
    bind_tcp,
    check_alone,
    serve_listeners,
)
from relay.smtp.reload import reload
from relay.smtp.sessions import SessionRegistry
from relay.smtp.submission import SubmissionHandler
from relay.web.app import HttpServer, Services, create_app

log = logging.getLogger("relay")

STATUS_INTERVAL = 10.0  # seconds between STATUS= updates to systemd


def build_queue(config: Config) -> Queue:
    settings = config.queue
    if settings.backend == "postgres":
        return PostgresQueue(database_dsn(settings), lease=settings.lease,
                             node=settings.node_name, notify=settings.notify)
    return LocalQueue(settings.path, lease=settings.lease)


def queue_description(config: Config) -> str:
    """Where the queue is, for the start-up line (a database without its password)."""
    if config.queue.backend == "postgres":
        return f"postgres {where(database_dsn(config.queue))}"
    return f"{config.queue.path} (local)"


class Relay:
    def __init__(self, config: Config, shutdown_timeout: float = 10.0) -> None:
        self.config = config
        self.policies: Policies = load_policies(config.policies.path)
        self.queue = build_queue(config)
        self.metrics = Metrics()
        self._tls: ServerTls | None = None
        self._shutdown_timeout = shutdown_timeout
        self._sockets: ListenSockets | None = None
        self._http_sockets: list[socket.socket] = []  # the admin API's, the public one's
        self._listeners: list[asyncio.Server] = []  # SMTP served in this process
        self._ingest: IngestWorkers | None = None  # or by worker processes
        self._sessions = SessionRegistry()
        self._admin: HttpServer | None = None
        self._public: HttpServer | None = None  # one-click unsubscribe
        self._scheduler: Scheduler | None = None
        self._pruner = HistoryPruner(self.queue, config.history.retention)
        self._webhooks: WebhookDispatcher | None = None
        self._started = False

    async def start(self) -> None:
        config = self.config
        credentials = relayhost_credentials(config.delivery)
        self._tls = ServerTls(config.smtp)  # here, not only in workers that would crash-loop
        # The spool directory holds the token and caches, whatever the queue backend.
        config.queue.path.mkdir(mode=0o700, parents=True, exist_ok=True)
        # A node of a cluster does not make a named token: every node must have the same.
        clustered = config.queue.backend == "postgres" and bool(config.admin.token_file)
        token = load_or_create_token(config.admin_token_path, create=not clustered,
                                     missing=shared_secret_missing(config.admin_token_path))
        hooks = configured_endpoints(config.webhooks)  # their secrets, read before anything starts
        tokens = configured_tokens(config.bounces, config.public.url, config.feedback_key_path,
                                   shared=config.queue.backend == "postgres")
        await self.queue.open()  # a local spool's lock first: its error names the relay
        indexer = self.queue.indexer()  # ingest workers only where the backend can have them
        workers = config.smtp.workers if indexer is not None else 0
        # Every address is bound before anything starts: a port that another process has
        # is the error, before this relay has taken any mail. With workers, the SMTP
        # sockets only reserve the addresses; each worker listens on its own.
        self._sockets = bind_listeners(config.smtp, listen=workers == 0,
                                       more=config.bounces.listen)
        self._http_sockets = [bind_tcp(config.admin.listen, "admin")]
        if tokens is not None and config.public.listen:
            self._http_sockets.append(bind_tcp(config.public.listen, "public"))
        self._webhooks = WebhookDispatcher(self.queue, hooks, self.queue.owner, self.metrics)
        await self._webhooks.prepare()
        hostname = config.server.hostname
        cleanup = Cleanup(self.queue, hostname, on_stored=self._stored)
        self._scheduler = self._delivery(cleanup, tokens, credentials)
        rates = self.queue.shared_rate_limits() or SlidingWindow()
        if workers > 0 and indexer is not None:
            self._ingest = IngestWorkers(config.source, indexer, workers, self._stored,
                                         self.metrics.sessions_ended, self._shutdown_timeout)
            await self._ingest.start()
            check_alone(config.smtp, config.bounces.listen, [os.getpid(), *self._ingest.pids])
        else:
            handler = SubmissionHandler(cleanup, config.smtp, lambda: self.policies.access,
                                        free_space=self.queue.free_bytes, rates=rates,
                                        bounce_domain=config.bounces.domain)
            self._listeners = await serve_listeners(handler, config.smtp, hostname,
                                                    self._sessions, self._sockets, self._tls)
        self._admin = HttpServer(
            create_app(Services(self.queue, cleanup, token, self.wake_scheduler, self.scrape,
                                config.smtp.max_message_size,
                                [endpoint for endpoint, _ in hooks], rates,
                                cluster=config.queue.backend == "postgres",
                                waiting=self._scheduler.waiting)),
            self._http_sockets[0])
        self._admin.start()
        if tokens is not None and config.public.listen:
            self._public = HttpServer(create_public_app(self.queue, tokens,
                                                         self.metrics.feedback_taken),
                                       self._http_sockets[1], service="public")
            self._public.start()
        self._scheduler.start()
        self.queue.follow_new_mail(self._scheduler)  # the backend wakes the scheduler
        self._pruner.start()
        self._webhooks.start()
        self._started = True
        tuning.started()
        log.info("relay started: smtp=%s admin=%s queue=%s ingest=%s",
                 ",".join(config.smtp.listen + config.smtp.tls_listen + config.bounces.listen),
                 config.admin.listen,
                 queue_description(config),
                 f"{config.smtp.workers} worker processes" if self._ingest else "in-process")

    def _delivery(self, cleanup: Cleanup, tokens: FeedbackTokens | None,
                  credentials: Credentials | None) -> Scheduler:
        """The scheduler with what it drives: the delivery agent (and, with a bounce
        domain, the intake of what comes back there), outcomes and transforms."""
        config, hostname = self.config, self.config.server.hostname
        hops = NextHops(config.delivery.nameservers, config.delivery.port,
                        timeout=config.delivery.dns_timeout)
        intake = (FeedbackIntake(self.queue, tokens, cleanup, hostname,
                                 config.bounces.notify_sender, self.metrics.feedback_taken)
                  if tokens else None)
        agent = DeliveryAgent(config.delivery, hostname, hops, credentials,
                              domains=lambda: self.policies.domains,
                              mta_sts=StrictTransport.configured(
                                  config.delivery, hops, config.queue.path,
                                  self.metrics.mta_sts_fetched),
                              local=intake)
        return Scheduler(
            self.queue, agent,
            OutcomeRecorder(self.queue, cleanup, hostname, config.retry, self.metrics,
                            notify_sender=tokens is None or config.bounces.notify_sender),
            Transform(hostname, time.time, lambda: self.policies.dkim,
                      lambda: self.policies.pgp, tokens),
            max_connections=config.delivery.max_connections,
            max_connections_per_domain=config.delivery.max_connections_per_domain,
            max_active=config.delivery.max_active,
            dead_backoff=config.delivery.dead_destination_backoff,
            lease_renewal=config.queue.lease / 4)

    def _stored(self) -> None:
        self.metrics.received.inc()

    def wake_scheduler(self) -> None:
        """Look for due work now (new or released mail)."""
        if self._scheduler is not None:
            self._scheduler.wake()

    async def scrape(self) -> bytes:
        """GET /metrics: the counters, and the queue as it is now."""
        stats = await self.queue.stats()
        free = self.queue.free_bytes()
        leased = self._scheduler.leased if self._scheduler is not None else 0
        self.metrics.queue_state(stats.depth, _age(stats), free, leased)
        self.metrics.sessions_ended(*self._sessions.take_ended())  # in-process SMTP
        return self.metrics.exposition()

    async def status_line(self) -> str:
        """For systemd's STATUS= (shown by `systemctl status relay`)."""
        stats = await self.queue.stats()
        waiting = sum(stats.depth.values())
        return (f"queue: {waiting} recipients waiting, "
                f"{stats.depth.get(State.DEFERRED, 0)} deferred, "
                f"oldest {_age(stats):.0f}s")

    def reload(self) -> None:
        if self._tls is None:
            return  # not started yet
        self.policies = reload(self.config.policies.path, self._tls, self.policies)
        if self._ingest is not None:
            self._ingest.reload()

    async def stop(self) -> None:
        """Stop what was started; also after a start that failed half-way (quietly then:
        a relay that never started does not say it is stopping)."""
        if self._started:
            log.info("relay stopping")
        for listener in self._listeners:
            listener.close()
        if self._ingest is not None:
            await self._ingest.stop()
        await self._sessions.drain(self._shutdown_timeout)
        if self._sockets is not None:
            self._sockets.close()
        if self._scheduler is not None:
            await self._scheduler.stop(self._shutdown_timeout)
        for http in (self._admin, self._public):
            if http is not None:
                await http.stop()
        for sock in self._http_sockets:  # also those of a start that failed before them
            sock.close()
        await self._pruner.stop()
        if self._webhooks is not None:
            await self._webhooks.stop()
        await self.queue.close()
        if self._started:
            log.info("relay stopped")


def _age(stats: QueueStats) -> float:
    oldest = stats.oldest_received_at
    return 0.0 if oldest is None else max(0.0, time.time() - oldest)


async def serve(config: Config) -> None:
    """Run until SIGTERM or SIGINT, telling systemd how it goes (when run by it)."""
    # What the relay writes (spool, index, policies caches, keys) is for it alone, as
    # Postfix's umask 077; outside systemd's UMask= too.
    os.umask(0o077)
    relay = Relay(config)
    notifier = Notifier(os.environ)
    stop = asyncio.Event()
    started, reload_asked = False, False
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)

    def reload_now() -> None:
        nonlocal reload_asked
        if not started:  # during start-up: reload once started, with what is on disk then
            reload_asked = True
            return
        notifier.reloading()
        relay.reload()
        notifier.ready()

    loop.add_signal_handler(signal.SIGHUP, reload_now)
    watchdog = asyncio.create_task(notifier.watchdog(), name="watchdog")
    try:
        try:
            await relay.start()
        except BaseException:
            notifier.stopping()
            await relay.stop()
            raise
        notifier.ready()
        started = True
        if reload_asked:
            reload_now()
        status = asyncio.create_task(_report_status(relay, notifier), name="sd-status")
        await stop.wait()
        notifier.stopping()
        status.cancel()
        await relay.stop()
    finally:
        watchdog.cancel()
        notifier.close()


async def _report_status(relay: Relay, notifier: Notifier) -> None:
    """STATUS= now and every STATUS_INTERVAL seconds."""
    if not notifier.enabled:
        return
    while True:
        with contextlib.suppress(Exception):  # a busy queue must not end the reports
            notifier.status(await relay.status_line())
        await asyncio.sleep(STATUS_INTERVAL)
