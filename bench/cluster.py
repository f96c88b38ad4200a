#!/usr/bin/env python3
"""The queue backends side by side: end-to-end messages/s with the local spool, one relay
node on PostgreSQL, and two nodes on the same PostgreSQL, under the load of
bench/relay_vs_postfix.py (smtp-source into the relay, relayhost = smtp-sink), plus what
each message costs the database: transactions committed and statements run per message
(pg_stat_database, pg_stat_statements).

PostgreSQL is a private server (Debian's postgresql: initdb into a temporary directory,
fsync on, synchronous_commit on) on loopback; with two nodes, smtp-source sends half the
messages and half the connections to each.

    python bench/cluster.py [--count 2000] [--repeat 1] [--only "4KB x1 c10" ...]

Needs root, postfix (smtp-source, smtp-sink) and postgresql.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import asyncpg

BENCH = Path(__file__).resolve().parent
sys.path[:0] = [str(BENCH), str(BENCH.parent)]
from relay_vs_postfix import (  # noqa: E402
    LOADS,
    LOOPBACK,
    SINK_HOST,
    Load,
    SmtpSink,
    cpu_seconds,
    descendants,
    free_port,
    run_smtp_source,
    wait_for_port,
)

from tests.support.postgres import PostgresServer, find_bin_dir  # noqa: E402

CLUSTER_LOADS = [load for load in LOADS if load.name in ("4KB x1 c10", "4KB x10 c10")]


class Node:
    """One `relayctl serve` on the local spool or on a PostgreSQL database."""

    def __init__(self, sink_port: int, workdir: Path, dsn: str | None) -> None:
        self.port = free_port(LOOPBACK)
        workdir.mkdir(parents=True)
        (workdir / "policies").mkdir()
        queue = (f'backend = "postgres"\ndsn = "{dsn}"\n' if dsn else 'path = "spool"\n')
        (workdir / "relay.toml").write_text(
            f'[server]\nhostname = "relay.bench"\n'
            f'[smtp]\nlisten = ["{LOOPBACK}:{self.port}"]\nmin_free_space = "1MB"\n'
            f'[queue]\n{queue}'
            f'[delivery]\nrelayhost = "[{SINK_HOST}]:{sink_port}"\ntls = "none"\n'
            f'mta_sts = false\nmax_connections_per_domain = 20\n'
            f'[admin]\nlisten = "{LOOPBACK}:{free_port(LOOPBACK)}"\n')
        relayctl = Path(sys.executable).parent / "relayctl"
        self._log = (workdir / "relay.log").open("w")
        self._process = subprocess.Popen([str(relayctl), "serve", "-c",
                                          str(workdir / "relay.toml")],
                                         stdout=self._log, stderr=self._log)
        wait_for_port(LOOPBACK, self.port)

    def pids(self) -> list[int]:
        return descendants(self._process.pid)

    def stop(self) -> None:
        self._process.terminate()
        self._process.wait(60)
        self._log.close()


async def database_counters(dsn: str) -> tuple[int, int]:
    """(transactions committed, statements run) in the relay's database so far."""
    connection = await asyncpg.connect(dsn)
    try:
        await connection.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        commits = await connection.fetchval(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()")
        calls = await connection.fetchval(
            "SELECT COALESCE(SUM(calls), 0) FROM pg_stat_statements s JOIN pg_database d "
            "ON d.oid = s.dbid WHERE d.datname = current_database()")
        return int(commits), int(calls)
    finally:
        await connection.close()


def database_pids(server: PostgresServer) -> list[int]:
    """The postmaster and its backends."""
    postmaster = int((server.data / "postmaster.pid").read_text().split()[0])
    return descendants(postmaster)


def measure(load: Load, count: int, nodes: int, server: PostgresServer | None
            ) -> dict[str, float]:
    dsn = server.fresh_database() if server is not None else None
    sink = SmtpSink()
    with tempfile.TemporaryDirectory(prefix="bench-cluster-") as workdir:
        started_nodes = [Node(sink.port, Path(workdir) / f"node{n}", dsn)
                         for n in range(nodes)]
        try:
            before = asyncio.run(database_counters(dsn)) if dsn else (0, 0)
            pids = [pid for node in started_nodes for pid in node.pids()]
            cpu_before = cpu_seconds(pids)
            db_before = cpu_seconds(database_pids(server)) if server else 0.0
            started = time.monotonic()
            share = Load(load.name, load.size, load.recipients,
                         max(1, load.concurrency // nodes))
            senders = [threading.Thread(target=run_smtp_source,
                                        args=(node.port, share, count // nodes))
                       for node in started_nodes]
            for sender in senders:
                sender.start()
            for sender in senders:
                sender.join()
            sink.wait_for(count // nodes * nodes, timeout=600)
            elapsed = time.monotonic() - started
            pids = [pid for node in started_nodes for pid in node.pids()]
            cpu = cpu_seconds(pids) - cpu_before
            db_cpu = cpu_seconds(database_pids(server)) - db_before if server else 0.0
            after = asyncio.run(database_counters(dsn)) if dsn else (0, 0)
        finally:
            for node in started_nodes:
                node.stop()
            sink.stop()
    delivered = count // nodes * nodes
    return {"e2e": delivered / elapsed, "cpu_ms": cpu / delivered * 1000,
            "db_cpu_ms": db_cpu / delivered * 1000,
            "commits": (after[0] - before[0]) / delivered,
            "statements": (after[1] - before[1]) / delivered}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--only", nargs="*", default=None)
    args = parser.parse_args()
    os.environ["PATH"] = os.environ.get("PATH", "") + ":/usr/sbin"
    if shutil.which("smtp-source") is None or os.geteuid() != 0:
        print("needs root and postfix's smtp-source/smtp-sink (apt-get install postfix)",
              file=sys.stderr)
        return 2
    bin_dir = find_bin_dir()
    if bin_dir is None:
        print("needs PostgreSQL (apt-get install postgresql)", file=sys.stderr)
        return 2
    server = PostgresServer(bin_dir, durable=True).start()
    try:
        print(f"{args.count} messages per run, {args.repeat} run(s) interleaved, median "
              f"shown, {os.cpu_count()} CPUs; PostgreSQL with fsync and synchronous_commit")
        print(f"{'configuration':<14} {'setup':<18} {'e2e/s':>7} {'relay CPU ms':>13} "
              f"{'db CPU ms':>10} {'commits/msg':>12} {'statements/msg':>15}")
        setups: dict[str, Callable[[], dict[str, float]]] = {}
        for load in CLUSTER_LOADS:
            if args.only is not None and load.name not in args.only:
                continue
            runs: dict[str, list[dict[str, float]]] = {}
            for _ in range(args.repeat):
                setups = {
                    "local": lambda load=load: measure(load, args.count, 1, None),
                    "postgres, 1 node": lambda load=load: measure(load, args.count, 1,
                                                                  server),
                    "postgres, 2 nodes": lambda load=load: measure(load, args.count, 2,
                                                                   server),
                }
                for name, run in setups.items():
                    runs.setdefault(name, []).append(run())
            for name, results in runs.items():
                median = {key: statistics.median(r[key] for r in results)
                          for key in results[0]}
                print(f"{load.name:<14} {name:<18} {median['e2e']:>7.0f} "
                      f"{median['cpu_ms']:>13.2f} {median['db_cpu_ms']:>10.2f} "
                      f"{median['commits']:>12.2f} "
                      f"{median['statements']:>15.2f}", flush=True)
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
