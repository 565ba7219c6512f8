"""Probe: what each of two members of a new consumer group holds, per topic, under an
assignor, when the second subscribes OFFSET seconds after the first.

Two consumers (threads of this process, static members) of a new group subscribe to
the given topics; after 12 s each prints how many partitions of each topic it holds.
It shows why headrace's default assignor is roundrobin (docs/performance.md,
"Assignors for a group of several processes"):

    .venv/bin/python bench/assignors.py --strategy cooperative-sticky --offset 0.1 \\
        headrace.file-events headrace.run-events headrace.verifications headrace.row-events
"""

from __future__ import annotations

import argparse
import threading
import time
import uuid
from collections import Counter
from typing import Any

from confluent_kafka import Consumer

from headrace.settings import load_settings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("topics", nargs="+")
    parser.add_argument("--strategy", default="cooperative-sticky")
    parser.add_argument("--offset", type=float, default=0.0, help="seconds between the joins")
    parser.add_argument("--seconds", type=float, default=12.0)
    args = parser.parse_args()
    group = f"bench-assignors-{uuid.uuid4().hex[:8]}"
    servers = load_settings().kafka.bootstrap_servers
    incremental = args.strategy.startswith("cooperative")
    start = time.monotonic() + 2
    held: dict[int, Counter[str]] = {}

    def member(i: int) -> None:
        consumer = Consumer(
            {
                "bootstrap.servers": servers,
                "group.id": group,
                "group.instance.id": f"{group}-{i}",
                "partition.assignment.strategy": args.strategy,
                "session.timeout.ms": 10_000,
            }
        )
        got: set[tuple[str, int]] = set()

        def assign(c: Any, parts: list[Any]) -> None:
            (c.incremental_assign if incremental else c.assign)(parts)
            if not incremental:
                got.clear()
            got.update((p.topic, p.partition) for p in parts)

        def revoke(c: Any, parts: list[Any]) -> None:
            (c.incremental_unassign(parts) if incremental else c.unassign())
            got.difference_update((p.topic, p.partition) for p in parts)

        while time.monotonic() < start + i * args.offset:
            time.sleep(0.001)
        consumer.subscribe(args.topics, on_assign=assign, on_revoke=revoke)
        until = time.monotonic() + args.seconds
        while time.monotonic() < until:
            consumer.poll(0.2)
        held[i] = Counter(topic for topic, _ in got)
        consumer.close()

    threads = [threading.Thread(target=member, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    print(f"{args.strategy}, second member {args.offset:g} s after the first:")
    for i in sorted(held):
        print(f"  member {i}: " + ", ".join(f"{t} {n}" for t, n in sorted(held[i].items())))


if __name__ == "__main__":
    main()
