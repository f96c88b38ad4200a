"""worker: an ingest worker process (`python -m relay.smtp.worker`, started by the main
process: smtp.ingest). It listens on sockets of its own bound with SO_REUSEPORT, runs the
SMTP side and cleanup, writes message files into the spool and has the main process index
them (queue.local.handoff). It is its process's composition root: it reads the
configuration the main process names. On SIGTERM it stops accepting, lets its sessions
finish and exits; when the main process is gone it ends its sessions at once.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import socket
import sys

from relay import config as config_module
from relay.cleanup.cleanup import Cleanup
from relay.config import Config
from relay.core.errors import RelayError
from relay.policy import Policies, load_policies
from relay.queue.local.handoff import HandoffStore
from relay.queue.local.spoolfiles import SpoolFiles
from relay.runtime import tuning
from relay.runtime.logsetup import configure_logging, event_loop_runner
from relay.smtp.listeners import ListenSockets, ServerTls, bind_listeners, serve_listeners
from relay.smtp.reload import reload
from relay.smtp.sessions import SessionRegistry
from relay.smtp.submission import SubmissionHandler

log = logging.getLogger("relay.ingest")

SESSION_REPORT_INTERVAL = 2.0


class IngestWorker:
    """One worker process: its listeners, its sessions, its hand-off to the main process."""

    def __init__(self, config: Config, sockets: ListenSockets, shutdown_timeout: float
                 ) -> None:
        self.config = config
        self.sockets = sockets
        self.shutdown_timeout = shutdown_timeout
        self.policies: Policies = load_policies(config.policies.path)
        self.tls = ServerTls(config.smtp)

    def reload(self) -> None:
        self.policies = reload(self.config.policies.path, self.tls, self.policies)

    async def run(self, handoff_socket: socket.socket) -> None:
        config = self.config
        files = SpoolFiles(config.queue.path)
        files.share_ingest_lock()
        store = await HandoffStore.connect(files, handoff_socket)
        registry = SessionRegistry()
        store.alone = registry.alone
        handler = SubmissionHandler(Cleanup(store, config.server.hostname), config.smtp,
                                    lambda: self.policies.access, free_space=files.free_bytes,
                                    rates=store, bounce_domain=config.bounces.domain)
        servers = await serve_listeners(handler, config.smtp, config.server.hostname,
                                        registry, self.sockets, self.tls)
        store.announce_ready()
        tuning.started()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        reports = asyncio.create_task(_report_sessions(registry, store))
        owner_gone = asyncio.create_task(store.owner_gone.wait())
        await asyncio.wait([owner_gone, asyncio.create_task(stop.wait())],
                           return_when=asyncio.FIRST_COMPLETED)
        reports.cancel()
        for server in servers:
            server.close()
        if store.owner_gone.is_set():
            # Nothing can be stored any more: end the sessions now, so the port is free
            # for the relay that replaces the main process.
            log.error("the main relay process is gone; this ingest worker stops")
            await registry.drain(0)
        else:
            await registry.drain(self.shutdown_timeout)
            store.report_sessions(*registry.take_ended())
        await store.close()


async def _report_sessions(registry: SessionRegistry, store: HandoffStore) -> None:
    """Session counts to the main process's metrics, batched: a line per session would
    cost more than the count is worth."""
    while True:
        await asyncio.sleep(SESSION_REPORT_INTERVAL)
        plain, tls = registry.take_ended()
        if plain or tls:
            store.report_sessions(plain, tls)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="relay.smtp.worker",
                                     description="SMTP ingest worker (started by relayctl serve)")
    parser.add_argument("--config")
    parser.add_argument("--handoff-fd", type=int, required=True)
    parser.add_argument("--shutdown-timeout", type=float, default=10.0)
    args = parser.parse_args(argv)
    tuning.tune_allocator()
    try:
        config = config_module.load(args.config)
    except RelayError as exc:
        print(f"relay.smtp.worker: {exc}", file=sys.stderr)
        return 2
    configure_logging(config.log)
    try:
        sockets = bind_listeners(config.smtp, shared=True, more=config.bounces.listen)
    except OSError as exc:
        print(f"relay.smtp.worker: cannot listen: {exc}", file=sys.stderr)
        return 2
    worker = IngestWorker(config, sockets, args.shutdown_timeout)
    event_loop_runner()(worker.run(socket.socket(fileno=args.handoff_fd)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

