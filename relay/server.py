"""server: the composition root. Builds every stage from the configuration and owns
start-up, shutdown and signals.

Start order: policies, queue (with recovery), admin token, delivery, SMTP listeners,
admin API, scheduler. SIGTERM/SIGINT stop gracefully: listeners close, SMTP sessions get
`shutdown_timeout` to finish, deliveries in hand finish (or stay queued), then the queue
closes. SIGHUP reloads the policies; a broken file keeps the old ones.
"""

from __future__ import annotations

import asyncio
import logging
import signal

from relay.admin import AdminServer, create_app
from relay.admin_token import load_or_create_token
from relay.cleanup import Cleanup
from relay.config import Config
from relay.delivery import DeliveryAgent, NextHops, relayhost_credentials
from relay.errors import ConfigError
from relay.ingest import IngestWorkers
from relay.outcomes import OutcomeRecorder
from relay.policy import Policies, load_policies
from relay.queue import Queue
from relay.queue.local import LocalQueue
from relay.scheduler import Scheduler
from relay.smtpd import (
    ListenSockets,
    SessionRegistry,
    SubmissionHandler,
    bind_listeners,
    check_tls_files,
    serve_listeners,
)

log = logging.getLogger("relay")


def build_queue(config: Config) -> Queue:
    if config.queue.backend == "local":
        return LocalQueue(config.queue.path)
    raise ConfigError("queue.backend: the postgres backend is not available in this version")


class Relay:
    def __init__(self, config: Config, shutdown_timeout: float = 10.0) -> None:
        self.config = config
        self.policies: Policies = load_policies(config.policies.path)
        self.queue = build_queue(config)
        self._shutdown_timeout = shutdown_timeout
        self._sockets: ListenSockets | None = None
        self._listeners: list[asyncio.Server] = []  # SMTP served in this process
        self._ingest: IngestWorkers | None = None  # or by worker processes
        self._sessions = SessionRegistry()
        self._admin: AdminServer | None = None
        self._scheduler: Scheduler | None = None

    async def start(self) -> None:
        config = self.config
        credentials = relayhost_credentials(config.delivery)
        check_tls_files(config.smtp)  # here, not only in ingest workers that would crash-loop
        token = load_or_create_token(config.admin_token_path, create=not config.admin.token_file)
        await self.queue.open()
        hostname = config.server.hostname
        agent = DeliveryAgent(config.delivery, hostname,
                              NextHops(config.delivery.nameservers, config.delivery.port,
                                       timeout=config.delivery.connect_timeout),
                              credentials)
        cleanup = Cleanup(self.queue, hostname, on_stored=self._wake)
        self._scheduler = Scheduler(
            self.queue, agent, OutcomeRecorder(self.queue, cleanup, hostname, config.retry),
            max_connections=config.delivery.max_connections,
            max_connections_per_domain=config.delivery.max_connections_per_domain)
        workers = config.smtp.workers if isinstance(self.queue, LocalQueue) else 0
        # With workers, these only reserve the ports; each worker listens on its own.
        self._sockets = bind_listeners(config.smtp, shared=workers > 0, listen=workers == 0)
        if workers > 0 and isinstance(self.queue, LocalQueue):
            self._ingest = IngestWorkers(config, self.queue, workers, self._wake,
                                         self._shutdown_timeout)
            await self._ingest.start()
        else:
            free_space = (self.queue.files.free_bytes if isinstance(self.queue, LocalQueue)
                          else None)
            handler = SubmissionHandler(cleanup, config.smtp, lambda: self.policies.access,
                                        free_space=free_space)
            self._listeners = await serve_listeners(handler, config.smtp, hostname,
                                                    self._sessions, self._sockets)
        self._admin = AdminServer(create_app(self.queue, token, self._wake), config.admin.listen)
        self._admin.start()
        self._scheduler.start()
        log.info("relay started: smtp=%s admin=%s queue=%s (%s) ingest=%s",
                 ",".join(config.smtp.listen + config.smtp.tls_listen), config.admin.listen,
                 config.queue.path, config.queue.backend,
                 f"{config.smtp.workers} worker processes" if self._ingest else "in-process")

    def _wake(self) -> None:
        if self._scheduler is not None:
            self._scheduler.wake()

    def reload(self) -> None:
        try:
            self.policies = load_policies(self.config.policies.path)
        except ConfigError as exc:
            log.error("reload failed, keeping the previous policies: %s", exc)
            return
        log.info("policies reloaded from %s", self.config.policies.path)
        if self._ingest is not None:
            self._ingest.reload()

    async def stop(self) -> None:
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
        if self._admin is not None:
            await self._admin.stop()
        await self.queue.close()
        log.info("relay stopped")


async def serve(config: Config) -> None:
    """Run until SIGTERM or SIGINT."""
    relay = Relay(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, relay.reload)
    try:
        await relay.start()
    except BaseException:
        await relay.stop()
        raise
    await stop.wait()
    await relay.stop()
