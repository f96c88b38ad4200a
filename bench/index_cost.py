#!/usr/bin/env python3
"""What the local queue's index costs per message: CPU and wall time of its writes.

Drives a LocalQueue (a temporary spool, the real group committer and writer thread) the
way the main process does under load: new mail is indexed and claimed in the same commit
(`index`, as the ingest workers' handoff does), then every recipient's outcome is recorded
(`record`, as delivery does), `--batch` messages at a time. No SMTP, no files: only the
index. Prints the process's CPU time (all its threads) and the wall time per message.

    python bench/index_cost.py [--count 3000] [--recipients 1 10] [--batch 5] [--rounds 3]

Run it from two checkouts one after the other to compare their index writes: its figures
move with the machine, as every benchmark here does.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from relay.queue import Claimed, MessageMeta, Outcome, State, new_queue_id
from relay.queue.local import LocalQueue


class Scheduler:
    """Stands in for the scheduler: room for everything, keeps what is claimed."""

    def __init__(self) -> None:
        self.claimed: list[Claimed] = []

    def room(self) -> int:
        return 1_000_000

    def take_claimed(self, claimed: list[Claimed]) -> None:
        self.claimed += claimed

    def wake(self) -> None:
        raise RuntimeError("new mail was not claimed as it was indexed")


async def one_round(spool: Path, count: int, recipients: int, batch: int) -> tuple[float, float]:
    """CPU and wall seconds per message."""
    queue = LocalQueue(spool)
    await queue.open()
    scheduler = Scheduler()
    queue.hand_new_mail_to(scheduler)
    addresses = [f"rcpt{n}@dest.bench" for n in range(recipients)]
    try:
        cpu, started = time.process_time(), time.perf_counter()
        for _ in range(count // batch):
            now = time.time()
            metas = [MessageMeta(new_queue_id(), "bench@sender.bench", addresses, 4096)
                     for _ in range(batch)]
            await asyncio.gather(*(queue.index(meta, now) for meta in metas))
            claimed, scheduler.claimed = scheduler.claimed, []
            by_message: dict[str, list[Outcome]] = {}
            for claim in claimed:
                by_message.setdefault(claim.message_id, []).append(Outcome(
                    claim.recipient_id, claim.attempts, State.DELIVERED,
                    "250 2.0.0 Ok: queued as BENCH", relay="127.0.0.2[127.0.0.2]:25"))
            await asyncio.gather(*(queue.record(outcomes) for outcomes in by_message.values()))
        done = count // batch * batch
        return ((time.process_time() - cpu) / done, (time.perf_counter() - started) / done)
    finally:
        await queue.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=3000, help="messages per round")
    parser.add_argument("--recipients", type=int, nargs="*", default=[1, 10])
    parser.add_argument("--batch", type=int, default=5, help="messages indexed together")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print(f"{args.count} messages per round, {args.batch} at a time; median of "
          f"{args.rounds} rounds, per message")
    for recipients in args.recipients:
        results = []
        for _ in range(args.rounds):
            with tempfile.TemporaryDirectory(prefix="bench-") as spool:
                results.append(asyncio.run(one_round(Path(spool), args.count, recipients,
                                                     args.batch)))
        cpu = statistics.median(r[0] for r in results) * 1e6
        wall = statistics.median(r[1] for r in results) * 1e6
        print(f"{recipients:3d} recipients: CPU {cpu:6.0f} us, wall {wall:6.0f} us "
              f"(rounds: {' '.join(f'{r[0] * 1e6:.0f}' for r in results)} us CPU)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
